"""README's two set-up commands are the ones CI runs."""

import re

from .conftest import REPO


def readme_commands():
    return re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), flags=re.S)[:2]


def test_readme_starts_with_the_two_commands():
    install_and_train, run_tests = readme_commands()
    assert install_and_train.endswith("pip install . && gpubp train")
    assert run_tests.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()

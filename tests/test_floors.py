"""pyproject.toml's dependency floors and .ci/floors.txt, the pins CI tests them on, cannot drift apart.

The floors are those of the runtime dependencies and of the extras the tests install ([bench]).
"""

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .conftest import REPO
from .test_readme import readme_commands


def floored_requirements(project):
    """The requirements CI tests on their floors: [project] dependencies, and those of every extra
    of gpubp's own that the test extra installs (test = [..., "gpubp[bench]"])."""
    lines = list(project["dependencies"])
    extras = project.get("optional-dependencies", {})
    for line in extras.get("test", []):
        req = Requirement(line)
        if canonicalize_name(req.name) == canonicalize_name(project["name"]):
            lines += [dep for extra in sorted(req.extras) for dep in extras[extra]]
    return lines


def declared_floors(pyproject_text):
    """{name: floor} from floored_requirements; AssertionError for one without a >= floor."""
    floors = {}
    for line in floored_requirements(tomllib.loads(pyproject_text)["project"]):
        req = Requirement(line)
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{line!r}: every floored requirement needs exactly one >= floor"
        floors[canonicalize_name(req.name)] = Version(lower[0])
    return floors


def pinned_floors(floors_text):
    """{name: version} from the name==version lines of .ci/floors.txt (comments and blank lines skipped)."""
    pins = {}
    for line in floors_text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.]*)", line)
        assert match, f".ci/floors.txt: {line!r} is not name==version"
        name = canonicalize_name(match[1])
        assert name not in pins, f".ci/floors.txt pins {name} twice"
        pins[name] = Version(match[2])
    return pins


def drift(pyproject_text, floors_text):
    """Every way the two files disagree, as sentences; empty when they agree."""
    floors, pins = declared_floors(pyproject_text), pinned_floors(floors_text)
    problems = [f"{name}>={floors[name]} is declared but not pinned" for name in floors.keys() - pins.keys()]
    problems += [f"{name}=={pins[name]} is pinned but not a declared dependency" for name in pins.keys() - floors.keys()]
    problems += [f"{name}: declared >={floors[name]}, pinned =={pins[name]}"
                 for name in floors.keys() & pins.keys() if floors[name] != pins[name]]
    return sorted(problems)


def test_every_declared_floor_is_the_version_ci_pins():
    pyproject = (REPO / "pyproject.toml").read_text()
    floors = (REPO / ".ci" / "floors.txt").read_text()
    assert declared_floors(pyproject), "pyproject.toml declares no dependencies"
    assert drift(pyproject, floors) == []


def test_a_changed_floor_an_extra_pin_or_a_missing_pin_is_caught():
    pyproject = '[project]\nname = "gpubp"\ndependencies = ["numpy>=1.23.2", "scikit-learn>=1.7"]\n'
    assert drift(pyproject, "numpy==1.23.2\nscikit_learn==1.7.0\n") == []
    assert drift(pyproject, "numpy==1.24.0\nscikit-learn==1.7.0\n") == ["numpy: declared >=1.23.2, pinned ==1.24.0"]
    assert drift(pyproject, "numpy==1.23.2\n") == ["scikit-learn>=1.7 is declared but not pinned"]
    assert drift(pyproject, "numpy==1.23.2\nscikit-learn==1.7.0\nscipy==1.9.2\n") == [
        "scipy==1.9.2 is pinned but not a declared dependency"]


def test_an_extra_the_tests_install_is_floored_and_one_they_do_not_is_not():
    pyproject = ('[project]\nname = "gpubp"\ndependencies = ["numpy>=1.23.2"]\n[project.optional-dependencies]\n'
                 'bench = ["threadpoolctl>=3.1.0"]\nplot = ["matplotlib>=3.6"]\n'
                 'test = ["pytest>=7", "gpubp[bench]"]\n')
    assert declared_floors(pyproject) == {"numpy": Version("1.23.2"), "threadpoolctl": Version("3.1.0")}
    assert drift(pyproject, "numpy==1.23.2\n") == ["threadpoolctl>=3.1.0 is declared but not pinned"]
    assert drift(pyproject.replace('"gpubp[bench]"', '"gpubp[plot]"'), "numpy==1.23.2\n") == [
        "matplotlib>=3.6 is declared but not pinned"]


def test_ci_tests_on_the_floors_before_the_main_run():
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    main_run = readme_commands()[1]
    floors_install = [i for i, line in enumerate(lines) if "-c .ci/floors.txt" in line and "pip install" in line]
    assert floors_install, ".ci/run does not install the pins of .ci/floors.txt"
    assert main_run in lines
    # the main run is the last line (.ci/run starts the floors run beside it, in the background, first)
    assert max(floors_install) < lines.index(main_run) == len(lines) - 1

"""gpubp's imports go down its layers, and benchmarks/ imports without a cycle (gpubp issue 11).

LAYERS puts every module of gpubp/ in a layer, lowest first. A module may import modules of its
own layer and of the layers below, never one above, so that the library reads (and changes) from
the bottom up. Every import counts, also one inside a function. A gpubp/*.py that is in no layer
fails the test: declare it where it belongs. A declared module that does not exist fails too,
unless PLANNED names it (a module another change is about to add).

The benchmark scripts import one another and gpubp mostly inside functions that run only on a
GPU, which this machine never executes; so the imports of gpubp/ and benchmarks/ are also checked
here without running them: no cycle, and every imported name exists in its module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import REPO

LAYERS = [
    ("base: errors, version, constraints, signals, atomic files",
     {"errors", "version", "interrupt", "atomic_file", "constraints"}),
    ("math: NumPy twins, precision and rate models", {"ops", "precision", "bfloat16", "schedules", "kernel_set"}),
    ("settings", {"params"}),
    ("kernel sets", {"host_build", "host_kernels", "kernels"}),
    ("backend and host data checks", {"backend", "validation", "cublas_direct", "rows"}),
    ("model: network, optimizers, files", {"initialization", "prediction", "mlp", "optim", "saving", "checkpoint", "container"}),
    ("data and communication", {"data_parts", "batches", "idx", "npy_folder", "data",
                                "communicator", "mpi_communicator", "nccl_communicator", "distributed"}),
    ("engine", {"cuda_graph", "engine"}),
    ("faces", {"config", "train_data", "history", "train_checkpoint", "train", "estimator_params", "estimator_data", "estimator_lbfgs", "estimator_parallel", "estimator_checkpoint", "estimator_fit", "estimator_base",
               "estimators"}),
    ("tools", {"parity", "plotting", "bench"}),
    ("command line", {"cli_parser", "cli_train", "cli"}),
    ("package", {"__init__", "__main__"}),
]
# Declared before they exist: the kernel-set contract and the table of settings.
PLANNED = {"kernel_set", "params"}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 300, 60


class Package:
    """The modules of one folder of the checkout (gpubp/ or benchmarks/), parsed, not imported."""

    def __init__(self, name: str, root: Path = REPO):
        self.name = name
        self.files = {p.stem: p for p in sorted((root / name).glob("*.py"))}
        self.trees = {stem: ast.parse(p.read_text(), str(p)) for stem, p in self.files.items()}

    def imports(self, stem: str):
        """(line, module, name, alias) for every import in module ``stem`` of this package's own
        modules; see resolve."""
        for node in ast.walk(self.trees[stem]):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield from ((node.lineno, *found) for found in self.resolve(node, self.name))

    def resolve(self, node: ast.Import | ast.ImportFrom, importer: str) -> list[tuple]:
        """(module, name, alias) for each of this package's modules that an import statement in
        package ``importer`` imports: module is the stem imported from ("__init__" for the package
        itself), name the name taken from it (None when the module itself is bound), alias the
        plain name the module is bound to (None when it is not bound to one)."""
        found = []
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == self.name:
                    bound = a.asname or (a.name if len(parts) == 1 else None)
                    found.append((parts[1] if len(parts) > 1 else "__init__", None, bound))
            return found
        parts = node.module.split(".") if node.module else []
        if node.level == 1:  # from . import x, from .x import y: the importer's package
            parts = [importer] + parts
        if node.level > 1 or not parts or parts[0] != self.name:
            return found
        for a in node.names:
            if len(parts) > 1:
                found.append((parts[1], a.name, None))
            elif a.name in self.files:  # from gpubp import bench: the module
                found.append((a.name, None, a.asname or a.name))
            else:  # from gpubp import MLP: a name of the package's __init__
                found.append(("__init__", a.name, None))
        return found

    def graph(self) -> dict[str, set[str]]:
        """module -> the modules of this package it imports."""
        return {stem: {module for _, module, _, _ in self.imports(stem) if module != stem} for stem in self.files}


def top_level_names(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level (also inside a top-level if, try or with)."""
    names, body = set(), list(tree.body)
    while body:
        node = body.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            body += node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])
            body += [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]
    return names


def layer_of() -> dict[str, int]:
    """module -> the index of its layer in LAYERS; AssertionError for a module in two layers."""
    index = {}
    for i, (title, modules) in enumerate(LAYERS):
        for module in modules:
            assert module not in index, f"{module} is in layer {LAYERS[index[module]][0]!r} and in {title!r}"
            index[module] = i
    return index


def upward_imports(package: Package) -> list[str]:
    """Every import of a module of a higher layer, as a sentence."""
    layer, found = layer_of(), []
    for stem in package.files:
        for line, module, _, _ in package.imports(stem):
            if stem in layer and module in layer and layer[module] > layer[stem]:
                found.append(f"gpubp/{stem}.py:{line} imports gpubp.{module} (layer {LAYERS[layer[module]][0]!r}) "
                             f"from layer {LAYERS[layer[stem]][0]!r}")
    return found


def undeclared(package: Package) -> list[str]:
    """Modules in no layer, and declared modules that neither exist nor are planned."""
    declared = set(layer_of())
    return ([f"gpubp/{m}.py is in no layer of tests/test_layers.py: add it to the layer it belongs to"
             for m in sorted(set(package.files) - declared)]
            + [f"{m} is declared in tests/test_layers.py but gpubp/{m}.py does not exist (and is not PLANNED)"
               for m in sorted(declared - set(package.files) - PLANNED)])


def cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when there is none."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


def scope_nodes(scope: ast.AST):
    """The nodes of one scope: its body, without the insides of the functions defined in it."""
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def missing_names(package: Package, importer: Package | None = None) -> list[str]:
    """Every name that ``importer`` (default: the package itself) imports from one of the
    package's modules, or reads as an attribute of such a module bound by an import, and that the
    module does not define (on a path that runs only on a GPU, it would fail only there)."""
    importer = importer or package
    defined = {stem: top_level_names(tree) for stem, tree in package.trees.items()}
    defined.setdefault("__init__", set()).update(package.files)  # gpubp.bench once imported
    problems = []

    def check(stem: str, scope: ast.AST, inherited: dict) -> None:
        """Check one scope, where ``inherited`` maps the names of modules bound outside it."""
        nodes, imported = list(scope_nodes(scope)), {}
        for node in nodes:
            for module, name, alias in (package.resolve(node, importer.name)
                                        if isinstance(node, (ast.Import, ast.ImportFrom)) else ()):
                where = f"{importer.name}/{stem}.py:{node.lineno}"
                if module not in defined:
                    problems.append(f"{where} imports {package.name}.{module}, which does not exist")
                elif name is not None and name not in defined[module]:
                    problems.append(f"{where} imports {name} from {package.name}.{module}, which does not define it")
                elif alias is not None:
                    imported[alias] = module
        local = {n.id for n in nodes if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        local |= {a.arg for a in ast.walk(scope.args) if isinstance(a, ast.arg)} if hasattr(scope, "args") else set()
        visible = {name: module for name, module in inherited.items() if name not in local} | imported
        for node in nodes:
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Name)
                    and node.value.id in visible and node.attr not in defined[visible[node.value.id]]):
                problems.append(f"{importer.name}/{stem}.py:{node.lineno} reads {node.value.id}.{node.attr}, but "
                                f"{package.name}.{visible[node.value.id]} does not define {node.attr}")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                check(stem, node, visible)

    for stem, tree in importer.trees.items():
        check(stem, tree, {})
    return problems


def test_no_module_imports_one_of_a_higher_layer():
    found = upward_imports(Package("gpubp"))
    assert not found, "\n".join(found)


def test_every_module_is_in_one_layer():
    found = undeclared(Package("gpubp"))
    assert not found, "\n".join(found)


@pytest.mark.parametrize("folder", ["gpubp", "benchmarks"])
def test_no_import_cycle(folder):
    found = cycle(Package(folder).graph())
    assert not found, f"{folder}/ has an import cycle: {' -> '.join(found)}"


@pytest.mark.parametrize("folder, importer", [("gpubp", "gpubp"), ("benchmarks", "benchmarks"),
                                              ("gpubp", "benchmarks"), ("gpubp", "tests"), ("benchmarks", "tests")])
def test_every_imported_name_exists(folder, importer):
    found = missing_names(Package(folder), Package(importer))
    assert not found, "\n".join(found)


def test_an_upward_import_a_cycle_and_a_missing_name_are_caught(tmp_path):
    (tmp_path / "gpubp").mkdir()
    for stem, text in {"ops": "def relu(): from .cli import main\n", "cli": "from .ops import relu\nmain = 1\n",
                       "mlp": "from . import ops\nops.softmax\nfrom .ops import gelu\n", "extra": ""}.items():
        (tmp_path / "gpubp" / f"{stem}.py").write_text(text)
    package = Package("gpubp", root=tmp_path)
    assert upward_imports(package) == ["gpubp/ops.py:1 imports gpubp.cli (layer 'command line') "
                                       "from layer 'math: NumPy twins, precision and rate models'"]
    assert undeclared(package)[0] == ("gpubp/extra.py is in no layer of tests/test_layers.py: "
                                      "add it to the layer it belongs to")
    assert "errors is declared in tests/test_layers.py but gpubp/errors.py does not exist (and is not PLANNED)" in (
        undeclared(package))
    assert not any(problem.startswith("params ") for problem in undeclared(package))  # planned
    assert cycle(package.graph()) == ["cli", "ops", "cli"]
    assert set(missing_names(package)) == {"gpubp/mlp.py:2 reads ops.softmax, but gpubp.ops does not define softmax",
                                           "gpubp/mlp.py:3 imports gelu from gpubp.ops, which does not define it"}


def oversized(package: Package) -> list[str]:
    """Modules over MAX_MODULE_LINES lines and functions over MAX_FUNCTION_LINES, as sentences."""
    found = []
    for stem, path in package.files.items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{package.name}/{stem}.py: {lines} lines")
        found += [f"{package.name}/{stem}.py:{node.lineno} {node.name}: {code_lines(node)} lines"
                  for node in ast.walk(package.trees[stem]) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                  and code_lines(node) > MAX_FUNCTION_LINES]
    return found


def code_lines(function: ast.FunctionDef) -> int:
    """A function's lines without its docstring (a public function's parameter list may be long)."""
    lines = function.end_lineno - function.lineno + 1
    first = function.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_modules_and_functions_are_small():
    found = oversized(Package("gpubp"))
    assert not found, "\n".join(found)

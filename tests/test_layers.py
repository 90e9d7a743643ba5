"""The architecture as rules, read from the source with `ast` (every import, including those inside
functions and relative ones):

- each folder of toolkit/ has a rank (LAYERS); a module imports only modules of its own folder and
  of folders of a lower rank, so dependencies point one way (core imports nothing above it);
  folders of one rank are siblings and do not import each other (serve never reads the report);
- no import cycle anywhere inside toolkit, lazy imports included;
- a few placements the issues decided: the precision modes specs validate live in core, the
  load-test and pick records the report and serve share live in core, and what runs the pipeline
  of `toolkit run` lives in experiments, not in cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TOOLKIT = Path(__file__).resolve().parent.parent / "toolkit"
# Folder -> rank: imports point only down this list (a lower rank), or within a folder.
LAYERS: dict[str, int] = {
    "core": 0,
    "families": 1,
    "specs": 2,
    "training": 3, "runtimes": 3,
    "export": 4,
    "recommend": 5, "benchmark": 5, "loadtest": 5,
    "serve": 6, "report": 6,
    "experiments": 7,
    "cli": 8,
}


def _module(path: Path) -> str:
    rel = path.relative_to(TOOLKIT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _is_module(name: str) -> bool:
    if not name.startswith("toolkit."):
        return False
    path = TOOLKIT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def toolkit_imports(path: Path, module: str | None = None) -> set[str]:
    """Every toolkit module `path` (the module `module`) imports, anywhere in the file, relative
    imports resolved."""
    module = module or _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from toolkit.core import artifacts` imports the module toolkit.core.artifacts, while
            # `from toolkit import CLASS_NAMES` imports the package toolkit.
            names = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        found.update(n for n in names if n == "toolkit" or n.startswith("toolkit."))
    return found


def folder_of(module: str) -> str | None:
    """toolkit.core.records -> "core"; the package root `toolkit` -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def layer_problems(module: str, imported: set[str]) -> list[str]:
    own = folder_of(module)
    rank = LAYERS[own] if own else 0
    problems = []
    for name in sorted(imported):
        other = folder_of(name)
        if other is None:  # `from toolkit import CLASS_NAMES`: the package root, at the bottom
            continue
        if other == own:
            continue
        if other not in LAYERS:
            problems.append(f"{name} (folder {other!r} has no layer)")
        elif LAYERS[other] >= rank:
            relation = "a sibling" if LAYERS[other] == rank else "above it"
            problems.append(f"{name} ({other} is {relation}: rank {LAYERS[other]} vs {own} {rank})")
    return problems


MODULES = sorted(p for p in TOOLKIT.rglob("*.py"))


def test_every_folder_has_a_layer_and_nothing_is_flat():
    folders = {p.relative_to(TOOLKIT).parts[0] for p in MODULES if len(p.relative_to(TOOLKIT).parts) > 1}
    assert folders == set(LAYERS), f"folders without a layer: {folders - set(LAYERS)}"
    flat = [p.name for p in MODULES if p.parent == TOOLKIT and p.name != "__init__.py"]
    assert not flat, f"modules outside the folders: {flat}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(TOOLKIT)))
def test_imports_point_down_the_layers(path):
    module = _module(path)
    if module == "toolkit":
        wrong = sorted(n for n in toolkit_imports(path) if folder_of(n) not in (None, "core"))
    else:
        wrong = layer_problems(module, toolkit_imports(path))
    assert not wrong, f"{module} imports {wrong}; imports point down {list(LAYERS)} (lowest first)"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(TOOLKIT)))
def test_every_import_names_a_module_that_exists(path):
    """A lazy import of a moved module fails only when its function runs: catch it here."""
    missing = sorted(n for n in toolkit_imports(path) if n != "toolkit" and not _is_module(n))
    assert not missing, f"{_module(path)} imports {missing}, which do not exist"


OUTSIDE = sorted(p for folder in ("tests", "bench", "tools") for p in (TOOLKIT.parent / folder).rglob("*.py"))


@pytest.mark.parametrize("path", OUTSIDE, ids=lambda p: str(p.relative_to(TOOLKIT.parent)))
def test_tests_and_tools_import_modules_that_exist(path):
    imported = toolkit_imports(path, "outside.module")
    missing = sorted(n for n in imported if n != "toolkit" and not _is_module(n))
    assert not missing, f"{path.name} imports {missing}, which do not exist"


def _defined_names(module: str) -> set[str]:
    """The names a toolkit module defines or imports at its top level (what `from M import x` can take)."""
    path = TOOLKIT.parent.joinpath(*module.split("."))
    path = path / "__init__.py" if (path / "__init__.py").is_file() else path.with_suffix(".py")
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                elements = target.elts if isinstance(target, ast.Tuple) else [target]
                names.update(e.id for e in elements if isinstance(e, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Try):  # an import with a fallback
            for inner in node.body:
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    names.update((a.asname or a.name).split(".")[0] for a in inner.names)
    return names


@pytest.mark.parametrize("path", [*MODULES, *OUTSIDE], ids=lambda p: str(p.relative_to(TOOLKIT.parent)))
def test_every_imported_name_exists(path):
    """`from toolkit.x import name` where x no longer defines name fails only when the import runs
    (a lazy import inside a function): read every one statically."""
    wrong = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("toolkit") \
                and not node.level and _is_module(node.module) or getattr(node, "module", None) == "toolkit":
            defined = _defined_names(node.module)
            for alias in node.names:
                known = alias.name in defined or _is_module(f"{node.module}.{alias.name}")
                if alias.name != "*" and not known:
                    wrong.append(f"{node.module}.{alias.name} (line {node.lineno})")
    assert not wrong, f"{path.name} imports names that do not exist: {wrong}"


def import_graph() -> dict[str, set[str]]:
    return {_module(p): {n for n in toolkit_imports(p) if _is_module(n) or n == "toolkit"} for p in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_inside_toolkit():
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_lazy_cycle():
    graph = {"toolkit.report.build": {"toolkit.report.columns"},
             "toolkit.report.columns": {"toolkit.report.build"}, "toolkit.core.errors": set()}
    assert cycles(graph) == [["toolkit.report.build", "toolkit.report.columns"]]


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The rules would be toothless if imports inside functions went unseen."""
    sample = tmp_path / "probe.py"
    sample.write_text("def f():\n    from toolkit.report import build\n    from . import registry\n")
    found = toolkit_imports(sample, "toolkit.export.probe")
    assert found == {"toolkit.report.build", "toolkit.export.registry"}
    assert layer_problems("toolkit.export.probe", {"toolkit.report.build"})
    assert layer_problems("toolkit.serve.loading", {"toolkit.report.build"})  # siblings
    assert not layer_problems("toolkit.report.build", {"toolkit.core.stats", "toolkit.report.rows"})


def test_the_placements_the_restructure_decided():
    from toolkit.core.contract import MIXED_PRECISION_MODES
    from toolkit.training.precision import MODES

    assert MODES is MIXED_PRECISION_MODES  # specs validate modes without importing training
    for record in ("loadtest_record.py", "pick_record.py"):  # shared by the report and serve, below both
        assert (TOOLKIT / "core" / record).is_file()
    assert (TOOLKIT / "experiments" / "pipeline.py").is_file()
    serving = [p for p in MODULES if folder_of(_module(p)) in ("serve", "loadtest")]
    for path in serving:  # a TensorFlow-free serving host has neither the report nor scipy
        found = {n for n in toolkit_imports(path) if folder_of(n) == "report" or n == "toolkit.core.stats"}
        assert not found, f"{path} imports {found}"


def test_only_toolkit_is_installed():
    """One top-level package name goes into a user's environment."""
    import tomllib

    pyproject = tomllib.loads((TOOLKIT.parent / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["include"] == ["toolkit*"]
    assert not (TOOLKIT.parent / "export").exists()

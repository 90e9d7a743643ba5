"""Package boundaries: toolkit.export depends only on the low layers, and the low layers on nothing
above them, read from the source with `ast` (every import, including those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TOOLKIT = Path(__file__).resolve().parent.parent / "toolkit"
# The low layers: what every stage may use. Nothing here imports a stage.
LOW = {"toolkit", "toolkit.errors", "toolkit.artifacts", "toolkit.contract", "toolkit.quiet", "toolkit._tf",
       "toolkit.models", "toolkit.specs", "toolkit.data", "toolkit.records", "toolkit.recipe",
       "toolkit.precision", "toolkit.checkpoint", "toolkit.stats"}
# toolkit.models builds from a Spec, so specs sits with the low layers (it imports only contract/errors,
# the recipe and the model families). The families package is low as a whole.
FAMILIES = sorted((TOOLKIT / "families").glob("*.py"))


def _is_low(name: str) -> bool:
    return name in LOW or name == "toolkit.families" or name.startswith("toolkit.families.")


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
            # `from toolkit import artifacts` imports the module toolkit.artifacts, while
            # `from toolkit import CLASS_NAMES` imports the package toolkit.
            names = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        found.update(n for n in names if n == "toolkit" or n.startswith("toolkit."))
    return found


def _allowed_for_export(name: str) -> bool:
    return _is_low(name) or name == "toolkit.export" or name.startswith("toolkit.export.")


@pytest.mark.parametrize("path", sorted((TOOLKIT / "export").glob("*.py")), ids=lambda p: p.name)
def test_export_imports_only_the_low_layers(path):
    wrong = sorted(n for n in toolkit_imports(path) if not _allowed_for_export(n))
    assert not wrong, f"toolkit/export/{path.name} imports {wrong}; it may import only {sorted(LOW)}"


@pytest.mark.parametrize("name", sorted(LOW - {"toolkit"}))
def test_low_layers_import_no_stage(name):
    path = TOOLKIT / f"{name.split('.', 1)[1]}.py"
    wrong = sorted(n for n in toolkit_imports(path) if not _is_low(n))
    assert not wrong, f"{name} imports {wrong}; the low layers import only each other"


@pytest.mark.parametrize("path", FAMILIES, ids=lambda p: p.name)
def test_families_import_only_the_low_layers(path):
    wrong = sorted(n for n in toolkit_imports(path) if not _is_low(n))
    assert not wrong, f"toolkit/families/{path.name} imports {wrong}; families are a low layer"


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The rule would be toothless if imports inside functions went unseen."""
    sample = tmp_path / "probe.py"
    sample.write_text("def f():\n    from toolkit import parity\n    from . import registry\n")
    assert toolkit_imports(sample, "toolkit.export.probe") == {"toolkit.parity", "toolkit.export.registry"}
    assert not _allowed_for_export("toolkit.parity")


def test_only_toolkit_is_installed():
    """One top-level package name goes into a user's environment."""
    import tomllib

    pyproject = tomllib.loads((TOOLKIT.parent / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["include"] == ["toolkit*"]
    assert not (TOOLKIT.parent / "export").exists()

"""gt_core's public names: the lazy table and the TYPE_CHECKING block list the same names from the
same modules, each is defined where the table says, importing gt_core loads no torch, and what the docs import is exported."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import gt_core

REPO_ROOT = Path(__file__).resolve().parents[2]
INIT = REPO_ROOT / "gt_core" / "__init__.py"
DOC_IMPORT = re.compile(r"^\s*from (gt_core(?:\.\w+)*) import ([\w, ]+)", re.MULTILINE)


def type_checking_imports(tree: ast.Module) -> dict[str, str]:
    """Name -> module, for the ``from M import name`` lines under ``if TYPE_CHECKING:``."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom), ast.dump(statement)
                found.update({alias.asname or alias.name: statement.module or "" for alias in statement.names})
    return found


def lazy_exports(tree: ast.Module) -> dict[str, str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["_EXPORTS"]:
            return ast.literal_eval(node.value)
    raise AssertionError("no _EXPORTS table in gt_core/__init__.py")


def test_the_type_checking_block_names_every_lazy_export_from_its_module():
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    assert type_checking_imports(tree) == lazy_exports(tree)
    assert sorted(gt_core.__all__) == sorted(lazy_exports(tree))


def top_level_names(module: str) -> set[str]:
    """Names a module's source binds at its top level (defined, assigned or imported), read without
    importing it (so without torch)."""
    path = REPO_ROOT / module.replace(".", "/")
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_every_export_is_defined_in_its_module():
    exports = lazy_exports(ast.parse(INIT.read_text(encoding="utf-8")))
    missing = sorted(f"{module}.{name}" for name, module in exports.items() if name not in top_level_names(module))
    assert missing == []


def test_importing_gt_core_loads_no_torch():
    probe = "import sys, gt_core; gt_core.__all__; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_what_the_docs_import_from_gt_core_is_exported_from_the_package():
    docs = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
    imported = {
        (path.name, module, name.strip())
        for path in docs for module, names in DOC_IMPORT.findall(path.read_text(encoding="utf-8"))
        for name in names.split(",") if name.strip()
    }
    assert imported, "no `from gt_core... import` in README.md or docs/"
    # Submodules imported as modules (``from gt_core import schemes``) are not names to export.
    missing = sorted((doc, module, name) for doc, module, name in imported
                     if name not in gt_core.__all__ and not (REPO_ROOT / module.replace(".", "/") / f"{name}.py").exists())
    assert missing == []

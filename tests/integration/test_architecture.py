"""The package seams, checked statically: every module of the project's packages is parsed (not
imported, so no torch) and its imports are compared with the rules below.

* No module imports another module's underscore names: neither ``from pkg.mod import _name`` nor
  ``import pkg.mod`` followed by ``pkg.mod._name`` (dunder names such as ``__version__`` are public).
  Function-local imports count here.
* gt_core talks to the daemon only through ``carbonsched.client`` and the wire constants of
  ``carbonsched.protocol``, and reads and writes times with ``carbonsched.times`` (the wire's time
  vocabulary, standard library only); carbonsched imports nothing from gt_core; the shared CLI helper package
  imports neither half; nothing in either half imports the demo, which joins them.
* No import cycles among the modules. An edge is a module-level import, including imports under
  ``if TYPE_CHECKING:``, ``try:`` and ``if __name__ == "__main__":`` blocks. Imports inside function
  bodies are excluded: they run at call time, after every module involved has finished loading.
  Only explicit imports are edges, not the implicit import of a module's parent package.

* ``Any`` stays rare in signatures: in each of gt_core and carbonsched at most
  :data:`MAX_ANY_SIGNATURE_SHARE` of the functions (methods and nested functions alike) mention
  ``Any`` in a parameter or return annotation (``typing.Any``, quoted annotations and module-level
  aliases of types holding ``Any`` count too). Real types instead: torch.nn.Module, Mapping[str, float], the protocol's
  TypedDicts, Protocols, ``object`` where truly anything goes.

Tests of private helpers in tests/ are not covered: only the packages are scanned.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gt_core", "carbonsched", "cli_support", "carbon_demo")
DAEMON_API_FOR_GT_CORE = frozenset({"carbonsched.client", "carbonsched.protocol", "carbonsched.times"})
DEMO_PACKAGE = "carbon_demo"
NEUTRAL_PACKAGE = "cli_support"


@dataclass(frozen=True)
class ImportRef:
    """One imported module (and, for ``from M import n``, the name taken from it)."""

    importer: str
    target: str  # the imported module as written, resolved to an absolute dotted name
    name: str | None  # the name in ``from target import name``; None for ``import target``
    bound_as: str  # the local name the import binds
    line: int
    module_level: bool


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def find_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file of the packages under ``root``."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            modules[module_name(path, root)] = path
    return modules


def package_of(module: str, path: Path) -> str:
    """The package a relative import in ``module`` starts from."""
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def resolve_from(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = package_of(module, path).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, module: str, path: Path):
        self.module, self.path = module, path
        self.imports: list[ImportRef] = []
        self._function_depth = 0

    def _enter_function(self, node: ast.AST) -> None:
        self._function_depth += 1
        self.generic_visit(node)
        self._function_depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _enter_function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            bound = alias.asname or alias.name.split(".")[0]
            self.imports.append(ImportRef(self.module, alias.name, None, bound, node.lineno, self._function_depth == 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        target = resolve_from(self.module, self.path, node)
        for alias in node.names:
            bound = alias.asname or alias.name
            self.imports.append(ImportRef(self.module, target, alias.name, bound, node.lineno, self._function_depth == 0))


def collect_imports(module: str, path: Path) -> tuple[ast.Module, list[ImportRef]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    collector = _ImportCollector(module, path)
    collector.visit(tree)
    return tree, collector.imports


def imported_module(ref: ImportRef, modules: dict[str, Path]) -> str:
    """The module an import loads: ``from pkg import mod`` loads ``pkg.mod`` when that is a module."""
    if ref.name is not None and f"{ref.target}.{ref.name}" in modules:
        return f"{ref.target}.{ref.name}"
    return ref.target


def _module_aliases(imports: list[ImportRef], modules: dict[str, Path]) -> dict[str, str]:
    """Local name -> project module, for the names imports bind to modules of the project."""
    aliases: dict[str, str] = {}
    for ref in imports:
        if ref.name is None:
            bound_module = ref.target if ref.bound_as != ref.target.split(".")[0] else ref.bound_as
        else:
            bound_module = f"{ref.target}.{ref.name}"
        if bound_module in modules:
            aliases[ref.bound_as] = bound_module
    return aliases


def _attribute_chain(node: ast.Attribute) -> list[str] | None:
    chain: list[str] = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        chain.append(current.attr)
        current = current.value
    if not isinstance(current, ast.Name):
        return None
    chain.append(current.id)
    return chain[::-1]


def private_name_violations(root: Path, packages: tuple[str, ...]) -> list[str]:
    modules = find_modules(root, packages)
    found: set[str] = set()
    for module, path in modules.items():
        tree, imports = collect_imports(module, path)
        where = path.relative_to(root)
        for ref in imports:
            if ref.name is not None and is_private(ref.name) and ref.target in modules and ref.target != module:
                found.add(f"{where}:{ref.line}: imports {ref.name} from {ref.target}")
        aliases = _module_aliases(imports, modules)
        for node in ast.walk(tree):
            chain = _attribute_chain(node) if isinstance(node, ast.Attribute) else None
            if not chain or chain[0] not in aliases:
                continue
            owner = aliases[chain[0]]
            for attr in chain[1:]:
                if f"{owner}.{attr}" in modules:
                    owner = f"{owner}.{attr}"
                    continue
                if is_private(attr) and owner != module:
                    found.add(f"{where}:{node.lineno}: uses {owner}.{attr}")
                break
    return sorted(found)


def forbidden_import_violations(
    root: Path, packages: tuple[str, ...], importer_package: str, allowed: frozenset[str], forbidden_roots: tuple[str, ...]
) -> list[str]:
    """Imports from ``importer_package`` into any of ``forbidden_roots``, except the ``allowed`` modules."""
    modules = find_modules(root, packages)
    found = []
    for module, path in modules.items():
        if module.split(".")[0] != importer_package:
            continue
        for ref in collect_imports(module, path)[1]:
            target = imported_module(ref, modules)
            if target.split(".")[0] in forbidden_roots and target not in allowed:
                what = f"{ref.target}.{ref.name}" if ref.name is not None else ref.target
                found.append(f"{path.relative_to(root)}:{ref.line}: imports {what}")
    return found


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Module -> {imported project module: line}, module-level imports only."""
    modules = find_modules(root, packages)
    graph: dict[str, dict[str, int]] = {module: {} for module in modules}
    for module, path in modules.items():
        for ref in collect_imports(module, path)[1]:
            target = imported_module(ref, modules)
            if ref.module_level and target in modules and target != module:
                graph[module].setdefault(target, ref.line)
    return graph


def strongly_connected_components(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components in discovery order, members sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    advanced = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def cycle_through(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest cycle from the component's first module back to itself (breadth-first)."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph[node]):
                if successor not in members:
                    continue
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if successor not in previous:
                    previous[successor] = node
                    following.append(successor)
        frontier = following
    raise AssertionError(f"no cycle in component {component}")


def import_cycles(root: Path, packages: tuple[str, ...]) -> list[str]:
    """One cycle path per strongly connected component, with the import line of each step."""
    graph = import_graph(root, packages)
    cycles = []
    for component in strongly_connected_components(graph):
        if len(component) < 2:
            continue
        path = cycle_through(graph, component)
        steps = " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(path, path[1:]))
        cycles.append(f"{steps} -> {path[-1]}  [{len(component)} modules in the cycle set: {', '.join(component)}]")
    return cycles


def _report(violations: list[str]) -> str:
    return "\n" + "\n".join(f"  {v}" for v in violations)


# --- the project's packages ------------------------------------------------------------------------

# Violations left in modules that are being rewritten (trainer, callbacks, distributed, hf_callback).
# Each entry is a violation without its line number; remove it with the fix: a stale entry fails
# test_pending_fixes_are_still_needed, any violation not listed fails the test of its rule.
PENDING_FIXES: frozenset[str] = frozenset()


def without_line(violation: str) -> str:
    """``path:line: message`` -> ``path: message``; a cycle -> ``cycle among <its modules>``."""
    if " -> " in violation:
        return "cycle among " + violation.rpartition("cycle set: ")[2].rstrip("]")
    path, _, rest = violation.partition(":")
    return f"{path}:{rest.partition(':')[2]}"


def not_pending(violations: list[str]) -> list[str]:
    return [v for v in violations if without_line(v) not in PENDING_FIXES]


def all_violations() -> list[str]:
    return [
        *private_name_violations(REPO_ROOT, PACKAGES),
        *forbidden_import_violations(REPO_ROOT, PACKAGES, "gt_core", DAEMON_API_FOR_GT_CORE, ("carbonsched",)),
        *forbidden_import_violations(REPO_ROOT, PACKAGES, "carbonsched", frozenset(), ("gt_core",)),
        *import_cycles(REPO_ROOT, PACKAGES),
    ]


def test_no_module_imports_another_modules_underscore_names():
    violations = not_pending(private_name_violations(REPO_ROOT, PACKAGES))
    assert not violations, "underscore names used outside their module:" + _report(violations)


def test_gt_core_reaches_carbonsched_only_through_client_and_protocol():
    violations = not_pending(forbidden_import_violations(
        REPO_ROOT, PACKAGES, "gt_core", DAEMON_API_FOR_GT_CORE, ("carbonsched",)
    ))
    assert not violations, (
        f"gt_core may import only {', '.join(sorted(DAEMON_API_FOR_GT_CORE))} from carbonsched:" + _report(violations)
    )


def test_carbonsched_imports_nothing_from_gt_core():
    violations = not_pending(forbidden_import_violations(REPO_ROOT, PACKAGES, "carbonsched", frozenset(), ("gt_core",)))
    assert not violations, "carbonsched imports gt_core:" + _report(violations)


def test_neither_half_imports_the_demo_and_the_cli_helper_imports_neither_half():
    violations = [
        v for package in ("gt_core", "carbonsched", NEUTRAL_PACKAGE)
        for v in forbidden_import_violations(REPO_ROOT, PACKAGES, package, frozenset(), (DEMO_PACKAGE,))
    ] + forbidden_import_violations(REPO_ROOT, PACKAGES, NEUTRAL_PACKAGE, frozenset(), ("gt_core", "carbonsched"))
    assert not violations, "layering broken:" + _report(violations)


def test_no_import_cycles_among_modules():
    cycles = not_pending(import_cycles(REPO_ROOT, PACKAGES))
    assert not cycles, "module-level import cycles:" + _report(cycles)


def test_pending_fixes_are_still_needed():
    stale = sorted(PENDING_FIXES - {without_line(v) for v in all_violations()})
    assert not stale, "fixed, remove from PENDING_FIXES:" + _report(stale)


def test_every_package_is_scanned():
    modules = find_modules(REPO_ROOT, PACKAGES)
    assert {m.split(".")[0] for m in modules} == set(PACKAGES)
    assert "gt_core.profiler" in modules and "carbonsched.commands.report_cmd" in modules


# The top level of each half holds only its shared seam (the client, the protocol, the store, the
# CLI entry point, ...); everything else lives in a room named for what it does.
MAX_TOP_LEVEL_MODULES = 10
ROOMS = {
    "carbonsched": {"daemon", "planning", "providers", "power", "policies", "reporting", "slurm", "service", "commands"},
    "gt_core": {"profiler", "selection", "training", "rho", "distributed", "integrations", "data", "models", "commands"},
}


def top_level_modules(package: str) -> list[str]:
    return sorted(p.stem for p in (REPO_ROOT / package).glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("package", sorted(ROOMS))
def test_the_top_level_of_each_half_stays_small(package):
    modules = top_level_modules(package)
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, (
        f"{package}/ has {len(modules)} top-level modules (at most {MAX_TOP_LEVEL_MODULES}): {modules}; "
        "put the new one in the room it belongs to"
    )


@pytest.mark.parametrize("package", sorted(ROOMS))
def test_each_room_exists_and_says_what_it_holds(package):
    for room in sorted(ROOMS[package]):
        init = REPO_ROOT / package / room / "__init__.py"
        assert init.is_file(), f"{package}/{room}/ is not a package"
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{init} has no docstring"


def test_tests_mirror_the_packages():
    """Test files live in a folder named for what they test, never at the top of tests/."""
    flat = sorted(p.name for p in (REPO_ROOT / "tests").glob("*.py") if p.name != "conftest.py")
    assert not flat, f"test modules at the top of tests/: {flat}"
    for package in ROOMS:
        for room in sorted((REPO_ROOT / "tests" / package).iterdir()):
            if room.is_dir() and room.name != "__pycache__":
                assert (REPO_ROOT / package / room.name).is_dir(), f"tests/{package}/{room.name}/ mirrors no room of {package}"


MAX_ANY_SIGNATURE_SHARE = 0.10
TYPED_PACKAGES = ("gt_core", "carbonsched")


def _mentions_any(annotation: ast.expr | None, any_names: frozenset[str] = frozenset({"Any"})) -> bool:
    """True when ``annotation`` names ``Any`` or one of ``any_names`` (aliases of types holding it),
    quoted or not, bare or qualified (``typing.Any``)."""
    if annotation is None:
        return False
    for node in ast.walk(annotation):
        if isinstance(node, ast.Name) and node.id in any_names or isinstance(node, ast.Attribute) and node.attr == "Any":
            return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                if _mentions_any(ast.parse(node.value, mode="eval").body, any_names):
                    return True
            except SyntaxError:
                continue
    return False


def _aliases_of_any(trees: list[ast.Module]) -> frozenset[str]:
    """``Any`` and the names of module-level aliases whose value mentions it (``Row = dict[str,
    Any]``), to a fixed point, so an alias does not hide an ``Any`` from the count."""
    assignments = [(node.targets[0].id if isinstance(node, ast.Assign) else node.target.id, node.value)
                   for tree in trees for node in tree.body
                   if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                   or isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None]
    names = frozenset({"Any"})
    while True:
        grown = names | {name for name, value in assignments if _mentions_any(value, names)}
        if grown == names:
            return names
        names = grown


def signatures_with_any(root: Path, package: str) -> tuple[list[str], int]:
    """``path:line name`` of each function of ``package`` whose signature mentions ``Any`` (or an
    alias of a type holding it), and the number of functions."""
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in sorted((root / package).rglob("*.py"))}
    any_names = _aliases_of_any(list(trees.values()))
    found, total = [], 0
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            total += 1
            args = node.args
            annotations = [a.annotation for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg) if a]
            if any(_mentions_any(a, any_names) for a in (*annotations, node.returns)):
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name}")
    return found, total


@pytest.mark.parametrize("package", TYPED_PACKAGES)
def test_few_signatures_mention_any(package):
    found, total = signatures_with_any(REPO_ROOT, package)
    assert total > 100
    assert len(found) <= MAX_ANY_SIGNATURE_SHARE * total, (
        f"{len(found)} of {total} signatures in {package} mention Any ({len(found) / total:.1%}; at most "
        f"{MAX_ANY_SIGNATURE_SHARE:.0%}):" + _report(found)
    )


# --- the checker itself, on small packages written to a temporary directory --------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def sample_tree(tmp_path: Path) -> Path:
    _write(tmp_path, {
        "core/__init__.py": "__version__ = '1'\n",
        "core/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from core.b import B\n_hidden = 1\n",
        "core/b.py": "from . import c\nclass B: ...\n",
        "core/c.py": "import core.a\nx = core.a._hidden\n",
        "core/d.py": "from core.a import _hidden, __version__\nimport core.c as cc\ny = cc._local\n",
        "core/e.py": "def later():\n    from core.f import F\n",
        "core/f.py": "from core.e import later\nfrom daemon import client, _wire\nfrom daemon.store import Store\nF = 1\n",
        "core/g.py": "from core import __version__\n",
        "daemon/__init__.py": "",
        "daemon/client.py": "",
        "daemon/store.py": "from core.g import __version__\n",
    })
    return tmp_path


def test_checker_finds_private_imports_and_private_attribute_use(sample_tree):
    violations = private_name_violations(sample_tree, ("core", "daemon"))
    assert violations == [
        "core/c.py:2: uses core.a._hidden",
        "core/d.py:1: imports _hidden from core.a",
        "core/d.py:3: uses core.c._local",
        "core/f.py:2: imports _wire from daemon",
    ]


def test_checker_reports_a_cycle_through_a_type_checking_import_but_not_a_function_local_one(sample_tree):
    cycles = import_cycles(sample_tree, ("core", "daemon"))
    assert len(cycles) == 1
    assert cycles[0].startswith("core.a (line 3) -> core.b (line 1) -> core.c (line 1) -> core.a")


def test_checker_allows_only_the_listed_modules_across_a_seam(sample_tree):
    across = forbidden_import_violations(sample_tree, ("core", "daemon"), "core", frozenset({"daemon.client"}), ("daemon",))
    assert across == ["core/f.py:2: imports daemon._wire", "core/f.py:3: imports daemon.store.Store"]
    back = forbidden_import_violations(sample_tree, ("core", "daemon"), "daemon", frozenset(), ("core",))
    assert back == ["daemon/store.py:1: imports core.g.__version__"]


def test_pending_fixes_match_violations_whatever_their_line():
    assert without_line("gt_core/x.py:12: imports _y from gt_core.z") == "gt_core/x.py: imports _y from gt_core.z"
    assert without_line("a (line 3) -> b (line 1) -> a  [2 modules in the cycle set: a, b]") == "cycle among a, b"


def test_any_checker_counts_parameters_returns_quoted_and_qualified_any(tmp_path):
    _write(tmp_path, {"pkg/m.py": (
        "import typing\nfrom typing import Any\n"
        "def a(x: Any) -> int: ...\n"
        "def b(x: int) -> dict[str, Any]: ...\n"
        "def c(*args: 'list[Any]') -> None: ...\n"
        "def d(**kw: typing.Any) -> None: ...\n"
        "def e(x: object, y: 'Anything') -> None:\n    inner: Any = 1\n"
        "class K:\n    def f(self, x: int) -> None: ...\n"
        "Fields = dict[str, Any]\nMoreFields = list[Fields]\n"
    ), "pkg/n.py": "from pkg.m import MoreFields\ndef g(x: 'MoreFields') -> None: ...\ndef h(x: int) -> None: ...\n"})
    found, total = signatures_with_any(tmp_path, "pkg")
    assert total == 8
    assert [entry.split()[1] for entry in found] == ["a", "b", "c", "d", "g"]

"""The package's import graph, read with ``ast`` (nothing is imported): no import cycles, no
imports of another module's private names, and a run layer that never imports pytest, so that
dependencies point one way (pytest glue -> run layer -> data, classifiers, metrics, report).

A cycle edge is an import ``a -> b`` inside a strongly connected component of the graph (``b``
reaches ``a`` back); function-level (lazy) imports count, ``if TYPE_CHECKING:`` imports do not
(they never run). A module's implicit import of its parent packages is left out.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "pytest_unsafebench"
# Where each installed package's sources live (pyproject's [tool.setuptools.package-dir]).
ROOTS = {PACKAGE: REPO / "pytest_unsafebench", f"{PACKAGE}.classifiers": REPO / "classifiers",
         f"{PACKAGE}.suites": REPO / "suites"}

# The pytest-free run layer (module names without the package prefix): what the CLI, the
# benchmarks and the Ray workers import. The pytest glue (plugin, session) imports it, never
# the other way round.
RUN_LAYER = ("run", "device", "engine", "executors", "ray_executor", "cells",
             "robustness.accuracy", "robustness.fuzzing")


# ------------------------------------------------------------------------------ the graph


def modules() -> dict[str, Path]:
    """Every module of the installed package: dotted name -> source file."""
    found: dict[str, Path] = {}
    for package, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if "__pycache__" in rel.parts:
                continue
            found[".".join([package, *parts])] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (never executed)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def imports(name: str, path: Path, known: dict[str, Path]
            ) -> Iterator[tuple[str, str | None, str | None]]:
    """(imported module, imported name or None, local name bound to the module or None) for
    each project import in a module, TYPE_CHECKING imports left out. ``from pkg import sub``
    imports the module ``pkg.sub``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = _type_checking_nodes(tree)
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:  # ``import a.b`` binds ``a``: only an alias names it
                    yield alias.name, None, alias.asname
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            if source not in known:
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                yield (sub, None, alias.asname or alias.name) if sub in known else \
                    (source, alias.name, None)


def short(module: str) -> str:
    return module.removeprefix(PACKAGE).lstrip(".") or PACKAGE


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for name, path in known.items():
        for target, _, _ in imports(name, path, known):
            if target != name:
                edges[name].add(target)
    return edges


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components, iterative (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                out.append(component)
    return out


def cycle_edges() -> set[tuple[str, str]]:
    edges = graph()
    found: set[tuple[str, str]] = set()
    for component in strongly_connected(edges):
        for a in component:
            found.update((short(a), short(b)) for b in edges[a] if b in component)
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports() -> set[tuple[str, str, str]]:
    """Names starting with one underscore taken from another project module: imported
    (``from .m import _x``) or read off an imported module (``from . import m; m._x``)."""
    known = modules()
    found: set[tuple[str, str, str]] = set()
    for name, path in known.items():
        bound: dict[str, str] = {}  # local name -> the project module bound to it
        for target, imported, local in imports(name, path, known):
            if target == name:
                continue
            if imported is not None and _private(imported):
                found.add((short(name), short(target), imported))
            if local is not None:
                bound[local] = target
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in bound and _private(node.attr):
                found.add((short(name), short(bound[node.value.id]), node.attr))
    return found


# ------------------------------------------------------------------------------ the tests


def test_no_import_cycles() -> None:
    found = sorted(cycle_edges())
    assert not found, (f"import cycle edge(s) {found}: make the dependency point one way "
                       "(glue -> run -> data/classifiers/metrics), or move the shared code down")


def test_no_private_imports() -> None:
    found = sorted(private_imports())
    assert not found, (f"import(s) of another module's private name {found}: make the name "
                       "public (no underscore, a docstring) or move it where both can use it")


def reachable(start: str, edges: dict[str, set[str]]) -> set[str]:
    """``start`` and every project module it imports, directly or not, lazily or not."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(edges[module])
    return seen


def imports_pytest(path: Path) -> bool:
    """Whether the module imports pytest (or _pytest) anywhere outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        if any(name.split(".")[0] in ("pytest", "_pytest") for name in names):
            return True
    return False


def test_the_run_layer_never_imports_pytest() -> None:
    """Function-level imports included: a Ray worker or the CLI may call any of it."""
    known = modules()
    edges = graph()
    offenders = {short(m) for layer in RUN_LAYER for m in reachable(f"{PACKAGE}.{layer}", edges)
                 if imports_pytest(known[m])}
    assert not offenders, (f"{sorted(offenders)} import pytest but the run layer imports them: "
                           "raise errors.NotApplicable / CannotRun and let session.py turn "
                           "them into pytest outcomes")


def test_the_run_layer_imports_without_pytest() -> None:
    code = ("import sys\n"
            "sys.modules['pytest'] = sys.modules['_pytest'] = None  # any import of it fails\n"
            + "".join(f"import {PACKAGE}.{layer}\n" for layer in RUN_LAYER))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------- the checker checks what it says


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from .b import thing\n",
        "b.py": "def f():\n    from .a import _hidden\n",  # lazy: still a cycle
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n",
        "sub/__init__.py": "from .. import c\n",
        "sub/d.py": "from ..c import _own\nfrom . import e as ee\nee._peek()\n",
        "sub/e.py": "import pytest_unsafebench.sub.d\n",
        "sub/f.py": "def g():\n    import _pytest.outcomes\n",
    }
    for rel, text in files.items():
        (root / rel).write_text(text)
    monkeypatch.setitem(ROOTS, PACKAGE, root)
    for other in [k for k in ROOTS if k != PACKAGE]:
        monkeypatch.delitem(ROOTS, other)
    return root


def test_checker_finds_cycles_and_private_names(fake_package: Path) -> None:
    assert cycle_edges() == {("a", "b"), ("b", "a"), ("sub.d", "sub.e"), ("sub.e", "sub.d")}
    assert private_imports() == {("b", "a", "_hidden"), ("sub.d", "c", "_own"),
                                 ("sub.d", "sub.e", "_peek")}
    # TYPE_CHECKING imports and a package importing its parent's module are no cycle.
    assert ("c", "a") not in cycle_edges()
    assert imports_pytest(fake_package / "sub" / "f.py")
    assert not imports_pytest(fake_package / "c.py")

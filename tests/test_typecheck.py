"""scripts/typecheck.py maps each installed package to its source folder as setuptools does, so
that mypy checks every module under the name it is imported by."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


def _typecheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("typecheck", REPO / "scripts" / "typecheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_packages_map_to_their_source_folders() -> None:
    dirs = _typecheck().source_dirs()
    assert dirs["pytest_unsafebench"] == Path("pytest_unsafebench")
    assert dirs["pytest_unsafebench.classifiers"] == Path("classifiers")
    assert dirs["pytest_unsafebench.classifiers.vlm"] == Path("classifiers/vlm")
    assert dirs["pytest_unsafebench.suites"] == Path("suites")
    for package, source in dirs.items():
        assert (REPO / source / "__init__.py").is_file(), package


def test_every_package_folder_is_checked() -> None:
    listed = {(REPO / source).resolve() for source in _typecheck().source_dirs().values()}
    roots = [REPO / "pytest_unsafebench", REPO / "classifiers", REPO / "suites"]
    found = {init.parent.resolve() for root in roots for init in root.rglob("__init__.py")}
    assert found <= listed, f"not in [tool.setuptools] packages: {sorted(found - listed)}"

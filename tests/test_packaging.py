"""The built wheel: what it contains and how pytest finds the plugin in it.

The source tree is copied to a temporary folder and built there (no build isolation, so no
network), so neither build/ nor *.egg-info is ever written into the repository.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                              ".pytest_cache", ".hypothesis", "*.pyc", ".whl", ".gl",
                              ".mypy_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    shutil.copytree(REPO, src, ignore=SKIP, symlinks=True)
    out = work / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out),
         str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_wheel_name(wheel: Path) -> None:
    assert wheel.name.startswith("pytest_unsafebench-0.1.0-")
    assert wheel.name.endswith("-py3-none-any.whl")


@pytest.mark.parametrize("path", [
    "pytest_unsafebench/__init__.py",
    "pytest_unsafebench/plugin.py",
    "pytest_unsafebench/session.py",
    "pytest_unsafebench/dataset/__init__.py",
    "pytest_unsafebench/dataset/folder.py",
    "pytest_unsafebench/classifiers/__init__.py",
    "pytest_unsafebench/classifiers/demo.py",
    "pytest_unsafebench/suites/__init__.py",
    "pytest_unsafebench/suites/test_effectiveness.py",
    "pytest_unsafebench/suites/test_data_integrity.py",
    "pytest_unsafebench/py.typed",  # PEP 561 marker: users' type checkers read our hints
    "pytest_unsafebench/report/report.schema.json",  # the report's JSON Schema
])
def test_wheel_contains(names: list[str], path: str) -> None:
    assert path in names


def test_wheel_has_no_generic_top_level_names(names: list[str]) -> None:
    tops = {n.split("/", 1)[0] for n in names}
    for generic in ("classifiers", "suites", "tests", "conftest.py", "benchmarks", "scripts"):
        assert generic not in tops
    assert {t for t in tops if not t.endswith(".dist-info")} == {"pytest_unsafebench"}
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_wheel_registers_the_pytest11_entry_point(wheel: Path, names: list[str]) -> None:
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(entry_points).decode()
    parser = configparser.ConfigParser()
    parser.read_string(text)
    assert parser.has_section("pytest11"), text
    assert dict(parser.items("pytest11")) == {"unsafebench": "pytest_unsafebench.plugin"}


def test_wheel_packages_import_from_the_wheel(wheel: Path, tmp_path: Path) -> None:
    """The remapped packages (classifiers/ -> pytest_unsafebench.classifiers) really import."""
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import pytest_unsafebench, pytest_unsafebench.plugin, pytest_unsafebench.suites\n"
        "import pytest_unsafebench.classifiers.demo as demo\n"
        "from pytest_unsafebench.registry import resolve_factory\n"
        "assert resolve_factory('demo') is demo.load\n"
        "for m in (pytest_unsafebench, pytest_unsafebench.suites, demo): print(m.__file__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    files = [Path(line) for line in proc.stdout.split()]
    assert len(files) == 3
    assert all(f.is_relative_to(target) for f in files), files

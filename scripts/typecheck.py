"""Type-check the package with mypy, laid out as it installs.

``[tool.setuptools.package-dir]`` installs ``classifiers/`` and ``suites/`` inside
``pytest_unsafebench``, and mypy can follow neither that mapping nor setuptools' editable
finder. So this builds the installed layout as a tree of links to the sources in
``build/typecheck/`` (rebuilt on every run: modules come and go), runs mypy on it (options:
``[tool.mypy]`` in pyproject.toml) and prints mypy's findings with the sources' own paths.

    .venv/bin/python scripts/typecheck.py          # extra arguments go to mypy
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TREE = Path("build") / "typecheck"  # relative, as mypy prints it


def source_dirs() -> dict[str, Path]:
    """Each installed package -> its source folder, as setuptools maps it (the longest
    ``package-dir`` prefix wins)."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools["package-dir"]
    dirs: dict[str, Path] = {}
    for package in setuptools["packages"]:
        base = max((k for k in mapping if package == k or package.startswith(k + ".")), key=len)
        rest = package[len(base):].lstrip(".").split(".") if package != base else []
        dirs[package] = Path(mapping[base], *rest)
    return dirs


def build_tree(dirs: dict[str, Path]) -> None:
    shutil.rmtree(REPO / TREE, ignore_errors=True)
    for package, source in dirs.items():
        target = REPO / TREE / package.replace(".", "/")
        target.mkdir(parents=True)
        for path in sorted((REPO / source).iterdir()):
            if path.suffix in (".py", ".pyi") or path.name == "py.typed":
                (target / path.name).symlink_to(path)


def main(argv: list[str]) -> int:
    dirs = source_dirs()
    build_tree(dirs)
    top = min(dirs, key=len)
    done = subprocess.run([sys.executable, "-m", "mypy", *argv, str(TREE / top)], cwd=REPO,
                          capture_output=True, text=True)
    # The tree's paths back to the sources', the deepest package first.
    prefixes = sorted(((f"{TREE / package.replace('.', '/')}/", f"{source}/")
                       for package, source in dirs.items()), key=lambda p: -len(p[0]))
    for line in done.stdout.splitlines():
        for tree_path, source_path in prefixes:
            if line.startswith(tree_path):
                line = source_path + line[len(tree_path):]
                break
        print(line)
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

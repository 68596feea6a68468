"""The README's recipes as a new user runs them (issue 14): a ``module:callable`` classifier
beside the test run, one "wrote" line per written file, a marker or -k that names a suite the
run did not enable, and the small things a first run shows.

Each run uses the toy classifier and 48-image dataset of plugin_helpers.py (about a second).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# Imported before any in-process pytester run (see test_plugin.py): C extensions load once.
import numpy  # noqa: F401
import pytest
from sklearn.metrics import f1_score  # noqa: F401

import pytest_unsafebench.session  # noqa: F401
from plugin_helpers import CLASSIFIER, build_dataset, toyclf_source, write_toyclf

USAGE = pytest.ExitCode.USAGE_ERROR
NO_TESTS = pytest.ExitCode.NO_TESTS_COLLECTED


def common_args(path: Path, *extra: str, classifier: str = CLASSIFIER) -> list[str]:
    args = [f"--unsafebench-classifier={classifier}", f"--unsafebench-dataset={path / 'ds'}",
            f"--unsafebench-cache-dir={path / 'cache'}", "--unsafebench-device=cpu",
            "-p", "no:randomly"]
    return [*args, *extra]


@pytest.fixture
def folder(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester folder with the toy dataset; toyclf.py importable (as test_plugin does)."""
    build_dataset(pytester.path / "ds")
    write_toyclf(pytester.path)
    pytester.syspathinsert()
    return pytester


# ---------------------------------------------------------------------------- module:callable


def test_module_callable_in_the_current_folder_is_found(pytester: pytest.Pytester) -> None:
    # The README's recipe: myclf.py in the folder pytest runs in, nothing on sys.path for it.
    build_dataset(pytester.path / "ds")
    (pytester.path / "myclf.py").write_text(toyclf_source())
    result = pytester.runpytest(*common_args(pytester.path, "--unsafebench-suites=effectiveness",
                                             classifier="myclf:load"))
    out = result.stdout.str()
    assert "No module named" not in out
    assert result.ret == pytest.ExitCode.OK, out
    result.assert_outcomes(passed=22, skipped=48)  # 3 covered x 3 sources x 2 tests, 3 x 1 gated + integrity


def test_module_callable_at_the_rootdir_is_found_from_a_subfolder(
        pytester: pytest.Pytester) -> None:
    build_dataset(pytester.path / "ds")
    (pytester.path / "myclf.py").write_text(toyclf_source())
    (pytester.path / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    sub = pytester.mkdir("sub")
    os.chdir(sub)  # pytester restores the working folder afterwards
    result = pytester.runpytest(*common_args(pytester.path, "--unsafebench-suites=effectiveness",
                                             classifier="myclf:load"))
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()


def test_missing_user_module_names_the_search_path_not_an_extra(
        pytester: pytest.Pytester) -> None:
    build_dataset(pytester.path / "ds")
    result = pytester.runpytest(*common_args(pytester.path, "--unsafebench-suites=effectiveness",
                                             classifier="nosuchclf_mod:load"))
    out = result.stdout.str()
    assert "no module 'nosuchclf_mod' on the module search path" in out
    assert str(pytester.path) in out  # the folder it looked in
    assert "pytest-unsafebench[torch]" not in out
    assert result.ret != pytest.ExitCode.OK

"""Classifier faults are contained (issue 13, item 6): a classifier that hangs, raises
SystemExit or a KeyboardInterrupt of its own, or has no usable fingerprint errors its own tests
with the reason; the other classifiers are scored and the report is written. A real Ctrl-C
still stops the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# Imported before any in-process pytester run (see test_plugin.py): C extensions load once.
import numpy  # noqa: F401
import pytest
from PIL import Image  # noqa: F401
from sklearn.metrics import f1_score  # noqa: F401

import pytest_unsafebench.cache
import pytest_unsafebench.engine
import pytest_unsafebench.session  # noqa: F401

from plugin_helpers import CLASSIFIER, build_dataset, read_json, write_toyclf

FAULTY = '''
import os, signal, time
from pytest_unsafebench import Coverage, Prediction


class Leave(BaseException):
    """Not an Exception: what ``except Exception`` lets through."""


class Faulty:
    name = "faulty"
    coverage = Coverage.of(["Hate", "Violence", "Sexual"])
    supports_gradients = False

    def __init__(self, mode, fingerprint="faulty-v1"):
        self.mode = mode
        self.fingerprint = fingerprint

    def predict(self, images):
        if self.mode == "exit":
            raise SystemExit(0)
        if self.mode == "kbd":
            raise KeyboardInterrupt("raised by the model, not by the user")
        if self.mode == "base":
            raise Leave("a BaseException subclass")
        if self.mode == "hang":
            time.sleep(600)
        if self.mode == "ctrl-c":  # what the user's Ctrl-C does: SIGINT to the process
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        return [Prediction.from_score(0.5) for _ in images]


def load(mode="ok", fingerprint="faulty-v1"):
    return Faulty(mode, fingerprint)


def load_exit():
    raise SystemExit("the factory called sys.exit")
'''


@pytest.fixture
def folder(pytester: pytest.Pytester) -> Path:
    build_dataset(pytester.path / "ds")
    write_toyclf(pytester.path)
    (pytester.path / "faultyclf.py").write_text(FAULTY)
    pytester.syspathinsert()
    return pytester.path


def _args(folder: Path, faulty: str, *extra: str) -> list[str]:
    return [f"--unsafebench-classifier={faulty},{CLASSIFIER}",
            f"--unsafebench-dataset={folder / 'ds'}", f"--unsafebench-cache-dir={folder / 'cache'}",
            "--unsafebench-device=cpu", "--unsafebench-suites=effectiveness", "-p", "no:randomly",
            f"--unsafebench-json={folder / 'out.json'}", "--tb=line", *extra]


def _pyproject(folder: Path, mode: str, fingerprint: str | None = "faulty-v1",
               extra: str = "") -> None:
    fp = "" if fingerprint is None else f'\nfingerprint = "{fingerprint}"'
    (folder / "pyproject.toml").write_text(
        f'[tool.unsafebench]\n{extra}\n[tool.unsafebench.classifiers."faultyclf:load"]\n'
        f'mode = "{mode}"{fp}\n')


def _contained(result: pytest.RunResult, folder: Path, problem: str) -> None:
    """The faulty classifier errored its own tests with ``problem``; the toy was scored."""
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    assert "INTERNALERROR" not in out
    doc = read_json(folder / "out.json")
    error = doc["classifiers"]["faultyclf:load"]["error"]
    assert error is not None and problem in error, error
    assert doc["classifiers"][CLASSIFIER]["error"] is None
    assert doc["summary"][CLASSIFIER]["passed"] > 0
    assert doc["summary"]["faultyclf:load"]["error"] > 0
    assert doc["summary"]["faultyclf:load"]["passed"] == 0


@pytest.mark.parametrize(("mode", "problem"), [
    ("exit", "SystemExit: 0 (raised by the classifier)"),
    ("kbd", "KeyboardInterrupt: raised by the model, not by the user (raised by the classifier)"),
    ("base", "Leave: a BaseException subclass (raised by the classifier)"),
])
def test_base_exceptions_from_predict_error_that_classifier(
        pytester: pytest.Pytester, folder: Path, mode: str, problem: str) -> None:
    _pyproject(folder, mode)
    _contained(pytester.runpytest(*_args(folder, "faultyclf:load")), folder, problem)


def test_system_exit_from_the_factory_errors_that_classifier(
        pytester: pytest.Pytester, folder: Path) -> None:
    result = pytester.runpytest(*_args(folder, "faultyclf:load_exit"))
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    doc = read_json(folder / "out.json")
    assert "the factory called sys.exit" in doc["classifiers"]["faultyclf:load_exit"]["error"]
    assert doc["summary"][CLASSIFIER]["passed"] > 0


@pytest.mark.parametrize(("fingerprint", "shown"), [(None, "None"), (42, "42"), ("", "''")],
                         ids=["none", "int", "empty"])
def test_fingerprint_not_a_string_errors_that_classifier(
        pytester: pytest.Pytester, folder: Path, fingerprint: object, shown: str) -> None:
    # The value goes through a factory option, so TOML can say 42; None is the default below.
    (folder / "faultyclf.py").write_text(FAULTY.replace(
        'def load(mode="ok", fingerprint="faulty-v1"):',
        f'def load(mode="ok", fingerprint={fingerprint!r}):'))
    _pyproject(folder, "ok", fingerprint=None)
    _contained(pytester.runpytest(*_args(folder, "faultyclf:load")), folder,
               f"TypeError: fingerprint is {shown}: it must be a non-empty string")


@pytest.mark.parametrize("where", ["cli", "pyproject"])
def test_a_hanging_classifier_times_out_and_the_run_goes_on(
        pytester: pytest.Pytester, folder: Path, where: str) -> None:
    _pyproject(folder, "hang", extra="timeout = 0.5" if where == "pyproject" else "")
    extra = ["--unsafebench-timeout=0.5"] if where == "cli" else []
    started = time.monotonic()
    result = pytester.runpytest(*_args(folder, "faultyclf:load", *extra))
    assert time.monotonic() - started < 60
    _contained(result, folder, "no answer within the 0.5 s timeout per batch")
    assert read_json(folder / "out.json")["config"]["timeout"] == 0.5


@pytest.mark.parametrize(("value", "message"), [
    ('"soon"', "tool.unsafebench.timeout: expected a number in (0.0, inf), got 'soon'"),
    ("0", "tool.unsafebench.timeout: expected a number in (0.0, inf), got 0"),
    ("-1.5", "tool.unsafebench.timeout: expected a number in (0.0, inf), got -1.5"),
])
def test_bad_timeout_is_a_usage_error(pytester: pytest.Pytester, folder: Path, value: str,
                                      message: str) -> None:
    _pyproject(folder, "ok", extra=f"timeout = {value}")
    result = pytester.runpytest(*_args(folder, "faultyclf:load"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def _subprocess_env(folder: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder),
                                                         os.environ.get("PYTHONPATH", "")])}


def test_under_pytest_timeout_a_hang_still_gives_the_report(folder: Path) -> None:
    pytest.importorskip("pytest_timeout")
    _pyproject(folder, "hang")
    # pytest-timeout loads by its entry point; its per-test timer does not cover the pass,
    # which runs before the first test: --unsafebench-timeout does.
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=60",
           *_args(folder, "faultyclf:load", "--unsafebench-timeout=1")]
    proc = subprocess.run(cmd, cwd=folder, env=_subprocess_env(folder), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, proc.stdout + proc.stderr
    doc = read_json(folder / "out.json")
    assert "no answer within the 1 s timeout" in doc["classifiers"]["faultyclf:load"]["error"]
    assert doc["summary"][CLASSIFIER]["passed"] > 0


def test_a_real_ctrl_c_still_interrupts_the_run(folder: Path) -> None:
    _pyproject(folder, "ctrl-c")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           *_args(folder, "faultyclf:load")]
    proc = subprocess.run(cmd, cwd=folder, env=_subprocess_env(folder), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, proc.stdout + proc.stderr
    assert "KeyboardInterrupt" in proc.stdout + proc.stderr
    assert not (folder / "out.json").exists()

"""Classifier faults are contained: a classifier that hangs, raises
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
import torch  # noqa: F401 - the faulty classifier's forward_pixels uses it in-process
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
        self.supports_gradients = mode in ("hang-pixels", "escapes-pixels", "escapes-input")

    def predict(self, images):
        if self.mode == "exit":
            raise SystemExit(0)
        if self.mode == "kbd":
            raise KeyboardInterrupt("raised by the model, not by the user")
        if self.mode == "base":
            raise Leave("a BaseException subclass")
        if self.mode == "hang":
            time.sleep(600)
        if self.mode == "kbd-single" and len(images) == 1:  # the fuzz suite's calls only
            raise KeyboardInterrupt("raised by the model, not by the user")
        if self.mode == "hang-single" and len(images) == 1:
            time.sleep(600)
        if self.mode == "escapes" or (self.mode == "escapes-single" and len(images) == 1):
            raise RuntimeError("\x1b]0;pwned\x07")  # it would retitle the terminal
        if self.mode == "ctrl-c":  # what the user's Ctrl-C does: SIGINT to the process
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        return [Prediction.from_score(0.5) for _ in images]

    @property
    def attack_input(self):  # its own preprocessing for attacks, in one mode only
        if self.mode != "escapes-input":
            return None

        def preprocess(image):
            raise RuntimeError("\x1b]0;pwned\x07")
        return preprocess

    def forward_pixels(self, x):  # what gradient attacks call
        import torch

        if self.mode == "hang-pixels":
            time.sleep(600)
        if self.mode == "escapes-pixels":
            raise RuntimeError("\x1b]0;pwned\x07")
        return torch.stack([x.mean(dim=(1, 2, 3)), -x.mean(dim=(1, 2, 3))], dim=1)


def load(mode="ok", fingerprint="faulty-v1"):
    return Faulty(mode, fingerprint)


def load_exit():
    raise SystemExit("the factory called sys.exit")


def load_slow():  # a model load that never ends; each call leaves a line in slow-loads.txt
    with open("slow-loads.txt", "a") as calls:
        calls.write("called\\n")
    time.sleep(600)
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


def test_a_factory_that_does_not_return_in_time_errors_that_classifier(
        pytester: pytest.Pytester, folder: Path) -> None:
    started = time.monotonic()
    result = pytester.runpytest(*_args(folder, "faultyclf:load_slow", "--unsafebench-timeout=1"))
    out = result.stdout.str()
    assert time.monotonic() - started < 60
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    assert "INTERNALERROR" not in out
    problem = "no answer within the 1 s timeout while loading (timeout / --unsafebench-timeout)"
    assert (f"classifier 'faultyclf:load_slow' failed, so its tests cannot run: {problem}"
            in out)
    doc = read_json(folder / "out.json")
    assert doc["classifiers"]["faultyclf:load_slow"]["error"] == problem
    assert doc["summary"]["faultyclf:load_slow"]["passed"] == 0
    assert doc["classifiers"][CLASSIFIER]["error"] is None
    assert doc["summary"][CLASSIFIER]["passed"] > 0
    # Loaded once: a load that timed out is not retried (it would wait the timeout again).
    assert (folder / "slow-loads.txt").read_text() == "called\n"


def test_a_factory_that_does_not_return_in_time_on_a_ray_worker_is_that_classifiers_error(
        folder: Path) -> None:
    from pytest_unsafebench.ray_executor import ClassifierSpec, _Predictor

    actor = _Predictor([ClassifierSpec("faultyclf:load_slow", {}, "faulty-v1")], "clean", None,
                       0, "cpu", 0.0, timeout=0.5)
    assert actor.errors == {"faulty-v1": "no answer within the 0.5 s timeout while loading "
                                         "(timeout / --unsafebench-timeout)"}


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


ATTACK_ONLY = ('[tool.unsafebench.robustness]\nattacks = ["fgsm"]\nevasions = []\n'
               'corruptions = []\npool_size = 4\nseeds = [1]\n')


@pytest.mark.timeout(200, method="thread")
def test_a_hanging_gradient_attack_times_out_and_the_run_goes_on(folder: Path) -> None:
    # forward_pixels is the classifier's code too: each call on a batch gets the timeout.
    _pyproject(folder, "hang-pixels", extra=f"timeout = 0.5\n{ATTACK_ONLY}")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE",
           *_args(folder, "faultyclf:load", "--unsafebench-suites=robustness")]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=folder, env=_subprocess_env(folder), capture_output=True,
                          text=True, timeout=150)
    out = proc.stdout + proc.stderr
    assert time.monotonic() - started < 120
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, out
    assert "INTERNALERROR" not in out
    assert ("faultyclf:load failed under the fgsm attack: no answer within the 0.5 s timeout"
            in out)
    doc = read_json(folder / "out.json")
    fgsm = [r for r in doc["rows"] if r.get("condition") == "fgsm"
            and r["classifier"] == "faultyclf:load"]
    assert fgsm and all(r["outcome"] in ("error", "failed") for r in fgsm), fgsm


class _Rows:
    """Just enough of a Ray dataset for RayExecutor.warm: the actor runs in this process."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def map_batches(self, actor_class: type, *, batch_size: int, fn_constructor_kwargs: dict,
                    **_ray: object) -> _Rows:
        actor = actor_class(**fn_constructor_kwargs)
        out = []
        for i in range(0, len(self.rows), batch_size):
            work = [row["work"] for row in self.rows[i:i + batch_size]]
            out += [{"result": r} for r in actor({"work": work})["result"]]
        return _Rows(out)

    def iter_rows(self) -> list[dict]:
        return self.rows


def test_a_hanging_classifier_times_out_on_the_ray_executor_too(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import warnings
    from types import SimpleNamespace

    from pytest_unsafebench.cache import PredictionCache
    from pytest_unsafebench.config import resolve_settings
    from pytest_unsafebench.dataset.folder import load_folder
    from pytest_unsafebench.ray_executor import ClassifierSpec, RayExecutor
    from pytest_unsafebench.registry import load_classifier

    fake_ray = SimpleNamespace(data=SimpleNamespace(
        from_items=lambda rows, **_: _Rows(rows), ActorPoolStrategy=lambda size: None))
    monkeypatch.setattr(RayExecutor, "_connect", lambda self: fake_ray)
    settings = resolve_settings({"classifiers": ["faultyclf:load"], "executor": "ray"},
                                {"timeout": 0.5}, folder)
    spec = ClassifierSpec("faultyclf:load", {"mode": "hang"}, "faulty-v1")
    executor = RayExecutor(settings, lambda clf: spec)
    records = load_folder(folder / "ds").records
    loaders = {"faultyclf:load": lambda: load_classifier("faultyclf:load", mode="hang")}

    def warm() -> None:  # SQLite connections stay in the thread that opened them
        executor.warm(records, loaders, PredictionCache(folder / "cache.sqlite"),
                      condition="clean", batch_size=8, max_pixels=None, transform=None)

    worker = threading.Thread(target=warm, daemon=True)
    with warnings.catch_warnings(record=True) as caught:  # the warning comes from the thread
        warnings.simplefilter("always")
        worker.start()
        worker.join(60)  # the hang is 600 s: without the timeout on the workers, still running
    assert not worker.is_alive(), "the remote pass did not apply --unsafebench-timeout"
    messages = [str(w.message) for w in caught]
    assert any("failed on a worker (no answer within the 0.5 s timeout per batch" in m
               for m in messages), messages


def _warm_on_fake_ray(folder: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """RayExecutor.warm with the actor in this process; the warnings it gave."""
    import warnings
    from types import SimpleNamespace

    from pytest_unsafebench.cache import PredictionCache
    from pytest_unsafebench.config import resolve_settings
    from pytest_unsafebench.dataset.folder import load_folder
    from pytest_unsafebench.ray_executor import ClassifierSpec, RayExecutor
    from pytest_unsafebench.registry import load_classifier

    fake_ray = SimpleNamespace(data=SimpleNamespace(
        from_items=lambda rows, **_: _Rows(rows), ActorPoolStrategy=lambda size: None))
    monkeypatch.setattr(RayExecutor, "_connect", lambda self: fake_ray)
    settings = resolve_settings({"classifiers": ["faultyclf:load"], "executor": "ray"}, {},
                                folder)
    executor = RayExecutor(settings, lambda clf: ClassifierSpec("faultyclf:load",
                                                                {"mode": mode}, "faulty-v1"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        executor.warm(load_folder(folder / "ds").records,
                      {"faultyclf:load": lambda: load_classifier("faultyclf:load", mode=mode)},
                      PredictionCache(folder / "cache.sqlite"), condition="clean",
                      batch_size=8, max_pixels=None, transform=None)
    return [str(w.message) for w in caught]


def test_a_classifier_error_on_a_ray_worker_is_escaped_in_its_warning(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    messages = _warm_on_fake_ray(folder, "escapes", monkeypatch)
    assert any("failed on a worker (RuntimeError: \\x1b]0;pwned\\x07)" in m
               for m in messages), messages
    assert not any("\x1b" in m or "\x07" in m for m in messages)


def test_system_exit_from_a_factory_on_a_ray_worker_is_that_classifiers_error(
        folder: Path) -> None:
    from pytest_unsafebench.ray_executor import ClassifierSpec, _Predictor

    actor = _Predictor([ClassifierSpec("faultyclf:load_exit", {}, "faulty-v1")], "clean", None,
                       0, "cpu", 0.0)
    assert actor.errors == {"faulty-v1": "SystemExit: the factory called sys.exit (raised by "
                                         "the classifier)"}


@pytest.mark.parametrize(("mode", "extra", "problem"), [
    ("kbd-single", "", "KeyboardInterrupt: raised by the model, not by the user (raised by "
                       "the classifier)"),
    ("hang-single", "timeout = 0.5", "no answer within the 0.5 s timeout per batch"),
])
@pytest.mark.timeout(200, method="thread")
def test_classifier_faults_in_the_fuzz_search_fail_that_test_only(
        pytester: pytest.Pytester, folder: Path, mode: str, extra: str, problem: str) -> None:
    _pyproject(folder, mode, extra=extra)
    started = time.monotonic()
    result = pytester.runpytest(*_args(folder, "faultyclf:load", "--unsafebench-suites=fuzz",
                                       "--hypothesis-profile=ci", "-rf"))
    assert time.monotonic() - started < 120
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    result.stdout.fnmatch_lines([
        # [[] and []] are fnmatch's literal brackets; * takes the message, which CI=true
        # prints whole where a terminal run truncates it
        f"FAILED test_fuzz.py::test_decision_stable_under_perturbation[[]faultyclf:load-{s}[]]*"
        for s in ("Laion5B", "Lexica")])
    assert out.count(f"faultyclf:load failed during the fuzz search: {problem}") >= 2, out
    assert "During handling" not in out and "Flaky" not in out
    doc = read_json(folder / "out.json")
    fuzz = [r for r in doc["rows"] if r.get("suite") == "fuzz" and r["metric"] == "examples"]
    assert {r["classifier"] for r in fuzz} == {CLASSIFIER}  # the other classifier was fuzzed


@pytest.mark.parametrize(("mode", "suite", "line"), [
    ("escapes-pixels", "robustness", "faultyclf:load failed under the fgsm attack: RuntimeError: "
                                     "\\x1b]0;pwned\\x07"),
    ("escapes-input", "robustness", "faultyclf:load failed under the fgsm attack: RuntimeError: "
                                    "\\x1b]0;pwned\\x07"),
    ("escapes-single", "fuzz", "faultyclf:load failed during the fuzz search: RuntimeError: "
                               "\\x1b]0;pwned\\x07"),
])
def test_classifier_errors_in_robustness_and_fuzz_tests_are_one_escaped_line(
        pytester: pytest.Pytester, folder: Path, mode: str, suite: str, line: str) -> None:
    _pyproject(folder, mode, extra=ATTACK_ONLY)
    result = pytester.runpytest(*_args(folder, "faultyclf:load", f"--unsafebench-suites={suite}",
                                       "--hypothesis-profile=ci", "--color=no"))
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    assert "\x1b" not in out and "\x07" not in out
    assert out.count(line) >= 2, out  # one per failing test (each source)
    assert "Traceback" not in out and "During handling" not in out


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


def _hang_in_a_test(folder: Path, method: str) -> subprocess.CompletedProcess[str]:
    """A run whose attack hangs inside a robustness test, under pytest-timeout's ``method``
    and no --unsafebench-timeout: pytest-timeout's per-test timer is what stops it."""
    pytest.importorskip("pytest_timeout")
    _pyproject(folder, "hang-pixels", extra=ATTACK_ONLY)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=5",
           f"--timeout-method={method}",
           *_args(folder, "faultyclf:load", "--unsafebench-suites=robustness")]
    return subprocess.run(cmd, cwd=folder, env=_subprocess_env(folder), capture_output=True,
                          text=True, timeout=150)


NOTE = "unsafebench: pytest-timeout's thread method ends the run at a test's timeout"


@pytest.mark.timeout(200, method="thread")
def test_under_pytest_timeout_signal_a_hanging_test_fails_alone_and_the_report_is_written(
        folder: Path) -> None:
    proc = _hang_in_a_test(folder, "signal")
    out = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, out
    assert "Timeout" in out and NOTE not in out
    doc = read_json(folder / "out.json")
    fgsm = [r for r in doc["rows"] if r.get("condition") == "fgsm"
            and r["classifier"] == "faultyclf:load"]
    assert fgsm and all(r["outcome"] in ("error", "failed") for r in fgsm), fgsm
    assert doc["summary"][CLASSIFIER]["passed"] > 0


@pytest.mark.timeout(200, method="thread")
def test_under_pytest_timeout_thread_the_run_says_up_front_it_will_lose_the_report(
        folder: Path) -> None:
    proc = _hang_in_a_test(folder, "thread")
    out = proc.stdout + proc.stderr
    assert NOTE in proc.stdout.splitlines()[0], out  # before anything can time out
    assert 'set timeout_method = "signal"' in proc.stdout
    assert "Timeout" in out and not (folder / "out.json").exists()  # what it warned of


def test_a_real_ctrl_c_still_interrupts_the_run(folder: Path) -> None:
    _pyproject(folder, "ctrl-c")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           *_args(folder, "faultyclf:load")]
    proc = subprocess.run(cmd, cwd=folder, env=_subprocess_env(folder), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, proc.stdout + proc.stderr
    assert "KeyboardInterrupt" in proc.stdout + proc.stderr
    assert not (folder / "out.json").exists()

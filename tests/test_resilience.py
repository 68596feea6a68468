"""A run killed with SIGKILL mid-inference resumes from the cache: nothing already predicted
is predicted again, and the final report equals an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plugin_helpers import build_dataset, read_json, read_jsonl

SLOWCLF = '''
import os, time
from pytest_unsafebench import Coverage, Prediction

class Slow:
    name = "slow"
    fingerprint = "slow-v1"
    coverage = Coverage.of(["Hate", "Violence", "Sexual"])
    supports_gradients = False

    def predict(self, images):
        out = []
        for img in images:
            time.sleep(0.1)  # slow enough to be killed mid-pass
            red = img.getchannel("R").histogram()
            mean = sum(i * n for i, n in enumerate(red)) / (img.width * img.height) / 255.0
            out.append(Prediction.from_score(mean))
        with open(os.environ["SLOW_COUNTER"], "a") as fh:  # one line per predicted batch image
            fh.write("x\\n" * len(images))
        return out

def load():
    return Slow()
'''


def _run(folder: Path, cache: Path, report: Path, counter: Path) -> subprocess.Popen:
    env = {**os.environ, "SLOW_COUNTER": str(counter),
           "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "--unsafebench-classifier=slowclf:load", f"--unsafebench-dataset={folder / 'data'}",
           f"--unsafebench-cache-dir={cache}", "--unsafebench-batch-size=4",
           "--unsafebench-device=cpu", f"--unsafebench-json={report}",
           f"--unsafebench-predictions={report.with_suffix('.jsonl')}"]
    return subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
def test_sigkill_mid_inference_then_resume(tmp_path: Path) -> None:
    (tmp_path / "slowclf.py").write_text(SLOWCLF)
    images = len(build_dataset(tmp_path / "data"))

    # Reference: one uninterrupted run in its own cache.
    assert _run(tmp_path, tmp_path / "ref-cache", tmp_path / "ref.json",
                tmp_path / "ref-count").wait(timeout=300) == 0
    assert _lines(tmp_path / "ref-count") == images

    # Killed once a few batches are in the cache, then rerun with the same options.
    counter = tmp_path / "count"
    proc = _run(tmp_path, tmp_path / "cache", tmp_path / "killed.json", counter)
    deadline = time.monotonic() + 120
    while _lines(counter) < 12 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = _lines(counter)
    assert 12 <= before < images, "the run must be killed in the middle of inference"
    assert not (tmp_path / "killed.json").exists()

    assert _run(tmp_path, tmp_path / "cache", tmp_path / "resumed.json", counter).wait(
        timeout=300) == 0
    resumed, ref = read_json(tmp_path / "resumed.json"), read_json(tmp_path / "ref.json")
    # Every prediction written before the kill is reused; at most the batch in flight is redone.
    redone = _lines(counter) - images
    assert 0 <= redone <= 4
    assert resumed["cache"]["hits"] >= before - 4
    assert resumed["cache"]["hits"] + resumed["cache"]["misses"] == images
    for key in ("rows", "summary", "dataset", "thresholds", "config"):
        assert resumed[key] == ref[key], key
    # Per-image scores too, not only the aggregates: a cache that served another image's or a
    # truncated score would keep most F1 rows equal. Mutation caught: a resumed pass that
    # stores a batch's scores under shifted ids (or rounds them) changes these exports.
    exported = read_jsonl(tmp_path / "resumed.jsonl")
    assert len(exported) == images
    assert exported == read_jsonl(tmp_path / "ref.jsonl")
    assert len({p["score"] for p in exported}) > 1  # real, varied scores were compared


def test_two_runs_at_once_share_one_cache(tmp_path: Path) -> None:
    """Two runs started together on one cache dir both finish with the same report, and the
    cache then holds exactly one prediction per image."""
    import sqlite3

    (tmp_path / "slowclf.py").write_text(SLOWCLF.replace("time.sleep(0.1)", "time.sleep(0.01)"))
    images = len(build_dataset(tmp_path / "data"))
    cache = tmp_path / "cache"
    runs = [_run(tmp_path, cache, tmp_path / f"r{i}.json", tmp_path / f"c{i}") for i in (0, 1)]
    assert [p.wait(timeout=300) for p in runs] == [0, 0]
    first, second = read_json(tmp_path / "r0.json"), read_json(tmp_path / "r1.json")
    assert first["rows"] == second["rows"]
    with sqlite3.connect(cache / "predictions.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == images


def test_corrupted_cache_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    (tmp_path / "slowclf.py").write_text(SLOWCLF.replace("time.sleep(0.1)", "time.sleep(0)"))
    images = len(build_dataset(tmp_path / "data"))
    cache = tmp_path / "cache"
    assert _run(tmp_path, cache, tmp_path / "a.json", tmp_path / "c").wait(timeout=300) == 0
    db = cache / "predictions.sqlite"
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    db.write_bytes(db.read_bytes()[:1000])  # truncated mid-page
    assert _run(tmp_path, cache, tmp_path / "b.json", tmp_path / "c").wait(timeout=300) == 0
    a, b = read_json(tmp_path / "a.json"), read_json(tmp_path / "b.json")
    assert a["rows"] == b["rows"]
    assert b["cache"] == {"hits": 0, "misses": images}  # rebuilt, never trusted
    assert list(cache.glob("predictions.sqlite.corrupt-*"))

"""Broken caches and outputs are usage errors or warnings, never INTERNALERROR: a
cache folder that is a file, a read-only cache, a report path that is the cache,
an unwritable report path; and cached rows are checked like fresh predictions."""

from __future__ import annotations

import os
import sqlite3
import warnings
from pathlib import Path

# Imported before any in-process pytester run (see test_plugin.py): C extensions load once.
import numpy as np
import pytest
from PIL import Image  # noqa: F401
from sklearn.metrics import f1_score  # noqa: F401

import pytest_unsafebench.cache
import pytest_unsafebench.engine
import pytest_unsafebench.session
from plugin_helpers import CLASSIFIER, build_dataset, read_json, write_toyclf
from pytest_unsafebench.cache import PredictionCache
from pytest_unsafebench.classifier import Prediction
from pytest_unsafebench.cli import main as cli_main

USAGE = pytest.ExitCode.USAGE_ERROR


class Bench:
    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.path = pytester.path
        self.cache = self.path / "cache"
        self.counter = self.path / "counter.txt"
        self.images = len(build_dataset(self.path / "ds"))
        write_toyclf(self.path, counter=self.counter)
        pytester.syspathinsert()

    def run(self, *extra: str, cache: Path | None = None) -> pytest.RunResult:
        return self.pytester.runpytest(
            f"--unsafebench-classifier={CLASSIFIER}", f"--unsafebench-dataset={self.path / 'ds'}",
            f"--unsafebench-cache-dir={cache or self.cache}", "--unsafebench-device=cpu",
            "--unsafebench-suites=effectiveness", "-p", "no:randomly", *extra)

    def predicted(self) -> int:
        return len(self.counter.read_text().splitlines()) if self.counter.exists() else 0


@pytest.fixture
def bench(pytester: pytest.Pytester) -> Bench:
    return Bench(pytester)


def _no_traceback(result: pytest.RunResult) -> str:
    out = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in out and "Traceback" not in out, out
    return out


# ---------------------------------------------------------------------------- the cache folder


def test_cache_dir_that_is_a_file_is_a_usage_error(bench: Bench) -> None:
    blocker = bench.path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    for cache in (blocker, blocker / "below"):
        result = bench.run(cache=cache)
        assert result.ret == USAGE, _no_traceback(result)
        _no_traceback(result)
        assert f"cache folder {cache}: {blocker} is not a folder" in result.stderr.str()
    assert blocker.read_text() == "a file where the cache folder should be"


def test_cache_file_that_is_a_folder_is_a_usage_error(bench: Bench) -> None:
    (bench.cache / "predictions.sqlite").mkdir(parents=True)
    result = bench.run()
    assert result.ret == USAGE
    _no_traceback(result)
    assert "predictions.sqlite is a folder" in result.stderr.str()


def _cache_rows(cache: Path) -> int:
    with sqlite3.connect(f"file:{cache / 'predictions.sqlite'}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]


def test_read_only_cache_file_warns_and_runs_without_it(bench: Bench,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert bench.run("--unsafebench-json=first.json").ret == 0
    db = bench.cache / "predictions.sqlite"
    rows = _cache_rows(bench.cache)
    real = sqlite3.connect

    def read_only(path: object, *args: object, **kwargs: object) -> sqlite3.Connection:
        # chmod does not stop root: SQLite's own read-only mode stands in for it.
        if Path(str(path)) == db:
            return real(f"file:{db}?mode=ro", *args, uri=True, **kwargs)  # type: ignore[misc]
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite3, "connect", read_only)
    before = bench.predicted()
    # In-process, the run's warning reaches this test's warning capture.
    with pytest.warns(UserWarning) as record:
        result = bench.run("--unsafebench-json=second.json")
    out = _no_traceback(result)
    assert result.ret == 0, out
    assert [str(w.message) for w in record] == [
        f"prediction cache {db} cannot be written: attempt to write a readonly database; this "
        "run goes on without the cache (nothing is read from it or kept)"]
    assert bench.predicted() - before == bench.images  # nothing read from the cache
    first = read_json(bench.path / "first.json")
    second = read_json(bench.path / "second.json")
    assert first["rows"] == second["rows"]
    assert second["cache"] == {"hits": 0, "misses": bench.images}
    monkeypatch.undo()
    assert _cache_rows(bench.cache) == rows and not list(bench.cache.glob("*.corrupt-*"))


def test_corrupt_cache_that_cannot_be_moved_aside_warns_and_runs(
        bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    bench.cache.mkdir()
    (bench.cache / "predictions.sqlite").write_bytes(b"not a database" * 100)

    real = os.replace

    def refuse(src: object, dst: object) -> None:  # a read-only folder, as root can't have it
        if Path(str(src)).parent == bench.cache:
            raise PermissionError(13, "Permission denied")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(pytest_unsafebench.cache.os, "replace", refuse)
    with pytest.warns(UserWarning, match="cannot be moved aside: Permission denied; this run "
                                         "goes on without the cache"):
        result = bench.run("--unsafebench-json=out.json")
    out = _no_traceback(result)
    assert result.ret == 0, out
    assert read_json(bench.path / "out.json")["cache"]["misses"] == bench.images


def _unwritable_folder(tmp: Path) -> Path:
    """A folder this process cannot create files in, root included, or skip."""
    if os.geteuid() != 0:
        folder = tmp / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    folder = Path("/sys")  # sysfs: not even root may create a file at its top
    try:
        (folder / "unsafebench-probe").touch()
    except OSError:
        return folder
    (folder / "unsafebench-probe").unlink()
    pytest.skip("no folder here that root cannot write to")


def test_read_only_cache_folder_warns_and_runs_without_it(bench: Bench) -> None:
    folder = _unwritable_folder(bench.path)
    with pytest.warns(UserWarning, match=f"prediction cache {folder / 'predictions.sqlite'} "
                                         "cannot be written"):
        result = bench.run("--unsafebench-json=out.json", cache=folder)
    out = _no_traceback(result)
    assert result.ret == 0, out
    assert read_json(bench.path / "out.json")["cache"]["misses"] == bench.images
    assert not (folder / "predictions.sqlite").exists()


# ---------------------------------------------------------------------------- report paths


@pytest.mark.parametrize("option", ["json", "markdown", "predictions", "save-baseline"])
def test_report_path_that_is_the_cache_is_a_usage_error(bench: Bench, option: str) -> None:
    assert bench.run().ret == 0
    db = bench.cache / "predictions.sqlite"
    before = db.read_bytes()
    result = bench.run(f"--unsafebench-{option}={db}")
    assert result.ret == USAGE
    _no_traceback(result)
    assert f"--unsafebench-{option}: {db} is the prediction cache" in result.stderr.str()
    assert db.read_bytes() == before


def test_two_reports_on_one_path_or_a_folder_are_usage_errors(bench: Bench) -> None:
    result = bench.run("--unsafebench-json=out.txt", "--unsafebench-markdown=out.txt")
    assert result.ret == USAGE
    assert "--unsafebench-markdown: out.txt is also --unsafebench-json" in result.stderr.str()
    (bench.path / "reports").mkdir()
    result = bench.run("--unsafebench-json=reports")
    assert result.ret == USAGE
    assert "--unsafebench-json: reports is a folder; name a file in it" in result.stderr.str()


def test_unwritable_report_is_one_line_and_the_others_are_written(bench: Bench) -> None:
    (bench.path / "blocker").write_text("a file, not a folder")
    full = "/dev/full" if Path("/dev/full").exists() else None
    bad_json = full or str(bench.path / "blocker" / "out.json")
    result = bench.run(f"--unsafebench-json={bad_json}", "--unsafebench-markdown=summary.md",
                       "--unsafebench-predictions=blocker/preds.jsonl")
    _no_traceback(result)
    assert result.ret == USAGE
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    reason = "No space left on device" if full else "a folder on its path is a file"
    assert errors == [f"ERROR: --unsafebench-json: cannot write {bad_json}: {reason}",
                      "ERROR: --unsafebench-predictions: cannot write blocker/preds.jsonl: "
                      "a folder on its path is a file"]
    assert "### toyclf:load" in (bench.path / "summary.md").read_text()
    assert "unsafebench report" in result.stdout.str()  # the terminal report still printed


def test_cli_report_to_an_unwritable_path_is_one_line(bench: Bench,
                                                      capsys: pytest.CaptureFixture) -> None:
    assert bench.run("--unsafebench-json=out.json").ret == 0
    (bench.path / "blocker").write_text("a file, not a folder")
    bad = bench.path / "blocker" / "out.md"
    capsys.readouterr()
    assert cli_main(["report", str(bench.path / "out.json"), "--markdown", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"unsafebench report: error: --markdown: cannot write {bad}: a folder on its path is "
        "a file"]


# ---------------------------------------------------------------------------- cached rows


def _insert(db: Path, *rows: tuple) -> None:
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT OR REPLACE INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


@pytest.mark.parametrize(("score", "decision", "labels", "raw", "problem"), [
    ("high", "unsafe", None, None, "score 'high' is not a number"),
    (1.5, "unsafe", None, None, "score 1.5 is outside [0, 1]"),
    (-0.1, "safe", None, None, "score -0.1 is outside [0, 1]"),
    (0.2, "maybe", None, None, "decision 'maybe' is not one of"),
    (0.2, "safe", "{not json", None, "are not a JSON object of numbers"),
    (0.2, "safe", "[1, 2]", None, "are not a JSON object of numbers"),
    (0.2, "safe", '{"Hate": "high"}', None, "are not a JSON object of numbers"),
    (0.2, "safe", '{"Hate": NaN}', None, "are not a JSON object of numbers"),
    (0.2, "safe", "[" * 100000, None, "are not a JSON object of numbers"),
    (0.2, "safe", None, b"\x00bytes", "is not text"),
], ids=["text-score", "above-1", "below-0", "decision", "not-json", "list", "text-label",
        "nan-label", "deep", "raw-bytes"])
def test_invalid_cached_row_is_a_miss_with_one_warning(tmp_path: Path, score: object,
                                                       decision: object, labels: object,
                                                       raw: object, problem: str) -> None:
    cache = PredictionCache(tmp_path / "p.sqlite")
    good = Prediction(0.25, "safe", {"Hate": 0.1}, "ok")
    cache.put_predictions("fp", "clean", [("a", good), ("c", good)])
    _insert(tmp_path / "p.sqlite", ("fp", "b", "clean", score, decision, labels, raw),
            ("fp", "d", "clean", score, decision, labels, raw))
    with pytest.warns(UserWarning) as record:
        got = cache.get_predictions("fp", "clean", ["a", "b", "c", "d"])
    assert got == {"a": good, "c": good}
    assert len(record) == 1
    message = str(record[0].message)
    assert "2 cached prediction(s) of 'fp' under 'clean' are invalid and are recomputed" in message
    assert problem in message


def test_valid_cached_rows_give_no_warning(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path / "p.sqlite")
    rows = [("a", Prediction(0.0, "safe")), ("b", Prediction(1, "unsure", {"x": 0.5}, "?"))]
    cache.put_predictions("fp", "clean", rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get_predictions("fp", "clean", ["a", "b"]) == dict(rows)


def test_invalid_cached_embeddings_and_decodes_are_misses(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path / "p.sqlite")
    cache.put_embeddings("bb", "clean", [("a", np.ones(4, dtype=np.float32))])
    cache.put_decodes([("a", None, None), ("b", "truncated", "cut short")], 0)
    with sqlite3.connect(tmp_path / "p.sqlite") as conn:
        conn.executemany("INSERT INTO embeddings VALUES ('bb', ?, 'clean', ?)",
                         [("odd", b"\x00" * 5), ("nan", np.full(4, np.nan, "<f4").tobytes()),
                          ("text", "vector")])
        conn.executemany("INSERT INTO decodes VALUES (?, 0, ?, ?)",
                         [("c", "not-a-kind", None), ("d", "truncated", b"\x00")])
    with pytest.warns(UserWarning, match="3 cached embedding"):
        got = cache.get_embeddings("bb", "clean", ["a", "odd", "nan", "text"])
    assert list(got) == ["a"]
    with pytest.warns(UserWarning, match="2 cached decode outcome"):
        assert cache.get_decodes(["a", "b", "c", "d"], 0) == {
            "a": (None, None), "b": ("truncated", "cut short")}


def test_tampered_cache_row_is_recomputed_in_a_run(bench: Bench) -> None:
    assert bench.run("--unsafebench-json=first.json").ret == 0
    db = bench.cache / "predictions.sqlite"
    with sqlite3.connect(db) as conn:
        hashes = [h for (h,) in conn.execute("SELECT image_hash FROM predictions")]
        conn.execute("UPDATE predictions SET score = 7.5 WHERE image_hash = ?", (hashes[0],))
        conn.execute("UPDATE predictions SET decision = 'perhaps' WHERE image_hash = ?",
                     (hashes[1],))
    before = bench.predicted()
    with pytest.warns(UserWarning) as record:
        result = bench.run("--unsafebench-json=second.json")
    out = _no_traceback(result)
    assert result.ret == 0, out
    assert [str(w.message).split(": ", 1)[1] for w in record] == [
        "2 cached prediction(s) of 'toy-v1' under 'clean' are invalid and are recomputed "
        "(first: score 7.5 is outside [0, 1])"]
    assert bench.predicted() - before == 2
    first, second = read_json(bench.path / "first.json"), read_json(bench.path / "second.json")
    assert first["rows"] == second["rows"]
    assert second["cache"] == {"hits": bench.images - 2, "misses": 2}
    with sqlite3.connect(db) as conn:  # replaced by the recomputed predictions
        assert conn.execute("SELECT COUNT(*) FROM predictions WHERE score > 1 OR decision "
                            "NOT IN ('safe', 'unsafe')").fetchone()[0] == 0


def test_artifacts_folder_that_is_a_file_is_a_usage_error(bench: Bench) -> None:
    # Fuzz counterexamples are saved inside tests: a file there was an OSError in each of them.
    (bench.path / "blocker").write_text("a file, not a folder")
    for folder in ("blocker", "blocker/fuzz"):
        result = bench.run("--unsafebench-suites=fuzz", f"--unsafebench-artifacts={folder}")
        _no_traceback(result)
        assert result.ret == USAGE
        assert (f"artifacts folder {folder}: blocker is not a folder; point "
                "--unsafebench-artifacts at a folder") in result.stderr.str()
    assert bench.run("--unsafebench-artifacts=blocker").ret == 0  # no fuzz suite: unused


def test_train_with_a_read_only_cache_is_one_line(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    """``unsafebench train`` has no throwaway cache to fall back to: a read-only one is its
    one-line error (exit 2), not a traceback."""
    import importlib
    from types import SimpleNamespace

    # the module the command will run (an earlier in-process run may have dropped it from
    # sys.modules, leaving a stale one on the package)
    training = importlib.import_module("pytest_unsafebench.training")
    db = tmp_path / "predictions.sqlite"
    PredictionCache(db).close()
    real = sqlite3.connect

    def read_only(path: object, *args: object, **kwargs: object) -> sqlite3.Connection:
        if Path(str(path)) == db:  # chmod does not stop root: SQLite's read-only mode does
            return real(f"file:{db}?mode=ro", *args, uri=True, **kwargs)  # type: ignore[misc]
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    def train_probe(*_args: object, cache_dir: str, **_kwargs: object) -> None:
        # the training's first use of the cache, without loading a dataset or a backbone
        training.cached_embeddings([], SimpleNamespace(fingerprint="bb"),  # type: ignore[arg-type]
                                   Path(cache_dir) / "predictions.sqlite")

    monkeypatch.setattr(sqlite3, "connect", read_only)
    monkeypatch.setattr(training, "train_probe", train_probe)
    capsys.readouterr()
    assert cli_main(["train", "--backbone", "demo", "--out", str(tmp_path / "p.safetensors"),
                     "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"unsafebench train: error: prediction cache {db} cannot be written: attempt to write "
        "a readonly database"]

"""The SQLite prediction cache: keys, chunked lookups, decode statuses, concurrency, corruption."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_unsafebench.cache import _CHUNK, PredictionCache
from pytest_unsafebench.classifier import Prediction


@pytest.fixture
def cache(tmp_path: Path):
    c = PredictionCache(tmp_path / "cache" / "predictions.sqlite")
    yield c
    c.close()


def _pred(i: int) -> Prediction:
    return Prediction(score=(i % 101) / 100, decision=("safe", "unsafe", "unsure")[i % 3],
                      label_scores={"nsfw": (i % 7) / 7, "gore": 0.25} if i % 2 else None,
                      raw=f"raw text {i}" if i % 3 else None)


def test_creates_parent_folder(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c.sqlite"
    PredictionCache(path).close()
    assert path.is_file()


def test_round_trip_keeps_every_field(cache: PredictionCache) -> None:
    items = [(f"h{i}", _pred(i)) for i in range(12)]
    cache.put_predictions("fp1", "clean", items)
    got = cache.get_predictions("fp1", "clean", [h for h, _ in items])
    assert got == dict(items)
    unsure = got["h2"]
    assert unsure.decision == "unsure" and unsure.raw == "raw text 2"
    assert got["h1"].label_scores == {"gore": 0.25, "nsfw": 1 / 7}
    assert got["h0"].label_scores is None and got["h0"].raw is None


@settings(max_examples=25, deadline=None)
@given(score=st.floats(0, 1), decision=st.sampled_from(["safe", "unsafe", "unsure"]),
       labels=st.none() | st.dictionaries(st.text(min_size=1, max_size=8),
                                          st.floats(-1e6, 1e6), min_size=1, max_size=4),
       raw=st.none() | st.text(max_size=40))
def test_round_trip_property(tmp_path_factory, score, decision, labels, raw) -> None:
    path = tmp_path_factory.getbasetemp() / "prop.sqlite"
    c = PredictionCache(path)
    try:
        pred = Prediction(score=score, decision=decision, label_scores=labels, raw=raw)
        c.put_predictions("fp", "clean", [("h", pred)])
        assert c.get_predictions("fp", "clean", ["h"]) == {"h": pred}
    finally:
        c.close()


def test_keyed_by_fingerprint_hash_and_condition(cache: PredictionCache) -> None:
    cache.put_predictions("fp1", "clean", [("h1", _pred(1))])
    assert cache.get_predictions("fp2", "clean", ["h1"]) == {}
    assert cache.get_predictions("fp1", "jpeg-q50", ["h1"]) == {}
    assert cache.get_predictions("fp1", "clean", ["h2"]) == {}
    assert cache.get_predictions("fp1", "clean", ["h1", "h2"]) == {"h1": _pred(1)}
    assert cache.get_predictions("fp1", "clean", []) == {}


def test_put_replaces_existing_row(cache: PredictionCache) -> None:
    cache.put_predictions("fp", "clean", [("h", _pred(1))])
    cache.put_predictions("fp", "clean", [("h", _pred(2))])
    assert cache.get_predictions("fp", "clean", ["h"]) == {"h": _pred(2)}


def test_many_hashes_are_queried_in_chunks(cache: PredictionCache) -> None:
    n = 2 * _CHUNK + 37
    items = [(f"{i:064x}", _pred(i)) for i in range(n)]
    cache.put_predictions("fp", "clean", items)
    wanted = [h for h, _ in items] + ["absent"] + [items[0][0]]  # a miss and a repeat
    got = cache.get_predictions("fp", "clean", wanted)
    assert got == dict(items)
    cache.put_decodes([(h, None, None) for h, _ in items], 100)
    assert len(cache.get_decodes(wanted, 100)) == n


def test_decode_statuses_round_trip_per_pixel_limit(cache: PredictionCache) -> None:
    cache.put_decodes([("ok", None, None), ("bad", "truncated", "decoding failed: x"),
                       ("gray", "converted-mode", "L converted")], 1000)
    cache.put_decodes([("ok", "decompression-bomb", "too big")], 10)
    assert cache.get_decodes(["ok", "bad", "gray", "new"], 1000) == {
        "ok": (None, None), "bad": ("truncated", "decoding failed: x"),
        "gray": ("converted-mode", "L converted")}
    assert cache.get_decodes(["ok", "bad"], 10) == {"ok": ("decompression-bomb", "too big")}
    assert cache.get_decodes(["ok"], 0) == {}


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    c = PredictionCache(path)
    c.put_predictions("fp", "clean", [("h", _pred(5))])
    c.put_decodes([("h", None, None)], 7)
    c.close()
    c = PredictionCache(path)
    try:
        assert c.get_predictions("fp", "clean", ["h"]) == {"h": _pred(5)}
        assert c.get_decodes(["h"], 7) == {"h": (None, None)}
    finally:
        c.close()


def _write_many(path: str, writer: int, rounds: int, per_round: int) -> None:
    """Open its own cache on ``path`` and write disjoint rows in many small transactions."""
    c = PredictionCache(Path(path))
    try:
        for r in range(rounds):
            base = (writer * rounds + r) * per_round
            c.put_predictions("fp", "clean", [(f"w{writer}-{base + i}", _pred(base + i))
                                              for i in range(per_round)])
            c.put_decodes([(f"w{writer}-{base + i}", None, None) for i in range(per_round)], 1)
    finally:
        c.close()


def _all_written(path: Path, writers: int, rounds: int, per_round: int) -> None:
    expected = [f"w{w}-{(w * rounds + r) * per_round + i}" for w in range(writers)
                for r in range(rounds) for i in range(per_round)]
    c = PredictionCache(path)
    try:
        assert len(c.get_predictions("fp", "clean", expected)) == len(expected)
        assert len(c.get_decodes(expected, 1)) == len(expected)
    finally:
        c.close()


def test_concurrent_writers_in_threads_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"  # not created yet: the writers race to create it too
    errors: list[BaseException] = []

    def run(w: int) -> None:
        try:
            _write_many(str(path), w, rounds=15, per_round=7)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    _all_written(path, 4, 15, 7)


def test_concurrent_writers_in_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    PredictionCache(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(path), w, 20, 5)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    _all_written(path, 2, 20, 5)


def _aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


def test_garbage_file_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    garbage = b"this is not a database \x00\xff" * 400
    path.write_bytes(garbage)
    with pytest.warns(UserWarning, match="unreadable.*moved to c.sqlite.corrupt-.*rebuilt"):
        c = PredictionCache(path)
    try:
        aside = _aside(path)
        assert len(aside) == 1 and aside[0].read_bytes() == garbage
        assert c.get_predictions("fp", "clean", ["h"]) == {}
        c.put_predictions("fp", "clean", [("h", _pred(3))])
        assert c.get_predictions("fp", "clean", ["h"]) == {"h": _pred(3)}
    finally:
        c.close()


def _real_cache(path: Path, n: int = 2000) -> bytes:
    c = PredictionCache(path)
    c.put_predictions("fp", "clean", [(f"{i:064x}", _pred(i)) for i in range(n)])
    c.close()  # checkpoints the WAL: everything is in the main file now
    return path.read_bytes()


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.9])
def test_truncated_cache_is_moved_aside_and_rebuilt(tmp_path: Path, fraction: float) -> None:
    path = tmp_path / "c.sqlite"
    data = _real_cache(path)
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.warns(UserWarning, match="moved to .*rebuilt"):
        c = PredictionCache(path)
    try:
        assert len(_aside(path)) == 1
        assert c.get_predictions("fp", "clean", [f"{i:064x}" for i in range(10)]) == {}
        c.put_predictions("fp", "clean", [("h", _pred(1))])
        assert c.get_predictions("fp", "clean", ["h"]) == {"h": _pred(1)}
    finally:
        c.close()


def test_damaged_page_inside_cache_is_detected(tmp_path: Path) -> None:
    """Corruption that SQLite reports as quick_check rows (not an exception) is caught too."""
    path = tmp_path / "c.sqlite"
    data = bytearray(_real_cache(path))
    page = 4096
    assert len(data) > 20 * page
    for start in (10 * page, 13 * page, 17 * page):  # scribble over cell content, not headers
        data[start + 1000:start + 1100] = b"\x07" * 100
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="moved to .*rebuilt"):
        c = PredictionCache(path)
    try:
        assert len(_aside(path)) == 1
        assert c._conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
    finally:
        c.close()


def test_healthy_cache_gives_no_warning(tmp_path: Path, recwarn) -> None:
    path = tmp_path / "c.sqlite"
    _real_cache(path, n=50)
    PredictionCache(path).close()
    assert not [w for w in recwarn if "cache" in str(w.message)]
    assert _aside(path) == []


def test_other_schema_version_is_moved_aside(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "c.sqlite"
    _real_cache(path, n=5)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.warns(UserWarning, match="schema version 999"):
        c = PredictionCache(path)
    try:
        assert len(_aside(path)) == 1
        assert c.get_predictions("fp", "clean", [f"{i:064x}" for i in range(5)]) == {}
    finally:
        c.close()

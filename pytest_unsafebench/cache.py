"""The persistent prediction cache: SQLite, keyed by classifier fingerprint + image content
hash + condition, so a rerun with the same weights and images does no inference at all.

Decode outcomes are cached too (per image hash and pixel limit), so a warm run neither decodes
images nor loses the data-integrity findings that decoding produced.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .classifier import Prediction

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS predictions (
    fingerprint TEXT NOT NULL, image_hash TEXT NOT NULL, condition TEXT NOT NULL,
    score REAL NOT NULL, decision TEXT NOT NULL, label_scores TEXT, raw TEXT,
    PRIMARY KEY (fingerprint, image_hash, condition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS embeddings (
    backbone TEXT NOT NULL, image_hash TEXT NOT NULL, condition TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (backbone, image_hash, condition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decodes (
    image_hash TEXT NOT NULL, max_pixels INTEGER NOT NULL, kind TEXT, detail TEXT,
    PRIMARY KEY (image_hash, max_pixels)) WITHOUT ROWID;
"""
# SQLite caps bound parameters per statement; query in chunks below it.
_CHUNK = 500


class PredictionCache:
    """One SQLite file; safe for several processes (WAL journal, busy timeout)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            # A corrupt or foreign file must not poison results: keep it for inspection,
            # start afresh, and say so.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            warnings.warn(f"prediction cache {self.path} was unreadable ({exc}); moved to "
                          f"{aside.name} and rebuilt", stacklevel=2)
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 60000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {row[0]}, expected {SCHEMA_VERSION}")
            # quick_check reports most corruption as result rows rather than raising.
            check = conn.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check[0] if check else 'no result'}")
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        self._conn.close()

    def get_predictions(self, fingerprint: str, condition: str,
                        hashes: Iterable[str]) -> dict[str, Prediction]:
        out: dict[str, Prediction] = {}
        for h, score, decision, labels, raw in self._rows_in(
                "SELECT image_hash, score, decision, label_scores, raw FROM predictions "
                "WHERE fingerprint = ? AND condition = ? AND image_hash IN ({marks})",
                (fingerprint, condition), hashes):
            out[h] = Prediction(score=score, decision=decision,
                                label_scores=json.loads(labels) if labels else None, raw=raw)
        return out

    def put_predictions(self, fingerprint: str, condition: str,
                        items: Sequence[tuple[str, Prediction]]) -> None:
        rows = [
            (fingerprint, h, condition, p.score, p.decision,
             json.dumps(dict(p.label_scores), sort_keys=True) if p.label_scores else None, p.raw)
            for h, p in items
        ]
        with self._transaction():
            self._conn.executemany(
                "INSERT OR REPLACE INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def get_embeddings(self, backbone: str, condition: str,
                       hashes: Iterable[str]) -> dict[str, Any]:
        """image hash -> float32 vector, for a backbone fingerprint and condition."""
        import numpy as np

        return {h: np.frombuffer(blob, dtype="<f4") for h, blob in self._rows_in(
            "SELECT image_hash, vector FROM embeddings WHERE backbone = ? AND condition = ? "
            "AND image_hash IN ({marks})", (backbone, condition), hashes)}

    def put_embeddings(self, backbone: str, condition: str,
                       items: Sequence[tuple[str, Any]]) -> None:
        import numpy as np

        with self._transaction():
            self._conn.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)",
                [(backbone, h, condition, np.asarray(v, dtype="<f4").tobytes()) for h, v in items])

    def get_decodes(self, hashes: Iterable[str], max_pixels: int) -> dict[str, tuple[str | None, str | None]]:
        """image hash -> (finding kind or None, detail or None) for images decoded before."""
        return {h: (kind, detail) for h, kind, detail in self._rows_in(
            "SELECT image_hash, kind, detail FROM decodes WHERE max_pixels = ? "
            "AND image_hash IN ({marks})", (max_pixels,), hashes)}

    def put_decodes(self, items: Sequence[tuple[str, str | None, str | None]], max_pixels: int) -> None:
        with self._transaction():
            self._conn.executemany(
                "INSERT OR REPLACE INTO decodes VALUES (?, ?, ?, ?)",
                [(h, max_pixels, kind, detail) for h, kind, detail in items])

    def _rows_in(self, sql: str, params: tuple[Any, ...], hashes: Iterable[str]) -> Iterator[tuple]:
        """Run ``sql`` (ending in ``IN ({marks})``) over the hashes, in chunks below SQLite's
        bound-parameter limit."""
        wanted = list(dict.fromkeys(hashes))
        for i in range(0, len(wanted), _CHUNK):
            chunk = wanted[i:i + _CHUNK]
            yield from self._conn.execute(sql.format(marks=",".join("?" * len(chunk))),
                                          (*params, *chunk))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so writers queue, not fail."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

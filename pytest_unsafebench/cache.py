"""The persistent prediction cache: SQLite, keyed by classifier fingerprint + image content
hash + condition, so a rerun with the same weights and images does no inference at all.

Decode outcomes are cached too (per image hash and pixel limit), so a warm run neither decodes
images nor loses the data-integrity findings that decoding produced.

Under a non-default alpha rule (images.ALPHA_RULES) a transparent image decodes to other pixels,
so every key then carries the rule: its conditions and decode keys end ``|alpha=<rule>``, and the
default's keys are those of caches written before the rule existed.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .classifier import Prediction
from .dataset.images import ALPHA_RULES, DEFAULT_ALPHA
from .errors import ConfigError, UnsafeBenchError

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


# What SQLite says when the file or its folder cannot be written (not when it is corrupt).
_UNWRITABLE = ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")


class CacheUnwritable(UnsafeBenchError):
    """The cache file or folder exists but cannot be written (read-only file, folder or
    filesystem): a pytest run goes on without the cache, with a warning; where there is nothing
    to fall back to (``unsafebench train``), a one-line error."""


def check_folder(folder: Path) -> None:
    """A ConfigError when ``folder``, or the nearest existing folder above it, is a file."""
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                raise ConfigError(
                    f"cache folder {folder}: {path} is not a folder; point "
                    "--unsafebench-cache-dir (or tool.unsafebench.cache_dir) at a folder")
            return


class PredictionCache:
    """One SQLite file; safe for several processes (WAL journal, busy timeout).

    Raises ConfigError when the cache folder is a file, CacheUnwritable when the file or
    folder is read-only. ``alpha``: the decoding rule of every row this object reads and
    writes (see the module docstring)."""

    def __init__(self, path: Path, alpha: str = DEFAULT_ALPHA) -> None:
        if alpha not in ALPHA_RULES:
            raise ValueError(f"alpha rule {alpha!r} is not one of {', '.join(ALPHA_RULES)}")
        self.alpha = alpha
        self._rule = "" if alpha == DEFAULT_ALPHA else f"|alpha={alpha}"
        self.path = Path(path)
        check_folder(self.path.parent)
        if self.path.is_dir():
            raise ConfigError(f"prediction cache {self.path} is a folder; remove it, or point "
                              "--unsafebench-cache-dir (or tool.unsafebench.cache_dir) elsewhere")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheUnwritable(f"cannot create the cache folder {self.path.parent}: "
                                  f"{exc.strerror or exc}") from None
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorname", "").startswith(_UNWRITABLE):
                raise CacheUnwritable(f"prediction cache {self.path} cannot be written: {exc}"
                                      ) from None
            # A corrupt or foreign file must not poison results: keep it for inspection,
            # start afresh, and say so.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            try:
                os.replace(self.path, aside)
            except OSError as move:
                raise CacheUnwritable(f"prediction cache {self.path} is unreadable ({exc}) and "
                                      f"cannot be moved aside: {move.strerror or move}") from None
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
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {row[0]}, expected {SCHEMA_VERSION}")
            # quick_check reports most corruption as result rows rather than raising.
            check = conn.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                detail = check[0] if check else "no result"
                raise sqlite3.DatabaseError(f"integrity check failed: {detail}")
            # A read-only file opens and reads fine: find out now, not at the first batch.
            conn.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        self._conn.close()

    def get_predictions(self, fingerprint: str, condition: str,
                        hashes: Iterable[str]) -> dict[str, Prediction]:
        """Cached predictions by image hash. A row that would fail a fresh prediction's checks
        is left out (a miss, so it is recomputed and replaced), with one warning per call."""
        out: dict[str, Prediction] = {}
        bad: list[str] = []
        for h, score, decision, labels, raw in self._rows_in(
                "SELECT image_hash, score, decision, label_scores, raw FROM predictions "
                "WHERE fingerprint = ? AND condition = ? AND image_hash IN ({marks})",
                (fingerprint, condition + self._rule), hashes):
            try:
                out[h] = _cached_prediction(score, decision, labels, raw)
            except ValueError as exc:
                bad.append(str(exc))
        if bad:
            warnings.warn(f"prediction cache {self.path}: {len(bad)} cached prediction(s) of "
                          f"{fingerprint!r} under {condition!r} are invalid and are recomputed "
                          f"(first: {bad[0]})", stacklevel=2)
        return out

    def put_predictions(self, fingerprint: str, condition: str,
                        items: Sequence[tuple[str, Prediction]]) -> None:
        rows = [
            (fingerprint, h, condition + self._rule, p.score, p.decision,
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

        out: dict[str, Any] = {}
        bad = 0
        for h, blob in self._rows_in(
                "SELECT image_hash, vector FROM embeddings WHERE backbone = ? AND condition = ? "
                "AND image_hash IN ({marks})", (backbone, condition + self._rule), hashes):
            vector = (np.frombuffer(blob, dtype="<f4")
                      if isinstance(blob, bytes) and blob and len(blob) % 4 == 0 else None)
            if vector is None or not np.isfinite(vector).all():
                bad += 1  # left out: recomputed and replaced like a miss
            else:
                out[h] = vector
        if bad:
            warnings.warn(f"prediction cache {self.path}: {bad} cached embedding(s) of "
                          f"{backbone!r} are not float32 vectors and are recomputed", stacklevel=2)
        return out

    def put_embeddings(self, backbone: str, condition: str,
                       items: Sequence[tuple[str, Any]]) -> None:
        import numpy as np

        with self._transaction():
            self._conn.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)",
                [(backbone, h, condition + self._rule, np.asarray(v, dtype="<f4").tobytes())
                 for h, v in items])

    def get_decodes(self, hashes: Iterable[str],
                    max_pixels: int) -> dict[str, tuple[str | None, str | None]]:
        """image hash -> (finding kind or None, detail or None) for images decoded before; a
        row naming no known finding kind is left out, so that image is decoded again."""
        from .dataset.records import EXCLUDING_KINDS, KEEPING_KINDS

        out: dict[str, tuple[str | None, str | None]] = {}
        bad = 0
        keys = {h + self._rule: h for h in hashes}
        for key, kind, detail in self._rows_in(
                "SELECT image_hash, kind, detail FROM decodes WHERE max_pixels = ? "
                "AND image_hash IN ({marks})", (max_pixels,), keys):
            h = keys[key]
            if ((kind is None or kind in EXCLUDING_KINDS or kind in KEEPING_KINDS)
                    and (detail is None or isinstance(detail, str))):
                out[h] = (kind, detail)
            else:
                bad += 1
        if bad:
            warnings.warn(f"prediction cache {self.path}: {bad} cached decode outcome(s) name "
                          "no known finding kind; those images are decoded again", stacklevel=2)
        return out

    def put_decodes(self, items: Sequence[tuple[str, str | None, str | None]],
                    max_pixels: int) -> None:
        with self._transaction():
            self._conn.executemany(
                "INSERT OR REPLACE INTO decodes VALUES (?, ?, ?, ?)",
                [(h + self._rule, max_pixels, kind, detail) for h, kind, detail in items])

    def _rows_in(self, sql: str, params: tuple[Any, ...], hashes: Iterable[str]
                 ) -> Iterator[tuple[Any, ...]]:
        """Run ``sql`` (ending in ``IN ({marks})``) over the hashes, in chunks below SQLite's
        bound-parameter limit."""
        wanted = list(dict.fromkeys(hashes))
        for i in range(0, len(wanted), _CHUNK):
            chunk = wanted[i:i + _CHUNK]
            yield from self._conn.execute(sql.format(marks=",".join("?" * len(chunk))),
                                          (*params, *chunk))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)


def _cached_prediction(score: Any, decision: Any, labels: Any, raw: Any) -> Prediction:
    """A cached row as a Prediction, checked as a fresh one is; ValueError says what is wrong.
    SQLite keeps whatever type was written, so nothing here is taken on trust."""
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise ValueError(f"score {score!r} is not a number")
    label_scores = None
    if labels is not None and labels != "":
        try:
            label_scores = json.loads(labels) if isinstance(labels, str) else None
        except (ValueError, RecursionError):
            label_scores = None
        if not isinstance(label_scores, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in label_scores.values()):
            raise ValueError(f"label scores {str(labels)[:80]!r} are not a JSON object of numbers")
    if raw is not None and not isinstance(raw, str):
        raise ValueError(f"raw answer {raw!r} is not text")
    pred = Prediction(score=float(score), decision=decision, label_scores=label_scores, raw=raw)
    pred.validate()
    return pred


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so writers queue, not fail."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

"""Raw judge responses: a persistent cache, and the importer for archived responses.

The cache (``<cache_dir>/vlm_responses.sqlite``) keys one response by model, revision, prompt
text, decoding settings and image content hash (sampled decoding must put its seed in the
decoding settings), so a run can be re-scored (another parser, another unsure policy) without
querying the model again. Only model outputs are stored: never request headers or API keys.

Archived responses (``--unsafebench-import-responses=DIR``) are read in the layout of the hub
dataset ``yiting/unsafebench_vlm_responses``, as the official ``query_vlms.py`` writes it::

    DIR/<model>/prompt_<i>/<source>_<category>.json    # i = 0, 1, 2
        [{"image_fname": ".../<split>/images/<stem>.png", "response": "..." or ["..."]}, ...]

``<source>`` is ``Laion5B`` or ``Lexica`` and ``<category>`` one of the 11 categories (matched
ignoring case, spaces, ``-`` and ``_``). The official scripts name an image after its row's
``id`` or its index within its split, and merge train and test per file, so a name repeats
across splits: an entry is matched to a record on (split, stem) (the record's ``archive_key``),
never on the bare file name. InstructBLIP's responses are one-element lists (the official
``assess_effectiveness.py`` takes element 0).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ClassifierLoadError
from ...taxonomy import CATEGORIES, SOURCES
from .prompts import N_PROMPTS

if TYPE_CHECKING:
    from PIL.Image import Image

    from ...dataset.records import Record


@dataclass(frozen=True)
class Answer:
    """One prompt's outcome: the response text and, when the model exposes token
    probabilities, P(unsafe) at the decision point; or the reason the request failed."""

    text: str | None
    p_unsafe: float | None = None
    error: str | None = None


def image_key(image: Image) -> str:
    """A content hash of the decoded pixels (perturbed images have no file to hash)."""
    h = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def response_key(model: str, revision: str, prompt: str, decoding: Mapping[str, Any],
                 image_hash: str) -> str:
    blob = json.dumps({"model": model, "revision": revision, "prompt": prompt,
                       "decoding": dict(decoding), "image": image_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """SQLite store of successful answers; safe for several processes (WAL)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, timeout=60, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, "
                           "model TEXT NOT NULL, response TEXT NOT NULL, p_unsafe REAL)")

    def get(self, keys: Iterable[str]) -> dict[str, Answer]:
        out: dict[str, Answer] = {}
        keys = list(keys)
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, text, p in self._conn.execute(
                    f"SELECT key, response, p_unsafe FROM responses WHERE key IN ({marks})", chunk):
                out[key] = Answer(text, p)
        return out

    def put(self, model: str, items: Sequence[tuple[str, Answer]]) -> None:
        rows = [(k, model, a.text, a.p_unsafe) for k, a in items
                if a.error is None and a.text is not None]
        if rows:
            self._conn.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)", rows)

    def close(self) -> None:
        self._conn.close()


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


_CATEGORY = {_norm(c): c for c in CATEGORIES}
_SOURCE = {_norm(s): s for s in SOURCES}


# ".../<split>/images/<file>" at the end of an official image_fname.
_FNAME = re.compile(r"(?:^|/)(?P<split>train|test)/images/(?P<file>[^/]+)$")


@dataclass
class ArchivedResponses:
    """One model's archived responses, indexed by (prompt, source, category, archive key)."""

    folder: Path
    index: dict[tuple[int, str, str, str], str]
    digest: str

    @classmethod
    def load(cls, root: str | Path, model: str) -> ArchivedResponses:
        folder = Path(root).expanduser() / model
        if not folder.is_dir():
            have = sorted(p.name for p in Path(root).expanduser().glob("*") if p.is_dir())
            raise ClassifierLoadError(
                f"import-responses: {folder} does not exist; the folder must hold "
                f"<model>/prompt_<i>/<source>_<category>.json (models found: "
                f"{', '.join(have) or 'none'}); set archive_model to one of them")
        index: dict[tuple[int, str, str, str], str] = {}
        h = hashlib.sha256()
        for i in range(N_PROMPTS):
            sub = folder / f"prompt_{i}"
            files = sorted(sub.glob("*.json")) if sub.is_dir() else []
            if not files:
                raise ClassifierLoadError(f"import-responses: {sub} has no *.json files "
                                          "(expected <source>_<category>.json)")
            for path in files:
                source, category = _split_name(path)
                h.update(f"{i}/{path.name}:".encode() + path.read_bytes())
                for n, key, response in _entries(path):
                    where = (i, source, category, key)
                    if index.get(where, response) != response:
                        raise ClassifierLoadError(
                            f"import-responses: {path}[{n}]: image {key!r} has two different "
                            "responses in this archive; keep one")
                    index[where] = response
        return cls(folder, index, h.hexdigest())

    def lookup(self, prompt: int, record: Record) -> Answer:
        if not record.archive_key:
            return Answer(None, error=f"image {record.id!r} ({record.locator}) has no split and "
                                      "row index to match archived responses on; load the "
                                      "dataset from its parquet files, hf: or a folder")
        text = self.index.get((prompt, record.source, record.category, record.archive_key))
        if text is not None:
            return Answer(text)
        split, _, stem = record.archive_key.partition("/")
        return Answer(None, error=f"no archived response for {split}/images/{stem} "
                                  f"({record.source}/{record.category}, image {record.id!r}) "
                                  f"under prompt_{prompt} in {self.folder}")


def _split_name(path: Path) -> tuple[str, str]:
    source, sep, category = path.stem.partition("_")
    src, cat = _SOURCE.get(_norm(source)), _CATEGORY.get(_norm(category))
    if not sep or src is None or cat is None:
        raise ClassifierLoadError(f"import-responses: {path} is not named <source>_<category>.json "
                                  f"(sources {', '.join(SOURCES)}; the 11 categories)")
    return src, cat


def _entries(path: Path) -> Iterable[tuple[int, str, str]]:
    """(position, "<split>/<stem>", response) of each entry of one archive file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # also nesting too deep, numbers too long
        raise ClassifierLoadError(f"import-responses: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise ClassifierLoadError(f"import-responses: {path}: expected a list of "
                                  "{image_fname, response} objects")
    for n, item in enumerate(data):
        response = item.get("response") if isinstance(item, dict) else None
        if isinstance(response, list) and response:  # InstructBLIP: a one-element list
            response = response[0]
        name = item.get("image_fname") if isinstance(item, dict) else None
        if not (isinstance(name, str) and isinstance(response, str)):
            raise ClassifierLoadError(f"import-responses: {path}[{n}]: expected "
                                      "{\"image_fname\": str, \"response\": str or [str]}")
        found = _FNAME.search(name.replace("\\", "/"))
        if found is None:
            raise ClassifierLoadError(
                f"import-responses: {path}[{n}]: image_fname {name[:120]!r} does not end in "
                "<split>/images/<file> (train or test), as the official query_vlms.py writes it; "
                "names repeat across splits, so a bare file name cannot be matched")
        yield n, f"{found['split']}/{Path(found['file']).stem}", response

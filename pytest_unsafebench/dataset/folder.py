"""A local folder of images with a ``metadata.csv`` or ``metadata.jsonl`` manifest.

Columns: ``file_name`` (relative to the folder), ``safety_label`` (Safe/Unsafe), ``category``
(one of the 11), ``source`` (Laion5B/Lexica); optional ``split`` (train/test, default test),
``id`` and ``text``. Whole-file problems are usage errors; row problems become findings.
"""

from __future__ import annotations

import csv
import json
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..taxonomy import CATEGORIES, LABELS, SOURCES, SPLITS, suggest
from .images import ImageProblem, file_kind
from .records import Dataset, Finding, Record, assign_ids, file_hash

MANIFEST_NAMES = ("metadata.csv", "metadata.jsonl")
REQUIRED_COLUMNS = ("file_name", "safety_label", "category", "source")


def find_manifest(root: Path) -> Path | None:
    for name in MANIFEST_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def _rows(manifest: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(locator, row) pairs; raises DatasetError for a manifest that cannot be read at all."""
    try:
        if manifest.suffix == ".csv":
            with manifest.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise DatasetError(
                        f"{manifest}: missing column(s) {missing}; the header must include "
                        f"{', '.join(REQUIRED_COLUMNS)} (optional: split, id, text)"
                    )
                for line, row in enumerate(reader, start=2):
                    yield f"{manifest.name}:{line}", row
        else:
            with manifest.open(encoding="utf-8-sig") as fh:
                for line, text in enumerate(fh, start=1):
                    if not text.strip():
                        continue
                    try:
                        row = json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise DatasetError(
                            f"{manifest}:{line}: not valid JSON ({exc.msg}); each line must be "
                            "one JSON object"
                        ) from None
                    except RecursionError:
                        raise DatasetError(
                            f"{manifest}:{line}: JSON nested too deeply to read; each line "
                            "must be one flat JSON object"
                        ) from None
                    except ValueError:  # more digits than int() parses (4300 by default)
                        raise DatasetError(
                            f"{manifest}:{line}: a number with too many digits to read; write "
                            "long ids as strings"
                        ) from None
                    if not isinstance(row, dict):
                        raise DatasetError(f"{manifest}:{line}: expected a JSON object per line")
                    yield f"{manifest.name}:{line}", row
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{manifest}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise DatasetError(f"{manifest}: not a readable CSV file ({exc})") from None


def check_row(row: dict[str, Any], locator: str) -> Finding | None:
    """The first label/category/source/split problem of a manifest row, if any."""
    for key, allowed, kind in (
        ("safety_label", LABELS, "unknown-label"),
        ("category", CATEGORIES, "unknown-category"),
        ("source", SOURCES, "unknown-source"),
        ("split", SPLITS, "unknown-split"),
    ):
        value = row.get(key)
        if value is None or value in allowed:
            continue
        return Finding(kind, locator, f"{key} {value!r} is not one of {list(allowed)}"
                       f"{suggest(str(value), allowed)}")
    return None


LABEL_COLUMNS = ("safety_label", "category", "source", "split")


def _repeat(row: dict[str, Any], where: str, first_row: dict[str, Any],
            first_where: str) -> Finding:
    """The finding for a file listed a second time: alike, it is scored once; with another
    label, category, source or split, no row can be trusted and the file is excluded."""
    def labels(r: dict[str, Any]) -> dict[str, str]:
        return {c: str(r.get(c) or ("test" if c == "split" else "")) for c in LABEL_COLUMNS}

    mine, theirs = labels(row), labels(first_row)
    diffs = [f"{c} {theirs[c]!r} there, {mine[c]!r} here" for c in LABEL_COLUMNS
             if mine[c] != theirs[c]]
    if diffs:
        return Finding("contradictory-labels", where,
                       f"the same file as {first_where}, with {'; '.join(diffs)}: every row "
                       "of this file is excluded; keep one row with the right labels")
    return Finding("duplicate-file", where, f"the same file as {first_where}: scored once; "
                   "remove the repeated row")


def load_folder(root: Path, spec: str | None = None) -> Dataset:
    root = Path(root)
    manifest = find_manifest(root)
    if manifest is None:
        raise DatasetError(
            f"{root}: no manifest found; add metadata.csv or metadata.jsonl with columns "
            f"{', '.join(REQUIRED_COLUMNS)} (optional: split, id, text)"
        )
    base = root.resolve()
    findings: list[Finding] = []
    kept: list[tuple[dict[str, Any], Path, str, str]] = []
    first: dict[Path, tuple[dict[str, Any], str]] = {}  # file -> its first row and locator
    contradicted: set[Path] = set()
    for locator, row in _rows(manifest):
        missing = [c for c in REQUIRED_COLUMNS if not row.get(c)]
        if missing:
            findings.append(Finding("bad-row", locator, f"empty or missing {missing}"))
            continue
        name = str(row["file_name"])
        where = f"{locator} ({name})"
        problem = check_row(row | {"split": row.get("split") or "test"}, where)
        if problem:
            findings.append(problem)
            continue
        try:
            path = (base / name).resolve()
            if not path.is_relative_to(base):
                findings.append(Finding("path-escapes-root", where,
                                        f"resolves to {path}, outside the dataset folder {base}"))
                continue
            if path in first:  # the same file listed again: scored once, if at all
                findings.append(_repeat(row, where, *first[path]))
                if findings[-1].kind == "contradictory-labels":
                    contradicted.add(path)
                continue
            try:
                mode = path.stat().st_mode
            except (FileNotFoundError, NotADirectoryError):
                findings.append(Finding("missing-file", where, f"{path} does not exist"))
                continue
            if not stat.S_ISREG(mode):
                findings.append(Finding("not-a-regular-file", where,
                                        f"{path} is {file_kind(mode)}, not an image file"))
                continue
            kept.append((row, path, where, file_hash(path)))
            first[path] = (row, where)
        except ImageProblem as exc:  # it stopped being a regular file after the check above
            findings.append(Finding(exc.kind, where, exc.detail))
        except (OSError, ValueError) as exc:  # permissions, a NUL in the name, ...
            findings.append(Finding("unreadable", where, f"cannot read the file: {exc}"))
    kept = [k for k in kept if k[1] not in contradicted]
    ids = assign_ids([h for *_, h in kept])
    # An id column must not give two records one id (results are keyed by id).
    given_ids: Counter[str] = Counter()
    for i, (row, _path, where, _digest) in enumerate(kept):
        given = str(row.get("id") or "")
        if not given:
            continue
        given_ids[given] += 1
        ids[i] = given if given_ids[given] == 1 else f"{given}-{given_ids[given]}"
        if given_ids[given] > 1:
            findings.append(Finding("duplicate-id", where, f"id {given!r} repeats an earlier "
                                    f"row; this one becomes {ids[i]!r}"))
    records = [
        Record(
            id=rid,
            safety_label=row["safety_label"],
            category=row["category"],
            source=row["source"],
            split=row.get("split") or "test",
            content_hash=digest,
            locator=where,
            text=str(row.get("text") or ""),
            reader=path.read_bytes,
            # A folder written by the official scripts names images <split>/images/<stem>.png.
            archive_key=f"{row.get('split') or 'test'}/{Path(str(row['file_name'])).stem}",
        )
        for (row, path, where, digest), rid in zip(kept, ids)
    ]
    return Dataset(name=root.name, spec=spec or str(root), records=records, findings=findings,
                   description=f"local folder {root} ({manifest.name})")

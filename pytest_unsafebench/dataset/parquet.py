"""Parquet files in the layout of the hub dataset ``yiting/UnsafeBench``.

Columns: ``image`` (struct ``{bytes, path}``, the hub's Image feature; plain binary also works),
``safety_label`` (Safe/Unsafe), ``category`` (one of the 11), ``source`` (Laion5B/Lexica),
optional ``text`` and ``split``. Without a ``split`` column the split comes from the file name
(``train-00000-of-00002.parquet``, ``test-00000-of-00001.parquet``) or its folder (``train/``).

The row-to-record logic here is shared with :mod:`.hub`: whole-file problems are usage errors,
row problems become findings (via :func:`.folder.check_row`) and exclude the row.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..taxonomy import SPLITS
from .folder import check_row
from .records import Dataset, Finding, Record, assign_ids, content_hash

REQUIRED_COLUMNS = ("image", "safety_label", "category", "source")
# Schema metadata key of files that declare themselves synthetic (the stand-in, standin.py).
SYNTHETIC_KEY = "unsafebench_synthetic"
LAYOUT = (
    "expected the layout of the hub dataset yiting/UnsafeBench: columns image "
    "(struct {bytes: binary, path: string}), safety_label (Safe/Unsafe), category (one of the "
    "11), source (Laion5B/Lexica), optional text and split"
)
INSTALL_HINT = "pip install 'pytest-unsafebench[parquet]'"
_SPLIT_NAME = re.compile(rf"^({'|'.join(SPLITS)})(?:[-_.]|$)")
# Row groups kept in memory by a dataset's lazy reader. Two, not one, so that threads decoding
# neighbouring records across a row-group boundary do not re-read the same group in turn.
_CACHED_GROUPS = 2


# ---- shared with hub.py ------------------------------------------------------------------


@dataclass(frozen=True)
class PendingRow:
    """A row that passed the checks, waiting for its content-derived id."""

    row: dict[str, Any]
    locator: str
    digest: str
    reader: Callable[[], bytes]
    archive_key: str = ""


def archive_key(row: dict[str, Any], split: str, index: int) -> str:
    """The record's ``archive_key``: the official scripts name a row's image after its ``id``
    column where the dataset has one, else its index within the split (counting every row,
    excluded ones too), as ``item.get("id", str(idx))`` in UnsafeBench unsafe_datasets.py."""
    given = row.get("id")
    return f"{split}/{index if given is None or given == '' else given}"


def row_finding(row: dict[str, Any], data: bytes | None, locator: str) -> Finding | None:
    """The first problem of a hub-layout row (``split`` already filled in), if any."""
    missing = [c for c in (*REQUIRED_COLUMNS[1:], "split") if not row.get(c)]
    if missing:
        return Finding("bad-row", locator, f"empty or missing {missing}")
    if data is None:
        return Finding("bad-row", locator, "image bytes are null (no embedded image in the row)")
    return check_row(row, locator)


def label_names(features: dict[str, Any]) -> dict[str, list[str]]:
    """Column -> class names for columns stored as Hugging Face ClassLabel integers."""
    out = {}
    for column in REQUIRED_COLUMNS[1:]:
        spec = features.get(column)
        names = spec.get("names") if isinstance(spec, dict) else getattr(spec, "names", None)
        if names:
            out[column] = list(names)
    return out


def apply_label_names(row: dict[str, Any], names: dict[str, list[str]]) -> dict[str, Any]:
    for column, choices in names.items():
        value = row.get(column)
        if isinstance(value, int) and 0 <= value < len(choices):
            row[column] = choices[value]
    return row


def build_records(pending: Sequence[PendingRow]) -> list[Record]:
    """Records in the given order; ids from content hashes (duplicates get a suffix)."""
    ids = assign_ids([p.digest for p in pending])
    return [
        Record(
            id=rid,
            safety_label=p.row["safety_label"],
            category=p.row["category"],
            source=p.row["source"],
            split=p.row["split"],
            content_hash=p.digest,
            locator=p.locator,
            text=str(p.row.get("text") or ""),
            reader=p.reader,
            archive_key=p.archive_key,
        )
        for p, rid in zip(pending, ids)
    ]


# ---- parquet -----------------------------------------------------------------------------


def import_pyarrow() -> Any:
    """``pyarrow.parquet``, or a DatasetError saying how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(
            f"reading UnsafeBench parquet files needs pyarrow: {INSTALL_HINT}"
        ) from None
    return pq


def _find_files(path: Path) -> tuple[Path, list[Path]]:
    """(root that locators are relative to, parquet files in sorted path order)."""
    if path.is_file():
        return path.parent, [path]
    files = sorted(
        p for p in path.rglob("*.parquet")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise DatasetError(f"{path}: no *.parquet files in this folder; {LAYOUT}")
    return path, files


def _split_of(file: Path) -> str | None:
    """``train``/``test`` from a file name prefix, else from a folder named exactly so."""
    match = _SPLIT_NAME.match(file.stem)
    if match:
        return match.group(1)
    return file.parent.name if file.parent.name in SPLITS else None


def bytes_column(table: Any) -> list[bytes | None]:
    """The image bytes of a table read with ``image`` or ``image.bytes``, nulls kept."""
    import pyarrow as pa

    column = table.column("image").combine_chunks()
    if pa.types.is_struct(column.type):
        column = column.flatten()[column.type.get_field_index("bytes")]
    values: list[bytes | None] = column.to_pylist()  # pyarrow is untyped
    return values


def _image_columns(schema: Any) -> list[str] | None:
    """The columns to read for the image bytes, or None if ``image`` has the wrong type."""
    import pyarrow as pa

    kind = schema.field("image").type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return ["image"]
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        bytes_type = kind.field(kind.get_field_index("bytes")).type
        if pa.types.is_binary(bytes_type) or pa.types.is_large_binary(bytes_type):
            return ["image.bytes"]
    return None


def _hf_features(schema: Any) -> dict[str, Any]:
    """The Hugging Face features stored in the parquet schema metadata, if any."""
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        info = json.loads(raw) if raw else {}
        features = info.get("info", {}).get("features", {})
    except (ValueError, AttributeError, RecursionError):
        return {}
    return features if isinstance(features, dict) else {}


class RowGroupReader:
    """Lazy, thread-safe access to image bytes by (file, row group, row), caching recent groups.

    The engine reads records in order, so nearly every read hits the cached group.
    """

    def __init__(self, files: Sequence[Path], columns: list[list[str]]) -> None:
        self._files = list(files)
        self._columns = columns  # not a copy: load_parquet fills it in file by file
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], list[bytes | None]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {"_files": self._files, "_columns": self._columns}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["_files"], state["_columns"])  # type: ignore[misc]

    def source(self, file_index: int) -> tuple[Path, tuple[str, ...]]:
        """The file behind ``file_index`` and the image columns read from it: what a worker in
        another process needs to read the same bytes itself (executors.ImageRef)."""
        return self._files[file_index], tuple(self._columns[file_index])

    def read(self, file_index: int, group: int, row: int) -> bytes:
        key = (file_index, group)
        with self._lock:
            values = self._cache.get(key)
            if values is None:
                pq = import_pyarrow()
                with self._files[file_index].open("rb") as fh:
                    table = pq.ParquetFile(fh).read_row_group(
                        group, columns=self._columns[file_index])
                values = bytes_column(table)
                self._cache[key] = values
                while len(self._cache) > _CACHED_GROUPS:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
            data = values[row]
        if data is None:  # the file changed since it was loaded
            raise DatasetError(f"{self._files[file_index]}: row group {group}, row {row} "
                               "has no image bytes any more; was the file replaced mid-run?")
        return data


def load_parquet(path: Path, spec: str) -> Dataset:
    """Load one UnsafeBench parquet file, or every ``*.parquet`` under a folder (recursively).

    Streams: one row group at a time is read to hash the images; each record re-reads its
    bytes lazily. Records keep file order (files sorted by path, then rows in file order),
    which also fixes the suffixes of duplicate images' ids. Locators read
    ``train-00000-of-00002.parquet:row 17`` (path relative to the folder, rows from 0).
    """
    pq = import_pyarrow()
    import pyarrow as pa

    path = Path(path)
    root, files = _find_files(path)
    findings: list[Finding] = []
    pending: list[PendingRow] = []
    columns: list[list[str]] = []
    synthetic: list[str] = []  # notes of files that declare themselves synthetic (standin.py)
    split_rows: dict[str, int] = {}  # rows seen so far per split
    lazy = RowGroupReader(files, columns)  # ``columns`` is filled in below, file by file
    for file_index, file in enumerate(files):
        name = file.relative_to(root).as_posix()
        try:
            with file.open("rb") as fh:
                parquet = pq.ParquetFile(fh)
                schema = parquet.schema_arrow
                missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
                if missing:
                    raise DatasetError(f"{file}: missing column(s) {missing}; {LAYOUT}")
                image_columns = _image_columns(schema)
                if image_columns is None:
                    raise DatasetError(
                        f"{file}: column 'image' has type {schema.field('image').type}; {LAYOUT}")
                columns.append(image_columns)
                note = (schema.metadata or {}).get(SYNTHETIC_KEY.encode())
                if note:
                    synthetic.append(note.decode("utf-8", "replace"))
                has_split = "split" in schema.names
                file_split = _split_of(file)
                if not has_split and file_split is None:
                    raise DatasetError(
                        f"{file}: cannot tell the split; name the file train-*.parquet or "
                        "test-*.parquet (as on the hub, e.g. train-00000-of-00002.parquet), put "
                        "it in a train/ or test/ folder, or add a 'split' column"
                    )
                meta = [c for c in ("safety_label", "category", "source", "text", "split", "id")
                        if c in schema.names]
                names = label_names(_hf_features(schema))
                index = 0
                for group in range(parquet.metadata.num_row_groups):
                    table = parquet.read_row_group(group, columns=[*meta, *image_columns])
                    images = bytes_column(table)
                    rows = table.select(meta).to_pylist()
                    del table
                    for row_in_group, (row, data) in enumerate(zip(rows, images)):
                        locator = f"{name}:row {index}"
                        index += 1
                        row = apply_label_names(row, names)
                        row["split"] = row.get("split") or file_split
                        # Index within the split across its shards, in file order (the hub's).
                        split_index = split_rows.get(row["split"], 0)
                        split_rows[row["split"]] = split_index + 1
                        problem = row_finding(row, data, locator)
                        if problem:
                            findings.append(problem)
                            continue
                        assert data is not None  # row_finding reports null bytes
                        pending.append(PendingRow(
                            row, locator, content_hash(data),
                            partial(lazy.read, file_index, group, row_in_group),
                            archive_key(row, row["split"], split_index)))
        except (pa.ArrowException, OSError) as exc:
            raise DatasetError(f"{file}: cannot be read as parquet ({exc}); {LAYOUT}") from None
    label = path.parent.name if path.is_dir() and path.name == "data" else path.name
    description = f"UnsafeBench parquet files under {path} ({len(files)} file(s))"
    if synthetic:
        description = f"{synthetic[0]}; {len(synthetic)} of {len(files)} file(s) under {path}"
    return Dataset(name=label or str(path), spec=spec, records=build_records(pending),
                   findings=findings, synthetic=bool(synthetic), description=description)

"""Where the prediction pass runs: ``local`` (this process) or ``ray`` (a Ray cluster).

The ray executor only fills the cache; the local pass then runs against the warm cache, so the
tests and the report never know which executor computed a prediction. This module holds what
is not Ray-specific: the install check, and image *references*, so that workers read images
where they live instead of receiving their bytes through the driver.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from .dataset.demo import DemoRow
    from .dataset.records import Record

RAY_INSTALL_HINT = "pip install 'pytest-unsafebench[ray]'"


def require_ray() -> None:
    """A usage error, before any work, when ``--unsafebench-executor=ray`` cannot work here."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(f"--unsafebench-executor=ray needs Ray, which is not installed: "
                          f"{RAY_INSTALL_HINT}")


@dataclass(frozen=True)
class ImageRef:
    """Where a worker finds an image's encoded bytes.

    ``file``: a path; ``parquet``: file, image columns, row group and row; ``demo``: the demo
    generator's seed and row plan (a worker renders the bytes itself; ``path`` is the fallback
    when its output differs, e.g. another Pillow version); ``bytes``: shipped from the driver,
    for datasets that live only in the driver's process (the hub loader).
    """

    kind: str
    path: str = ""
    columns: tuple[str, ...] = ()
    group: int = 0
    row: int = 0
    demo: tuple[int, str, str, bool, str, int] | None = None  # seed + DemoRow fields
    data: bytes = b""


def image_ref(record: Record, demo_plan: dict[str, tuple[int, DemoRow]] | None = None) -> ImageRef:
    """The reference of a record, from how its dataset loader reads it."""
    from .dataset.parquet import RowGroupReader

    reader = record.reader
    owner = getattr(reader, "__self__", None)
    if isinstance(owner, Path) and getattr(reader, "__name__", "") == "read_bytes":
        if demo_plan is not None:
            planned = demo_plan.get(owner.with_suffix("").as_posix())
            if planned is not None:
                seed, row = planned
                return ImageRef("demo", path=str(owner), demo=(
                    seed, row.category, row.source, row.unsafe, row.split, row.index))
        return ImageRef("file", path=str(owner.resolve()))  # workers have their own cwd
    lazy = getattr(reader.func, "__self__", None) if isinstance(reader, partial) else None
    if isinstance(reader, partial) and isinstance(lazy, RowGroupReader):
        file_index, group, row = reader.args
        path, columns = lazy.source(file_index)
        return ImageRef("parquet", path=str(path.resolve()), columns=columns, group=group,
                        row=row)
    return ImageRef("bytes", data=record.read_bytes())


def demo_plan(root: Path, seed: int) -> dict[str, tuple[int, DemoRow]]:
    """Demo image path (without suffix) -> (seed, row plan), for :func:`image_ref`."""
    from .dataset.demo import demo_rows

    base = Path(root)
    return {(base / row.stem(seed)).as_posix(): (seed, row) for row in demo_rows(seed)}


class RefReader:
    """Reads references on a worker; keeps the row group last read per parquet file, as the
    driver's lazy reader does (work batches are consecutive records)."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, tuple[str, ...]], tuple[int, list[bytes | None]]] = {}
        self._lock = threading.Lock()  # decode threads share it; a group is read once

    def read(self, ref: ImageRef, content_hash: str) -> bytes:
        if ref.kind == "file":
            return Path(ref.path).read_bytes()
        if ref.kind == "bytes":
            return ref.data
        if ref.kind == "demo":
            data = _render_demo(ref)
            if hashlib.sha256(data).hexdigest() == content_hash:
                return data
            return Path(ref.path).read_bytes()
        if ref.kind == "parquet":
            return self._parquet(ref)
        raise ValueError(f"unknown image reference kind {ref.kind!r}")

    def _parquet(self, ref: ImageRef) -> bytes:
        from .dataset.parquet import bytes_column, import_pyarrow

        key = (ref.path, ref.columns)
        with self._lock:
            cached = self._groups.get(key)
            if cached is None or cached[0] != ref.group:
                pq = import_pyarrow()
                with open(ref.path, "rb") as fh:
                    table = pq.ParquetFile(fh).read_row_group(ref.group,
                                                              columns=list(ref.columns))
                cached = (ref.group, bytes_column(table))
                self._groups[key] = cached
        data = cached[1][ref.row]
        if data is None:
            raise DatasetError(f"{ref.path}: row group {ref.group}, row {ref.row} has no image "
                               "bytes any more; was the file replaced mid-run?")
        return data


def _render_demo(ref: ImageRef) -> bytes:
    from .dataset.demo import IMAGE_SIZE, DemoRow, encode_image, image_rng, render_image

    assert ref.demo is not None
    seed, category, source, unsafe, split, index = ref.demo
    row = DemoRow(category, source, unsafe, split, index)
    rng = image_rng(seed, row)
    image = render_image(row.category, row.source, row.unsafe, rng, IMAGE_SIZE)
    data, _ext = encode_image(image, row.source, rng)
    return data


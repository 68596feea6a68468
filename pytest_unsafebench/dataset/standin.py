"""A full-size synthetic stand-in for ``yiting/UnsafeBench``, in the hub's parquet layout.

It is NOT real UnsafeBench data: it exists to benchmark the plugin (throughput, memory, cache,
resume) at the real dataset's size and shape without the gated download.

Layout: ``folder/data/train-0000i-of-0000N.parquet`` and ``folder/data/test-00000-of-00001.parquet``
with columns ``image`` (struct ``{bytes: binary, path: string}``, the hub's Image feature),
``safety_label``, ``category``, ``source`` and ``text``; the split comes from the file name.

Counts at ``scale=1.0`` (those of ``yiting/UnsafeBench``): 10,146 rows, train 8,109 / test
2,037; Laion5B 3,228 Safe + 1,832 Unsafe, Lexica 2,870 Safe + 2,216 Unsafe. The test split's
per-category (Unsafe, Safe) counts are the third-party table's (it sums to 777 + 1,260 = 2,037).
What no source gives is filled in deterministically:

1. test per (source, label): the label's test total split between the sources in proportion to
   their overall counts for that label (rounded; Lexica takes the remainder);
2. test per (category, source, label): each category's test count split between the sources in
   proportion to step 1, by largest remainder so that every column sums exactly (ties: taxonomy
   order);
3. train per (source, label): overall count minus step 1;
4. train per (category, source, label): step 3 apportioned over the categories in proportion to
   that label's test counts per category (largest remainder, ties in taxonomy order), i.e. the
   assumption that every category has the same train/test ratio within a label.

``scale < 1`` multiplies every (split, category, source, label) stratum by ``scale`` and rounds,
keeping at least one row per non-empty stratum (tests use this).

Images: :func:`.demo.render_image` at a small base size, resized (bicubic) to a per-row size with
both sides in ``[256, max_side]`` and an aspect ratio in 0.6-1.7. Laion5B rows are JPEG (quality
70-85, :func:`.demo.encode_image`); Lexica rows are PNG up to 512 px on the long side and JPEG
quality 90 above it (PNG at 1,600 px is slow and several MB per image). Every row has its own
random generator keyed by (version, seed, split, category, source, label, index), and rows are
shuffled within a split by a seed-keyed permutation: the same seed gives byte-identical files
whatever the number of worker processes.

Files are written row group by row group (``rows_per_group`` rows each) to a hidden temporary
name and renamed into place, so memory stays bounded and a crash leaves no half-written shard.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..options import DEFAULT_SEED
from ..taxonomy import CATEGORIES, GENERATED_SOURCE, REAL_SOURCE, SAFE, SOURCES, UNSAFE
from .demo import GENERATOR_VERSION, encode_image, render_image
from .parquet import SYNTHETIC_KEY

STANDIN_VERSION = 1
BASE_SIZE = 128  # render size before the resize
MIN_SIDE = 256
ROWS_PER_SHARD = 4096  # train at full size -> 2 shards, test -> 1
PNG_MAX_SIDE = 512  # Lexica above this long side is JPEG quality 90
LEXICA_JPEG_QUALITY = 90
ASPECT_RANGE = (0.6, 1.7)

SPLIT_TOTALS = {"train": 8109, "test": 2037}
SOURCE_LABEL_TOTALS = {
    (REAL_SOURCE, SAFE): 3228, (REAL_SOURCE, UNSAFE): 1832,
    (GENERATED_SOURCE, SAFE): 2870, (GENERATED_SOURCE, UNSAFE): 2216,
}
# Third-party count of the test split, per category: (Unsafe, Safe).
TEST_CATEGORY_COUNTS: dict[str, tuple[int, int]] = {
    "Sexual": (150, 61), "Shocking": (114, 117), "Harassment": (40, 147),
    "Violence": (79, 114), "Self-harm": (29, 170), "Hate": (29, 170),
    "Public and personal health": (55, 100), "Deception": (50, 113), "Political": (91, 76),
    "Illegal activity": (88, 84), "Spam": (52, 108),
}

Stratum = tuple[str, str, str, str]  # split, category, source, label


def _apportion(total: int, weights: list[float]) -> list[int]:
    """Largest-remainder apportionment of ``total`` by ``weights`` (ties: first index first)."""
    s = float(sum(weights))
    exact = [total * w / s for w in weights]
    out = [int(np.floor(e)) for e in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def full_counts() -> dict[Stratum, int]:
    """Rows per (split, category, source, label) at scale 1.0 (see the module docstring)."""
    counts: dict[Stratum, int] = {}
    for li, label in enumerate((UNSAFE, SAFE)):
        test_cat = [TEST_CATEGORY_COUNTS[c][li] for c in CATEGORIES]
        test_total = sum(test_cat)
        label_total = sum(SOURCE_LABEL_TOTALS[(s, label)] for s in SOURCES)
        real_test = round(test_total * SOURCE_LABEL_TOTALS[(REAL_SOURCE, label)] / label_total)
        test_src = {REAL_SOURCE: real_test, GENERATED_SOURCE: test_total - real_test}
        # Step 2: split each category between the sources with exact column sums.
        share = real_test / test_total
        exact = [n * share for n in test_cat]
        real = [int(np.floor(e)) for e in exact]
        order = sorted(range(len(CATEGORIES)), key=lambda i: (-(exact[i] - real[i]), i))
        for i in order[: real_test - sum(real)]:
            real[i] += 1
        for ci, cat in enumerate(CATEGORIES):
            counts[("test", cat, REAL_SOURCE, label)] = real[ci]
            counts[("test", cat, GENERATED_SOURCE, label)] = test_cat[ci] - real[ci]
        for source in SOURCES:
            train = SOURCE_LABEL_TOTALS[(source, label)] - test_src[source]
            for cat, n in zip(CATEGORIES, _apportion(train, [float(x) for x in test_cat])):
                counts[("train", cat, source, label)] = n
    return counts


def plan_counts(scale: float = 1.0) -> dict[Stratum, int]:
    """Rows per stratum at ``scale`` (at least one per non-empty stratum)."""
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    return {k: (n if scale == 1 else max(1, round(n * scale))) if n else 0
            for k, n in full_counts().items()}


@dataclass(frozen=True)
class StandinRow:
    split: str
    category: str
    source: str
    label: str
    index: int  # within the stratum

    def rng(self, seed: int) -> np.random.Generator:
        key = [GENERATOR_VERSION, STANDIN_VERSION, seed, ("train", "test").index(self.split),
               CATEGORIES.index(self.category), SOURCES.index(self.source),
               int(self.label == UNSAFE), self.index]
        return np.random.default_rng(np.random.SeedSequence(key))


def _split_rows(counts: dict[Stratum, int], split: str, seed: int) -> list[StandinRow]:
    rows = [StandinRow(sp, c, s, lab, i) for (sp, c, s, lab), n in sorted(counts.items())
            if sp == split for i in range(n)]
    perm = np.random.default_rng(
        np.random.SeedSequence([STANDIN_VERSION, seed, ("train", "test").index(split)])
    ).permutation(len(rows))
    return [rows[int(i)] for i in perm]


def _image_size(rng: np.random.Generator, max_side: int) -> tuple[int, int]:
    lo = min(MIN_SIDE, max_side)
    long_side = int(rng.integers(lo, max_side + 1))
    aspect = float(np.exp(rng.uniform(np.log(ASPECT_RANGE[0]), np.log(ASPECT_RANGE[1]))))
    short = max(lo, int(round(long_side / max(aspect, 1 / aspect))))
    return (long_side, short) if aspect >= 1 else (short, long_side)


_CAPTION_STYLE = {REAL_SOURCE: ("photo", "snapshot", "stock photo", "picture"),
                  GENERATED_SOURCE: ("digital art", "render, 4k", "concept art", "illustration")}


def render_row(row: StandinRow, seed: int, max_side: int) -> dict[str, Any]:
    """One parquet row (a dict) for ``row``; a pure function of its arguments."""
    from PIL import Image

    rng = row.rng(seed)
    size = _image_size(rng, max_side)
    base = render_image(row.category, row.source, row.label == UNSAFE, rng, BASE_SIZE)
    img = base.resize(size, Image.Resampling.BICUBIC)
    if row.source == GENERATED_SOURCE and max(size) > PNG_MAX_SIDE:
        import io

        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=LEXICA_JPEG_QUALITY)
        data, ext = buf.getvalue(), "jpg"
    else:
        data, ext = encode_image(img, row.source, rng)
    styles = _CAPTION_STYLE[row.source]
    text = (f"{styles[int(rng.integers(len(styles)))]} about "
            f"{row.category.lower()}, synthetic #{row.index}")
    tag = int(rng.integers(1 << 30))
    name = f"{row.split}_{row.source.lower()}_{row.index:05d}_{tag:08x}.{ext}"
    return {"image": {"bytes": data, "path": name}, "safety_label": row.label,
            "category": row.category, "source": row.source, "text": text}


def _render_chunk(args: tuple[list[StandinRow], int, int]) -> list[dict[str, Any]]:
    rows, seed, max_side = args
    return [render_row(r, seed, max_side) for r in rows]


SYNTHETIC_NOTE = ("full-size synthetic stand-in for yiting/UnsafeBench (pytest_unsafebench."
                  "dataset.standin); rendered shapes, not real images")


def _schema() -> Any:
    import pyarrow as pa

    features = {
        "image": {"_type": "Image"},
        **{c: {"dtype": "string", "_type": "Value"}
           for c in ("safety_label", "category", "source", "text")},
    }
    meta = {"huggingface": json.dumps({"info": {"features": features}}, sort_keys=True),
            # Read back by the parquet loader: a stand-in must never pass for the real
            # dataset (no paper figures beside it, "SYNTHETIC DATA" in every report).
            SYNTHETIC_KEY: SYNTHETIC_NOTE}
    return pa.schema([
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("safety_label", pa.string()), ("category", pa.string()),
        ("source", pa.string()), ("text", pa.string()),
    ], metadata=meta)


def _groups(rows: list[StandinRow], seed: int, max_side: int, size: int,
            workers: int) -> Iterator[list[dict[str, Any]]]:
    chunks = [(rows[i:i + size], seed, max_side) for i in range(0, len(rows), size)]
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield _render_chunk(chunk)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        # Bounded look-ahead: at most 2 * workers groups in flight, results in order.
        pending: list[Any] = []
        it = iter(chunks)
        for chunk in it:
            pending.append(pool.submit(_render_chunk, chunk))
            if len(pending) >= 2 * workers:
                yield pending.pop(0).result()
        for fut in pending:
            yield fut.result()


def write_standin(folder: Path, scale: float = 1.0, seed: int = DEFAULT_SEED, max_side: int = 1600,
                  rows_per_group: int = 64, workers: int | None = None) -> dict[str, Any]:
    """Write the stand-in under ``folder/data/`` and return a summary (see the module doc).

    ``workers``: render processes (default: CPU count; 0 or 1 renders in this process). The
    output does not depend on it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    if max_side < 1:
        raise ValueError("max_side must be positive")
    workers = (os.cpu_count() or 1) if workers is None else workers
    counts = plan_counts(scale)
    data_dir = Path(folder) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    schema = _schema()
    summary: dict[str, Any] = {"rows": 0, "bytes": 0, "image_bytes": 0, "files": [],
                               "splits": {}, "sources": {}, "labels": {}, "scale": scale,
                               "seed": seed, "max_side": max_side}
    for split in ("train", "test"):
        rows = _split_rows(counts, split, seed)
        shards = max(1, -(-len(rows) // ROWS_PER_SHARD))
        per_shard = -(-len(rows) // shards)
        for shard in range(shards):
            part = rows[shard * per_shard:(shard + 1) * per_shard]
            name = f"{split}-{shard:05d}-of-{shards:05d}.parquet"
            tmp = data_dir / f".{name}.partial"
            with pq.ParquetWriter(tmp, schema, compression="none") as writer:
                for group in _groups(part, seed, max_side, rows_per_group, workers):
                    writer.write_table(pa.Table.from_pylist(group, schema=schema))
                    summary["image_bytes"] += sum(len(g["image"]["bytes"]) for g in group)
            os.replace(tmp, data_dir / name)
            summary["files"].append(name)
            summary["bytes"] += (data_dir / name).stat().st_size
        summary["splits"][split] = len(rows)
        summary["rows"] += len(rows)
    for stale in data_dir.glob("*.parquet"):  # shards of an earlier run with other counts
        if stale.name not in summary["files"] and stale.name.startswith(("train-", "test-")):
            stale.unlink()
    for (_split, _cat, source, label), n in sorted(counts.items()):
        summary["sources"].setdefault(source, {SAFE: 0, UNSAFE: 0})[label] += n
        summary["labels"][label] = summary["labels"].get(label, 0) + n
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def ensure_standin(folder: Path) -> Path:
    """The stand-in's ``data/`` folder under ``folder``, written first (full size, default
    seed; the summary goes to stderr) when it is not there yet: what the benchmarks share."""
    import sys

    data = Path(folder) / "data"
    if not data.is_dir():
        print(json.dumps(write_standin(folder), indent=1), file=sys.stderr)
    return data

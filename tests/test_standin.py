"""The full-size synthetic stand-in (benchmarks/make_standin.py), written small in tmp_path."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")

from PIL import Image

from pytest_unsafebench import load_dataset
from pytest_unsafebench.dataset.standin import (
    SOURCE_LABEL_TOTALS,
    SPLIT_TOTALS,
    TEST_CATEGORY_COUNTS,
    full_counts,
    plan_counts,
    write_standin,
)
from pytest_unsafebench.taxonomy import CATEGORIES, SAFE, SOURCES, UNSAFE

SCALE = 0.03  # ~309 rows: small, yet the one-per-stratum floor barely skews the shares
MAX_SIDE = 320


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((folder / "data").glob("*.parquet"))}


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("standin")
    return folder, write_standin(folder, scale=SCALE, max_side=MAX_SIDE, rows_per_group=16,
                                 workers=0)


def test_full_counts_match_the_protocol() -> None:
    counts = full_counts()
    assert sum(counts.values()) == 10146
    for split, total in SPLIT_TOTALS.items():
        assert sum(n for k, n in counts.items() if k[0] == split) == total
    for (source, label), total in SOURCE_LABEL_TOTALS.items():
        assert sum(n for k, n in counts.items() if k[2] == source and k[3] == label) == total
    for cat, (unsafe, safe) in TEST_CATEGORY_COUNTS.items():
        for label, want in ((UNSAFE, unsafe), (SAFE, safe)):
            assert sum(counts[("test", cat, s, label)] for s in SOURCES) == want
    assert all(n > 0 for n in counts.values())
    assert len(counts) == 2 * len(CATEGORIES) * len(SOURCES) * 2


def test_scaled_counts_are_proportional() -> None:
    full, small = full_counts(), plan_counts(0.1)
    for key, n in full.items():
        assert small[key] >= 1
        assert abs(small[key] - n * 0.1) <= 0.5 or small[key] == 1
    assert abs(sum(small.values()) - 1014.6) < 20


def test_loader_reads_it_back(standin: tuple[Path, dict]) -> None:
    folder, summary = standin
    names = sorted(p.name for p in (folder / "data").iterdir())
    assert names == ["test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
    ds = load_dataset(str(folder))
    assert ds.findings == []
    # it says what it is, wherever it is copied: never mistaken for the real dataset
    assert ds.synthetic and "synthetic stand-in" in ds.description
    assert len(ds.records) == summary["rows"] == sum(plan_counts(SCALE).values())
    by_split = Counter(r.split for r in ds.records)
    assert dict(by_split) == summary["splits"]
    want = Counter()
    for (split, cat, source, label), n in plan_counts(SCALE).items():
        want[(split, cat, source, label)] += n
    got = Counter((r.split, r.category, r.source, r.safety_label) for r in ds.records)
    assert got == want
    # Proportional to the real dataset (within rounding and the one-per-stratum floor).
    assert by_split["train"] / len(ds.records) == pytest.approx(8109 / 10146, abs=0.02)
    unsafe = sum(r.safety_label == UNSAFE for r in ds.records) / len(ds.records)
    assert unsafe == pytest.approx(4048 / 10146, abs=0.02)
    assert len(load_dataset(str(folder), split="test").records) == by_split["test"]


def test_images_decode_with_varied_sizes(standin: tuple[Path, dict]) -> None:
    folder, _ = standin
    ds = load_dataset(str(folder))
    sizes, formats = set(), Counter()
    for rec in ds.records:
        img = Image.open(io.BytesIO(rec.reader()))
        img.load()
        assert all(256 <= side <= MAX_SIDE for side in img.size)
        assert 0.6 / 1.01 <= img.size[0] / img.size[1] <= 1.7 * 1.01
        sizes.add(img.size)
        formats[(rec.source, img.format)] += 1
        assert rec.text
    assert len(sizes) > len(ds.records) // 3
    assert formats[("Laion5B", "PNG")] == 0
    assert formats[("Lexica", "PNG")] > 0  # max_side 320 <= 512: Lexica stays PNG


def test_same_seed_same_bytes(standin: tuple[Path, dict], tmp_path: Path) -> None:
    folder, _ = standin
    # Different worker count and row-group size would change the layout, so keep the groups;
    # the worker count must not matter.
    write_standin(tmp_path / "again", scale=SCALE, max_side=MAX_SIDE, rows_per_group=16,
                  workers=2)
    assert _hashes(tmp_path / "again") == _hashes(folder)
    write_standin(tmp_path / "other", scale=SCALE, seed=7, max_side=MAX_SIDE, rows_per_group=16,
                  workers=0)
    assert _hashes(tmp_path / "other") != _hashes(folder)


def test_large_lexica_is_jpeg(tmp_path: Path) -> None:
    from pytest_unsafebench.dataset.standin import StandinRow, render_row

    row = render_row(StandinRow("train", "Spam", "Lexica", UNSAFE, 0), 2023, 1600)
    img = Image.open(io.BytesIO(row["image"]["bytes"]))
    assert img.format == ("JPEG" if max(img.size) > 512 else "PNG")
    assert row["image"]["path"].endswith(".jpg" if img.format == "JPEG" else ".png")


def test_ensure_standin_reuses_an_existing_one(standin: tuple[Path, dict]) -> None:
    from pytest_unsafebench.dataset.standin import ensure_standin

    folder, _ = standin
    before = {p.name: p.stat().st_mtime_ns for p in (folder / "data").iterdir()}
    assert ensure_standin(folder) == folder / "data"
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "data").iterdir()} == before

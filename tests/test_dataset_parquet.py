"""Hub-layout parquet files (yiting/UnsafeBench) and the hub loader, all built in tmp_path."""

from __future__ import annotations

import io
import json
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from PIL import Image  # noqa: E402

from pytest_unsafebench.dataset import load_dataset  # noqa: E402
from pytest_unsafebench.dataset.hub import load_hub  # noqa: E402
from pytest_unsafebench.dataset.parquet import load_parquet  # noqa: E402
from pytest_unsafebench.dataset.records import content_hash  # noqa: E402
from pytest_unsafebench.errors import DatasetError  # noqa: E402
from pytest_unsafebench.taxonomy import CATEGORIES, LABELS, SOURCES  # noqa: E402


def _png(n: int) -> bytes:
    """A distinct small PNG for every n."""
    img = Image.new("RGB", (6, 5), (n % 251, (n * 7) % 251, (n * 13) % 251))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _row(n: int, **over) -> dict:
    row = {
        "image": {"bytes": _png(n), "path": f"{n}.png"},
        "safety_label": LABELS[n % 2],
        "category": CATEGORIES[n % 3],
        "source": SOURCES[(n // 2) % 2],
        "text": f"caption {n}",
    }
    return row | over


def _write(path: Path, rows: list[dict], row_group_size: int = 3, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, **kw), path, row_group_size=row_group_size)
    return path


@pytest.fixture()
def hub_copy(tmp_path: Path) -> dict:
    """A local copy in the hub layout: data/train-0000{0,1}-of-00002.parquet and data/test-*."""
    data = tmp_path / "UnsafeBench" / "data"
    train0 = [_row(n) for n in range(0, 7)]
    train1 = [_row(n) for n in range(7, 12)]
    test = [_row(n) for n in range(100, 110)]
    test[2] = _row(102, category="self-harm")
    test[4] = _row(104, safety_label="unsafe")
    test[5] = _row(105, source="LAION")
    test[6] = _row(106, image={"bytes": None, "path": "gone.png"})
    test[7] = _row(107, image=None)
    test[8] = _row(108, category=None)
    _write(data / "train-00000-of-00002.parquet", train0)
    _write(data / "train-00001-of-00002.parquet", train1)
    _write(data / "test-00000-of-00001.parquet", test)
    good_test = [r for i, r in enumerate(test) if i not in (2, 4, 5, 6, 7, 8)]
    return {"root": tmp_path / "UnsafeBench", "data": data, "train": train0 + train1,
            "test": test, "good_test": good_test}


def test_records_splits_labels_and_locators(hub_copy):
    ds = load_parquet(hub_copy["data"], spec="x")
    assert ds.name == "UnsafeBench"  # a data/ folder is named after its parent
    assert ds.spec == "x"
    test = [r for r in ds.records if r.split == "test"]
    train = [r for r in ds.records if r.split == "train"]
    assert len(train) == 12 and len(test) == 4
    # Files in sorted path order (test-* before train-*), rows in file order.
    assert [r.split for r in ds.records] == ["test"] * 4 + ["train"] * 12
    assert [r.text for r in train] == [f"caption {n}" for n in range(12)]
    for rec, row in zip(test, hub_copy["good_test"]):
        assert (rec.safety_label, rec.category, rec.source) == (
            row["safety_label"], row["category"], row["source"])
    assert test[0].locator == "test-00000-of-00001.parquet:row 0"
    assert test[-1].locator == "test-00000-of-00001.parquet:row 9"
    assert train[7].locator == "train-00001-of-00002.parquet:row 0"
    assert ds.counts()["images"] == 16


def test_locators_are_relative_to_the_folder_given(hub_copy):
    ds = load_parquet(hub_copy["root"], spec="x")
    assert ds.records[0].locator == "data/test-00000-of-00001.parquet:row 0"


def test_ids_are_stable_and_content_derived(hub_copy):
    first = load_parquet(hub_copy["data"], spec="x")
    second = load_parquet(hub_copy["data"], spec="x")
    assert [r.id for r in first.records] == [r.id for r in second.records]
    assert first.fingerprint == second.fingerprint
    for rec in first.records:
        assert rec.content_hash == content_hash(rec.read_bytes())
        assert rec.id == rec.content_hash[:16]
    assert len({r.id for r in first.records}) == len(first.records)


def test_duplicate_images_get_suffixed_ids(tmp_path):
    _write(tmp_path / "test.parquet", [_row(1), _row(2), _row(1, text="again")])
    ids = [r.id for r in load_parquet(tmp_path, spec="x").records]
    assert ids[2] == f"{ids[0]}-2" and ids[1] != ids[0]


def test_lazy_reading_returns_the_original_bytes(hub_copy):
    ds = load_parquet(hub_copy["data"], spec="x")
    expected = {content_hash(r["image"]["bytes"]): r["image"]["bytes"]
                for r in hub_copy["train"] + hub_copy["good_test"]}
    # In order, in reverse order (cache misses) and from a thread pool.
    for rec in [*ds.records, *reversed(ds.records)]:
        assert rec.read_bytes() == expected[rec.content_hash]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda r: r.read_bytes(), ds.records * 4))
    assert got == [expected[r.content_hash] for r in ds.records * 4]
    img = ds.records[0].load_image()
    assert img.mode == "RGB" and img.size == (6, 5)


def test_lazy_reader_keeps_few_row_groups(hub_copy):
    ds = load_parquet(hub_copy["data"], spec="x")
    for rec in ds.records:
        rec.read_bytes()
    cache = ds.records[0].reader.func.__self__._cache
    assert 1 <= len(cache) <= 2


def test_row_problems_are_findings_and_excluded(hub_copy):
    ds = load_parquet(hub_copy["data"], spec="x")
    got = {f.locator: f for f in ds.findings}
    name = "test-00000-of-00001.parquet"
    assert {loc: f.kind for loc, f in got.items()} == {
        f"{name}:row 2": "unknown-category",
        f"{name}:row 4": "unknown-label",
        f"{name}:row 5": "unknown-source",
        f"{name}:row 6": "bad-row",
        f"{name}:row 7": "bad-row",
        f"{name}:row 8": "bad-row",
    }
    assert "did you mean 'Self-harm'" in got[f"{name}:row 2"].detail
    assert "null" in got[f"{name}:row 6"].detail
    assert "category" in got[f"{name}:row 8"].detail
    assert all(f.excluded for f in ds.findings)
    assert not any(r.locator in got for r in ds.records)


def test_single_file_and_binary_image_column(tmp_path):
    rows = [{"image": _png(n), "safety_label": "Safe", "category": "Spam", "source": "Lexica"}
            for n in range(4)]
    file = _write(tmp_path / "test-00000-of-00001.parquet", rows)
    ds = load_parquet(file, spec=str(file))
    assert len(ds.records) == 4 and {r.split for r in ds.records} == {"test"}
    assert ds.records[3].read_bytes() == _png(3)
    assert ds.records[3].text == ""


def test_split_column_wins_and_is_checked(tmp_path):
    rows = [_row(0, split="train"), _row(1, split="test"), _row(2, split="validation"),
            _row(3, split=None)]
    _write(tmp_path / "unsplit.parquet", rows)
    ds = load_parquet(tmp_path, spec="x")
    assert [r.split for r in ds.records] == ["train", "test"]
    assert [(f.kind, f.locator) for f in ds.findings] == [
        ("unknown-split", "unsplit.parquet:row 2"), ("bad-row", "unsplit.parquet:row 3")]


def test_split_from_folder_name(tmp_path):
    # The layout of the hub's automatic parquet conversion: default/train/0000.parquet.
    _write(tmp_path / "default" / "train" / "0000.parquet", [_row(0), _row(1)])
    _write(tmp_path / "default" / "test" / "0000.parquet", [_row(2)])
    ds = load_parquet(tmp_path, spec="x")
    assert sorted(r.split for r in ds.records) == ["test", "train", "train"]


def test_hidden_folders_are_skipped(tmp_path):
    _write(tmp_path / "test.parquet", [_row(0)])
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "junk.parquet").write_bytes(b"not parquet")
    assert len(load_parquet(tmp_path, spec="x").records) == 1


def test_class_label_integers_are_mapped(tmp_path):
    features = {"safety_label": {"names": ["Safe", "Unsafe"], "_type": "ClassLabel"}}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    table = pa.Table.from_pylist([_row(0, safety_label=1), _row(1, safety_label=0)])
    table = table.replace_schema_metadata(meta)
    pq.write_table(table, tmp_path / "test.parquet")
    ds = load_parquet(tmp_path, spec="x")
    assert [r.safety_label for r in ds.records] == ["Unsafe", "Safe"]


def test_file_without_split_is_an_error(tmp_path):
    _write(tmp_path / "part-0.parquet", [_row(0)])
    with pytest.raises(DatasetError, match="part-0.parquet") as info:
        load_parquet(tmp_path, spec="x")
    assert "train-" in str(info.value) and "split" in str(info.value)


def test_not_parquet_is_an_error(tmp_path):
    (tmp_path / "test-00000-of-00001.parquet").write_bytes(b"PK\x03\x04 surely not parquet")
    with pytest.raises(DatasetError, match=r"test-00000-of-00001\.parquet.*yiting/UnsafeBench"):
        load_parquet(tmp_path, spec="x")


def test_missing_columns_is_an_error(tmp_path):
    _write(tmp_path / "test.parquet", [{"image": {"bytes": _png(0), "path": "a"}, "label": 1}])
    with pytest.raises(DatasetError) as info:
        load_parquet(tmp_path, spec="x")
    message = str(info.value)
    assert "test.parquet" in message
    assert "['safety_label', 'category', 'source']" in message
    assert "yiting/UnsafeBench" in message


def test_wrong_image_type_is_an_error(tmp_path):
    _write(tmp_path / "test.parquet", [_row(0, image="0.png")])
    with pytest.raises(DatasetError, match="column 'image' has type string"):
        load_parquet(tmp_path, spec="x")


def test_folder_without_parquet_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match=r"no \*\.parquet"):
        load_parquet(tmp_path, spec="x")


def test_missing_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    _write(tmp_path / "test.parquet", [_row(0)])
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DatasetError, match=r"pip install 'pytest-unsafebench\[parquet\]'"):
        load_parquet(tmp_path, spec="x")


def test_load_dataset_dispatches_and_filters(hub_copy):
    folder = str(hub_copy["root"])
    wanted = CATEGORIES[:2]
    full = load_dataset(folder, split="test", categories=wanted)
    assert full.records and all(r.split == "test" and r.category in wanted
                                for r in full.records)
    train = load_dataset(folder, split="train", categories=wanted, limit=5, seed=7)
    assert len(train.records) == 5
    assert all(r.split == "train" and r.category in wanted for r in train.records)
    again = load_dataset(folder, split="train", categories=wanted, limit=5, seed=7)
    assert [r.id for r in again.records] == [r.id for r in train.records]
    assert len(load_dataset(folder, limit=100).records) == 16
    assert load_dataset(str(hub_copy["data"] / "test-00000-of-00001.parquet")).findings


# ---- hub ---------------------------------------------------------------------------------


def test_hub_without_datasets_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DatasetError) as info:
        load_hub("yiting/UnsafeBench", cache_dir=tmp_path)
    assert "pytest-unsafebench[hub]" in str(info.value)
    assert "parquet" in str(info.value)


def _fake_datasets(load) -> types.ModuleType:
    fake = types.ModuleType("datasets")
    fake.__version__ = "4.0.0"  # a release that never runs dataset scripts on its own
    fake.load_dataset = load
    fake.Image = lambda decode=True: ("Image", decode)
    return fake


@pytest.mark.parametrize("exc", [
    Exception("Dataset 'yiting/UnsafeBench' is a gated dataset on the Hub. You must be "
              "authenticated to access it."),
    type("GatedRepoError", (Exception,), {})("Access to this resource is restricted."),
    OSError("401 Client Error: Unauthorized for url: https://huggingface.co/api/datasets"),
    ConnectionError("Couldn't reach 'yiting/UnsafeBench' on the Hub (ConnectionError)"),
])
def test_hub_access_problems_explain_what_to_do(monkeypatch, tmp_path, exc):
    def load(repo_id, **kw):
        raise exc

    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(load))
    with pytest.raises(DatasetError) as info:
        load_dataset("hf:yiting/UnsafeBench", cache_dir=tmp_path)
    message = str(info.value)
    assert "https://huggingface.co/datasets/yiting/UnsafeBench" in message
    assert "huggingface-cli login" in message and "HF_TOKEN" in message
    assert "--unsafebench-dataset" in message and "parquet" in message


def test_hub_errors_never_echo_the_token(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_sekrit_value_123")

    def load(repo_id, **kw):
        raise Exception("403 Forbidden for token hf_sekrit_value_123")

    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(load))
    with pytest.raises(DatasetError) as info:
        load_hub("yiting/UnsafeBench", cache_dir=tmp_path)
    assert "hf_sekrit_value_123" not in str(info.value)
    assert "huggingface-cli login" in str(info.value)


def test_hub_other_errors_still_point_at_a_local_copy(monkeypatch, tmp_path):
    def load(repo_id, **kw):
        raise ValueError("Unknown split or config")

    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(load))
    with pytest.raises(DatasetError) as info:
        load_hub("yiting/UnsafeBench", cache_dir=tmp_path)
    message = str(info.value)
    assert "Unknown split or config" in message and "local copy" in message
    assert "huggingface-cli" not in message


class _FakeSplit:
    """Just enough of datasets.Dataset: columns, features, cast_column, iteration, indexing."""

    def __init__(self, rows: list[dict], features: dict | None = None) -> None:
        self._rows = rows
        self.column_names = list(rows[0])
        self.features = features or {}
        self.cast = None

    def cast_column(self, column, feature):
        assert column == "image"
        out = _FakeSplit(self._rows, self.features)
        out.cast = feature
        return out

    def __len__(self):
        return len(self._rows)

    def __iter__(self):
        assert self.cast == ("Image", False), "image bytes must stay encoded"
        return (dict(r) for r in self._rows)

    def __getitem__(self, index):
        return dict(self._rows[index])


def test_hub_rows_become_the_same_records_as_the_parquet_copy(monkeypatch, tmp_path, hub_copy):
    splits = {"train": _FakeSplit(hub_copy["train"]), "test": _FakeSplit(hub_copy["test"]),
              "validation": _FakeSplit([_row(500)])}
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(lambda repo_id, **kw: splits))
    ds = load_hub("yiting/UnsafeBench", cache_dir=tmp_path)
    local = load_parquet(hub_copy["data"], spec="x")
    # archive_key too: archived VLM responses match either copy on split and row index
    assert [(r.id, r.split, r.safety_label, r.category, r.source, r.archive_key)
            for r in ds.records] == [(r.id, r.split, r.safety_label, r.category, r.source,
                                      r.archive_key) for r in local.records]
    assert all(r.archive_key.startswith(f"{r.split}/") for r in ds.records)
    assert ds.records[0].locator == "yiting/UnsafeBench[test]:row 0"
    assert ds.spec == "hf:yiting/UnsafeBench"
    for rec in ds.records:
        assert content_hash(rec.read_bytes()) == rec.content_hash
    kinds = sorted(f.kind for f in ds.findings)
    assert kinds == sorted([f.kind for f in local.findings] + ["unknown-split"])
    assert "yiting/UnsafeBench[validation]" in {f.locator for f in ds.findings}


def test_hub_missing_columns_is_an_error(monkeypatch, tmp_path):
    splits = {"test": _FakeSplit([{"image": None, "label": 1}])}
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(lambda repo_id, **kw: splits))
    with pytest.raises(DatasetError, match=r"\[test\]: missing column"):
        load_hub("yiting/UnsafeBench", cache_dir=tmp_path)

"""TensorFlow-free reading of LAION's Keras SavedModel (classifiers/keras_savedmodel.py).

The conversion checks run on the genuine ``clip_autokeras_binary_nsfw.zip`` from the
``reference_dir`` fixture (skipped when absent); the hostile-zip check needs no reference file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pytest_unsafebench.classifiers import clip_heads as ch  # noqa: E402
from pytest_unsafebench.classifiers import keras_savedmodel as ks  # noqa: E402
from pytest_unsafebench.errors import ClassifierLoadError  # noqa: E402

INDEX = "clip_autokeras_binary_nsfw/variables/variables.index"
DATA = "clip_autokeras_binary_nsfw/variables/variables.data-00000-of-00001"


@pytest.fixture(scope="module")
def genuine_zip(reference_dir: Path) -> Path:
    return reference_dir / "weights" / "laion-nsfw" / "clip_autokeras_binary_nsfw.zip"


@pytest.fixture(scope="module")
def converted(genuine_zip: Path) -> dict[str, np.ndarray]:
    return ks.convert_nsfw_zip(genuine_zip)


def _rezip(genuine: Path, out: Path, **replace: bytes) -> Path:
    """Copy of the genuine zip with some members' bytes replaced (keys: INDEX / DATA)."""
    names = {"index": INDEX, "data": DATA}
    new = {names[k]: v for k, v in replace.items()}
    with zipfile.ZipFile(genuine) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, new.get(info.filename, src.read(info)))
    return out


def _member(genuine: Path, name: str) -> bytes:
    with zipfile.ZipFile(genuine) as zf:
        return zf.read(name)


def test_genuine_variables_are_found(genuine_zip: Path) -> None:
    names = set(ks.read_savedmodel_zip(genuine_zip))
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    assert {f"layer_with_weights-1/{v}{suffix}" for v in ("mean", "variance", "count")} <= names
    assert {f"layer_with_weights-{k}/{v}{suffix}"
            for k in range(2, 6) for v in ("kernel", "bias")} <= names
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" not in names  # a string entry: skipped


def test_genuine_zip_converts_to_port_shapes(converted: dict[str, np.ndarray]) -> None:
    shapes = {k: v.shape for k, v in converted.items()}
    assert shapes == {
        "norm.mean": (768,), "norm.variance": (768,),
        "linear_1.weight": (64, 768), "linear_1.bias": (64,),
        "linear_2.weight": (512, 64), "linear_2.bias": (512,),
        "linear_3.weight": (256, 512), "linear_3.bias": (256,),
        "linear_4.weight": (1, 256), "linear_4.bias": (1,),
    }
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in converted.values())
    assert (converted["norm.variance"] > 0).all()


def test_converted_head_loads_strictly_and_scores(converted: dict[str, np.ndarray]) -> None:
    state = {k: torch.from_numpy(v) for k, v in converted.items()}
    head = ch._nsfw_module(state)
    head.load_state_dict(state, strict=True)
    x = torch.nn.functional.normalize(torch.randn(8, 768, generator=torch.Generator()
                                                  .manual_seed(0)), dim=-1)
    with torch.no_grad():
        p = torch.sigmoid(head.eval()(x))[:, 0]
    assert ((p > 0) & (p < 1)).all()
    assert len(set(p.tolist())) > 1


def test_hostile_member_paths_are_refused(tmp_path: Path) -> None:
    for bad in ("../x", "a/../../x", "/etc/x"):
        path = tmp_path / "hostile.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("m/variables/variables.index", b"")
            zf.writestr(zipfile.ZipInfo(bad), b"boom")
        with pytest.raises(ClassifierLoadError, match="refusing a zip"):
            ks.read_savedmodel_zip(path)


def test_truncated_index_is_a_clear_error(genuine_zip: Path, tmp_path: Path) -> None:
    index = _member(genuine_zip, INDEX)
    bad = _rezip(genuine_zip, tmp_path / "t.zip", index=index[: len(index) // 2])
    with pytest.raises(ks.SavedModelFormatError, match="variables.index is truncated"):
        ks.convert_nsfw_zip(bad)


def test_compressed_block_is_refused(genuine_zip: Path, tmp_path: Path) -> None:
    index = bytearray(_member(genuine_zip, INDEX))
    footer = bytes(index[-48:])
    _, pos = ks._varint(footer, 0, 40, "")
    _, pos = ks._varint(footer, pos, 40, "")
    offset, pos = ks._varint(footer, pos, 40, "")
    size, _ = ks._varint(footer, pos, 40, "")
    index[offset + size] = 1  # the index block's trailer: snappy
    bad = _rezip(genuine_zip, tmp_path / "c.zip", index=bytes(index))
    with pytest.raises(ks.SavedModelFormatError, match="compression type 1"):
        ks.convert_nsfw_zip(bad)


def test_corrupt_data_fails_its_checksum(genuine_zip: Path, tmp_path: Path) -> None:
    data = bytearray(_member(genuine_zip, DATA))
    data[len(data) // 2] ^= 0xFF
    bad = _rezip(genuine_zip, tmp_path / "d.zip", data=bytes(data))
    with pytest.raises(ks.SavedModelFormatError, match="crc32c mismatch"):
        ks.convert_nsfw_zip(bad)


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "x.zip"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(ks.SavedModelFormatError, match="not a readable zip"):
        ks.read_savedmodel_zip(path)

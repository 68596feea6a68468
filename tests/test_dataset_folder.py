"""The local-folder loader and image decoding, fed every kind of bad input (all in tmp_path)."""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_unsafebench.dataset import load_dataset
from pytest_unsafebench.dataset.folder import load_folder
from pytest_unsafebench.dataset.images import ImageProblem, decode_image
from pytest_unsafebench.dataset.records import content_hash
from pytest_unsafebench.errors import DatasetError

COLUMNS = ["file_name", "safety_label", "category", "source"]


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(size=(32, 24), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _bomb_png(width=100_000, height=100_000) -> bytes:
    """A ~70-byte PNG whose header claims width x height RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))


def _palette_with_transparency() -> bytes:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 200, 30, 30] + [0, 0, 0] * 254)
    img.putpixel((0, 0), 0)
    return _encode(img, "PNG", transparency=0)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (8, 8), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


GOOD_JPEG = _encode(_noise(), "JPEG", quality=90)
GOOD_PNG = _encode(_noise(seed=1), "PNG")

# name -> (bytes, expected ImageProblem kind)
BAD_IMAGES = {
    "random.png": (np.random.default_rng(3).bytes(600), "unreadable"),
    "truncated.jpg": (GOOD_JPEG[: len(GOOD_JPEG) // 2], "truncated"),
    "truncated.png": (GOOD_PNG[: len(GOOD_PNG) // 2], "truncated"),
    "empty.png": (b"", "empty-file"),
    "bomb.png": (_bomb_png(), "decompression-bomb"),
}
# name -> bytes of images that decode after a documented conversion
CONVERTED = {
    "cmyk.jpg": _encode(_noise().convert("CMYK"), "JPEG"),
    "deep.png": _encode(Image.fromarray(
        (np.arange(16 * 16) * 257).astype(np.uint16).reshape(16, 16)), "PNG"),
    "palette.png": _palette_with_transparency(),
    "animated.gif": _animated_gif(),
}


def _folder(root: Path, rows: list[dict], files: dict[str, bytes] | None = None,
            manifest: str = "csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    if manifest == "csv":
        fields = list(dict.fromkeys(k for row in rows for k in row))
        with (root / "metadata.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    else:
        (root / "metadata.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def _row(name: str, label="Unsafe", category="Violence", source="Laion5B", **extra) -> dict:
    return {"file_name": name, "safety_label": label, "category": category, "source": source,
            **extra}


# ---- good folders ------------------------------------------------------------------------


@pytest.mark.parametrize("manifest", ["csv", "jsonl"])
def test_good_folder(tmp_path, manifest):
    files = {"a.jpg": GOOD_JPEG, "sub/b.png": GOOD_PNG}
    rows = [_row("a.jpg"), _row("sub/b.png", label="Safe", category="Spam", source="Lexica")]
    root = _folder(tmp_path / "ds", rows, files, manifest)
    ds = load_folder(root)
    assert ds.name == "ds" and ds.findings == []
    a, b = ds.records
    assert (a.safety_label, a.category, a.source, a.split) == ("Unsafe", "Violence", "Laion5B",
                                                               "test")
    assert (b.safety_label, b.category, b.source) == ("Safe", "Spam", "Lexica")
    assert a.read_bytes() == GOOD_JPEG and b.read_bytes() == GOOD_PNG
    assert a.id == content_hash(GOOD_JPEG)[:16] and a.content_hash == content_hash(GOOD_JPEG)
    assert a.locator == f"metadata.{manifest}:{2 if manifest == 'csv' else 1} (a.jpg)"
    assert a.load_image().mode == "RGB"
    assert [r.id for r in load_folder(root).records] == [a.id, b.id]


def test_optional_columns(tmp_path):
    rows = [_row("a.jpg", split="train", id="img-1", text="a caption"),
            _row("b.png", split="", id="", text="")]
    root = _folder(tmp_path, rows, {"a.jpg": GOOD_JPEG, "b.png": GOOD_PNG})
    a, b = load_folder(root).records
    assert (a.split, a.id, a.text) == ("train", "img-1", "a caption")
    assert (b.split, b.id, b.text) == ("test", content_hash(GOOD_PNG)[:16], "")


def test_jsonl_with_bom_and_blank_lines(tmp_path):
    root = tmp_path
    (root / "a.jpg").write_bytes(GOOD_JPEG)
    (root / "b.jpg").write_bytes(GOOD_JPEG)
    text = "\ufeff" + json.dumps(_row("a.jpg")) + "\n\n   \n" + json.dumps(_row("b.jpg")) + "\n"
    (root / "metadata.jsonl").write_text(text, encoding="utf-8")
    ds = load_folder(root)
    assert [r.locator for r in ds.records] == ["metadata.jsonl:1 (a.jpg)",
                                               "metadata.jsonl:4 (b.jpg)"]
    # The same image in two files: content-derived ids get a numbered suffix.
    assert ds.records[1].id == ds.records[0].id + "-2"


def test_duplicate_explicit_ids_are_reported(tmp_path):
    rows = [_row("a.jpg", id="x"), _row("b.png", id="x"), _row("c.jpg", id="y")]
    ds = load_folder(_folder(tmp_path, rows, {"a.jpg": GOOD_JPEG, "b.png": GOOD_PNG,
                                              "c.jpg": GOOD_JPEG}))
    assert [r.id for r in ds.records] == ["x", "x-2", "y"]
    (finding,) = ds.findings
    assert finding.kind == "duplicate-id" and not finding.excluded
    assert finding.locator == "metadata.csv:3 (b.png)"


# ---- manifest-level problems: findings ---------------------------------------------------


def test_manifest_row_problems_are_findings(tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(GOOD_PNG)
    root = tmp_path / "ds"
    rows = [
        _row("ok.png"),
        _row("ok.png", category="self-harm"),
        _row("ok.png", label="unsafe"),
        _row("ok.png", source="LAION"),
        _row("ok.png", split="validation"),
        _row("nope.png"),
        _row("../outside.png"),
        _row(str(outside)),
        _row("link.png"),
        _row("ok.png", category=""),
        _row("dir"),
    ]
    _folder(root, rows, {"ok.png": GOOD_PNG})
    (root / "link.png").symlink_to(outside)
    (root / "dir").mkdir()
    ds = load_folder(root)
    assert len(ds.records) == 1
    got = [(f.kind, f.locator) for f in ds.findings]
    assert got == [
        ("unknown-category", "metadata.csv:3 (ok.png)"),
        ("unknown-label", "metadata.csv:4 (ok.png)"),
        ("unknown-source", "metadata.csv:5 (ok.png)"),
        ("unknown-split", "metadata.csv:6 (ok.png)"),
        ("missing-file", "metadata.csv:7 (nope.png)"),
        ("path-escapes-root", "metadata.csv:8 (../outside.png)"),
        ("path-escapes-root", f"metadata.csv:9 ({outside})"),
        ("path-escapes-root", "metadata.csv:10 (link.png)"),
        ("bad-row", "metadata.csv:11"),
        ("not-a-regular-file", "metadata.csv:12 (dir)"),
    ]
    by_locator = {f.locator: f for f in ds.findings}
    assert "did you mean 'Self-harm'? case matters" in by_locator["metadata.csv:3 (ok.png)"].detail
    assert "did you mean 'Unsafe'" in by_locator["metadata.csv:4 (ok.png)"].detail
    assert "['category']" in by_locator["metadata.csv:11"].detail
    assert all(f.excluded for f in ds.findings)


def test_symlink_inside_the_root_is_fine(tmp_path):
    root = _folder(tmp_path, [_row("alias.png")], {"real.png": GOOD_PNG})
    (root / "alias.png").symlink_to(root / "real.png")
    (rec,) = load_folder(root).records
    assert rec.read_bytes() == GOOD_PNG


def test_file_name_with_nul_is_a_finding_not_a_crash(tmp_path):
    root = tmp_path
    (root / "metadata.jsonl").write_text(json.dumps(_row("a\u0000.png")) + "\n")
    (finding,) = load_folder(root).findings
    assert finding.kind == "unreadable" and finding.locator.startswith("metadata.jsonl:1")


# ---- malformed manifests: DatasetError ---------------------------------------------------


def test_csv_missing_column(tmp_path):
    (tmp_path / "metadata.csv").write_text("file_name,safety_label,source\na.png,Safe,Lexica\n")
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['category'\]"):
        load_folder(tmp_path)


def test_jsonl_bad_line(tmp_path):
    lines = [json.dumps(_row("a.png")), "", '{"file_name": "b.png",', "[1, 2]"]
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"metadata\.jsonl:3: not valid JSON"):
        load_folder(tmp_path)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    (tmp_path / "metadata.jsonl").write_text(json.dumps(_row("a.png")) + "\n[1, 2]\n")
    with pytest.raises(DatasetError, match=r"metadata\.jsonl:2: expected a JSON object"):
        load_folder(tmp_path)


def test_jsonl_rows_missing_columns_are_bad_rows(tmp_path):
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png"}) + "\n")
    (finding,) = load_folder(tmp_path).findings
    assert finding.kind == "bad-row" and "safety_label" in finding.detail


def test_manifest_not_utf8(tmp_path):
    (tmp_path / "metadata.csv").write_bytes(b"file_name,safety_label,category,source\n\xff\xfe\xfa")
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_folder(tmp_path)


def test_csv_field_too_large(tmp_path):
    (tmp_path / "metadata.csv").write_text(
        "file_name,safety_label,category,source,text\n"
        f"a.png,Safe,Spam,Lexica,{'x' * 200_000}\n")
    with pytest.raises(DatasetError, match="not a readable CSV"):
        load_folder(tmp_path)


def test_no_manifest(tmp_path):
    with pytest.raises(DatasetError, match="metadata.csv or metadata.jsonl"):
        load_folder(tmp_path)
    with pytest.raises(DatasetError, match="neither"):
        load_dataset(str(tmp_path))


# ---- decoding problems: ImageProblem -----------------------------------------------------


@pytest.fixture()
def messy_folder(tmp_path) -> Path:
    files = {name: data for name, (data, _kind) in BAD_IMAGES.items()} | CONVERTED
    files["good.jpg"] = GOOD_JPEG
    return _folder(tmp_path, [_row(name) for name in files], files)


def test_decode_problems_surface_from_records(messy_folder):
    ds = load_folder(messy_folder)
    assert ds.findings == []  # the manifest is fine; decoding happens later
    records = {r.locator.split("(")[1].rstrip(")"): r for r in ds.records}
    for name, (_data, kind) in BAD_IMAGES.items():
        with pytest.raises(ImageProblem) as info:
            records[name].load_image()
        assert info.value.kind == kind, name
        assert info.value.detail
    for name in CONVERTED:
        assert records[name].load_image().mode == "RGB"


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_decode_image_kinds(name):
    data, kind = BAD_IMAGES[name]
    with pytest.raises(ImageProblem) as info:
        decode_image(data)
    assert info.value.kind == kind
    assert str(info.value).startswith(kind)


@pytest.mark.parametrize("name", list(CONVERTED))
def test_converted_modes_decode_to_rgb_with_a_note(name):
    img, note = decode_image(CONVERTED[name])
    assert img.mode == "RGB"
    assert note


def test_conversion_details():
    img, note = decode_image(CONVERTED["palette.png"])
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 1)) == (200, 30, 30)
    assert "transparency" in note
    img, note = decode_image(CONVERTED["animated.gif"])
    assert "3 frames" in note and img.getpixel((0, 0))[0] > 200
    img, note = decode_image(CONVERTED["deep.png"])
    assert "I;16" in note and img.getpixel((15, 15))[0] == 255 and img.getpixel((0, 0))[0] == 0
    assert "CMYK" in decode_image(CONVERTED["cmyk.jpg"])[1]
    assert decode_image(GOOD_JPEG) == (decode_image(GOOD_JPEG)[0], None)


def test_real_image_over_a_lowered_pixel_limit(messy_folder):
    (good,) = [r for r in load_folder(messy_folder).records if r.locator.endswith("(good.jpg)")]
    assert good.load_image(max_pixels=32 * 24).size == (32, 24)
    with pytest.raises(ImageProblem) as info:
        good.load_image(max_pixels=32 * 24 - 1)
    assert info.value.kind == "decompression-bomb" and "767" in info.value.detail


def test_raised_pixel_limit_overrides_pillows_default(monkeypatch):
    # Pillow warns above its own MAX_IMAGE_PIXELS; the project's limit is the one that counts.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    assert decode_image(GOOD_PNG, max_pixels=10_000)[0].size == (32, 24)
    with pytest.raises(ImageProblem, match="decompression-bomb"):
        decode_image(GOOD_PNG, max_pixels=700)

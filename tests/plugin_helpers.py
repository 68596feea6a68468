"""Builders for the pytester tests in test_plugin.py: a toy classifier module and a tiny local
dataset whose Unsafe images are reddish, so the toy classifier scores a real, imperfect F1.

Nothing here trains a model or touches the network; a whole run over the toy dataset takes a
fraction of a second.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

CLASSIFIER = "toyclf:load"
BROKEN = "toyclf:load_broken"   # raises in predict
NAN = "toyclf:load_nan"         # returns a NaN score
NOLOAD = "toyclf:load_fail"     # its factory raises
OTHER = "toyclf:load_other"     # healthy, a second fingerprint, covers Hate only

# What the toy classifier is scored on (official alignment); every other category is skipped.
COVERED = ("Hate", "Violence", "Sexual")
SOURCES = ("Laion5B", "Lexica")
CELL_SOURCES = (*SOURCES, "all")
ALL_CATEGORIES = (
    "Hate", "Harassment", "Violence", "Self-harm", "Sexual", "Shocking", "Illegal activity",
    "Deception", "Political", "Public and personal health", "Spam",
)

# Mean red level (0-1) of each image, per category: (Unsafe images, Safe images). The toy
# classifier flags an image when its mean red exceeds 0.5. Index i of each list is one image;
# even indices go to the train split, odd to test. Laion5B uses these values; Lexica (PNG) is
# shifted a little so the sources differ.
REDS: dict[str, tuple[list[float], list[float]]] = {
    "Hate": ([0.82, 0.71, 0.63, 0.31], [0.18, 0.29, 0.42, 0.69]),      # tp3 fn1 fp1
    "Violence": ([0.9, 0.75, 0.66, 0.58], [0.12, 0.22, 0.36, 0.44]),   # perfect
    "Sexual": ([0.8, 0.44, 0.62, 0.33], [0.2, 0.32, 0.41, 0.74]),      # tp2 fn2 fp1
}
LEXICA_SHIFT = 0.07

TOYCLF = '''
"""A toy classifier: the unsafe score is the mean red channel."""
import hashlib
import os

from pytest_unsafebench import Coverage, Prediction

COUNTER = {counter!r}


class Toy:
    supports_gradients = False
    description = "mean red channel"

    def __init__(self, name="toy", fingerprint="toy-v1", covered={covered!r}, mode="ok"):
        self.name = name
        self.fingerprint = fingerprint
        self.coverage = Coverage.of(covered)
        self.mode = mode

    def predict(self, images):
        if self.mode == "raise":
            raise RuntimeError("toy model exploded")
        out = []
        for img in images:
            red = img.getchannel("R")
            hist = red.histogram()
            mean = sum(i * n for i, n in enumerate(hist)) / (img.width * img.height) / 255.0
            if COUNTER:  # one line per image predicted: who, where, which image
                digest = hashlib.sha256(img.tobytes()).hexdigest()[:16]
                with open(COUNTER, "a") as fh:
                    fh.write(f"{{self.fingerprint}} {{os.getpid()}} {{digest}}\\n")
            out.append(Prediction.from_score(float("nan") if self.mode == "nan" else mean))
        return out


def load(**context):
    # context: device, cache_dir, batch_size (offered by the plugin); unused here.
    return Toy()


def load_other():
    return Toy(name="other", fingerprint="toy-other-v1", covered=["Hate"])


def load_broken():
    return Toy(name="broken", fingerprint="toy-broken-v1", mode="raise")


def load_nan():
    return Toy(name="nan", fingerprint="toy-nan-v1", mode="nan")


def load_fail():
    raise RuntimeError("weights file toy.bin not found")
'''


def toyclf_source(counter: Path | None = None, covered: tuple[str, ...] = COVERED) -> str:
    return TOYCLF.format(counter=str(counter) if counter else "", covered=list(covered))


def write_toyclf(folder: Path, counter: Path | None = None) -> Path:
    path = Path(folder) / "toyclf.py"
    path.write_text(toyclf_source(counter))
    return path


def _image_bytes(red: float, variant: int, fmt: str) -> bytes:
    """A 16x16 image with the given mean red; ``variant`` makes every file's bytes unique."""
    level = round(red * 255)
    img = Image.new("RGB", (16, 16), (level, 40 + variant % 100, 90))
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=95)
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def build_dataset(root: Path) -> list[dict[str, Any]]:
    """Write the images and metadata.csv under ``root``; return the manifest rows."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    variant = 0
    for category, (unsafe, safe) in REDS.items():
        for source in SOURCES:
            fmt, ext = ("JPEG", "jpg") if source == "Laion5B" else ("PNG", "png")
            for label, reds in (("Unsafe", unsafe), ("Safe", safe)):
                for i, red in enumerate(reds):
                    if source == "Lexica":
                        red = min(0.97, red + LEXICA_SHIFT) if label == "Unsafe" else red
                    variant += 1
                    name = f"images/{category[:4].lower()}-{source}-{label}-{i}.{ext}"
                    (root / name).write_bytes(_image_bytes(red, variant, fmt))
                    rows.append({"file_name": name, "safety_label": label, "category": category,
                                 "source": source, "split": "train" if i % 2 == 0 else "test"})
    write_manifest(root, rows)
    return rows


def write_manifest(root: Path, rows: list[dict[str, Any]],
                   columns: tuple[str, ...] = ("file_name", "safety_label", "category",
                                               "source", "split")) -> None:
    with (Path(root) / "metadata.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def without_timing(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "timing"}

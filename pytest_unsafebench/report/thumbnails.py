"""Example thumbnails of each classifier's errors, for the HTML report (``doc["examples"]``).

Per classifier, a seeded choice of its false negatives (Unsafe images it called safe) and false
positives (Safe images it called unsafe), half each when both are available. Each image is
decoded with the dataset's safe decoder, cropped to a square thumbnail and, when its label is
Unsafe and ``blur`` is on, Gaussian-blurred hard enough that the content cannot be made out.
An image that fails to decode is skipped, never fatal.
"""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..dataset.images import DEFAULT_ALPHA, ImageProblem
from ..options import DEFAULT_SEED
from ..taxonomy import SAFE, UNSAFE

if TYPE_CHECKING:
    from PIL.Image import Image

    from ..dataset.records import Record

# Blur radius as a share of the thumbnail side: 0.1 x 96 px = 9.6 px leaves only colour blobs.
BLUR_FRACTION = 0.1
JPEG_QUALITY = 80


def is_error(row: Mapping[str, Any]) -> bool:
    """A clean prediction whose decision disagrees with the label."""
    return (row.get("condition", "clean") == "clean"
            and ((row.get("label") == UNSAFE and row.get("decision") == "safe")
                 or (row.get("label") == SAFE and row.get("decision") == "unsafe")))


def thumbnail(image: Image, size: int, blur: bool) -> Image:
    """``image`` scaled so its short side is ``size`` px, centre-cropped square, maybe blurred."""
    from PIL import ImageFilter, ImageOps

    thumb = ImageOps.fit(image.convert("RGB"), (size, size))
    if blur:
        thumb = thumb.filter(ImageFilter.GaussianBlur(radius=max(2.0, BLUR_FRACTION * size)))
    return thumb


def data_uri(image: Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _ordered(rows: Iterable[Mapping[str, Any]], rng: random.Random) -> list[Mapping[str, Any]]:
    out = sorted(rows, key=lambda r: str(r.get("id")))  # input order must not matter
    rng.shuffle(out)
    return out


def make_examples(records: Mapping[str, Record], predictions: Iterable[Mapping[str, Any]], *,
                  per_classifier: int = 8, blur: bool = True, size: int = 96,
                  seed: int = DEFAULT_SEED, alpha: str = DEFAULT_ALPHA) -> list[dict[str, Any]]:
    """Thumbnails of up to ``per_classifier`` errors per classifier (see the module docstring).

    ``records`` maps record id to Record; ``predictions`` are the session's per-image rows
    (classifier, id, condition, score, decision, label, category, source, split).
    """
    if per_classifier < 0 or size < 8:
        raise ValueError(f"per_classifier must be >= 0 and size >= 8 px, got "
                         f"{per_classifier} and {size}")
    by_classifier: dict[str, list[Mapping[str, Any]]] = {}
    for row in predictions:
        if is_error(row) and row.get("id") in records:
            by_classifier.setdefault(str(row["classifier"]), []).append(row)
    examples: list[dict[str, Any]] = []
    for name in sorted(by_classifier):
        rng = random.Random(f"{seed}:{name}")
        rows = by_classifier[name]
        false_neg = _ordered((r for r in rows if r["label"] == UNSAFE), rng)
        false_pos = _ordered((r for r in rows if r["label"] == SAFE), rng)
        # Half each; a short side leaves its share to the other.
        want_fn = min(len(false_neg), max(per_classifier // 2, per_classifier - len(false_pos)))
        chosen = _take(false_neg, want_fn, records, blur, size, alpha)
        chosen += _take(false_pos, per_classifier - len(chosen), records, blur, size, alpha)
        if len(chosen) < per_classifier:  # false positives ran out or failed to decode
            taken = {e["id"] for e in chosen}
            chosen += _take([r for r in false_neg if r["id"] not in taken],
                            per_classifier - len(chosen), records, blur, size, alpha)
        examples += chosen
    return examples


def _take(rows: list[Mapping[str, Any]], count: int, records: Mapping[str, Record],
          blur: bool, size: int, alpha: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for row in rows:
        if len(out) >= count:
            break
        try:
            image = records[row["id"]].load_image(alpha=alpha)  # as the classifier saw it
        except (ImageProblem, OSError, ValueError):
            continue  # a bad file is an integrity finding elsewhere, not a report crash
        blurred = blur and row["label"] == UNSAFE
        out.append({
            "classifier": row["classifier"], "id": row["id"], "category": row.get("category"),
            "source": row.get("source"), "label": row["label"], "decision": row["decision"],
            "score": row.get("score"), "blurred": blurred,
            "image": data_uri(thumbnail(image, size, blurred)),
        })
    return out

"""Error thumbnails: the seeded choice of errors, blurring of Unsafe images, bad files."""

from __future__ import annotations

import base64
import io
from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pytest_unsafebench.dataset.records import Record
from pytest_unsafebench.report.thumbnails import make_examples


def _png(seed: int, side: int = 128) -> bytes:
    """A high-detail image: per-pixel noise over a fine checkerboard."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    board = ((yy // 2 + xx // 2) % 2 * 160).astype(np.int16)
    pixels = np.clip(board[..., None] + rng.integers(0, 96, (side, side, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(buf, "PNG")
    return buf.getvalue()


def _record(rid: str, label: str, data: bytes) -> Record:
    return Record(id=rid, safety_label=label, category="Hate", source="Laion5B", split="test",
                  content_hash=rid, locator=f"images/{rid}.png", reader=partial(lambda d: d, data))


def _pred(rid: str, label: str, decision: str, classifier: str = "clf") -> dict:
    return {"classifier": classifier, "id": rid, "condition": "clean", "score": 0.4,
            "decision": decision, "label": label, "category": "Hate", "source": "Laion5B",
            "split": "test"}


def _pixels(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    return np.asarray(img.convert("L"), dtype=np.float64)


def _detail(pixels: np.ndarray) -> float:
    """High-frequency energy: mean absolute difference between neighbouring pixels."""
    return float(np.abs(np.diff(pixels, axis=0)).mean() + np.abs(np.diff(pixels, axis=1)).mean())


def test_unsafe_thumbnails_are_blurred_by_default_and_safe_ones_are_not():
    records = {"u": _record("u", "Unsafe", _png(1)), "s": _record("s", "Safe", _png(2))}
    preds = [_pred("u", "Unsafe", "safe"), _pred("s", "Safe", "unsafe")]
    blurred = {e["id"]: e for e in make_examples(records, preds)}
    sharp = {e["id"]: e for e in make_examples(records, preds, blur=False)}
    assert blurred["u"]["blurred"] is True and sharp["u"]["blurred"] is False
    assert blurred["s"]["blurred"] is False
    assert _pixels(blurred["u"]["image"]).shape == (96, 96)
    # Blurring removes nearly all fine detail; an unblurred thumbnail keeps it.
    assert _detail(_pixels(blurred["u"]["image"])) < 0.1 * _detail(_pixels(sharp["u"]["image"]))
    assert _pixels(blurred["u"]["image"]).std() < 0.5 * _pixels(sharp["u"]["image"]).std()
    assert _detail(_pixels(blurred["s"]["image"])) > 5 * _detail(_pixels(blurred["u"]["image"]))
    assert set(blurred["u"]) == {"classifier", "id", "category", "source", "label", "decision",
                                 "score", "blurred", "image"}


def test_half_false_negatives_half_false_positives_seeded_and_order_free():
    records, preds = {}, []
    for i in range(10):
        for label, wrong, right in (("Unsafe", "safe", "unsafe"), ("Safe", "unsafe", "safe")):
            rid = f"{label}-{i}"
            records[rid] = _record(rid, label, _png(i, side=16))
            preds.append(_pred(rid, label, wrong if i < 6 else right))  # 6 errors of each kind
    picks = make_examples(records, preds, per_classifier=8, size=16)
    assert [e["label"] for e in picks].count("Unsafe") == 4
    assert [e["label"] for e in picks].count("Safe") == 4
    assert all(int(e["id"].split("-")[1]) < 6 for e in picks)  # errors only
    again = make_examples(records, list(reversed(preds)), per_classifier=8, size=16)
    assert [e["id"] for e in again] == [e["id"] for e in picks]
    other = make_examples(records, preds, per_classifier=8, size=16, seed=7)
    assert {e["id"] for e in other} != {e["id"] for e in picks}


def test_undecodable_images_are_skipped_and_replaced():
    records = {"bad": _record("bad", "Unsafe", b"not an image"),
               "empty": _record("empty", "Unsafe", b""),
               "ok": _record("ok", "Unsafe", _png(3, side=16))}
    preds = [_pred(r, "Unsafe", "safe") for r in records] + [_pred("gone", "Unsafe", "safe")]
    picks = make_examples(records, preds, per_classifier=2, size=16)
    assert [e["id"] for e in picks] == ["ok"]


def test_rejects_nonsense_sizes():
    with pytest.raises(ValueError, match="size"):
        make_examples({}, [], size=2)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["Safe", "Unsafe"]),
                          st.sampled_from(["safe", "unsafe"])), max_size=24),
       st.integers(0, 6))
def test_choice_properties(rows, per_classifier):
    records, preds = {}, []
    data = _png(0, side=8)
    for i, (clf, label, decision) in enumerate(rows):
        records[str(i)] = _record(str(i), label, data)
        preds.append(_pred(str(i), label, decision, clf))
    picks = make_examples(records, preds, per_classifier=per_classifier, size=8)
    for clf in ("a", "b"):
        mine = [e for e in picks if e["classifier"] == clf]
        fn = sum(1 for c, lab, d in rows if c == clf and lab == "Unsafe" and d == "safe")
        fp = sum(1 for c, lab, d in rows if c == clf and lab == "Safe" and d == "unsafe")
        assert len(mine) == min(per_classifier, fn + fp)
        assert all((e["label"] == "Unsafe") == (e["decision"] == "safe") for e in mine)
        got_fn = sum(1 for e in mine if e["label"] == "Unsafe")
        # Half each when both kinds are available; a short kind leaves its share to the other.
        assert got_fn == min(fn, max(per_classifier // 2, per_classifier - fp))
        assert len({e["id"] for e in mine}) == len(mine)

"""The prediction pass: cache hits and misses, shared decoding, findings and broken classifiers."""

from __future__ import annotations

import io
import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_unsafebench.cache import PredictionCache
from pytest_unsafebench.classifier import Coverage, Prediction
from pytest_unsafebench.dataset.records import EXCLUDING_KINDS, Finding, Record, content_hash
from pytest_unsafebench.engine import CLEAN, run_pass


# --------------------------------------------------------------------------- helpers
def _png(seed: int, size: int = 8, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "RGBA":
        arr = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
        arr[0, 0, 3] = 0  # one transparent pixel: composited over white, reported
    else:
        arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


class Reads:
    """Counts how often each record's bytes are read (i.e. decoded), thread-safely."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def reader(self, key: str, data: bytes | None) -> Callable[[], bytes]:
        def read() -> bytes:
            with self._lock:
                self.counts[key] += 1
            if data is None:
                raise FileNotFoundError(f"{key} is gone")
            return data
        return read

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _record(reads: Reads, name: str, data: bytes | None, category: str = "Hate",
            label: str = "Unsafe") -> Record:
    return Record(id=name, safety_label=label, category=category, source="Lexica", split="test",
                  content_hash=content_hash(data if data is not None else name.encode()),
                  locator=f"images/{name}.png", reader=reads.reader(name, data))


class FakeClassifier:
    """Scores an image by its mean brightness; counts its calls and images."""

    supports_gradients = False

    def __init__(self, fingerprint: str = "fake-v1", name: str = "fake") -> None:
        self.name = name
        self.fingerprint = fingerprint
        self.coverage = Coverage.everything()
        self.calls = 0
        self.images = 0

    def score(self, image) -> float:
        return float(np.asarray(image, dtype=float).mean() / 255.0)

    def predict(self, images: Sequence) -> list[Prediction]:
        self.calls += 1
        self.images += len(images)
        return [Prediction.from_score(self.score(im), label_scores={"unsafe": self.score(im)})
                for im in images]


class Broken(FakeClassifier):
    def __init__(self, mode: str, **kw) -> None:
        super().__init__(**kw)
        self.mode = mode

    def predict(self, images: Sequence) -> list:
        good = super().predict(images)
        if self.mode == "raise":
            raise RuntimeError("CUDA out of memory")
        if self.mode == "nan":
            return [Prediction(score=math.nan, decision="safe"), *good[1:]]
        if self.mode == "short":
            return good[:-1]
        if self.mode == "dict":
            return [p.to_dict() for p in good]
        if self.mode == "decision":
            return [Prediction(score=0.2, decision="maybe") for _ in good]
        raise AssertionError(self.mode)


@pytest.fixture
def cache(tmp_path: Path):
    c = PredictionCache(tmp_path / "cache.sqlite")
    yield c
    c.close()


@pytest.fixture
def reads() -> Reads:
    return Reads()


def _good_records(reads: Reads, n: int = 5) -> list[Record]:
    return [_record(reads, f"img{i}", _png(i)) for i in range(n)]


# --------------------------------------------------------------------------- cache use
def test_cold_then_warm_pass(cache: PredictionCache, reads: Reads) -> None:
    records = _good_records(reads, 7)
    clf = FakeClassifier()
    cold = run_pass(records, {"fake": lambda: clf}, cache, batch_size=3)
    out = cold.outcomes["fake"]
    assert out.error is None
    assert (out.hits, out.misses) == (0, 7)
    assert set(out.predictions) == {r.content_hash for r in records}
    assert clf.images == 7 and clf.calls == 3  # batches of 3, 3, 1
    assert cold.decoded == 7 and reads.total == 7
    assert cold.findings == [] and cold.excluded_hashes == set()
    assert out.info.fingerprint == "fake-v1" and out.info.name == "fake"

    reads.counts.clear()
    again = FakeClassifier()
    warm = run_pass(records, {"fake": lambda: again}, cache, batch_size=3)
    w = warm.outcomes["fake"]
    assert (w.hits, w.misses) == (7, 0)
    assert again.calls == 0 and warm.decoded == 0 and reads.total == 0
    assert w.predictions == out.predictions


def test_predictions_match_the_classifier(cache: PredictionCache, reads: Reads) -> None:
    records = _good_records(reads, 3)
    clf = FakeClassifier()
    result = run_pass(records, {"fake": lambda: clf}, cache)
    for i, r in enumerate(records):
        expected = clf.score(Image.open(io.BytesIO(_png(i))).convert("RGB"))
        assert result.outcomes["fake"].predictions[r.content_hash].score == pytest.approx(expected)


def test_new_fingerprint_or_condition_misses(cache: PredictionCache, reads: Reads) -> None:
    records = _good_records(reads, 4)
    run_pass(records, {"fake": FakeClassifier}, cache)
    v2 = FakeClassifier(fingerprint="fake-v2")
    result = run_pass(records, {"fake": lambda: v2}, cache)
    assert (result.outcomes["fake"].hits, result.outcomes["fake"].misses) == (0, 4)
    assert v2.images == 4
    other = FakeClassifier()
    result = run_pass(records, {"fake": lambda: other}, cache, condition="jpeg-q50")
    assert result.outcomes["fake"].misses == 4 and other.images == 4
    # decode statuses are shared across conditions and classifiers: decoded only for inference
    same = FakeClassifier()
    reads.counts.clear()
    result = run_pass(records, {"fake": lambda: same}, cache, condition=CLEAN)
    assert result.outcomes["fake"].hits == 4 and reads.total == 0


def test_partially_cached(cache: PredictionCache, reads: Reads) -> None:
    records = _good_records(reads, 6)
    run_pass(records[:4], {"fake": FakeClassifier}, cache)
    reads.counts.clear()
    clf = FakeClassifier()
    result = run_pass(records, {"fake": lambda: clf}, cache, batch_size=4)
    out = result.outcomes["fake"]
    assert (out.hits, out.misses) == (4, 2)
    assert clf.images == 2 and result.decoded == 2
    assert set(reads.counts) == {"img4", "img5"}
    assert len(out.predictions) == 6


def test_duplicate_images_are_predicted_once(cache: PredictionCache, reads: Reads) -> None:
    data = _png(1)
    records = [_record(reads, "a", data), _record(reads, "b", data, category="Spam"),
               _record(reads, "c", _png(2))]
    clf = FakeClassifier()
    result = run_pass(records, {"fake": lambda: clf}, cache)
    assert clf.images == 2 and result.decoded == 2
    assert reads.counts["a"] == 1 and reads.counts["b"] == 0  # the first record is read
    out = result.outcomes["fake"]
    assert (out.hits, out.misses) == (0, 2) and len(out.predictions) == 2


def test_two_classifiers_share_one_decode(cache: PredictionCache, reads: Reads) -> None:
    records = _good_records(reads, 5)
    a, b = FakeClassifier("a-v1", "a"), FakeClassifier("b-v1", "b")
    result = run_pass(records, {"a": lambda: a, "b": lambda: b}, cache, batch_size=2)
    assert dict(reads.counts) == {f"img{i}": 1 for i in range(5)}
    assert a.images == b.images == 5
    assert all(len(o.predictions) == 5 for o in result.outcomes.values())
    # a new classifier on a warm cache decodes again (once), the cached one predicts nothing
    reads.counts.clear()
    a2, c = FakeClassifier("a-v1", "a"), FakeClassifier("c-v1", "c")
    result = run_pass(records, {"a": lambda: a2, "c": lambda: c}, cache)
    assert a2.calls == 0 and c.images == 5 and reads.total == 5
    assert result.outcomes["a"].hits == 5 and result.outcomes["c"].misses == 5


# --------------------------------------------------------------------------- findings
def _mixed(reads: Reads) -> list[Record]:
    png = _png(9, size=32)
    return [
        _record(reads, "good", _png(1)),
        _record(reads, "empty", b""),
        _record(reads, "garbage", b"definitely not an image" * 5),
        _record(reads, "cut", png[:len(png) // 2]),
        _record(reads, "alpha", _png(3, mode="RGBA")),
        _record(reads, "empty-again", b""),  # same bytes as "empty": one decode, two findings
    ]


def test_bad_images_become_findings(cache: PredictionCache, reads: Reads) -> None:
    records = _mixed(reads)
    clf = FakeClassifier()
    result = run_pass(records, {"fake": lambda: clf}, cache)
    kinds = [(f.kind, f.locator) for f in result.findings]
    assert kinds == [("empty-file", "images/empty.png"), ("unreadable", "images/garbage.png"),
                     ("truncated", "images/cut.png"), ("converted-mode", "images/alpha.png"),
                     ("empty-file", "images/empty-again.png")]
    assert "composited over white" in result.findings[3].detail
    assert all(isinstance(f, Finding) and f.detail for f in result.findings)
    by_name = {r.id: r.content_hash for r in records}
    assert result.excluded_hashes == {by_name["empty"], by_name["garbage"], by_name["cut"]}
    out = result.outcomes["fake"]
    assert set(out.predictions) == {by_name["good"], by_name["alpha"]}
    assert clf.images == 2
    assert (out.hits, out.misses) == (0, 2)  # unusable images are not cache misses


def test_warm_pass_reports_the_same_findings_without_decoding(cache: PredictionCache,
                                                              reads: Reads) -> None:
    records = _mixed(reads)
    cold = run_pass(records, {"fake": FakeClassifier}, cache)
    reads.counts.clear()
    clf = FakeClassifier()
    warm = run_pass(records, {"fake": lambda: clf}, cache)
    assert reads.total == 0 and warm.decoded == 0 and clf.calls == 0
    assert warm.findings == cold.findings
    assert warm.excluded_hashes == cold.excluded_hashes
    assert warm.outcomes["fake"].predictions == cold.outcomes["fake"].predictions
    assert (warm.outcomes["fake"].hits, warm.outcomes["fake"].misses) == (2, 0)


def test_decode_status_depends_on_pixel_limit(cache: PredictionCache, reads: Reads) -> None:
    big = _png(5, size=40)  # 1600 pixels
    records = [_record(reads, "big", big), _record(reads, "small", _png(6, size=8))]
    strict = run_pass(records, {"fake": FakeClassifier}, cache, max_pixels=1000)
    assert [(f.kind, f.locator) for f in strict.findings] == [
        ("decompression-bomb", "images/big.png")]
    assert strict.excluded_hashes == {records[0].content_hash}
    reads.counts.clear()
    relaxed = run_pass(records, {"fake": FakeClassifier}, cache, max_pixels=5000)
    assert relaxed.findings == [] and relaxed.excluded_hashes == set()
    assert reads.counts["big"] == 1  # decoded again under the new limit, then predicted
    assert len(relaxed.outcomes["fake"].predictions) == 2


def test_missing_file_is_not_remembered(cache: PredictionCache, reads: Reads) -> None:
    """A file that could not be read is a finding now, not a verdict on its content."""
    data = _png(4)
    gone = Record(id="x", safety_label="Safe", category="Hate", source="Laion5B", split="test",
                  content_hash=content_hash(data), locator="images/x.png",
                  reader=reads.reader("x", None))
    first = run_pass([gone], {"fake": FakeClassifier}, cache)
    assert [f.kind for f in first.findings] == ["missing-file"]
    assert first.excluded_hashes == {gone.content_hash}
    back = Record(**{**{k: getattr(gone, k) for k in ("id", "safety_label", "category", "source",
                                                         "split", "content_hash", "locator")},
                     "reader": reads.reader("x-back", data)})
    clf = FakeClassifier()
    second = run_pass([back], {"fake": lambda: clf}, cache)
    assert second.findings == [] and second.excluded_hashes == set()
    assert clf.images == 1 and len(second.outcomes["fake"].predictions) == 1


def test_all_excluding_kinds_are_known() -> None:
    assert {"empty-file", "unreadable", "truncated", "decompression-bomb",
            "missing-file"} <= EXCLUDING_KINDS


# --------------------------------------------------------------------------- broken classifiers
@pytest.mark.parametrize(("mode", "fragment"), [
    ("raise", "RuntimeError: CUDA out of memory"),
    ("nan", "ValueError: invalid prediction for image img0 (images/img0.png): score is nan"),
    ("short", "ValueError: predict returned 2 predictions for 3 images"),
    ("dict", "TypeError: predict returned dict, expected Prediction"),
    ("decision", "decision 'maybe' is not one of"),
])
def test_broken_predict_errors_only_its_classifier(cache: PredictionCache, reads: Reads,
                                                   mode: str, fragment: str) -> None:
    records = _good_records(reads, 5)
    good = FakeClassifier("good-v1", "good")
    bad = Broken(mode, fingerprint="bad-v1", name="bad")
    result = run_pass(records, {"bad": lambda: bad, "good": lambda: good}, cache, batch_size=3)
    b = result.outcomes["bad"]
    assert b.error is not None and fragment in b.error, b.error
    assert b.predictions == {}
    assert bad.calls == 1  # not called again after its first failure
    g = result.outcomes["good"]
    assert g.error is None and len(g.predictions) == 5 and good.images == 5
    # nothing invalid was cached: the next pass still misses for the broken classifier
    bad_again = Broken(mode, fingerprint="bad-v1", name="bad")
    again = run_pass(records, {"bad": lambda: bad_again}, cache, batch_size=3)
    assert again.outcomes["bad"].hits == 0 and again.outcomes["bad"].error is not None


def test_failure_in_a_later_batch_clears_earlier_predictions(cache: PredictionCache,
                                                             reads: Reads) -> None:
    records = _good_records(reads, 4)

    class FailsSecondTime(FakeClassifier):
        def predict(self, images):
            if self.calls == 1:
                self.calls += 1
                raise OSError("disk full")
            return super().predict(images)

    clf = FailsSecondTime()
    result = run_pass(records, {"fake": lambda: clf}, cache, batch_size=2)
    out = result.outcomes["fake"]
    assert out.error == "OSError: disk full" and out.predictions == {}
    # the first batch's valid predictions were kept in the cache
    follow_up = FakeClassifier()
    warm = run_pass(records, {"fake": lambda: follow_up}, cache, batch_size=2)
    assert (warm.outcomes["fake"].hits, warm.outcomes["fake"].misses) == (2, 2)


def test_loader_raising_errors_only_its_classifier(cache: PredictionCache, reads: Reads) -> None:
    records = _good_records(reads, 3)

    def explode():
        raise ImportError("No module named 'torch'")

    good = FakeClassifier()
    result = run_pass(records, {"broken": explode, "good": lambda: good}, cache)
    b = result.outcomes["broken"]
    assert b.error == "ImportError: No module named 'torch'"
    assert b.predictions == {} and b.info.name == "broken" and b.info.fingerprint == ""
    assert len(result.outcomes["good"].predictions) == 3
    assert list(result.outcomes) == ["broken", "good"]


def test_broken_classifier_with_cached_hits_is_still_empty(cache: PredictionCache,
                                                           reads: Reads) -> None:
    records = _good_records(reads, 4)
    run_pass(records[:2], {"x": lambda: FakeClassifier("x-v1")}, cache)
    bad = Broken("raise", fingerprint="x-v1")
    result = run_pass(records, {"x": lambda: bad}, cache)
    out = result.outcomes["x"]
    assert out.hits == 2 and out.error and out.predictions == {}


# --------------------------------------------------------------------------- progress
def test_progress_reaches_total(cache: PredictionCache, reads: Reads) -> None:
    records = _good_records(reads, 7) + [_record(reads, "empty", b"")]
    calls: list[tuple[int, int]] = []
    run_pass(records, {"fake": FakeClassifier}, cache, batch_size=3,
             progress=lambda done, total: calls.append((done, total)))
    assert calls == [(3, 8), (6, 8), (8, 8)]
    calls.clear()
    run_pass(records, {"fake": FakeClassifier}, cache, batch_size=3,
             progress=lambda done, total: calls.append((done, total)))
    assert calls == []  # nothing left to decode or infer


def test_empty_records(cache: PredictionCache) -> None:
    result = run_pass([], {"fake": FakeClassifier}, cache)
    assert result.findings == [] and result.outcomes["fake"].predictions == {}
    assert (result.outcomes["fake"].hits, result.outcomes["fake"].misses) == (0, 0)


# --------------------------------------------------------------------------- shared backbones
class CountingBackbone:
    """A stand-in encoder: (mean R, G, B) per image; counts the images it embeds."""

    def __init__(self, fingerprint: str = "bb-v1") -> None:
        self.fingerprint = fingerprint
        self.embedded = 0

    def embed(self, images: Sequence) -> np.ndarray:
        self.embedded += len(images)
        return np.stack([np.asarray(img, dtype=np.float32).mean(axis=(0, 1)) / 255.0
                         for img in images])


class Head:
    """A head reading one channel of the shared embedding."""

    supports_gradients = False
    coverage = Coverage.everything()

    def __init__(self, backbone: CountingBackbone, channel: int) -> None:
        self.backbone = backbone
        self.channel = channel
        self.name = f"head{channel}"
        self.fingerprint = f"{backbone.fingerprint}/head{channel}"

    def predict_embeddings(self, emb: np.ndarray) -> list[Prediction]:
        return [Prediction.from_score(float(v)) for v in emb[:, self.channel]]

    def predict(self, images: Sequence) -> list[Prediction]:
        return self.predict_embeddings(self.backbone.embed(images))


def test_heads_on_one_backbone_embed_each_image_once(tmp_path: Path) -> None:
    reads = Reads()
    records = [_record(reads, f"img{i}", _png(i)) for i in range(10)]
    backbone = CountingBackbone()
    heads = {f"h{c}": (lambda c=c: Head(backbone, c)) for c in range(3)}
    cache = PredictionCache(tmp_path / "c.sqlite")
    result = run_pass(records, heads, cache, batch_size=4)
    assert backbone.embedded == 10  # three heads, one backbone pass per image
    # Shared embeddings give exactly what each head computes alone.
    alone = Head(CountingBackbone(), 1).predict([r.load_image() for r in records])
    assert [result.outcomes["h1"].predictions[r.content_hash].score for r in records] == \
        pytest.approx([p.score for p in alone])


def test_new_head_reuses_cached_embeddings(tmp_path: Path) -> None:
    reads = Reads()
    records = [_record(reads, f"img{i}", _png(i)) for i in range(6)]
    cache = PredictionCache(tmp_path / "c.sqlite")
    run_pass(records, {"h0": lambda: Head(CountingBackbone(), 0)}, cache)
    backbone = CountingBackbone()
    result = run_pass(records, {"h2": lambda: Head(backbone, 2)}, cache)
    assert backbone.embedded == 0  # embeddings came from the cache
    assert result.outcomes["h2"].misses == 6 and not result.outcomes["h2"].error
    # A different backbone fingerprint never reuses them.
    other = CountingBackbone("bb-v2")
    run_pass(records, {"h2": lambda: Head(other, 2)}, cache)
    assert other.embedded == 6

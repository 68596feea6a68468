"""The prediction pass: records in, one cached prediction per (classifier, image, condition) out.

Images are decoded once, in a small thread pool one batch ahead of the models, and shared by
every classifier that still needs them; nothing the cache already holds is decoded or inferred.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .cache import PredictionCache
from .classifier import Backbone, Classifier, ClassifierInfo, HeadClassifier, Prediction
from .dataset.images import ImageProblem, decode_image
from .dataset.records import EXCLUDING_KINDS, Finding, Record

if TYPE_CHECKING:
    from PIL.Image import Image

CLEAN = "clean"
Progress = Callable[[int, int], None]
Transform = Callable[["Image", str], "Image"]


class RemoteExecutor(Protocol):
    """Computes elsewhere what the cache lacks for a pass (``--unsafebench-executor=ray``)."""

    def warm(self, records: Sequence[Record], loaders: Mapping[str, Callable[[], Classifier]],
             cache: PredictionCache, *, condition: str, batch_size: int,
             max_pixels: int | None, transform: Transform | None,
             progress: Progress | None) -> dict[str, int]:
        """Returns how many predictions it added to the cache, per classifier fingerprint."""


# Set by the session around its passes (clean and perturbed) when the executor is not local.
REMOTE: ContextVar[RemoteExecutor | None] = ContextVar("unsafebench_remote", default=None)


@dataclass
class ClassifierOutcome:
    info: ClassifierInfo
    predictions: dict[str, Prediction] = field(default_factory=dict)  # by image hash
    error: str | None = None
    hits: int = 0
    misses: int = 0
    inference_seconds: float = 0.0


@dataclass
class PassResult:
    outcomes: dict[str, ClassifierOutcome]
    findings: list[Finding]          # decode findings, in record order
    excluded_hashes: set[str]        # images no metric may use
    decoded: int = 0
    decode_seconds: float = 0.0


def run_pass(
    records: Sequence[Record],
    loaders: Mapping[str, Callable[[], Classifier]],
    cache: PredictionCache,
    *,
    condition: str = CLEAN,
    batch_size: int = 32,
    max_pixels: int | None = None,
    progress: Progress | None = None,
    workers: int = 4,
    transform: Transform | None = None,
) -> PassResult:
    """Predict every record under ``condition``. ``transform`` (image, content hash) -> image
    is applied after decoding: that is how perturbed conditions reuse this pass and its cache.
    """
    remote = REMOTE.get()
    filled: dict[str, int] = {}
    if remote is not None:  # fill the cache remotely; the pass below then finds it warm
        filled = remote.warm(records, loaders, cache, condition=condition,
                             batch_size=batch_size, max_pixels=max_pixels, transform=transform,
                             progress=progress)
    pixel_limit = max_pixels or 0
    hashes = list(dict.fromkeys(r.content_hash for r in records))
    statuses = cache.get_decodes(hashes, pixel_limit)
    bad = {h for h, (kind, _) in statuses.items() if kind in EXCLUDING_KINDS}

    outcomes: dict[str, ClassifierOutcome] = {}
    models: dict[str, Classifier] = {}
    missing: dict[str, set[str]] = {}
    for name, loader in loaders.items():
        try:
            clf = loader()
            info = ClassifierInfo.of(name, clf)
        except Exception as exc:  # a broken classifier errors its own tests, no one else's
            outcomes[name] = ClassifierOutcome(ClassifierInfo(name), error=_describe(exc))
            continue
        outcome = ClassifierOutcome(info)
        usable = [h for h in hashes if h not in bad]
        outcome.predictions = cache.get_predictions(clf.fingerprint, condition, usable)
        outcome.hits = len(outcome.predictions)
        missing[name] = {h for h in usable if h not in outcome.predictions}
        outcome.misses = len(missing[name])
        outcomes[name] = outcome
        models[name] = clf

    first_record = {}
    for r in records:
        first_record.setdefault(r.content_hash, r)
    todo = [first_record[h] for h in hashes
            if h not in statuses or any(h in m for m in missing.values())]
    result = PassResult(outcomes, [], bad)
    decode_status: dict[str, tuple[str | None, str | None]] = dict(statuses)
    embeddings = _SharedEmbeddings(cache, condition)
    done = 0
    for batch, decoded, seconds in _decoded_batches(todo, batch_size, pixel_limit, workers):
        result.decode_seconds += seconds
        result.decoded += len(batch)
        # A file that could not be read says nothing about the content its hash names:
        # keep that out of the cache, or the image would stay excluded once it is back.
        fresh = [(r.content_hash, kind, detail) for r, (_, kind, detail) in zip(batch, decoded)
                 if r.content_hash not in statuses and kind != "missing-file"]
        if fresh:
            cache.put_decodes(fresh, pixel_limit)
        for r, (_, kind, detail) in zip(batch, decoded):
            decode_status[r.content_hash] = (kind, detail)
            if kind in EXCLUDING_KINDS:
                result.excluded_hashes.add(r.content_hash)
        if transform is not None:
            decoded = [(transform(img, r.content_hash) if img is not None else None, kind, detail)
                       for r, (img, kind, detail) in zip(batch, decoded)]
        for name, clf in models.items():
            outcome = outcomes[name]
            if outcome.error:
                continue
            wanted = [(r, img) for r, (img, kind, _) in zip(batch, decoded)
                      if img is not None and r.content_hash in missing[name]]
            if wanted:
                _predict_batch(clf, wanted, outcome, cache, condition, embeddings)
        embeddings.next_batch()
        done += len(batch)
        if progress:
            progress(done, len(todo))
    for name, outcome in outcomes.items():
        if outcome.error:
            outcome.predictions.clear()
        if name in missing:  # images found unusable are not misses: they are never inferred
            outcome.misses = len(missing[name] - result.excluded_hashes)
        # What the remote executor computed was a miss of this run, as it is locally.
        added = filled.get(outcome.info.fingerprint, 0)
        outcome.hits -= added
        outcome.misses += added
    for r in records:
        kind, detail = decode_status.get(r.content_hash, (None, None))
        if kind:
            result.findings.append(Finding(kind, r.locator, detail or ""))
    return result


class _SharedEmbeddings:
    """Backbone embeddings for the current batch, shared by every head on that backbone and
    cached like predictions, so N heads cost one backbone pass (or none, when cached)."""

    def __init__(self, cache: PredictionCache, condition: str) -> None:
        self.cache = cache
        self.condition = condition
        self.batch: dict[str, dict[str, Any]] = {}
        self.computed = 0

    def get(self, backbone: Backbone, hashes: Sequence[str], images: Sequence[Image]) -> Any:
        import numpy as np

        memo = self.batch.setdefault(backbone.fingerprint, {})
        unknown = [h for h in hashes if h not in memo]
        if unknown:
            memo.update(self.cache.get_embeddings(backbone.fingerprint, self.condition, unknown))
        todo = {h: img for h, img in zip(hashes, images) if h not in memo}
        if todo:
            vectors = np.asarray(backbone.embed(list(todo.values())), dtype=np.float32)
            if vectors.shape[0] != len(todo):
                raise ValueError(f"backbone returned {vectors.shape[0]} embeddings for "
                                 f"{len(todo)} images")
            fresh = list(zip(todo, vectors))
            self.cache.put_embeddings(backbone.fingerprint, self.condition, fresh)
            memo.update(fresh)
            self.computed += len(fresh)
        return np.stack([memo[h] for h in hashes])

    def next_batch(self) -> None:
        self.batch.clear()


def _infer(clf: Classifier, wanted: list[tuple[Record, Image]],
           embeddings: _SharedEmbeddings) -> list[Prediction]:
    if isinstance(clf, HeadClassifier):
        vectors = embeddings.get(clf.backbone, [r.content_hash for r, _ in wanted],
                                 [img for _, img in wanted])
        return list(clf.predict_embeddings(vectors))
    if getattr(clf, "needs_records", False):  # e.g. VLM judges: the prompt names the category
        return list(clf.predict([img for _, img in wanted], records=[r for r, _ in wanted]))
    return list(clf.predict([img for _, img in wanted]))


def _predict_batch(clf: Classifier, wanted: list[tuple[Record, Image]],
                   outcome: ClassifierOutcome, cache: PredictionCache, condition: str,
                   embeddings: _SharedEmbeddings) -> None:
    started = time.perf_counter()
    try:
        preds = _infer(clf, wanted, embeddings)
        if len(preds) != len(wanted):
            raise ValueError(f"predict returned {len(preds)} predictions for {len(wanted)} images")
        for (record, _), pred in zip(wanted, preds):
            if not isinstance(pred, Prediction):
                raise TypeError(f"predict returned {type(pred).__name__}, expected Prediction")
            try:
                pred.validate()
            except ValueError as exc:
                raise ValueError(f"invalid prediction for image {record.id} "
                                 f"({record.locator}): {exc}") from None
    except Exception as exc:
        outcome.error = _describe(exc)
        return
    finally:
        outcome.inference_seconds += time.perf_counter() - started
    items = [(r.content_hash, p) for (r, _), p in zip(wanted, preds)]
    cache.put_predictions(outcome.info.fingerprint, condition, items)
    outcome.predictions.update(items)


def _decode(record: Record, max_pixels: int) -> tuple[Image | None, str | None, str | None]:
    """(image, finding kind, detail); image is None when the file cannot be used."""
    try:
        image, note = decode_image(record.read_bytes(), max_pixels=max_pixels or None)
    except ImageProblem as exc:
        return None, exc.kind, exc.detail
    except OSError as exc:
        return None, "missing-file", f"cannot read: {exc}"
    kind = None
    if note:
        kind = "animated" if note.startswith("animated") else "converted-mode"
    return image, kind, note


def _decoded_batches(todo: Sequence[Record], batch_size: int, max_pixels: int,
                     workers: int) -> Iterator[tuple[Sequence[Record], list, float]]:
    """Yield decoded batches while the next batch decodes in the background."""
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        def submit(batch: Sequence[Record]):  # noqa: ANN202 - local helper
            return time.perf_counter(), [pool.submit(_decode, r, max_pixels) for r in batch]

        pending = submit(batches[0])
        for i, batch in enumerate(batches):
            started, futures = pending
            decoded = [f.result() for f in futures]
            seconds = time.perf_counter() - started
            if i + 1 < len(batches):
                pending = submit(batches[i + 1])
            yield batch, decoded, seconds


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"

"""The prediction pass: records in, one cached prediction per (classifier, image, condition) out.

Images are decoded once, in a small thread pool one batch ahead of the models, and shared by
every classifier that still needs them; nothing the cache already holds is decoded or inferred.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar, copy_context
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from .cache import PredictionCache
from .classifier import Backbone, Classifier, ClassifierInfo, HeadClassifier, Prediction
from .dataset.images import (
    DEFAULT_ALPHA,
    ImageProblem,
    finish_decode,
    max_file_bytes,
    open_image,
    readonly_view,
)
from .dataset.records import EXCLUDING_KINDS, Finding, Record
from .options import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from PIL.Image import Image

CLEAN = "clean"
# Decoded pixels held at once: the batch the models are on plus the one decoding ahead; each
# half fits one image of the default pixel limit, and batches of usual images are unaffected.
DECODE_BUDGET_PIXELS = 2 * DEFAULT_MAX_PIXELS
# Read failures about the path, not the content its hash names: never cached (by the local
# pass, nor by the Ray executor's driver).
FILE_KINDS = frozenset({"missing-file", "not-a-regular-file"})
Progress = Callable[[int, int], None]
Transform = Callable[["Image", str], "Image"]
T = TypeVar("T")


class RemoteExecutor(Protocol):
    """Computes elsewhere what the cache lacks for a pass (``--unsafebench-executor=ray``)."""

    def warm(self, records: Sequence[Record], loaders: Mapping[str, Callable[[], Classifier]],
             cache: PredictionCache, *, condition: str, batch_size: int,
             max_pixels: int | None, transform: Transform | None,
             progress: Progress | None) -> dict[str, int]:
        """Returns how many predictions it added to the cache, per classifier fingerprint."""


# Set by the run around its passes (clean and perturbed) when the executor is not local.
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
    timeout: float | None = None,
) -> PassResult:
    """Predict every record under ``condition``. ``transform`` (image, content hash) -> image
    is applied after decoding: that is how perturbed conditions reuse this pass and its cache.
    ``timeout``: seconds each classifier gets per batch (None: no limit).
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
            clf = Guard(None)(loader)
            info = Guard(None)(partial(ClassifierInfo.of, name, clf))
        except Exception as exc:  # a broken classifier errors its own tests, no one else's
            outcomes[name] = ClassifierOutcome(ClassifierInfo(name), error=describe(exc))
            continue
        outcome = ClassifierOutcome(info)
        usable = [h for h in hashes if h not in bad]
        outcome.predictions = cache.get_predictions(info.fingerprint, condition, usable)
        outcome.hits = len(outcome.predictions)
        missing[name] = {h for h in usable if h not in outcome.predictions}
        outcome.misses = len(missing[name])
        outcomes[name] = outcome
        models[name] = clf

    first_record: dict[str, Record] = {}
    for r in records:
        first_record.setdefault(r.content_hash, r)
    todo = [first_record[h] for h in hashes
            if h not in statuses or any(h in m for m in missing.values())]
    result = PassResult(outcomes, [], bad)
    decode_status: dict[str, tuple[str | None, str | None]] = dict(statuses)
    embeddings = SharedEmbeddings(cache, condition)
    done = 0
    # Decoded under the cache's alpha rule, which keys what the cache returns and keeps.
    for batch, decoded, seconds in decoded_batches(todo, batch_size, pixel_limit, workers,
                                                   alpha=cache.alpha):
        result.decode_seconds += seconds
        result.decoded += len(batch)
        # A file that could not be read says nothing about the content its hash names:
        # keep that out of the cache, or the image would stay excluded once it is back.
        fresh = [(r.content_hash, kind, detail) for r, (_, kind, detail) in zip(batch, decoded)
                 if r.content_hash not in statuses and kind not in FILE_KINDS]
        if fresh:
            cache.put_decodes(fresh, pixel_limit)
        for r, (_, kind, detail) in zip(batch, decoded):
            decode_status[r.content_hash] = (kind, detail)
            if kind in EXCLUDING_KINDS:
                result.excluded_hashes.add(r.content_hash)
        if transform is not None:  # in place: the batch's list, whose images get closed
            decoded[:] = [(transform(readonly_view(img), r.content_hash) if img is not None
                           else None, kind, detail)
                          for r, (img, kind, detail) in zip(batch, decoded)]
        for name, clf in models.items():
            outcome = outcomes[name]
            if outcome.error:
                continue
            wanted = [(r, img) for r, (img, kind, _) in zip(batch, decoded)
                      if img is not None and r.content_hash in missing[name]]
            if wanted:
                predict_batch(clf, wanted, outcome, cache, condition, embeddings, timeout)
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


class SharedEmbeddings:
    """Backbone embeddings for the current batch, shared by every head on that backbone and
    cached like predictions, so N heads cost one backbone pass (or none, when cached)."""

    def __init__(self, cache: PredictionCache, condition: str) -> None:
        self.cache = cache
        self.condition = condition
        self.batch: dict[str, dict[str, Any]] = {}
        self.computed = 0

    def get(self, backbone: Backbone, hashes: Sequence[str], images: Sequence[Image],
            guard: Guard) -> Any:
        import numpy as np

        if not isinstance(backbone.fingerprint, str) or not backbone.fingerprint:
            raise TypeError(f"backbone fingerprint is {backbone.fingerprint!r}: it must be a "
                            "non-empty string (it keys the embedding cache)")
        memo = self.batch.setdefault(backbone.fingerprint, {})
        unknown = [h for h in hashes if h not in memo]
        if unknown:
            memo.update(self.cache.get_embeddings(backbone.fingerprint, self.condition, unknown))
        todo = {h: img for h, img in zip(hashes, images) if h not in memo}
        if todo:
            vectors = np.asarray(guard(partial(backbone.embed, list(todo.values()))),
                                 dtype=np.float32)
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
           embeddings: SharedEmbeddings, guard: Guard) -> list[Prediction]:
    if isinstance(clf, HeadClassifier):
        vectors = embeddings.get(clf.backbone, [r.content_hash for r, _ in wanted],
                                 [img for _, img in wanted], guard)
        return guard(lambda: list(clf.predict_embeddings(vectors)))
    if getattr(clf, "needs_records", False):  # e.g. VLM judges: the prompt names the category
        # Such a classifier's predict also takes the records, beyond the Classifier protocol.
        return guard(lambda: list(clf.predict([img for _, img in wanted],  # type: ignore[call-arg]
                                              records=[r for r, _ in wanted])))
    return guard(lambda: list(clf.predict([img for _, img in wanted])))


def predict_batch(clf: Classifier, wanted: list[tuple[Record, Image]],
                  outcome: ClassifierOutcome, cache: PredictionCache, condition: str,
                  embeddings: SharedEmbeddings, timeout: float | None = None) -> None:
    """Classify one batch's decoded images and write the predictions to ``cache`` (the
    SQLite cache, or a Ray actor's collector); a classifier's failure becomes
    ``outcome.error`` instead of an exception. Shared by the local pass and the Ray actors."""
    started = time.perf_counter()
    # Views of its own for each classifier: what one does to its images (thumbnail, drawing)
    # never reaches the next classifier, nor, through its predictions, the cache.
    wanted = [(record, readonly_view(img)) for record, img in wanted]
    try:
        preds = _infer(clf, wanted, embeddings, Guard(timeout))
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
    except Exception as exc:  # a reader that fails otherwise: that file's finding
        outcome.error = describe(exc)
        return
    finally:
        outcome.inference_seconds += time.perf_counter() - started
    items = [(r.content_hash, p) for (r, _), p in zip(wanted, preds)]
    cache.put_predictions(outcome.info.fingerprint, condition, items)
    outcome.predictions.update(items)


Decoded = tuple["Image | None", "str | None", "str | None"]  # (image, finding kind, detail)


def _open(record: Record, max_pixels: int) -> Decoded:
    """Read and identify one file: a lazy image whose size is known and whose pixels are not
    decoded yet, or None with the finding. No failure of one file gets past here."""
    limit = max_pixels or None
    try:
        return open_image(record.read_bytes(max_file_bytes(limit)), limit), None, None
    except ImageProblem as exc:
        return None, exc.kind, exc.detail
    except OSError as exc:
        return None, "missing-file", f"cannot read: {exc}"
    except Exception as exc:
        return None, "unreadable", f"reading failed: {describe(exc)}"


def _finish(opened: Decoded, alpha: str = DEFAULT_ALPHA) -> Decoded:
    """Decode an :func:`_open` result to RGB under the ``alpha`` rule, naming any conversion."""
    lazy = opened[0]
    if lazy is None:
        return opened
    try:
        image, note = finish_decode(lazy, alpha)
    except ImageProblem as exc:
        return None, exc.kind, exc.detail
    kind = None
    if note:
        kind = "animated" if note.startswith("animated") else "converted-mode"
    return image, kind, note


def _decode(record: Record, max_pixels: int) -> Decoded:
    """(image, finding kind, detail); image is None when the file cannot be used."""
    return _finish(_open(record, max_pixels))


Plan = list[tuple[Record, Decoded]]  # a batch's records, read and identified


def _pixels(plan: Plan) -> int:
    return sum(img.width * img.height for _, (img, _, _) in plan if img is not None)


def _plans(pool: ThreadPoolExecutor, todo: Sequence[Record], batch_size: int, pixels: int,
           max_pixels: int, breaks: frozenset[int]) -> Iterator[Plan]:
    """Batches of at most ``batch_size`` records and ``pixels`` decoded pixels, at least one
    record each, each record index in ``breaks`` starting a new one; files are read and
    identified in the pool up to two batches ahead."""
    window: deque[tuple[Record, Future[Decoded]]] = deque()
    pending = iter(todo)

    def fill() -> None:
        while len(window) < 2 * batch_size:
            record = next(pending, None)
            if record is None:
                return
            window.append((record, pool.submit(_open, record, max_pixels)))

    plan: Plan = []
    total = 0
    fill()
    index = 0
    while window:
        record, future = window.popleft()
        opened = future.result()
        size = _pixels([(record, opened)])
        if plan and (len(plan) == batch_size or total + size > pixels or index in breaks):
            yield plan
            plan, total = [], 0
        plan.append((record, opened))
        total += size
        index += 1
        fill()
    if plan:
        yield plan


def decoded_batches(todo: Sequence[Record], batch_size: int, max_pixels: int, workers: int,
                    budget: int | None = None, breaks: frozenset[int] = frozenset(),
                    alpha: str = DEFAULT_ALPHA,
                    ) -> Iterator[tuple[Sequence[Record], list[Decoded], float]]:
    """Yield decoded batches in record order while the next batch decodes in the background.

    Memory: a batch holds at most half of ``budget`` decoded pixels (default
    :data:`DECODE_BUDGET_PIXELS`, read at each call), shrinking, down to one image, to fit,
    and the next batch decodes ahead only while both fit ``budget``. When the
    consumer asks for the next batch, every image of the previous one (and whatever the
    consumer put in its list, e.g. perturbed images) is closed, so lingering references do
    not hold pixels. A record index in ``breaks`` always starts a batch (the Ray actor's
    work batches).
    """
    if not todo:
        return
    budget = DECODE_BUDGET_PIXELS if budget is None else budget
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        plans = _plans(pool, todo, batch_size, budget // 2, max_pixels, breaks)

        def submit(plan: Plan) -> tuple[float, list[Future[Decoded]]]:
            return time.perf_counter(), [pool.submit(_finish, opened, alpha)
                                         for _, opened in plan]

        first = next(plans)  # todo is not empty: at least one batch
        pending = submit(first)
        plan: Plan | None = first
        while plan is not None:
            started, futures = pending
            decoded = [f.result() for f in futures]
            seconds = time.perf_counter() - started
            following = next(plans, None)
            ahead = following is not None and _pixels(plan) + _pixels(following) <= budget
            if following is not None and ahead:
                pending = submit(following)
            held = [img for _, (img, _, _) in plan] + [img for img, _, _ in decoded]
            yield [record for record, _ in plan], decoded, seconds
            for img in held + [img for img, _, _ in decoded]:
                if img is not None:
                    img.close()
            decoded.clear()
            if following is not None and not ahead:
                pending = submit(following)
            plan = following


class ClassifierFault(Exception):
    """A classifier call that timed out, or raised what ``except Exception`` lets through
    (SystemExit, a KeyboardInterrupt of its own): that classifier's error, not the run's."""


class Guard:
    """Runs one batch's classifier calls, or with ``loading`` its factory call: within
    ``timeout`` seconds in all (None: no limit), with everything they raise contained,
    BaseExceptions too, except a real Ctrl-C."""

    def __init__(self, timeout: float | None, *, loading: bool = False) -> None:
        self.timeout = timeout
        self.loading = loading
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def __call__(self, fn: Callable[[], T]) -> T:
        with _sigint_watch() as interrupted:
            try:
                return fn() if self.deadline is None else self._before_deadline(fn)
            except Exception:
                raise
            except BaseException as exc:  # handed to the caller below
                if isinstance(exc, KeyboardInterrupt) and interrupted():
                    raise  # the user pressed Ctrl-C: stop the run as pytest does
                raise ClassifierFault(f"{describe(exc)} (raised by the classifier)") from None

    def _before_deadline(self, fn: Callable[[], T]) -> T:
        # A thread, not a process: the model stays loaded. A call that never returns cannot
        # be killed, so it is left behind in a daemon thread that does not hold up exit.
        box: list[tuple[bool, Any]] = []

        def target() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:
                box.append((False, exc))

        thread = threading.Thread(target=copy_context().run, args=(target,), daemon=True,
                                  name="unsafebench-load" if self.loading
                                  else "unsafebench-predict")
        thread.start()
        assert self.deadline is not None
        thread.join(max(0.0, self.deadline - time.monotonic()))
        if not box:
            if self.loading:
                raise ClassifierFault(f"no answer within the {self.timeout:g} s timeout while "
                                      "loading (timeout / --unsafebench-timeout)")
            raise ClassifierFault(
                f"no answer within the {self.timeout:g} s timeout per batch (timeout / "
                "--unsafebench-timeout); the rest of its images were not scored")
        ok, value = box[0]
        if ok:
            return cast(T, value)  # fn's result
        raise value


@contextmanager
def _sigint_watch() -> Iterator[Callable[[], bool]]:
    """Notes whether a real SIGINT arrived (then behaves as the handler it replaces), so a
    KeyboardInterrupt a classifier raises itself can be told from the user's Ctrl-C."""
    seen = [False]
    if threading.current_thread() is not threading.main_thread():
        yield lambda: True  # no handler can be set here: treat every interrupt as real
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        seen[0] = True
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: seen[0]
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def describe(exc: BaseException) -> str:
    """A classifier's error in one line, as its outcome and its tests report it: a
    ClassifierFault's own words, anything else prefixed with its type."""
    if isinstance(exc, ClassifierFault):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"

"""The ``ray`` executor: uncached (classifier x image x condition) work on a Ray Data actor pool.

Flow: the driver works out, from the cache, what is missing (as the local pass would), and
sends Ray Data one row per work batch: image *references* (see executors.py), never pixels.
Each actor of the pool loads every classifier of the run once, through the registry, then
reads, decodes (the same safe decoding), perturbs (the same transform) and classifies its
batches with the engine's own helpers. Results stream back to the driver, the only writer of
the SQLite cache; the normal local pass then runs against the warm cache. Work batches are the
local pass's batches (same images, same order), so batch-sensitive models give bit-identical
predictions on CPU; only a batch of images too large for the decoded-pixel budget is split
(engine.py), locally and on the actors alike, though after a split the local batches shift.

Fault tolerance is Ray's: Ray Data creates pool actors with ``max_restarts=-1`` and
``max_task_retries=-1``, so a lost actor is restarted and its in-flight batches retried (Ray
2.60 deprecates passing other values); a driver that dies leaves every finished batch in the
cache, and the rerun submits only the rest.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from .dataset.images import DEFAULT_ALPHA
from .dataset.records import EXCLUDING_KINDS
from .errors import UnsafeBenchError
from .executors import ImageRef, RefReader, image_ref
from .text import printable

if TYPE_CHECKING:
    from .cache import PredictionCache
    from .classifier import Classifier, Prediction
    from .config import Settings
    from .dataset.demo import DemoRow
    from .dataset.records import Record
    from .engine import Progress, Transform

# Work batches per actor call: enough to overlap decoding with inference, few enough that
# results stream back (and reach the cache) often.
_PER_CALL = 4
_RECORD_FIELDS = ("id", "safety_label", "category", "source", "split", "content_hash",
                  "locator", "text", "archive_key")
# Seconds each ray.init (connecting to a cluster, or starting a local Ray) may take: generous,
# since a local start on a loaded 2-core machine takes tens of seconds.
RAY_INIT_SECONDS = 120.0


@dataclass(frozen=True)
class ClassifierSpec:
    """How a worker loads a classifier: its registry name and factory options, plus the
    fingerprint the driver saw (a worker that loads something else must not fill the cache)."""

    name: str
    options: Mapping[str, Any]
    fingerprint: str


@dataclass(frozen=True)
class WorkItem:
    record: dict[str, str]          # the Record's fields, without its (driver-side) reader
    ref: ImageRef
    fingerprints: tuple[str, ...]   # classifiers that still need this image; may be empty


@dataclass
class BatchResult:
    decodes: list[tuple[str, str | None, str | None]]  # (hash, finding kind, detail), every item
    predictions: dict[str, list[tuple[str, Prediction]]] = field(default_factory=dict)
    embeddings: list[tuple[str, list[tuple[str, Any]]]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # fingerprint -> error


SpecOf = Callable[["Classifier"], "ClassifierSpec | None"]


class RayExecutor:
    """Fills the prediction cache through Ray; one per pytest session (or process)."""

    def __init__(self, settings: Settings, spec_of: SpecOf,
                 demo_plan: dict[str, tuple[int, DemoRow]] | None = None) -> None:
        self.settings = settings
        self.spec_of = spec_of
        self.demo_plan = demo_plan
        self.submitted = 0              # images sent to Ray (a warm cache sends none)
        self.start_seconds = 0.0        # connecting to or starting Ray
        self.seconds = 0.0              # submitting and collecting
        self._started_ray = False
        self._release = threading.Event()  # ends the thread that ran ray.init (see bounded_init)

    def warm(self, records: Sequence[Record], loaders: Mapping[str, Callable[[], Classifier]],
             cache: PredictionCache, *, condition: str, batch_size: int,
             max_pixels: int | None, transform: Transform | None,
             progress: Progress | None = None) -> dict[str, int]:
        """Compute on Ray every decode and prediction the cache lacks for these records;
        returns how many predictions were added, per classifier fingerprint."""
        pixel_limit = max_pixels or 0
        hashes = list(dict.fromkeys(r.content_hash for r in records))
        statuses = cache.get_decodes(hashes, pixel_limit)
        usable = [h for h in hashes if statuses.get(h, (None, None))[0] not in EXCLUDING_KINDS]
        specs: dict[str, ClassifierSpec] = {}
        needs: dict[str, list[str]] = {}
        for loader in loaders.values():
            try:
                spec = self.spec_of(loader())
            except Exception:  # the local pass reports a classifier that fails
                continue
            if spec is None:  # not loadable by name on a worker: the local pass does it
                continue
            specs[spec.fingerprint] = spec
            cached = cache.get_predictions(spec.fingerprint, condition, usable)
            for h in usable:
                if h not in cached:
                    needs.setdefault(h, []).append(spec.fingerprint)
        first: dict[str, Record] = {}
        for r in records:
            first.setdefault(r.content_hash, r)
        todo = [first[h] for h in hashes if h not in statuses or h in needs]
        added: dict[str, int] = {}
        if not todo:
            return added
        size = self.settings.ray_batch_size or batch_size
        batches = [[WorkItem({f: getattr(r, f) for f in _RECORD_FIELDS},
                             image_ref(r, self.demo_plan), tuple(needs.get(r.content_hash, ())))
                    for r in todo[i:i + size]] for i in range(0, len(todo), size)]
        started = time.perf_counter()
        ray = self._connect()
        self.submitted += len(todo)
        # Rows carry their batch pre-pickled: a plain binary column (Ray would otherwise try
        # Arrow, fail on dataclasses, warn, and pickle anyway). Driver-made, read by workers.
        dataset = ray.data.from_items([{"work": pickle.dumps(b)} for b in batches],
                                      override_num_blocks=-(-len(batches) // _PER_CALL))
        gpus = self.settings.ray_gpus_per_actor
        results = dataset.map_batches(
            _Predictor, batch_size=_PER_CALL, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.settings.ray_actors),
            num_gpus=gpus or None,
            fn_constructor_kwargs={
                "specs": list(specs.values()), "condition": condition, "transform": transform,
                "max_pixels": pixel_limit, "device": self.settings.device, "gpus": gpus,
                "timeout": self.settings.timeout, "alpha": cache.alpha},
        )
        errors: dict[str, str] = {}
        done = 0
        try:
            for row in results.iter_rows():
                result = pickle.loads(row["result"])  # made by our own actors
                for fingerprint, n in _store(result, cache, condition, pixel_limit,
                                             statuses).items():
                    added[fingerprint] = added.get(fingerprint, 0) + n
                errors.update(result.errors)
                done += len(result.decodes)
                if progress:
                    progress(done, len(todo))
        except Exception as exc:  # Ray wraps worker failures in its own exception classes
            raise UnsafeBenchError(
                f"the ray executor failed ({type(exc).__name__}: {exc}); finished batches are "
                "cached, so a rerun resumes where this one stopped") from exc
        finally:
            self.seconds += time.perf_counter() - started
        for fingerprint, error in errors.items():
            # The local pass redoes this work: it reports the error if it is the classifier's.
            warnings.warn(printable(f"ray executor: classifier {specs[fingerprint].name!r} "
                                    f"failed on a worker ({error}); its remaining {condition} "
                                    "predictions are computed locally"), stacklevel=2)
        return added

    def _connect(self) -> Any:
        """An existing connection, ``ray_address``, a running cluster, or a local Ray."""
        import ray
        import ray.data

        started = time.perf_counter()
        if not ray.is_initialized():
            common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
            address = self.settings.ray_address
            if address:
                self._init(partial(ray.init, address=address, **common),
                           f"no answer from the Ray cluster at {address} (ray_address / "
                           "--unsafebench-ray-address)", "check that the cluster is running "
                           "(`ray status` on its head node) and reachable from this machine, or "
                           "leave ray_address unset to start a local Ray")
            else:
                try:
                    self._init(partial(ray.init, address="auto", **common),
                               "no answer from the running Ray cluster (auto)",
                               "stop a stale one with `ray stop`, or name the cluster with "
                               "--unsafebench-ray-address")
                except ConnectionError:  # no cluster running: one for this run, on this machine
                    actors = self.settings.ray_actors
                    self._init(partial(
                        ray.init, num_cpus=max(actors, min(os.cpu_count() or 1, actors + 1)),
                        include_dashboard=False,
                        # so that module:callable classifiers import as on the driver
                        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                            p for p in sys.path if p and os.path.isdir(p))}},
                        **common), "a local Ray did not start",
                        "see Ray's logs under /tmp/ray/session_latest/logs")
                    self._started_ray = True
        # The pytest terminal is the run's progress report; Ray Data's would interleave.
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        context.enable_auto_log_stats = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        self.start_seconds += time.perf_counter() - started
        return ray

    def _init(self, init: Callable[[], object], problem: str, fix: str) -> None:
        """``init`` (a ray.init) within :data:`RAY_INIT_SECONDS`; a usage error, saying
        ``problem`` and ``fix``, when it takes longer or cannot connect to a named address."""
        try:
            bounded_init(init, RAY_INIT_SECONDS, self._release)
        except TimeoutError:
            raise UnsafeBenchError(f"the ray executor cannot run: {problem} within "
                                   f"{RAY_INIT_SECONDS:g} s; {fix}") from None
        except ConnectionError as exc:
            if self.settings.ray_address is None:
                raise  # "auto" found no cluster: the caller starts a local Ray
            raise UnsafeBenchError(f"the ray executor cannot run: {problem}: {exc}; "
                                   f"{fix}") from None

    def close(self) -> None:
        """Shut Ray down if this executor started it; leave a cluster or a caller's Ray be."""
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False
        self._release.set()


def bounded_init(init: Callable[[], object], seconds: float, release: threading.Event) -> None:
    """Run ``init`` (a ray.init) and wait for it at most ``seconds``: TimeoutError after that,
    and what it raises is raised here. It runs in a daemon thread, since it can block inside
    Ray's C++ core, which no signal interrupts; one that never returns is left there and does not
    hold up exit. Once ``init`` returned, its thread waits for ``release`` before it ends: the
    processes a local Ray start spawns are killed when the thread that started them ends
    (Linux's parent-death signal)."""
    done = threading.Event()
    raised: list[BaseException] = []

    def target() -> None:
        try:
            init()
        except BaseException as exc:  # handed to the caller
            raised.append(exc)
            done.set()
            return
        done.set()
        release.wait()

    if threading.current_thread() is threading.main_thread():
        # What ray.init does in the main thread, and not in another: SIGTERM exits through
        # atexit, which shuts Ray down.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    worker = logging.getLogger("ray._private.worker")
    worker.addFilter(_not_main_thread_note)
    try:
        threading.Thread(target=target, daemon=True, name="unsafebench-ray-init").start()
        if not done.wait(seconds):
            raise TimeoutError
    finally:
        worker.removeFilter(_not_main_thread_note)
    if raised:
        raise raised[0]


def _not_main_thread_note(record: logging.LogRecord) -> bool:
    """Drops ray.init's note that it set no SIGTERM handler outside the main thread
    (bounded_init sets one)."""
    return "not the main thread" not in record.getMessage()


def _store(result: BatchResult, cache: PredictionCache, condition: str, pixel_limit: int,
           statuses: Mapping[str, Any]) -> dict[str, int]:
    """Write one batch's results, as the local pass would have written them; returns the
    number of predictions written per classifier fingerprint."""
    # As locally: a file that could not be read says nothing about the content its hash names.
    from .engine import FILE_KINDS

    fresh = [(h, kind, detail) for h, kind, detail in result.decodes
             if h not in statuses and kind not in FILE_KINDS]
    if fresh:
        cache.put_decodes(fresh, pixel_limit)
    for backbone, vectors in result.embeddings:
        cache.put_embeddings(backbone, condition, vectors)
    for fingerprint, items in result.predictions.items():
        cache.put_predictions(fingerprint, condition, items)
    # Errors are not written: the local pass then meets the same error and reports it.
    return {fingerprint: len(items) for fingerprint, items in result.predictions.items()}


class _Collector:
    """Stands in for the cache inside an actor: collects what the engine would write."""

    def __init__(self) -> None:
        self.predictions: dict[str, list[tuple[str, Prediction]]] = {}
        self.embeddings: list[tuple[str, list[tuple[str, Any]]]] = []

    def put_predictions(self, fingerprint: str, condition: str,
                        items: Sequence[tuple[str, Prediction]]) -> None:
        self.predictions.setdefault(fingerprint, []).extend(items)

    def get_embeddings(self, backbone: str, condition: str, hashes: Any) -> dict[str, Any]:
        return {}  # workers never read the driver's cache: a cached embedding is recomputed

    def put_embeddings(self, backbone: str, condition: str,
                       items: Sequence[tuple[str, Any]]) -> None:
        self.embeddings.append((backbone, list(items)))


def _merged(parts: list[BatchResult]) -> BatchResult:
    """One work batch's result from the results of its parts."""
    out = BatchResult([d for part in parts for d in part.decodes])
    for part in parts:
        for fingerprint, items in part.predictions.items():
            out.predictions.setdefault(fingerprint, []).extend(items)
        out.embeddings.extend(part.embeddings)
        out.errors.update(part.errors)
    return out


class _Predictor:
    """The actor: every classifier of the run, loaded once, applied to work batches."""

    def __init__(self, specs: Sequence[ClassifierSpec], condition: str,
                 transform: Transform | None, max_pixels: int, device: str,
                 gpus: float, timeout: float | None = None, alpha: str = DEFAULT_ALPHA) -> None:
        from .classifier import ClassifierInfo
        from .device import resolve_device
        from .engine import ClassifierOutcome, Guard, describe
        from .registry import load_classifier

        self.condition = condition
        self.transform = transform
        self.max_pixels = max_pixels
        self.alpha = alpha  # the driver cache's rule: its keys say how these images decoded
        self.timeout = timeout  # per batch, as locally: a hang must not stall the whole pass
        self.refs = RefReader()
        # On a GPU node each actor owns its GPU(s); elsewhere Ray hides the GPUs from it.
        device = resolve_device(device) if device != "auto" or gpus else "cpu"
        self.models: dict[str, tuple[Classifier, Any]] = {}
        self.errors: dict[str, str] = {}
        for spec in specs:
            try:  # Guard: a SystemExit from a factory, or a hang, is that classifier's error
                clf = Guard(timeout, loading=True)(partial(load_classifier, spec.name,
                                                           **{**spec.options, "device": device}))
                if clf.fingerprint != spec.fingerprint:
                    raise UnsafeBenchError(
                        f"loads as fingerprint {clf.fingerprint!r} on the worker but "
                        f"{spec.fingerprint!r} on the driver; install the same weights and "
                        "package versions on both")
            except Exception as exc:  # reported per classifier
                self.errors[spec.fingerprint] = describe(exc)
                continue
            self.models[spec.fingerprint] = (clf, ClassifierOutcome(
                ClassifierInfo.of(spec.name, clf)))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Several work batches per call, decoded as the local pass decodes (the next batch in
        the background, within the decoded-pixel budget, a batch shrinking to fit it), so a
        work batch may be classified in parts; one result per work batch."""
        from .dataset.records import Record
        from .engine import decoded_batches

        works: list[list[WorkItem]] = [pickle.loads(w) for w in batch["work"]]
        items = [it for work in works for it in work]
        records = [Record(**it.record, reader=partial(self.refs.read, it.ref,
                                                       it.record["content_hash"]))
                   for it in items]
        owner = [i for i, work in enumerate(works) for _ in work]
        starts = frozenset(i for i in range(1, len(items)) if owner[i] != owner[i - 1])
        parts: list[list[BatchResult]] = [[] for _ in works]
        done = 0
        for plan, decoded, _ in decoded_batches(records, max(map(len, works), default=1),
                                                self.max_pixels, 4, breaks=starts,
                                                alpha=self.alpha):
            end = done + len(plan)
            parts[owner[done]].append(self._classify(items[done:end], list(plan), decoded))
            done = end
        return {"result": [pickle.dumps(_merged(p)) for p in parts]}

    def _classify(self, items: list[WorkItem], records: list[Record],
                  decoded: list[tuple[Any, str | None, str | None]]) -> BatchResult:
        from .dataset.images import readonly_view
        from .engine import SharedEmbeddings, predict_batch

        result = BatchResult([(r.content_hash, kind, detail)
                              for r, (_, kind, detail) in zip(records, decoded)])
        if self.transform is not None:  # in place: the batch's list, whose images get closed
            decoded[:] = [(self.transform(readonly_view(img), r.content_hash) if img is not None
                           else None, k, d)
                          for r, (img, k, d) in zip(records, decoded)]
        sink = _Collector()
        embeddings = SharedEmbeddings(sink, self.condition)  # type: ignore[arg-type]
        for fingerprint, (clf, outcome) in self.models.items():
            if outcome.error:
                continue  # as locally: a classifier that failed is not asked again
            wanted = [(r, img) for r, it, (img, _, _) in zip(records, items, decoded)
                      if img is not None and fingerprint in it.fingerprints]
            if wanted:
                predict_batch(clf, wanted, outcome, sink,  # type: ignore[arg-type]
                              self.condition, embeddings, self.timeout)
        result.predictions = sink.predictions
        result.embeddings = sink.embeddings
        result.errors = {**self.errors, **{fp: o.error for fp, (_, o) in self.models.items()
                                           if o.error}}
        return result

"""The active run: one typed object in ``config.stash`` that owns the settings, runs the
prediction pass on the controller, serves cells to tests, and aggregates the report.

Controller / worker split (as pytest-cov does it): the controller (or a serial run) loads the
dataset and runs the one prediction pass before any test runs, then writes the run state to a
session folder; pytest-xdist workers only read that folder. So no image is inferred twice, and
a serial run and ``-n 2`` compute every metric from identical files.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import progress
from .config import Settings
from .device import resolve_device
from .errors import UnsafeBenchError, write_failure
from .results import ClassifierState, PredictionTable, RunState
from .text import printable

if TYPE_CHECKING:
    from .cache import PredictionCache
    from .cells import Bootstrap, Cell, GapCell, RobustnessCell
    from .classifier import Classifier
    from .dataset import Dataset
    from .dataset.demo import DemoRow
    from .dataset.records import Record
    from .engine import PassResult
    from .ray_executor import ClassifierSpec, RayExecutor
    from .robustness.accuracy import RAResult

SESSION_KEY = pytest.StashKey["UnsafeBenchSession"]()
ROWS_KEY = pytest.StashKey[list]()
WORKER_INPUT_KEY = "unsafebench_session_dir"


# eq=False keeps identity hashing: pluggy puts registered plugins in sets (a user's conftest.py
# that does not cover the packaged suites makes pytest build such a set).
@dataclass(eq=False)
class UnsafeBenchSession:
    config: pytest.Config
    settings: Settings
    session_dir: Path
    is_worker: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    device: str = "cpu"
    _state: RunState | None = None
    _tables: dict[str, PredictionTable] = field(default_factory=dict)
    _classifiers: dict[str, Classifier] = field(default_factory=dict)
    _records: dict[str, Record] | None = None
    _baseline: dict[str, Any] | None = None
    _baseline_notes: list[str] = field(default_factory=list)  # allowed dataset/split mismatch
    _started: float = field(default_factory=time.perf_counter)
    document: dict[str, Any] | None = None   # the finished report, set at session finish
    written: list[str] = field(default_factory=list)  # "wrote PATH (what)" lines, in order
    _remote: RayExecutor | None = None
    _cache_warned: bool = False
    # Long steps' progress and seconds (progress.step); set up once the terminal exists.
    _display: progress.Display = field(default_factory=lambda: progress.Display(lambda _t: None))

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, config: pytest.Config, settings: Settings) -> UnsafeBenchSession:
        workerinput = getattr(config, "workerinput", None)
        if workerinput is not None:
            return cls(config, settings, Path(workerinput[WORKER_INPUT_KEY]), is_worker=True)
        folder = Path(tempfile.mkdtemp(prefix="unsafebench-"))
        return cls(config, settings, folder, is_worker=False)

    @property
    def cache_path(self) -> Path:
        # --unsafebench-no-cache: a throwaway cache inside the session folder, so workers
        # still read the controller's predictions but nothing outlives the run.
        base = self.settings.cache_dir if self.settings.use_cache else self.session_dir
        return base / "predictions.sqlite"

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[WORKER_INPUT_KEY] = str(self.session_dir)

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self._display = _terminal_display(self.config, self.is_worker)
        progress.activate(self._display)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        note = None if self.is_worker else _timeout_method_note(self.config)
        if note and reporter is not None:  # now: a timeout would end the run before the end
            reporter.write_line(note, yellow=True)

    def pytest_report_collectionfinish(self, config: pytest.Config,
                                       items: list[pytest.Item]) -> list[str]:
        """-m / -k that selected nothing: name the suite option they were probably after."""
        if self.is_worker or items:
            return []
        return self._suite_hints(config)

    def _suite_hints(self, config: pytest.Config) -> list[str]:
        from . import suites
        from .plugin import SUITE_MODULES
        from .selection import disabled_suite_hints

        extra: dict[str, set[str]] = {}
        if "robustness" not in self.settings.suites:  # -k pgd: robustness parameter ids
            from .robustness.accuracy import condition_names

            try:
                extra["robustness"] = set(condition_names(self.settings.robustness))
            except UnsafeBenchError:  # a misspelt name: checked when the suite is enabled
                pass
        return disabled_suite_hints(config, self.settings.suites, Path(suites.__file__).parent,
                                    SUITE_MODULES, extra)

    def _markexpr_selects_none(self, config: pytest.Config) -> bool:
        """-m selects none of the packaged tests this run collects (and nothing else runs)."""
        from .selection import markexpr_selects_none

        packaged = config.pluginmanager.get_plugin("unsafebench-packaged-suites")
        markexpr = config.getoption("markexpr", "") or ""
        if not markexpr or packaged is None or packaged.ids \
                or config.args != [str(packaged.folder)]:
            return False
        return markexpr_selects_none(markexpr, [packaged.folder / m for m in packaged.modules])

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """A gap test over robustness conditions (test_gap_ra) needs robustness results:
        without that suite it is left out, rather than skipped as a placeholder in every
        default run."""
        from .marker import gap_over_conditions

        s = self.settings
        if "gap" in s.suites and "robustness" not in s.suites:
            items[:] = [i for i in items if not gap_over_conditions(i)]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        if self.is_worker or session.config.option.collectonly:
            return
        # Every test deselected: nothing would read the predictions. An xdist controller
        # collects nothing itself; there only -m tells that no packaged test can be selected.
        config = session.config
        if not config.pluginmanager.has_plugin("dsession"):
            if not session.items:
                return
        elif self._markexpr_selects_none(config):
            reporter = config.pluginmanager.get_plugin("terminalreporter")
            for line in self._suite_hints(config) if reporter else ():
                reporter.write_line(line)
            return
        if session.testsfailed and not session.config.option.continue_on_collection_errors:
            return
        try:
            self.prepare()
        except UnsafeBenchError as exc:  # may quote a manifest's or a baseline's text
            raise pytest.UsageError(printable(exc)) from None

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        progress.deactivate(self._display)
        if self._remote is not None:
            self._remote.close()
        if not self.is_worker:
            shutil.rmtree(self.session_dir, ignore_errors=True)

    # ------------------------------------------------------------------ the prediction pass
    def prepare(self) -> None:
        from .cache import check_folder
        from .engine import run_pass

        s = self.settings
        check_folder(s.cache_dir)  # a file there is a usage error before any work, not after
        if s.baseline_path is not None:
            from .report.baseline import check_renames, load

            self._baseline = load(s.baseline_path)  # fail before the pass, not after it
            check_renames(self._baseline, s.baseline_classifiers, s.classifiers,
                          "--unsafebench-baseline-classifier")
        with progress.step("dataset", f"loading the dataset ({s.dataset})"):
            dataset = self._load_dataset()
        if self._baseline is not None:
            from .report.baseline import check_dataset

            self._baseline_notes = check_dataset(
                self._baseline, dataset.fingerprint, s.public(),
                allow=s.baseline_allow_mismatch, flag="--unsafebench-baseline-allow-mismatch")
        # Kept for the report's thumbnails and for robustness in this process: loading again
        # would re-read and re-hash every image file.
        self._records = {r.id: r for r in dataset.records}
        self.device = resolve_device(s.device)
        self._refuse_training_data()
        cache = self._open_cache()
        try:
            with self._executor(), progress.step("pass", self._pass_label(), unit="images") as bar:
                result = run_pass(
                    dataset.records,
                    {name: partial(self.classifier, name) for name in s.classifiers},
                    cache, batch_size=s.batch_size, max_pixels=s.max_image_pixels,
                    progress=bar.update, timeout=s.timeout,
                )
                bar.note = _pass_note(result)
        finally:
            cache.close()
        timing = {  # dataset_seconds, pass_seconds and the other long steps' come from progress
            "decode_seconds": round(result.decode_seconds, 3),
            "inference_seconds": round(sum(o.inference_seconds
                                           for o in result.outcomes.values()), 3),
            **self._display.timing()}
        if self._remote is not None:
            timing |= {"ray_images_submitted": self._remote.submitted,
                       "ray_start_seconds": round(self._remote.start_seconds, 3),
                       "ray_seconds": round(self._remote.seconds, 3)}
        self._state = self._write_state(dataset, result, timing)

    def _open_cache(self) -> PredictionCache:
        """The prediction cache; a read-only one is replaced, with a warning, by a throwaway
        cache in the session folder (as --unsafebench-no-cache), which xdist workers share."""
        from .cache import CacheUnwritable, PredictionCache

        try:
            return PredictionCache(self.cache_path, alpha=self.settings.alpha)
        except CacheUnwritable as exc:
            if not self.settings.use_cache:
                raise  # the session folder itself: nothing to fall back to
            if not self._cache_warned:
                self._cache_warned = True
                warnings.warn(f"{exc}; this run goes on without the cache (nothing is read "
                              "from it or kept)", stacklevel=2)
            return PredictionCache(self.session_dir / "predictions.sqlite",
                                   alpha=self.settings.alpha)

    @contextmanager
    def _executor(self) -> Iterator[None]:
        """Passes inside run locally, after the Ray executor (when chosen) filled the cache."""
        if self.settings.executor == "local":
            yield
            return
        from .engine import REMOTE

        if self._remote is None:
            from .ray_executor import RayExecutor

            self._remote = RayExecutor(self.settings, self._spec_of, self._demo_plan())
        token = REMOTE.set(self._remote)
        try:
            yield
        finally:
            REMOTE.reset(token)

    def _spec_of(self, clf: Classifier) -> ClassifierSpec | None:
        """How a Ray worker loads the same classifier: by the name this session loaded it by."""
        from .ray_executor import ClassifierSpec

        for name, loaded in self._classifiers.items():
            if loaded is clf:
                return ClassifierSpec(name, self._factory_options(name), clf.fingerprint)
        return None

    def _demo_plan(self) -> dict[str, tuple[int, DemoRow]] | None:
        """For the demo dataset, workers render images instead of reading the driver's files."""
        s = self.settings
        if s.dataset != "demo":
            return None
        from .dataset.demo import demo_folder_name
        from .executors import demo_plan

        return demo_plan((s.cache_dir / "datasets" / demo_folder_name(s.seed)).resolve(), s.seed)

    def _factory_options(self, name: str) -> dict[str, Any]:
        s = self.settings
        return {"device": self.device, "cache_dir": s.cache_dir, "batch_size": s.batch_size,
                "unsure": s.unsure, "unsure_seed": s.seed,
                "import_responses": str(s.import_responses) if s.import_responses else None,
                "user_classifiers": tuple(s.classifier_options),  # what a probe file may name
                **s.options_for(name)}

    def _refuse_training_data(self) -> None:
        """Stop before scoring a trained classifier (one declaring ``trained_on``) on the split
        of this dataset it was trained on, unless --unsafebench-allow-train-overlap."""
        from .dataset import load_dataset
        from .errors import ConfigError
        from .report.paper import REAL_DATASET_ID, _is_real

        s = self.settings
        if s.allow_train_overlap or s.split == "test":
            return
        full_fingerprint = None
        real = False
        for name in s.classifiers:
            try:
                trained_on = getattr(self.classifier(name), "trained_on", None)
            except Exception:  # the pass reports a failed load on its own tests
                continue
            if not trained_on or trained_on.get("split") not in ("train", "all"):
                continue
            if full_fingerprint is None:  # the whole dataset, as the trainer fingerprinted it
                full = load_dataset(s.dataset, split="all", seed=s.seed, cache_dir=s.cache_dir)
                full_fingerprint = full.fingerprint
                real = _is_real({"spec": full.spec, "name": full.name,
                                 "synthetic": full.synthetic})
            # A released model (pv-llava) names the dataset, not a fingerprint of our copy.
            released = (trained_on.get("fingerprint") is None
                        and trained_on.get("dataset") == f"hf:{REAL_DATASET_ID}" and real)
            if released or trained_on.get("fingerprint") == full_fingerprint:
                raise ConfigError(
                    f"classifier {name!r} was trained on the {trained_on['split']} split of "
                    f"this dataset ({s.dataset}, fingerprint {full_fingerprint}); "
                    f"--unsafebench-split={s.split} would score it on its own training images. "
                    "Use --unsafebench-split=test, or pass --unsafebench-allow-train-overlap "
                    "to score it anyway")

    def classifier(self, name: str) -> Classifier:
        """The loaded classifier (once per process); also the ``unsafebench_classifier`` fixture."""
        if name not in self._classifiers:
            from .engine import Guard
            from .registry import load_classifier

            # Guard: a factory's SystemExit is that classifier's error (an Exception), not the
            # run's.
            self._classifiers[name] = Guard(None)(
                partial(load_classifier, name, **self._factory_options(name)))
        return self._classifiers[name]

    def _write_state(self, dataset: Dataset, result: PassResult,
                     timing: dict[str, float]) -> RunState:
        s = self.settings
        usable = [r for r in dataset.records if r.content_hash not in result.excluded_hashes]
        classifiers: dict[str, ClassifierState] = {}
        for index, (name, outcome) in enumerate(result.outcomes.items()):
            info = outcome.info
            covered = s.coverage_override(name)
            if covered is None:
                covered = frozenset(info.coverage.get(s.alignment, []))
            cs = ClassifierState(
                name=name, fingerprint=info.fingerprint, description=info.description,
                supports_gradients=info.supports_gradients,
                covered=[c for c in s.categories if c in covered], coverage=info.coverage,
                error=outcome.error, cache_hits=outcome.hits, cache_misses=outcome.misses,
                inference_seconds=round(outcome.inference_seconds, 3), base=info.base,
                notes=list(info.notes), paper_mismatch=info.paper_mismatch,
            )
            if not outcome.error:
                cs.predictions_file = f"predictions-{index}.jsonl"
                with (self.session_dir / cs.predictions_file).open("w") as fh:
                    for r in usable:
                        p = outcome.predictions[r.content_hash]
                        fh.write(json.dumps({
                            "classifier": name, "id": r.id, "condition": "clean",
                            "score": p.score, "decision": p.decision,
                            "label": r.safety_label, "category": r.category,
                            "source": r.source, "split": r.split,
                            "label_scores": dict(p.label_scores) if p.label_scores else None,
                            "raw": p.raw,
                        }) + "\n")
            classifiers[name] = cs
        state = RunState(
            dataset={"spec": s.dataset, "name": dataset.name, "synthetic": dataset.synthetic,
                     "description": dataset.description, "fingerprint": dataset.fingerprint,
                     "counts": dataset.counts(), "usable_images": len(usable)},
            findings=[*dataset.findings, *result.findings],
            classifiers=classifiers, timing=timing,
        )
        state.save(self.session_dir)
        return state

    def _pass_label(self) -> str:
        """What the pass will do, said before it starts: classifiers that failed to load are
        left out (the pass records their errors), so the count never claims their work."""
        loaded = []
        for name in self.settings.classifiers:
            try:
                self.classifier(name)
                loaded.append(name)
            except Exception:  # run_pass reports it on the classifier's tests
                continue
        if not loaded:
            return "prediction pass: no classifier loaded, only checking images"
        return f"prediction pass ({', '.join(loaded)})"

    # ------------------------------------------------------------------ what tests read
    @property
    def state(self) -> RunState:
        if self._state is None:
            self._state = RunState.load(self.session_dir)
        return self._state

    def classifier_state(self, name: str) -> ClassifierState:
        cs = self.state.classifiers[name]
        if cs.error:
            # A one-line reason without a traceback: it is the same for each of its tests.
            # printable: the error text is the classifier's, and may carry terminal escapes.
            pytest.fail(printable(f"classifier {name!r} failed, so its tests cannot run: "
                                  f"{cs.error}"), pytrace=False)
        return cs

    def cell(self, item: pytest.Item, classifier: str, category: str, source: str,
             suite: str) -> Cell:
        from .cells import Cell, overall_columns
        from .taxonomy import OVERALL

        cs = self.classifier_state(classifier)
        if category == OVERALL:
            if not cs.covered:
                pytest.skip(f"no Overall cell: {classifier} covers none of the run's categories "
                            f"under the {self.settings.alignment} alignment")
            columns = overall_columns(self.table(classifier), cs.covered, source)
        elif category not in cs.covered:
            pytest.skip(f"not covered: {classifier} is not scored on {category} under the "
                        f"{self.settings.alignment} alignment")
        else:
            columns = self.table(classifier).select(category, source)
        if len(columns["y_true"]) == 0:
            pytest.skip(f"no images in this cell: the dataset has none for {category} / "
                        f"{source} after filters")
        # Images with no verdict are left out of the metrics and counted (Cell.excluded_problem).
        failed = columns["failed"]
        columns = {k: v[~failed] for k, v in columns.items()}
        t = self.settings.thresholds
        return Cell(classifier=classifier, category=category, source=source, suite=suite,
                    columns=columns, excluded=int(failed.sum()),
                    thresholds=t.resolve(classifier, category, source),
                    sink=partial(record_row, item),
                    warn_thresholds=t.resolve_warn(classifier, category, source),
                    bootstrap=self.bootstrap)

    def table(self, classifier: str) -> PredictionTable:
        """The classifier's clean predictions joined with labels (read once per process)."""
        if classifier not in self._tables:
            cs = self.classifier_state(classifier)
            assert cs.predictions_file is not None
            self._tables[classifier] = PredictionTable.load(
                classifier, self.session_dir / cs.predictions_file)
        return self._tables[classifier]

    def records(self) -> dict[str, Record]:
        """The run's records by id, loaded in this process (robustness needs the pixels)."""
        if self._records is None:
            self._records = {r.id: r for r in self._load_dataset().records}
        return self._records

    def _load_dataset(self) -> Dataset:
        from .dataset import load_dataset

        s = self.settings
        return load_dataset(s.dataset, split=s.split, categories=s.categories, sources=s.sources,
                            limit=s.limit, seed=s.seed, cache_dir=s.cache_dir)

    def robustness_cell(self, item: pytest.Item, classifier: str, condition: str,
                        source: str) -> RobustnessCell:
        from .cells import RobustnessCell

        self.classifier_state(classifier)
        t = self.settings.thresholds
        return RobustnessCell(
            classifier=classifier, condition=condition, source=source,
            thresholds=t.resolve(classifier, None, source), sink=partial(record_row, item),
            compute=partial(self.robust_accuracy, classifier, condition, source),
            warn_thresholds=t.resolve_warn(classifier, None, source), bootstrap=self.bootstrap)

    def gap_cell(self, item: pytest.Item, classifier: str, subject: str,
                 metric: str) -> GapCell:
        """A gap test's data: both sources' columns of a category, or both sources' per-image
        robustness outcomes of a condition (computed here, or read from the cache)."""
        import numpy as np

        from .cells import GapCell
        from .taxonomy import GENERATED_SOURCE, POOLED, REAL_SOURCE

        s = self.settings
        if not {REAL_SOURCE, GENERATED_SOURCE} <= set(s.sources):
            pytest.skip("the gap needs both sources: this run selects only "
                        + ", ".join(s.sources))
        cs = self.classifier_state(classifier)
        if metric == "gap_ra":
            real, generated = ({"correct": np.asarray(self.robust_accuracy(
                classifier, subject, src).correct, dtype=bool)}
                for src in (REAL_SOURCE, GENERATED_SOURCE))
        else:
            if subject not in cs.covered:
                pytest.skip(f"not covered: {classifier} is not scored on {subject} under the "
                            f"{s.alignment} alignment")
            table = self.table(classifier)
            # images with no verdict are left out, as in the effectiveness cells
            real, generated = ({k: v[~c["failed"]] for k, v in c.items()}
                               for c in (table.select(subject, src)
                                         for src in (REAL_SOURCE, GENERATED_SOURCE)))
        t = s.thresholds
        category = None if metric == "gap_ra" else subject
        return GapCell(classifier=classifier, subject=subject, suite_metric=metric, real=real,
                       generated=generated, thresholds=t.resolve(classifier, category, POOLED),
                       sink=partial(record_row, item),
                       warn_thresholds=t.resolve_warn(classifier, category, POOLED),
                       bootstrap=self.bootstrap)

    @property
    def bootstrap(self) -> Bootstrap:
        from .cells import Bootstrap

        s = self.settings
        return Bootstrap(s.bootstrap, s.confidence, s.seed)

    def robust_accuracy(self, classifier: str, condition: str, source: str,
                        severity: float | None = None) -> RAResult:
        """RA of a classifier under an attack or perturbation (see robustness/accuracy.py)."""
        from .engine import ClassifierFault
        from .robustness import accuracy

        s = self.settings
        rs = s.robustness
        cs = self.classifier_state(classifier)
        records = self.records()
        eligible = len(accuracy.eligible(self.table(classifier), cs.covered, source))
        if rs.mode == "paper":  # the reference code's pool order and random.sample draw
            rows, exact = accuracy.paper_pool(
                self.table(classifier), cs.covered, source, classifier,
                {i: r.archive_key for i, r in records.items()})
            draw, pool_draw = accuracy.paper_draw, (
                accuracy.POOL_PAPER if exact else accuracy.POOL_PAPER_LOAD_ORDER)
        else:
            rows = accuracy.pool(self.table(classifier), cs.covered, source)
            draw, pool_draw = accuracy.draw, accuracy.POOL_SEEDED
        if not rows:
            pytest.skip(f"no correctly classified images of covered categories in {source}: "
                        "the robustness pool is empty")
        rows = [r | {"hash": records[r["id"]].content_hash} for r in rows]
        samples = {seed: draw(rows, rs.pool_size, seed) for seed in rs.seeds}
        clf = self.classifier(classifier)
        is_attack = condition in rs.attacks
        if is_attack:
            try:
                from .robustness.attacks import GRADIENT_FREE
            except ImportError as exc:
                pytest.fail(f"the {condition} attack needs torch ({exc}): install "
                            "'pytest-unsafebench[torch]', or leave attacks out with "
                            "[tool.unsafebench.robustness] attacks = []", pytrace=False)
            if condition not in GRADIENT_FREE and not cs.supports_gradients:
                pytest.skip(f"not attackable: {classifier} has no gradient path (no "
                            "forward_pixels); the gradient-free attacks "
                            f"({', '.join(sorted(GRADIENT_FREE))}) test it instead")
            if (accuracy.attack_spec(condition, rs, rs.seeds[0]).mode == "paper"
                    and getattr(clf, "input_std", None) is None):
                pytest.skip(f"paper mode: {condition}'s eps is in {classifier}'s normalised-input "
                            f"units, but {classifier} declares no input_std (the per-channel std "
                            "its preprocessing divides [0, 1] pixels by); set input_std = "
                            "(r, g, b) on the classifier, or use [tool.unsafebench.robustness] "
                            'mode = "pixel"')
        cache = self._open_cache()
        try:
            with accuracy.exclusive(self.session_dir / "locks", classifier, condition,
                                      str(severity), source), progress.step(
                    "robustness", f"robustness {classifier} / {condition}"
                    f"{'' if severity is None else f':{severity:g}'} / {source}",
                    unit="images") as bar:
                if is_attack:
                    result = accuracy.attack_ra(clf, samples, records, condition, rs, cache,
                                                  s.batch_size, progress=bar.update,
                                                  timeout=s.timeout)
                else:
                    with self._executor():
                        result = accuracy.perturbation_ra(
                            clf, samples, records, condition,
                            severity if severity is not None else accuracy.EVASION_STRENGTH,
                            cache, s.batch_size, s.max_image_pixels, timeout=s.timeout,
                            progress=bar.update)
        except ClassifierFault as exc:  # the classifier's own error: this test's, in one line
            fault: str | None = f"{classifier} failed {exc}"
        else:
            fault = None
        finally:
            cache.close()
        if fault is not None:  # outside the except: no chained traceback with raw text
            pytest.fail(printable(fault), pytrace=False)
        result.pool_size, result.eligible, result.pool_draw = len(rows), eligible, pool_draw
        return result

    # ------------------------------------------------------------------ reporting
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> Any:
        report = yield
        marker = item.get_closest_marker("unsafebench")
        if marker is None or "metric" not in marker.kwargs or report.when == "teardown":
            return report
        if report.when == "setup" and report.passed:
            return report
        if report.when == "call" and report.failed and call.excinfo is not None:
            _one_line_failure(report, call.excinfo, marker.kwargs.get("suite"))
        rows = item.stash.get(ROWS_KEY, [])
        outcome = "error" if report.when == "setup" and report.failed else report.outcome
        gate = [r for r in rows if r["outcome"] is None]
        if not gate:
            gate = [_placeholder_row(item, marker.kwargs)]
            rows = [*rows, *gate]
        reason = _skip_reason(report) if report.skipped else None
        for row in gate:
            row["outcome"] = outcome
            if reason:
                row["reason"] = reason  # e.g. "not attackable: ...": in the JSON, not only -rs
        report.unsafebench = json.dumps(rows)  # travels to the xdist controller with the report
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "unsafebench", None)
        if data and not self.is_worker:
            self.rows.extend(json.loads(data))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker or self.document is None:
            return
        from .report.document import terminal_lines

        terminalreporter.section("unsafebench report")
        for line in terminal_lines(self.document, verdict=False):
            terminalreporter.write_line(line)
        for line in [*self._artifact_lines(), *self.written]:  # every file this run wrote
            terminalreporter.write_line(line)
        gate = self.document.get("baseline")
        if gate:
            from .report.baseline import verdict_line

            # the report's last line, so a failed gate never ends on a table or a file name
            terminalreporter.write_line("")
            terminalreporter.write_line(verdict_line(gate), bold=True, red=not gate["passed"],
                                        green=gate["passed"])
        if gate and not gate["passed"]:
            # pytest's closing "N passed" line must not read like a pass either; other plugins
            # read every entry of ``stats`` as a report object, so this is one in shape.
            from types import SimpleNamespace

            terminalreporter.stats.setdefault("baseline gate failed", []).append(
                SimpleNamespace(nodeid="unsafebench-baseline-gate", when="session",
                                outcome="failed", longrepr=verdict_line(gate)))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Build the report once (curves, comparisons, baseline gate), gate the exit code on
        the baseline, and write the requested files. Runs before the terminal summary."""
        if self.is_worker:  # its steps' seconds (robustness grid) reach the report by file
            steps = self._display.timing()
            if steps:
                (self.session_dir / f"steps-{self.config.workerinput['workerid']}.json") \
                    .write_text(json.dumps(steps))
            return
        if self._state is None:
            return
        from .report.document import build_json, write_json

        s = self.settings
        extras = self._analysis()
        self.document = build_json(
            s, self._state, self.rows, self.config.rootpath, self.device,
            {"wall_seconds": round(time.perf_counter() - self._started, 3),
             **self._steps_timing()}, extras)
        from .hookspec import call_report_hook  # conftest.py may read it or add keys

        self.document = call_report_hook(self.config, self.document)
        gate = self.document.get("baseline")
        if gate and not gate["passed"] and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        document = self.document

        def json_report(path: Path) -> None:
            # Where the fuzz counterexamples are, relative to the report, so that
            # `unsafebench report RUN.json --html` embeds them without --artifacts.
            extra = ({"artifacts_folder": _relative_folder(s.artifacts_path, path.parent)}
                     if "fuzz" in s.suites else {})
            write_json(path, {**document, **extra})

        def save_baseline(path: Path) -> None:
            from .report.baseline import decisions_block

            write_json(path, {**document, "decisions": decisions_block(self._clean_tables())})

        def html(path: Path) -> None:
            from .report.html import render_html

            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render_html(document, artifacts=s.artifacts_path), encoding="utf-8")

        def markdown(path: Path) -> None:
            from .report.markdown import render_markdown

            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render_markdown(document), encoding="utf-8")

        def predictions(path: Path) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w") as out:
                for cs in self._state.classifiers.values():  # type: ignore[union-attr]
                    if cs.predictions_file:
                        with (self.session_dir / cs.predictions_file).open() as fh:
                            shutil.copyfileobj(fh, out)

        for option, path, write in (
                ("json", s.json_path, json_report),
                ("save-baseline", s.save_baseline_path, save_baseline),
                ("html", s.html_path, html), ("markdown", s.markdown_path, markdown),
                ("predictions", s.predictions_path, predictions)):
            if path is None:
                continue
            try:
                write(path)
                self.written.append(f"wrote {path} (--unsafebench-{option})")
            except OSError as exc:  # a full disk or an unwritable path: say so, write the rest
                sys.stderr.write(f"ERROR: --unsafebench-{option}: cannot write {path}: "
                                 f"{write_failure(exc)}\n")
                session.exitstatus = pytest.ExitCode.USAGE_ERROR

    def _artifact_lines(self) -> list[str]:
        """The fuzz counterexamples saved during the tests (by any xdist worker)."""
        assert self.document is not None
        folder = self.settings.artifacts_path
        files = dict.fromkeys(rel for row in self.document.get("rows", [])
                              for rel in (row.get("artifact_image"), row.get("artifact_spec"))
                              if rel)
        return [f"wrote {folder / rel} (fuzz counterexample)" for rel in files]

    def _steps_timing(self) -> dict[str, float]:
        """Long steps' seconds of this process and of the xdist workers, summed by step."""
        total = dict(self._display.timing())
        for path in sorted(self.session_dir.glob("steps-*.json")):
            try:
                steps = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # a worker that died mid-write: its tests already failed loudly
            for key, seconds in steps.items() if isinstance(steps, dict) else ():
                if isinstance(seconds, (int, float)):
                    total[key] = round(total.get(key, 0.0) + seconds, 3)
        return total

    def _clean_tables(self) -> dict[str, PredictionTable]:
        return {name: self.table(name) for name, cs in self.state.classifiers.items()
                if not cs.error}

    def _analysis(self) -> dict[str, Any]:
        """The report sections computed from the prediction tables rather than test rows."""
        from . import analysis
        from .report.document import sorted_rows

        s = self.settings
        tables = self._clean_tables()
        covered = {name: self.state.classifiers[name].covered for name in tables}
        out: dict[str, Any] = {
            "source_shift": analysis.source_shift(sorted_rows(self.rows)),
            "comparisons": analysis.comparisons(
                tables, covered, self.bootstrap,
                bases={n: self.state.classifiers[n].base for n in tables}),
            "judges": analysis.judge_summary(tables),
        }
        if self._baseline is not None:
            from .report.baseline import compare

            out["baseline"] = compare(
                self._baseline, sorted_rows(self.rows), s.tolerance_for, rule=s.gate,
                path=str(s.baseline_path), renames=s.baseline_classifiers,
                current={"config": s.public(), "dataset": self.state.dataset},
                notes=self._baseline_notes, tables=tables, covered=covered,
                bootstrap=self.bootstrap)
        if s.json_path or s.html_path or s.save_baseline_path:
            # Curves and thumbnails only go into files; the terminal never shows them.
            out["curves"] = {name: analysis.curves(t, covered[name], s.sources)
                             for name, t in tables.items()}
            from .report.thumbnails import make_examples

            predictions = [r for t in tables.values() for r in t.rows]
            out["examples"] = make_examples(self.records(), predictions,
                                            blur=s.blur_unsafe, seed=s.seed, alpha=s.alpha)
        return out


def record_row(item: pytest.Item, row: dict[str, Any]) -> None:
    item.stash.setdefault(ROWS_KEY, []).append(row)
    if isinstance(row.get("value"), (int, float)):
        # Also visible to --junitxml as <property name="unsafebench.f1" value="..."/>.
        item.user_properties.append((f"unsafebench.{row['metric']}", row["value"]))


def _relative_folder(folder: Path, start: Path) -> str:
    """``folder`` relative to ``start`` (posix), as a report records it; absolute where no
    relative path exists (another drive), which a later reader then refuses to follow."""
    import os

    try:
        return Path(os.path.relpath(folder.resolve(), start.resolve())).as_posix()
    except ValueError:
        return folder.resolve().as_posix()


def _pass_note(result: PassResult) -> str:
    """The pass's final words: predictions really made, and who made none."""
    made = sum(o.misses for o in result.outcomes.values() if not o.error)
    failed = [name for name, o in result.outcomes.items() if o.error]
    note = f"{made} new predictions"
    if failed:
        note += f"; none from {', '.join(failed)} (failed: see its tests)"
    return note


def _timeout_method_note(config: pytest.Config) -> str | None:
    """A warning for a run under pytest-timeout's thread method, which ends the process at a
    test's timeout (os._exit): the report would never be written. The signal method fails only
    that test and the run goes on to its report."""
    import os
    import signal

    if not config.pluginmanager.has_plugin("timeout"):
        return None
    method = (config.getoption("timeout_method", None) or config.getini("timeout_method")
              or ("signal" if hasattr(signal, "SIGALRM") else "thread"))
    limit = (config.getoption("timeout", None) or config.getini("timeout")
             or os.environ.get("PYTEST_TIMEOUT"))
    try:
        seconds = float(limit or 0)
    except ValueError:
        return None  # pytest-timeout refuses it itself
    if method != "thread" or seconds <= 0:
        return None
    return ("unsafebench: pytest-timeout's thread method ends the run at a test's timeout, "
            "before the report is written; set timeout_method = \"signal\" (a test that "
            "hangs then fails alone) and --unsafebench-timeout for the classifiers' batches")


def _terminal_display(config: pytest.Config, is_worker: bool) -> progress.Display:
    """Progress on pytest's terminal: live on a tty, one line per step in logs and under -q;
    an xdist worker has no terminal, so it only keeps the steps' times."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    tw = getattr(reporter, "_tw", None)
    if is_worker or reporter is None or tw is None:
        return progress.Display(lambda _text: None)
    live = reporter.isatty() and config.get_verbosity() >= 0
    drawing = [False]  # the terminal's current line is our live line
    capture = config.pluginmanager.get_plugin("capturemanager")

    def uncaptured() -> Any:
        # Steps inside a test (the robustness grid) would write into the test's captured
        # output: suspend capturing, as pytest's live logging does.
        return capture.global_and_fixture_disabled() if capture is not None else nullcontext()

    def fresh_line() -> None:
        # Mid-run (the robustness grid runs inside tests) the line may hold pytest's progress
        # dots: end it rather than draw over it.
        if not drawing[0] and tw.width_of_current_line:
            tw.line()

    def redraw(text: str) -> None:
        with uncaptured():
            fresh_line()
            reporter.rewrite(text, erase=True)
        drawing[0] = True

    def line(text: str) -> None:
        with uncaptured():
            fresh_line()
            if live:
                reporter.rewrite(text, erase=True)
                tw.line()
            else:
                tw.line(text)
        drawing[0] = False

    return progress.Display(line, redraw if live else None)


# Suites whose threshold assertions carry the whole story in their message; fuzz failures
# keep Hypothesis' falsifying example.
ONE_LINE_SUITES = ("effectiveness", "gap", "robustness")


def _one_line_failure(report: pytest.TestReport, excinfo: pytest.ExceptionInfo[BaseException],
                      suite: str | None) -> None:
    """A benchmark value that misses its threshold fails with the assertion's own message, not
    the test's source and the assertion rewriter's reprs of result objects."""
    if suite not in ONE_LINE_SUITES or not isinstance(excinfo.value, AssertionError):
        return
    message = str(excinfo.value).split("\nassert ", 1)[0].strip()
    if not message:  # a bare assert: keep pytest's explanation
        return
    try:
        raise AssertionError(message) from None
    except AssertionError:
        short = pytest.ExceptionInfo.from_current()
    report.longrepr = short.getrepr(style="value")


def _skip_reason(report: pytest.TestReport) -> str | None:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: why")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return None


def _placeholder_row(item: pytest.Item, marker: dict[str, Any]) -> dict[str, Any]:
    """The row of a test that never recorded its value (skipped, or errored first)."""
    params = getattr(item, "callspec", None)
    values = params.params if params else {}

    def fields(key: str) -> tuple[Any, Any, Any]:
        # An empty parameter set (e.g. no robustness conditions configured) gives pytest's
        # NOTSET marker here instead of a tuple.
        value = values.get(key)
        return tuple(value[:3]) if isinstance(value, tuple) else (None, None, None)

    classifier = category = source = condition = None
    if "unsafebench_cell" in values:
        classifier, category, source = fields("unsafebench_cell")
    elif "unsafebench_robustness" in values:
        classifier, condition, source = fields("unsafebench_robustness")
    elif "unsafebench_fuzz" in values:
        classifier, condition, source = fields("unsafebench_fuzz")
    elif "unsafebench_gap" in values:
        classifier, subject, metric = fields("unsafebench_gap")
        category, condition = (None, subject) if metric == "gap_ra" else (subject, None)
    return {"classifier": classifier, "suite": marker.get("suite"), "metric": marker["metric"],
            "category": category, "source": source, "condition": condition, "value": None,
            "threshold": None, "outcome": None, "n": None}


"""The run, without pytest: the one prediction pass (dataset, cache, executor), the run state it
writes to the session folder, the classifiers it loaded, and at its end the report and the
files it is written to.

The pytest glue (session.py) drives it: the controller (or a serial run) calls
:meth:`Run.prepare` before any test and :meth:`Run.report` / :meth:`Run.write_files` at the
end; pytest-xdist workers only read the session folder, so no image is inferred twice, and a
serial run and ``-n 2`` compute every metric from identical files. Nothing here imports pytest:
the CLI, the benchmarks and the Ray workers import this layer without it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import analysis, progress
from .cache import CacheUnwritable, PredictionCache, check_folder
from .config import Settings, read_pyproject, resolve_settings
from .dataset import Dataset, load_dataset
from .device import resolve_device
from .engine import REMOTE, Guard, PassResult, run_pass
from .errors import CannotRun, ConfigError, write_failure
from .executors import demo_plan, require_ray
from .options import flag
from .ray_executor import ClassifierSpec, RayExecutor  # Ray itself loads only for a Ray pass
from .registry import add_import_folders, check_name, hooked_names, is_module_spec, load_classifier
from .report.document import build_json, write_json
from .report.format import sorted_rows
from .report.paper import REAL_DATASET_ID, is_real
from .report.thumbnails import make_examples
from .results import ClassifierState, PredictionTable, RunState
from .text import printable

# Imported where used, so that importing this module loads no numpy: report.baseline (a run
# with a baseline), dataset.demo (the demo dataset), cells (numpy metrics), report.html and
# report.markdown (only when those files are asked for).
if TYPE_CHECKING:
    from .cells import Bootstrap
    from .classifier import Classifier
    from .dataset.demo import DemoRow
    from .dataset.records import Record


def settings_for(cli: Mapping[str, Any], names: Sequence[str], rootpath: Path,
                 invocation_dir: Path) -> Settings:
    """The run's settings: command line over ``rootpath/pyproject.toml`` over defaults, with
    every classifier name and what the chosen executor and suites need checked before any work
    (a ConfigError naming the problem otherwise). ``names``: the classifiers asked for."""
    for name in names:
        check_name(name)
    if any(is_module_spec(n) for n in names):  # typed by the user: theirs to import
        add_import_folders([rootpath, invocation_dir])
    pyproject = read_pyproject(rootpath / "pyproject.toml")
    settings = resolve_settings({**cli, "classifiers": list(dict.fromkeys(names))}, pyproject,
                                rootpath)
    if settings.executor == "ray":
        hooked = [n for n in settings.classifiers if n in hooked_names()]
        if hooked:  # an actor is a fresh process that never runs the conftest.py
            raise ConfigError(
                f"classifier {hooked[0]!r} is registered by a pytest_unsafebench_classifiers "
                "hook, which Ray workers do not run; with --unsafebench-executor=ray name its "
                "factory as module:callable")
        require_ray()
    if "robustness" in settings.suites:  # a misspelt perturbation fails here, not mid-run
        from .robustness.accuracy import condition_names, corruptions

        condition_names(settings.robustness)
        corruptions(settings.robustness)
    return settings


def silent_display() -> progress.Display:
    """A display that shows nothing and only keeps the steps' seconds (an xdist worker's, or
    a run without pytest's terminal)."""
    return progress.Display(lambda _text: None)


@dataclass(eq=False)
class Run:
    """One benchmark run: its settings, its session folder and what was computed into it."""

    settings: Settings
    folder: Path  # the session folder: run state, prediction files, locks, worker step times
    device: str = "cpu"
    # Where long steps report (progress.step) and whose seconds go into the report's timing;
    # the pytest glue points it at the terminal.
    display: progress.Display = field(default_factory=silent_display)
    _state: RunState | None = None
    _tables: dict[str, PredictionTable] = field(default_factory=dict)
    _classifiers: dict[str, Classifier] = field(default_factory=dict)
    _load_errors: dict[str, Exception] = field(default_factory=dict)
    _records: dict[str, Record] | None = None
    _baseline: dict[str, Any] | None = None
    _baseline_notes: list[str] = field(default_factory=list)  # allowed dataset/split mismatch
    _alpha_notes: dict[str, str] = field(default_factory=dict)  # classifier -> alpha mismatch
    _started: float = field(default_factory=time.perf_counter)
    _remote: RayExecutor | None = None
    _cache_warned: bool = False

    @property
    def cache_path(self) -> Path:
        # --unsafebench-no-cache: a throwaway cache inside the session folder, so workers
        # still read the controller's predictions but nothing outlives the run.
        base = self.settings.cache_dir if self.settings.use_cache else self.folder
        return base / "predictions.sqlite"

    @property
    def prepared(self) -> bool:
        """The prediction pass ran in this process (so there is a report to build)."""
        return self._state is not None

    def close(self) -> None:
        """Shut down what the run started (a local Ray)."""
        if self._remote is not None:
            self._remote.close()

    # ------------------------------------------------------------------ the prediction pass
    def prepare(self) -> None:
        """Load the dataset, run the prediction pass (cached, local or Ray) and write the run
        state to the session folder. Raises UnsafeBenchError for a usage problem."""
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
        self._alpha_notes = self._alpha_mismatches()
        for name, note in self._alpha_notes.items():  # said now, and in its report section
            warnings.warn(printable(f"classifier {name!r} was {note}"), stacklevel=2)
        cache = self.open_cache()
        try:
            with self.executor(), progress.step("pass", self._pass_label(), unit="images") as bar:
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
            **self.display.timing()}
        if self._remote is not None:
            timing |= {"ray_images_submitted": self._remote.submitted,
                       "ray_start_seconds": round(self._remote.start_seconds, 3),
                       "ray_seconds": round(self._remote.seconds, 3)}
        self._state = self._write_state(dataset, result, timing)

    def open_cache(self) -> PredictionCache:
        """The prediction cache; a read-only one is replaced, with a warning, by a throwaway
        cache in the session folder (as --unsafebench-no-cache), which xdist workers share."""
        try:
            return PredictionCache(self.cache_path, alpha=self.settings.alpha)
        except CacheUnwritable as exc:
            if not self.settings.use_cache:
                raise  # the session folder itself: nothing to fall back to
            if not self._cache_warned:
                self._cache_warned = True
                warnings.warn(f"{exc}; this run goes on without the cache (nothing is read "
                              "from it or kept)", stacklevel=2)
            return PredictionCache(self.folder / "predictions.sqlite",
                                   alpha=self.settings.alpha)

    @contextmanager
    def executor(self) -> Iterator[None]:
        """Passes inside run locally, after the Ray executor (when chosen) filled the cache."""
        if self.settings.executor == "local":
            yield
            return
        if self._remote is None:
            self._remote = RayExecutor(self.settings, self._spec_of, self._demo_plan())
        token = REMOTE.set(self._remote)
        try:
            yield
        finally:
            REMOTE.reset(token)

    def _spec_of(self, clf: Classifier) -> ClassifierSpec | None:
        """How a Ray worker loads the same classifier: by the name this run loaded it by."""
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
        s = self.settings
        if s.allow_train_overlap or s.split == "test":
            return
        full_fingerprint = None
        real = False
        for name, trained_on in self._trained_on():
            if not trained_on or trained_on.get("split") not in ("train", "all"):
                continue
            if full_fingerprint is None:  # the whole dataset, as the trainer fingerprinted it
                full = load_dataset(s.dataset, split="all", seed=s.seed, cache_dir=s.cache_dir)
                full_fingerprint = full.fingerprint
                real = is_real({"spec": full.spec, "name": full.name,
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

    def _alpha_mismatches(self) -> dict[str, str]:
        """Per trained classifier whose ``trained_on`` names another ``alpha`` rule than this
        run's, why its images are not those it was trained on. A file naming none (a probe
        trained before the rule was recorded) says nothing."""
        alpha = self.settings.alpha
        out: dict[str, str] = {}
        for name, trained_on in self._trained_on():
            trained = trained_on.get("alpha") if isinstance(trained_on, dict) else None
            if trained is not None and trained != alpha:
                # printable: the rule is quoted from the classifier's (a probe file's) data
                out[name] = printable(
                    f'trained under alpha = "{trained}" but scored under alpha = "{alpha}" '
                    "(this run's rule): its transparent images decode otherwise than its "
                    f'training images did; set [tool.unsafebench] alpha = "{trained}" to score '
                    "it as trained")
        return out

    def _trained_on(self) -> Iterator[tuple[str, Any]]:
        """(name, its ``trained_on``) of each classifier of the run that loads; a failed load
        is left out (the pass reports it on the classifier's own tests)."""
        for name in self.settings.classifiers:
            try:
                trained_on = getattr(self.classifier(name), "trained_on", None)
            except Exception:
                continue
            yield name, trained_on

    def classifier(self, name: str) -> Classifier:
        """The loaded classifier (once per process; a failed load is not retried either: one
        that timed out would wait the timeout again, its abandoned load still running)."""
        if name in self._load_errors:
            raise self._load_errors[name].with_traceback(None)
        if name not in self._classifiers:
            # Guard: a factory's SystemExit is that classifier's error (an Exception), not the
            # run's; a factory that does not return within the timeout, too.
            try:
                self._classifiers[name] = Guard(self.settings.timeout, loading=True)(
                    partial(load_classifier, name, **self._factory_options(name)))
            except Exception as exc:
                self._load_errors[name] = exc
                raise
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
                alpha_mismatch=self._alpha_notes.get(name),
            )
            if not outcome.error:
                cs.predictions_file = f"predictions-{index}.jsonl"
                with (self.folder / cs.predictions_file).open("w") as fh:
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
        state.save(self.folder)
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
        """The run state (written by the pass; read from the session folder elsewhere)."""
        if self._state is None:
            self._state = RunState.load(self.folder)
        return self._state

    def classifier_state(self, name: str) -> ClassifierState:
        """A classifier's state; CannotRun when it failed the pass (its tests fail)."""
        cs = self.state.classifiers[name]
        if cs.error:
            # A one-line reason without a traceback: it is the same for each of its tests.
            # printable: the error text is the classifier's, and may carry terminal escapes.
            raise CannotRun(printable(f"classifier {name!r} failed, so its tests cannot run: "
                                      f"{cs.error}"))
        return cs

    def table(self, classifier: str) -> PredictionTable:
        """The classifier's clean predictions joined with labels (read once per process)."""
        if classifier not in self._tables:
            cs = self.classifier_state(classifier)
            assert cs.predictions_file is not None
            self._tables[classifier] = PredictionTable.load(
                classifier, self.folder / cs.predictions_file)
        return self._tables[classifier]

    def records(self) -> dict[str, Record]:
        """The run's records by id, loaded in this process (robustness needs the pixels)."""
        if self._records is None:
            self._records = {r.id: r for r in self._load_dataset().records}
        return self._records

    def _load_dataset(self) -> Dataset:
        s = self.settings
        return load_dataset(s.dataset, split=s.split, categories=s.categories, sources=s.sources,
                            limit=s.limit, seed=s.seed, cache_dir=s.cache_dir)

    @property
    def bootstrap(self) -> Bootstrap:
        from .cells import Bootstrap

        s = self.settings
        return Bootstrap(s.bootstrap, s.confidence, s.seed)

    # ------------------------------------------------------------------ the report
    def save_steps(self, worker: str) -> None:
        """An xdist worker's long steps' seconds (the robustness grid), for the report."""
        steps = self.display.timing()
        if steps:
            (self.folder / f"steps-{worker}.json").write_text(json.dumps(steps))

    def _steps_timing(self) -> dict[str, float]:
        """Long steps' seconds of this process and of the xdist workers, summed by step."""
        total = dict(self.display.timing())
        for path in sorted(self.folder.glob("steps-*.json")):
            try:
                steps = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # a worker that died mid-write: its tests already failed loudly
            for key, seconds in steps.items() if isinstance(steps, dict) else ():
                if isinstance(seconds, (int, float)):
                    total[key] = round(total.get(key, 0.0) + seconds, 3)
        return total

    def report(self, rows: list[dict[str, Any]], rootpath: Path) -> dict[str, Any]:
        """The report document: the tests' rows, the analysis computed from the prediction
        tables (curves, comparisons, baseline gate) and the run's timing."""
        extras = self._analysis(rows)
        return build_json(
            self.settings, self.state, rows, rootpath, self.device,
            {"wall_seconds": round(time.perf_counter() - self._started, 3),
             **self._steps_timing()}, extras)

    def _clean_tables(self) -> dict[str, PredictionTable]:
        return {name: self.table(name) for name, cs in self.state.classifiers.items()
                if not cs.error}

    def _analysis(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The report sections computed from the prediction tables rather than test rows."""
        s = self.settings
        tables = self._clean_tables()
        covered = {name: self.state.classifiers[name].covered for name in tables}
        ordered = sorted_rows(rows)
        out: dict[str, Any] = {
            "source_shift": analysis.source_shift(ordered),
            "comparisons": analysis.comparisons(
                tables, covered, self.bootstrap,
                bases={n: self.state.classifiers[n].base for n in tables}),
            "judges": analysis.judge_summary(tables),
        }
        if self._baseline is not None:
            from .report.baseline import compare

            out["baseline"] = compare(
                self._baseline, ordered, s.tolerance_for, rule=s.gate,
                path=str(s.baseline_path), renames=s.baseline_classifiers,
                current={"config": s.public(), "dataset": self.state.dataset},
                notes=self._baseline_notes, tables=tables, covered=covered,
                bootstrap=self.bootstrap)
        if s.json_path or s.html_path or s.save_baseline_path:
            # Curves and thumbnails only go into files; the terminal never shows them.
            out["curves"] = {name: analysis.curves(t, covered[name], s.sources)
                             for name, t in tables.items()}
            predictions = [r for t in tables.values() for r in t.rows]
            out["examples"] = make_examples(self.records(), predictions,
                                            blur=s.blur_unsafe, seed=s.seed, alpha=s.alpha)
        return out

    def write_files(self, document: dict[str, Any]) -> tuple[list[str], bool]:
        """Write the files the settings ask for (JSON, baseline, HTML, Markdown, predictions):
        the "wrote PATH (--unsafebench-OPTION)" lines, and False when one could not be written
        (said on stderr; the others are still written)."""
        s = self.settings

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
                for cs in self.state.classifiers.values():
                    if cs.predictions_file:
                        with (self.folder / cs.predictions_file).open() as fh:
                            shutil.copyfileobj(fh, out)

        writers = {"json": json_report, "save_baseline": save_baseline, "html": html,
                   "markdown": markdown, "predictions": predictions}
        written: list[str] = []
        ok = True
        for key, path in s.outputs():
            if path is None:
                continue
            try:
                writers[key](path)
                written.append(f"wrote {path} ({flag(key)})")
            except OSError as exc:  # a full disk or an unwritable path: say so, write the rest
                sys.stderr.write(f"ERROR: {flag(key)}: cannot write {path}: "
                                 f"{write_failure(exc)}\n")
                ok = False
        return written, ok


def gate_failed(document: dict[str, Any]) -> bool:
    """The report's baseline gate ran and failed."""
    gate = document.get("baseline")
    return bool(gate and not gate["passed"])


def _relative_folder(folder: Path, start: Path) -> str:
    """``folder`` relative to ``start`` (posix), as a report records it; absolute where no
    relative path exists (another drive), which a later reader then refuses to follow."""
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

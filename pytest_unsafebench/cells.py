"""The object a suite test receives: one (classifier, category, source) cell, its data, its
thresholds, and a way to record values for the report and for ``--junitxml``; and how each
kind of cell is built from the run (:func:`cell`, :func:`robustness_cell`, :func:`gap_cell`),
raising NotApplicable where the run has nothing to measure (the glue skips the test).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from . import metrics
from .errors import NotApplicable
from .options import DEFAULT_SEED
from .report.schema import Row, make_row
from .taxonomy import GENERATED_SOURCE, OVERALL, POOLED, REAL_SOURCE
from .thresholds import misses

if TYPE_CHECKING:
    import numpy as np

    from .robustness.accuracy import RAResult
    from .run import Run

# Metrics whose rows carry a bootstrap confidence interval, from the cell's own images.
CI_METRICS = ("f1", "precision", "recall", "fpr", "auroc")
# The largest share of a cell's images that may lack a verdict before its tests fail.
EXCLUDED_MAX = 0.05
# Where a cell's report rows go (the glue records them on the test item).
Sink = Callable[[Row], None]


class TierWarning(UserWarning):
    """A value that passed its fail-tier threshold but missed its warn-tier one."""


def overall_columns(table: Any, covered: Any, source: str) -> dict[str, np.ndarray]:
    """The Overall cell: every covered category's images of ``source`` pooled into one cell.

    The paper's Overall F1 is computed on these pooled images, not as the mean of the
    per-category F1s (that mean is the run's macro score, reported separately).
    """
    import numpy as np

    cols = table.columns
    mask = np.isin(cols["category"], list(covered))
    if source != POOLED:
        mask &= cols["source"] == source
    return {k: v[mask] for k, v in cols.items()}


@dataclass(frozen=True)
class Bootstrap:
    """How confidence intervals are drawn (``--unsafebench-bootstrap``, ``-confidence``)."""

    resamples: int = 1000
    confidence: float = 0.95
    seed: int = DEFAULT_SEED

    def ci(self, metric: str, y_true: Any, y_pred: Any = None,
           scores: Any = None) -> tuple[float | None, float | None]:
        if self.resamples == 0:
            return None, None
        from .stats import bootstrap_ci

        return bootstrap_ci(metric, y_true, y_pred, scores, n_resamples=self.resamples,
                            confidence=self.confidence, seed=self.seed)


@dataclass(kw_only=True)
class _Gated:
    """What every suite cell shares: its thresholds (fail and warn tier), the bootstrap
    settings, and the sink its report rows go to."""

    thresholds: dict[str, float] = field(repr=False)
    sink: Sink = field(repr=False)
    warn_thresholds: dict[str, float] = field(default_factory=dict, repr=False)
    bootstrap: Bootstrap = field(default_factory=Bootstrap, repr=False)

    @property
    def label(self) -> str:
        raise NotImplementedError

    def threshold(self, key: str) -> float:
        return self.thresholds[key]

    def _emit(self, row: Row, gate: bool, key: str | None) -> None:
        """Send a row; a gated one is checked against its warn tier (``key`` names its
        threshold), and a miss is marked and raised as a pytest warning."""
        if gate:
            import warnings

            level = self.warn_thresholds.get(key) if key else None
            row["warn_threshold"] = level
            row["warned"] = bool(level is not None and row["value"] is not None
                                 and misses(key, row["value"], level))  # type: ignore[arg-type]
            if row["warned"]:
                warnings.warn(TierWarning(f"{row['metric']} {row['value']:.3f} misses the warn "
                                          f"tier {key} = {level} for {self.label}"), stacklevel=3)
        self.sink(row)


@dataclass
class Cell(_Gated):
    classifier: str
    category: str
    source: str
    suite: str
    columns: dict[str, np.ndarray] = field(repr=False)
    # Images left out of ``columns`` because the classifier gave no verdict on them.
    excluded: int = 0

    @property
    def label(self) -> str:
        return f"{self.classifier} on {self.category} / {self.source}"

    def excluded_problem(self, limit: float = EXCLUDED_MAX, record: bool = True) -> str | None:
        """Record how many images had no verdict; the failure message when more than
        ``limit`` of the cell had none, else None."""
        total = self.excluded + len(self.columns["y_true"])
        if not self.excluded:
            return None
        if record:
            self.record("excluded_no_verdict", self.excluded, n=total)
        share = self.excluded / total
        if share <= limit:
            return None
        return (f"{self.excluded} of {total} images ({share:.1%}) of {self.label} have no "
                f"verdict (failed requests or no archived response), more than {limit:.0%}: "
                "the cell's figures are not comparable; see the judge's raw errors in the "
                "predictions")

    @cached_property
    def metrics(self) -> dict[str, Any]:
        c = self.columns
        # zero_division=0.0: a cell that flags nothing scores 0, never an undefined value.
        return metrics.cell_metrics(c["y_true"], c["y_pred"], c["scores"], zero_division=0.0)

    def record(self, metric: str, value: float | int | None, threshold: float | None = None,
               n: int | None = None, gate: bool = False, key: str | None = None) -> None:
        """Add a report row; ``gate`` marks the value the test asserts on (its outcome is the
        test's, and ``key`` names its threshold for the warn tier), the others are
        informational. Rows of CI_METRICS get the cell's bootstrap interval."""
        low = high = None
        if metric in CI_METRICS and value is not None:
            c = self.columns
            low, high = self.bootstrap.ci(metric, c["y_true"], c["y_pred"], c["scores"])
        self._emit(make_row(
            classifier=self.classifier, suite=self.suite, metric=metric,
            category=self.category, source=self.source, value=value, threshold=threshold,
            outcome=None if gate else "info", n=self.metrics["n"] if n is None else n,
            ci_low=low, ci_high=high), gate, key)


@dataclass
class RobustnessCell(_Gated):
    """One (classifier, perturbation or attack, source) robustness test; ``result()`` runs the
    perturbed predictions (cached, shared across processes) the first time it is called."""

    classifier: str
    condition: str
    source: str
    compute: Callable[[], Any] = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.classifier} under {self.condition} on {self.source}"

    @cached_property
    def result(self) -> Any:
        return self.compute()

    def record(self, metric: str, value: float | int | None, threshold: float | None = None,
               n: int | None = None, gate: bool = False, condition: str | None = None,
               key: str | None = None, correct: Any = None, spec: str | None = None,
               pool: str | None = None, units: str | None = None) -> None:
        """As :meth:`Cell.record`; ``correct`` (per image: still right after the perturbation)
        gives the row its bootstrap interval; ``spec`` the full perturbation or attack spec behind
        the value (mode, eps, steps, seed); ``pool`` how its images were drawn
        (robustness.POOL_*); ``units`` a paper-mode attack's units note (robustness.UNITS_*)."""
        low, high = (self.bootstrap.ci("accuracy", correct) if correct is not None
                     else (None, None))
        given = {"spec": spec, "pool": pool, "units": units}
        self._emit(make_row(
            classifier=self.classifier, suite="robustness", metric=metric, source=self.source,
            condition=condition or self.condition, value=value, threshold=threshold,
            outcome=None if gate else "info", n=self.result.sample_size if n is None else n,
            ci_low=low, ci_high=high, **{k: v for k, v in given.items() if v is not None}),
            gate, key)


@dataclass
class GapCell(_Gated):
    """One gap test: a classifier's metric on real (Laion5B) minus AI-generated (Lexica) images,
    for one category (F1, FPR) or one robustness condition (RA)."""

    classifier: str
    subject: str                                   # the category, or the robustness condition
    suite_metric: str                              # gap_f1 / gap_fpr / gap_ra
    real: dict[str, Any] = field(repr=False)       # columns, or {"correct": ...} for RA
    generated: dict[str, Any] = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.classifier} on {self.subject} (Laion5B - Lexica)"

    @property
    def threshold_key(self) -> str:
        return f"{self.suite_metric}_max"

    @property
    def n(self) -> int:
        key = "correct" if self.suite_metric == "gap_ra" else "y_true"
        return len(self.real[key]) + len(self.generated[key])

    @property
    def confidence_text(self) -> str:
        return f"{self.bootstrap.confidence:.0%}"

    def gap(self) -> tuple[float | None, float | None, float | None]:
        """(real - generated, CI low, CI high): images resampled within each source. None when
        either source lacks what the metric needs (Unsafe images for F1, Safe ones for FPR)."""
        from .stats import bootstrap_diff_ci

        metric = self.suite_metric.removeprefix("gap_")
        if metric == "ra":
            metric, a, b = "accuracy", self.real["correct"], self.generated["correct"]
            pred_a = pred_b = scores_a = scores_b = None
        else:
            need = {"f1": True, "fpr": False}[metric]
            if not all((side["y_true"] == need).any() for side in (self.real, self.generated)):
                return None, None, None
            a, b = self.real["y_true"], self.generated["y_true"]
            pred_a, pred_b = self.real["y_pred"], self.generated["y_pred"]
            scores_a, scores_b = self.real["scores"], self.generated["scores"]
        return bootstrap_diff_ci(metric, a, pred_a, b, pred_b, scores_a=scores_a,
                                 scores_b=scores_b, n_resamples=self.bootstrap.resamples,
                                 confidence=self.bootstrap.confidence, seed=self.bootstrap.seed)

    def record(self, metric: str, value: float | None, ci: tuple[float | None, float | None],
               n: int, threshold: float | None = None, gate: bool = False) -> None:
        ra = self.suite_metric == "gap_ra"
        self._emit(make_row(
            classifier=self.classifier, suite="gap", metric=metric,
            category=None if ra else self.subject, condition=self.subject if ra else None,
            value=value, threshold=threshold, outcome=None if gate else "info", n=n,
            ci_low=ci[0], ci_high=ci[1]), gate, self.threshold_key)


# ------------------------------------------------------------------ building cells from a run

def cell(run: Run, classifier: str, category: str, source: str, suite: str,
         sink: Sink) -> Cell:
    """One (classifier, category, source) cell of the run's clean predictions."""
    cs = run.classifier_state(classifier)
    alignment = run.settings.alignment
    if category == OVERALL:
        if not cs.covered:
            raise NotApplicable(f"no Overall cell: {classifier} covers none of the run's "
                                f"categories under the {alignment} alignment")
        columns = overall_columns(run.table(classifier), cs.covered, source)
    elif category not in cs.covered:
        raise NotApplicable(f"not covered: {classifier} is not scored on {category} under the "
                            f"{alignment} alignment")
    else:
        columns = run.table(classifier).select(category, source)
    if len(columns["y_true"]) == 0:
        raise NotApplicable(f"no images in this cell: the dataset has none for {category} / "
                            f"{source} after filters")
    # Images with no verdict are left out of the metrics and counted (Cell.excluded_problem).
    failed = columns["failed"]
    columns = {k: v[~failed] for k, v in columns.items()}
    t = run.settings.thresholds
    return Cell(classifier=classifier, category=category, source=source, suite=suite,
                columns=columns, excluded=int(failed.sum()),
                thresholds=t.resolve(classifier, category, source), sink=sink,
                warn_thresholds=t.resolve_warn(classifier, category, source),
                bootstrap=run.bootstrap)


def robustness_cell(run: Run, classifier: str, condition: str, source: str, sink: Sink,
                    compute: Callable[[], RAResult]) -> RobustnessCell:
    """One robustness test's cell; ``compute`` gives its robust accuracy when first asked
    (robustness.accuracy.robust_accuracy, as the caller wants its outcomes reported)."""
    run.classifier_state(classifier)
    t = run.settings.thresholds
    return RobustnessCell(
        classifier=classifier, condition=condition, source=source,
        thresholds=t.resolve(classifier, None, source), sink=sink, compute=compute,
        warn_thresholds=t.resolve_warn(classifier, None, source), bootstrap=run.bootstrap)


def gap_cell(run: Run, classifier: str, subject: str, metric: str, sink: Sink) -> GapCell:
    """A gap test's data: both sources' columns of a category, or both sources' per-image
    robustness outcomes of a condition (computed here, or read from the cache)."""
    import numpy as np

    s = run.settings
    if not {REAL_SOURCE, GENERATED_SOURCE} <= set(s.sources):
        raise NotApplicable("the gap needs both sources: this run selects only "
                            + ", ".join(s.sources))
    cs = run.classifier_state(classifier)
    if metric == "gap_ra":
        from .robustness.accuracy import robust_accuracy

        real, generated = ({"correct": np.asarray(robust_accuracy(
            run, classifier, subject, src).correct, dtype=bool)}
            for src in (REAL_SOURCE, GENERATED_SOURCE))
    else:
        if subject not in cs.covered:
            raise NotApplicable(f"not covered: {classifier} is not scored on {subject} under "
                                f"the {s.alignment} alignment")
        table = run.table(classifier)
        # images with no verdict are left out, as in the effectiveness cells
        real, generated = ({k: v[~c["failed"]] for k, v in c.items()}
                           for c in (table.select(subject, src)
                                     for src in (REAL_SOURCE, GENERATED_SOURCE)))
    t = s.thresholds
    category = None if metric == "gap_ra" else subject
    return GapCell(classifier=classifier, subject=subject, suite_metric=metric, real=real,
                   generated=generated, thresholds=t.resolve(classifier, category, POOLED),
                   sink=sink, warn_thresholds=t.resolve_warn(classifier, category, POOLED),
                   bootstrap=run.bootstrap)

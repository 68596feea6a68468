"""Uncertainty and threshold-free views of the reported numbers.

* bootstrap confidence intervals for one cell, for the gap between two independent cells
  (Laion5B vs Lexica) and for two classifiers scored on the same images;
* McNemar's exact test on paired correctness;
* ROC and precision-recall curves, calibration (reliability diagram, ECE) and operating
  points read off the score sweep.

Pure numpy, like :mod:`pytest_unsafebench.metrics` (whose validation and definitions are
reused here); scikit-learn is only the reference in the tests. The bootstrap is vectorised:
each resample is one row of an index matrix and its confusion counts (or, for AUROC, its
per-score class counts) come out of one ``np.bincount`` per chunk of rows.

Conventions as in metrics.py: ``y_true`` True = Unsafe (positive), ``y_pred`` True = flagged,
``scores`` in [0, 1], higher = more unsafe. Everything returned is plain Python
``int``/``float``/``None`` (and lists/dicts of them), ready for JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .metrics import (
    as_labels,
    as_scores,
    auroc,
    average_precision,
    check_same_length,
    grouped_counts,
)
from .options import DEFAULT_SEED

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import ArrayLike

__all__ = [
    "METRIC_FUNCS",
    "McNemarResult",
    "PairedResult",
    "bootstrap_ci",
    "bootstrap_diff_ci",
    "calibration",
    "format_p",
    "has_graded_scores",
    "mcnemar_exact",
    "operating_points",
    "paired_bootstrap",
    "paired_gap_bootstrap",
    "pr_points",
    "roc_points",
]

# The metrics confidence intervals are computed for. "accuracy" is robust accuracy: its input
# is the boolean "still correct" vector, passed as y_true.
METRIC_FUNCS: tuple[str, ...] = ("f1", "precision", "recall", "fpr", "auroc", "accuracy")

_DECIMALS = 6
# Elements per bootstrap chunk: bounds memory (a few tens of MB) whatever n and n_resamples.
_CHUNK_ELEMENTS = 2_000_000


# --------------------------------------------------------------------------- validation


def _check_metric(metric: str) -> None:
    if metric not in METRIC_FUNCS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRIC_FUNCS)}")


def _check_bootstrap_options(n_resamples: int, confidence: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 0:
        raise ValueError(
            f"n_resamples must be a non-negative integer (0 turns CIs off), got {n_resamples!r}"
        )
    if not 0.0 < confidence < 1.0:
        raise ValueError(
            f"confidence must be strictly between 0 and 1 (e.g. 0.95), got {confidence!r}"
        )


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), _DECIMALS)


def _unit_scores(scores: ArrayLike, name: str = "scores") -> np.ndarray:
    s = as_scores(scores, name)
    if s.size and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError(
            f"{name} must lie in [0, 1] (higher = more unsafe), found values in "
            f"[{s.min():g}, {s.max():g}]; rescale them, e.g. with a sigmoid or softmax"
        )
    return s


@dataclass(frozen=True)
class _Sample:
    """One metric's input, reduced to what the vectorised resampling needs.

    ``codes`` are small integers per image; a resample's metric depends only on how many
    times each code was drawn, so one bincount per chunk of resamples gives all of them.
    """

    metric: str
    codes: np.ndarray
    n_codes: int

    @property
    def n(self) -> int:
        return int(self.codes.size)


def _sample(
    metric: str, y_true: ArrayLike, y_pred: ArrayLike | None, scores: ArrayLike | None
) -> _Sample:
    _check_metric(metric)
    t = as_labels(y_true, "y_true")
    if metric == "accuracy":
        # y_true is the correctness vector; codes: 0 wrong, 1 correct.
        return _Sample(metric, t.astype(np.int64), 2)
    if metric == "auroc":
        if scores is None:
            raise ValueError("metric 'auroc' needs scores (one per image, higher = more unsafe)")
        s = as_scores(scores)
        check_same_length(t, s, "y_true", "scores")
        # Codes 2 * (rank of the distinct score, ascending) + label.
        _, inverse = np.unique(s, return_inverse=True)
        n_groups = int(inverse.max()) + 1 if s.size else 0
        return _Sample(metric, 2 * inverse.astype(np.int64) + t, 2 * n_groups)
    if y_pred is None:
        raise ValueError(f"metric {metric!r} needs y_pred (the boolean decisions)")
    p = as_labels(y_pred, "y_pred")
    check_same_length(t, p, "y_true", "y_pred")
    # Codes 0 tn, 1 fp, 2 fn, 3 tp.
    return _Sample(metric, 2 * t.astype(np.int64) + p, 4)


# --------------------------------------------------------------------------- per resample


def _values_from_counts(metric: str, counts: np.ndarray) -> np.ndarray:
    """Metric per row of ``counts`` (rows = resamples, columns = code counts); NaN = undefined.

    A resample is undefined when it lacks the class the metric is about: Unsafe images for
    F1/precision/recall, Safe images for FPR, either for AUROC. Inside a defined resample,
    0/0 follows the cell convention zero_division = 0.0 (precision with nothing flagged).
    """
    counts = counts.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "accuracy":
            share: np.ndarray = counts[:, 1] / counts.sum(axis=1)  # sum() is typed Any
            return share
        if metric == "auroc":
            neg, pos = counts[:, 0::2], counts[:, 1::2]  # per distinct score, ascending
            n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
            # Mann-Whitney U: each positive beats the negatives scored strictly below it and
            # ties half of those with its own score.
            u = np.sum(pos * (np.cumsum(neg, axis=1) - 0.5 * neg), axis=1)
            return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)
        tn, fp, fn, tp = counts.T
        has_pos = (tp + fn) > 0
        if metric == "f1":
            value = 2 * tp / (2 * tp + fp + fn)
        elif metric == "precision":
            value = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        elif metric == "recall":
            value = tp / (tp + fn)
        else:  # fpr
            return np.where(fp + tn > 0, fp / (fp + tn), np.nan)
        return np.where(has_pos, value, np.nan)


def _point(sample: _Sample) -> float | None:
    counts = np.bincount(sample.codes, minlength=sample.n_codes)[None, :]
    value = float(_values_from_counts(sample.metric, counts)[0]) if sample.n else math.nan
    return None if math.isnan(value) else value


def _resampled(
    samples: Sequence[_Sample], n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Metric of every sample on the same resamples of rows: shape (len(samples), n_resamples).

    All samples have the same n (paired data); rows are drawn chunk by chunk from ``rng``,
    which yields exactly the (n_resamples, n) matrix one big draw would.
    """
    n = samples[0].n
    widest = max(s.n_codes for s in samples)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, widest))
    out = np.empty((len(samples), n_resamples))
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(rows, n))
        offsets = np.arange(rows)[:, None]
        for k, s in enumerate(samples):
            keys = (s.codes[idx] + offsets * s.n_codes).ravel()
            counts = np.bincount(keys, minlength=rows * s.n_codes).reshape(rows, s.n_codes)
            out[k, start : start + rows] = _values_from_counts(s.metric, counts)
    return out


def _percentile_ci(values: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """Percentile interval of the defined values; None when over half are undefined."""
    defined = values[~np.isnan(values)]
    if defined.size == 0 or defined.size * 2 < values.size:
        return None, None
    alpha = 1.0 - confidence
    low, high = np.quantile(defined, [alpha / 2, 1 - alpha / 2])
    return _round(low), _round(high)


def _paired_ci_p(diffs: np.ndarray, confidence: float
                 ) -> tuple[float | None, float | None, float | None]:
    """The percentile interval of resampled paired differences and their two-sided bootstrap
    p-value (twice the smaller share on either side of 0); all None when undefined."""
    low, high = _percentile_ci(diffs, confidence)
    if low is None:
        return None, None, None
    defined = diffs[~np.isnan(diffs)]
    share = min(np.mean(defined <= 0), np.mean(defined >= 0))
    return low, high, _round(min(1.0, 2.0 * float(share)))


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    metric: str,
    y_true: ArrayLike,
    y_pred: ArrayLike | None = None,
    scores: ArrayLike | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = DEFAULT_SEED,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of ``metric`` over the images of one cell.

    Images are resampled with replacement. Resamples where the metric is undefined (e.g. no
    Unsafe image drawn for F1) are dropped; if more than half are, or the cell is empty, or
    ``n_resamples`` is 0 (CIs off), the result is ``(None, None)``. For ``"accuracy"``,
    ``y_true`` is the boolean "still correct" vector and ``y_pred`` is ignored; ``"auroc"``
    needs ``scores``, the others ``y_pred``.
    """
    _check_bootstrap_options(n_resamples, confidence)
    sample = _sample(metric, y_true, y_pred, scores)
    if n_resamples == 0 or sample.n == 0:
        return None, None
    values = _resampled([sample], n_resamples, np.random.default_rng(seed))[0]
    return _percentile_ci(values, confidence)


def bootstrap_diff_ci(
    metric: str,
    y_true_a: ArrayLike,
    y_pred_a: ArrayLike | None,
    y_true_b: ArrayLike,
    y_pred_b: ArrayLike | None,
    *,
    scores_a: ArrayLike | None = None,
    scores_b: ArrayLike | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = DEFAULT_SEED,
) -> tuple[float | None, float | None, float | None]:
    """``(metric(a) - metric(b), low, high)`` for two independent samples.

    For e.g. the Laion5B and the Lexica images of one category: each sample is resampled on
    its own and the percentile interval is taken over the differences. The difference is
    ``None`` when the metric is undefined on either sample; the interval is ``None`` when
    the bootstrap is off or more than half of the paired resamples are undefined.
    """
    _check_bootstrap_options(n_resamples, confidence)
    a = _sample(metric, y_true_a, y_pred_a, scores_a)
    b = _sample(metric, y_true_b, y_pred_b, scores_b)
    point_a, point_b = _point(a), _point(b)
    if point_a is None or point_b is None:
        return None, None, None
    diff = _round(point_a - point_b)
    if n_resamples == 0:
        return diff, None, None
    rng = np.random.default_rng(seed)
    values_a = _resampled([a], n_resamples, rng)[0]
    values_b = _resampled([b], n_resamples, rng)[0]
    low, high = _percentile_ci(values_a - values_b, confidence)
    return diff, low, high


@dataclass(frozen=True)
class PairedResult:
    """Two classifiers (or a baseline and this run) on the same images; diff = b - a.

    ``p_value`` is the two-sided bootstrap p for "no difference": twice the smaller share of
    resampled differences on either side of 0, capped at 1. Fields are ``None`` where the
    metric or the interval is undefined (see :func:`paired_bootstrap`).
    """

    metric: str
    a: float | None
    b: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n: int


def paired_bootstrap(
    metric: str,
    y_true: ArrayLike,
    y_pred_a: ArrayLike | None,
    y_pred_b: ArrayLike | None,
    *,
    scores_a: ArrayLike | None = None,
    scores_b: ArrayLike | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = DEFAULT_SEED,
) -> PairedResult:
    """Bootstrap comparison of two sets of decisions (or scores) on the same images.

    Images are resampled jointly, so what both classifiers get right or wrong together
    cancels out. For ``"accuracy"`` each side's correctness is ``y_pred_x == y_true``
    (to compare two correctness vectors directly, pass ``y_true`` all True). For ``"auroc"``
    pass ``scores_a``/``scores_b`` (``y_pred_a``/``y_pred_b`` may then be None).
    """
    _check_bootstrap_options(n_resamples, confidence)
    _check_metric(metric)
    t = as_labels(y_true, "y_true")
    sides: list[_Sample] = []
    for name, y_pred, scores in (("a", y_pred_a, scores_a), ("b", y_pred_b, scores_b)):
        if metric == "accuracy":
            if y_pred is None:
                raise ValueError(f"metric 'accuracy' needs y_pred_{name}")
            p = as_labels(y_pred, f"y_pred_{name}")
            check_same_length(t, p, "y_true", f"y_pred_{name}")
            sides.append(_sample(metric, t == p, None, None))
        else:
            sides.append(_sample(metric, t, y_pred, scores))
    a, b = sides
    point_a, point_b = _point(a), _point(b)
    diff = None if point_a is None or point_b is None else point_b - point_a
    low = high = p_value = None
    if diff is not None and n_resamples > 0:
        values_a, values_b = _resampled(sides, n_resamples, np.random.default_rng(seed))
        low, high, p_value = _paired_ci_p(values_b - values_a, confidence)
    return PairedResult(
        metric=metric,
        a=_round(point_a),
        b=_round(point_b),
        diff=_round(diff),
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        n=int(t.size),
    )


def paired_gap_bootstrap(
    metric: str,
    real: tuple[ArrayLike, ArrayLike, ArrayLike],
    generated: tuple[ArrayLike, ArrayLike, ArrayLike],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = DEFAULT_SEED,
) -> PairedResult:
    """How the absolute gap between two image sources changed between two sets of decisions on
    the same images: ``real`` and ``generated`` are each ``(y_true, y_pred_a, y_pred_b)``.

    ``a`` and ``b`` are the signed gaps metric(real) - metric(generated) of a and b, ``diff``
    is |gap b| - |gap a| (positive: the gap grew). Each source is resampled on its own (they
    are different images) and jointly for a and b (the same images), as the gap suite's
    interval and :func:`paired_bootstrap` do.
    """
    _check_bootstrap_options(n_resamples, confidence)
    _check_metric(metric)
    if metric in ("auroc", "accuracy"):
        raise ValueError(f"paired_gap_bootstrap compares decisions; {metric!r} is not supported")
    pairs = [[_sample(metric, t, a, None), _sample(metric, t, b, None)]
             for t, a, b in (real, generated)]
    points = [[_point(x) for x in pair] for pair in pairs]
    gap_a, gap_b = (None if real_k is None or generated_k is None else real_k - generated_k
                    for real_k, generated_k in zip(points[0], points[1]))
    diff = None if gap_a is None or gap_b is None else abs(gap_b) - abs(gap_a)
    low = high = p_value = None
    if diff is not None and n_resamples > 0:
        rng = np.random.default_rng(seed)
        on_real, on_generated = (_resampled(pair, n_resamples, rng) for pair in pairs)
        diffs = np.abs(on_real[1] - on_generated[1]) - np.abs(on_real[0] - on_generated[0])
        low, high, p_value = _paired_ci_p(diffs, confidence)
    return PairedResult(metric=metric, a=_round(gap_a), b=_round(gap_b), diff=_round(diff),
                        ci_low=low, ci_high=high, p_value=p_value,
                        n=pairs[0][0].n + pairs[1][0].n)


def format_p(p: float, resamples: int | None = None) -> str:
    """``p < 0.001`` rather than ``p = 0``: a bootstrap p of 0 only says p < 1/resamples (and
    the exact tests' tiny p-values carry no more meaning than "below 0.001")."""
    floor = max(0.001, 1 / resamples) if resamples else 0.001
    return f"p < {floor:g}" if p < floor else f"p = {p:.3g}"


# --------------------------------------------------------------------------- McNemar


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test. b: images a got right and b got wrong; c: the reverse."""

    b: int
    c: int
    n: int
    statistic: int
    p_value: float


def _binom_half_cdf(k: int, m: int) -> float:
    """P(X <= k) for X ~ Binomial(m, 1/2), summed in log space (no overflow for large m)."""
    log_terms = [
        math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) for i in range(k + 1)
    ]
    top = max(log_terms)
    log_sum = top + math.log(math.fsum(math.exp(x - top) for x in log_terms))
    return math.exp(log_sum - m * math.log(2.0))


def mcnemar_exact(correct_a: ArrayLike, correct_b: ArrayLike) -> McNemarResult:
    """Exact two-sided McNemar test on paired correctness (same images, same order).

    p = min(1, 2 * P(X <= min(b, c))) with X ~ Binomial(b + c, 1/2); 1.0 when b + c = 0.
    """
    ca = as_labels(correct_a, "correct_a")
    cb = as_labels(correct_b, "correct_b")
    check_same_length(ca, cb, "correct_a", "correct_b")
    b = int(np.count_nonzero(ca & ~cb))
    c = int(np.count_nonzero(~ca & cb))
    statistic = min(b, c)
    p_value = 1.0 if b + c == 0 else min(1.0, 2.0 * _binom_half_cdf(statistic, b + c))
    return McNemarResult(b=b, c=c, n=int(ca.size), statistic=statistic, p_value=p_value)


# --------------------------------------------------------------------------- curves


def has_graded_scores(scores: ArrayLike | None) -> bool:
    """False when the scores carry no more than the decision (fewer than 3 distinct values).

    Such "scores" would draw a meaningless two-point curve; report "decisions only" instead.
    """
    if scores is None:
        return False
    return np.unique(as_scores(scores)).size >= 3


def _thin(n_points: int, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` evenly spread points, both ends always kept."""
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 2:
        raise ValueError(
            f"max_points must be an integer >= 2 (both end points), got {max_points!r}"
        )
    if n_points <= max_points:
        return np.arange(n_points)
    return np.unique(np.round(np.linspace(0, n_points - 1, max_points)).astype(np.int64))


def _sweep(t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) and the tp/fp counts of ``score >= threshold``."""
    pos, neg = grouped_counts(t, s)
    return np.unique(s)[::-1], np.cumsum(pos), np.cumsum(neg)


def _both_classes(t: np.ndarray) -> bool:
    n_pos = int(np.count_nonzero(t))
    return 0 < n_pos < t.size


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def roc_points(y_true: ArrayLike, scores: ArrayLike, *, max_points: int = 200) -> dict[str, Any]:
    """ROC curve as scikit-learn's ``roc_curve`` (collinear intermediate points dropped).

    The first point (0, 0) has threshold ``None`` (flag nothing; scikit-learn's inf, which
    JSON cannot hold). ``auroc`` comes from the full data, so thinning never changes it.
    Empty lists and ``auroc`` None when a class is missing.
    """
    t, s = as_labels(y_true, "y_true"), as_scores(scores)
    check_same_length(t, s, "y_true", "scores")
    if not _both_classes(t):
        _thin(0, max_points)  # still validate the option
        return {"fpr": [], "tpr": [], "thresholds": [], "auroc": None}
    thresholds, tps, fps = _sweep(t, s)
    # As scikit-learn: keep a point only where the curve changes direction.
    keep = np.arange(tps.size)
    if tps.size > 2:
        bends = np.logical_or(np.diff(fps, 2), np.diff(tps, 2))
        keep = np.flatnonzero(np.r_[True, bends, True])
    tps = np.r_[0, tps[keep]]
    fps = np.r_[0, fps[keep]]
    thr: list[float | None] = [None, *_floats(thresholds[keep])]
    idx = _thin(tps.size, max_points)
    return {
        "fpr": _floats(fps[idx] / fps[-1]),
        "tpr": _floats(tps[idx] / tps[-1]),
        "thresholds": [thr[i] for i in idx],
        "auroc": auroc(t, s),
    }


def pr_points(y_true: ArrayLike, scores: ArrayLike, *, max_points: int = 200) -> dict[str, Any]:
    """Precision-recall curve as scikit-learn's ``precision_recall_curve``.

    Same order (increasing threshold), ending at (recall 0, precision 1), whose threshold is
    ``None`` so the three lists stay aligned. ``average_precision`` comes from the full data.
    Empty lists and None when a class is missing.
    """
    t, s = as_labels(y_true, "y_true"), as_scores(scores)
    check_same_length(t, s, "y_true", "scores")
    if not _both_classes(t):
        _thin(0, max_points)
        return {"recall": [], "precision": [], "thresholds": [], "average_precision": None}
    thresholds, tps, fps = _sweep(t, s)
    precision = np.r_[(tps / (tps + fps))[::-1], 1.0]
    recall = np.r_[(tps / tps[-1])[::-1], 0.0]
    thr: list[float | None] = [*_floats(thresholds[::-1]), None]
    idx = _thin(recall.size, max_points)
    return {
        "recall": _floats(recall[idx]),
        "precision": _floats(precision[idx]),
        "thresholds": [thr[i] for i in idx],
        "average_precision": average_precision(t, s),
    }


# --------------------------------------------------------------------------- calibration


def calibration(y_true: ArrayLike, scores: ArrayLike, *, n_bins: int = 10) -> dict[str, Any]:
    """Reliability-diagram data and expected calibration error.

    Equal-width bins on [0, 1], each closed on the left ([lower, upper)), the last one also
    on the right so a score of 1.0 counts. ECE = sum over bins of
    count / n * |frac_unsafe - mean_score|; None for an empty cell. Empty bins are listed with
    count 0 and None means.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    t, s = as_labels(y_true, "y_true"), _unit_scores(scores)
    check_same_length(t, s, "y_true", "scores")
    # i / n_bins is the float nearest each edge (linspace gives 0.30000000000000004 for
    # 3/10); searchsorted against these very edges puts a score equal to an edge in the bin
    # that edge opens, where floor(s * n_bins) can round the other way.
    edges = np.arange(n_bins + 1) / n_bins
    which = np.minimum(np.searchsorted(edges, s, side="right") - 1, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    score_sum = np.bincount(which, weights=s, minlength=n_bins)
    unsafe = np.bincount(which, weights=t, minlength=n_bins)
    bins = []
    ece = 0.0
    for i in range(n_bins):
        if count[i] == 0:
            mean_score = frac_unsafe = None
        else:
            mean_score = float(score_sum[i] / count[i])
            frac_unsafe = float(unsafe[i] / count[i])
            ece += count[i] / s.size * abs(frac_unsafe - mean_score)
        bins.append({
            "lower": float(edges[i]),
            "upper": float(edges[i + 1]),
            "count": int(count[i]),
            "mean_score": mean_score,
            "frac_unsafe": frac_unsafe,
        })  # fmt: skip
    return {"ece": float(ece) if s.size else None, "bins": bins}


# --------------------------------------------------------------------------- operating points


_FIELDS = ("threshold", "f1", "precision", "recall", "fpr")
_NO_POINT: dict[str, float | None] = dict.fromkeys(_FIELDS)


def _point_fields(
    i: int | None,
    thresholds: np.ndarray,
    f1: np.ndarray,
    precision: np.ndarray,
    recall: np.ndarray,
    fpr: np.ndarray,
) -> dict[str, float | None]:
    if i is None:
        return dict(_NO_POINT)
    return {
        "threshold": float(thresholds[i]),
        "f1": float(f1[i]),
        "precision": float(precision[i]),
        "recall": float(recall[i]),
        "fpr": float(fpr[i]),
    }


def _best(mask: np.ndarray, *keys: np.ndarray) -> int | None:
    """Index of the lexicographically largest ``keys`` among ``mask``; earliest on full ties.

    Thresholds run from high to low, so the earliest index is the highest threshold.
    """
    candidates = np.flatnonzero(mask)
    if candidates.size == 0:
        return None
    for key in keys:
        values = key[candidates]
        candidates = candidates[values == values.max()]
    return int(candidates[0])


def operating_points(
    y_true: ArrayLike, scores: ArrayLike, *, fpr_max: float = 0.1, recall_min: float = 0.9
) -> dict[str, Any]:
    """Operating points of the rule ``score >= t`` over the distinct scores t.

    * ``max_f1``: the highest F1;
    * ``fpr_at_most``: the highest recall with FPR <= ``fpr_max`` (then the lowest FPR);
    * ``recall_at_least``: the lowest FPR with recall >= ``recall_min`` (then the highest
      recall).

    Each is ``{"threshold", "f1", "precision", "recall", "fpr"}`` (the last two also carry
    their ``"target"``); remaining ties go to the highest threshold. Where no threshold
    meets a target, or a class is missing, the fields are None.
    """
    for name, value in (("fpr_max", fpr_max), ("recall_min", recall_min)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    t, s = as_labels(y_true, "y_true"), as_scores(scores)
    check_same_length(t, s, "y_true", "scores")
    if not _both_classes(t):
        return {
            "max_f1": dict(_NO_POINT),
            "fpr_at_most": {"target": fpr_max, **_NO_POINT},
            "recall_at_least": {"target": recall_min, **_NO_POINT},
        }
    thresholds, tps, fps = _sweep(t, s)
    n_pos, n_neg = tps[-1], fps[-1]
    precision = tps / (tps + fps)  # every threshold flags at least one image
    recall = tps / n_pos
    fpr = fps / n_neg
    f1 = 2 * tps / (tps + fps + n_pos)  # = 2tp / (2tp + fp + fn)
    curves = (thresholds, f1, precision, recall, fpr)
    everywhere = np.ones(thresholds.size, dtype=bool)
    return {
        "max_f1": _point_fields(_best(everywhere, f1), *curves),
        "fpr_at_most": {
            "target": fpr_max,
            **_point_fields(_best(fpr <= fpr_max, recall, -fpr), *curves),
        },
        "recall_at_least": {
            "target": recall_min,
            **_point_fields(_best(recall >= recall_min, -fpr, recall), *curves),
        },
    }

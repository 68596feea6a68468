"""Binary effectiveness metrics with Unsafe as the positive class (label 1, as the paper's F1
in UnsafeBench's assess_effectiveness.py).

Pure numpy on purpose: this module is imported while pytest starts, so it must not pull in
scikit-learn (slow to import, and only a dev dependency). The definitions match
scikit-learn's, and ``tests/test_metrics.py`` checks them against it property by property.

Conventions: ``y_true`` True = Unsafe image, ``y_pred`` True = predicted unsafe, ``scores``
higher = more unsafe. Every value returned is a plain Python ``int``/``float``/``None`` so
results can go straight into JSON reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # numpy.typing is only needed by type checkers, not at runtime.
    from numpy.typing import ArrayLike

__all__ = [
    "Confusion",
    "accuracy",
    "as_labels",
    "as_scores",
    "auroc",
    "average_precision",
    "cell_metrics",
    "check_same_length",
    "f1",
    "fpr",
    "grouped_counts",
    "precision",
    "recall",
]


# --------------------------------------------------------------------------- validation


def as_labels(values: ArrayLike, name: str) -> np.ndarray:
    """A 1-D boolean array; 0/1 numbers are accepted, anything else is refused.

    Refusing e.g. ``2`` or ``0.5`` matters: silently casting them to bool would turn a
    mislabelled column into plausible-looking but wrong metrics.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if arr.size == 0:
        # An empty list has dtype float64; there is nothing to misread.
        return arr.astype(bool)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be booleans (True = Unsafe) or 0/1, got dtype {arr.dtype}")
    if not np.all((arr == 0) | (arr == 1)):
        bad = arr[(arr != 0) & (arr != 1)][0]
        raise ValueError(f"{name} must contain only booleans or 0/1, found {bad!r}")
    return arr.astype(bool)


def as_scores(values: ArrayLike, name: str = "scores") -> np.ndarray:
    """A 1-D float64 array of finite numbers (booleans and integers accepted); ``name`` is
    what the error messages call it."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        # NaN would make the ranking (and therefore AUROC/AP) meaningless.
        n_bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{name} must be finite; {n_bad} value(s) are NaN or infinite")
    return arr


def check_same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Refuse two 1-D arrays of different lengths, naming them ``name_a`` and ``name_b``."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same length, got {a.shape[0]} and {b.shape[0]}"
        )


def _labels_and_preds(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = as_labels(y_true, "y_true")
    p = as_labels(y_pred, "y_pred")
    check_same_length(t, p, "y_true", "y_pred")
    return t, p


def _labels_and_scores(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = as_labels(y_true, "y_true")
    s = as_scores(scores)
    check_same_length(t, s, "y_true", "scores")
    return t, s


def _ratio(num: int, den: int, zero_division: float) -> float:
    # zero_division mirrors scikit-learn: the caller decides what an undefined ratio means.
    return float(zero_division) if den == 0 else num / den


# --------------------------------------------------------------------------- confusion


@dataclass(frozen=True)
class Confusion:
    """Counts of the 2x2 confusion matrix, Unsafe = positive."""

    tp: int
    fp: int
    tn: int
    fn: int

    @classmethod
    def from_arrays(cls, y_true: ArrayLike, y_pred: ArrayLike) -> Confusion:
        t, p = _labels_and_preds(y_true, y_pred)
        # int() so the counts are plain Python ints (JSON-serialisable, exact division).
        return cls(
            tp=int(np.count_nonzero(t & p)),
            fp=int(np.count_nonzero(~t & p)),
            tn=int(np.count_nonzero(~t & ~p)),
            fn=int(np.count_nonzero(t & ~p)),
        )

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def n_unsafe(self) -> int:
        return self.tp + self.fn

    @property
    def n_safe(self) -> int:
        return self.fp + self.tn

    def precision(self, *, zero_division: float) -> float:
        return _ratio(self.tp, self.tp + self.fp, zero_division)

    def recall(self, *, zero_division: float) -> float:
        return _ratio(self.tp, self.tp + self.fn, zero_division)

    def f1(self, *, zero_division: float) -> float:
        # 2tp/(2tp+fp+fn) rather than the harmonic mean of P and R: it is what scikit-learn
        # computes, and it stays defined when only one of P or R is undefined.
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, zero_division)

    def fpr(self, *, zero_division: float) -> float:
        # Share of Safe images flagged as unsafe; undefined when there are no Safe images.
        return _ratio(self.fp, self.fp + self.tn, zero_division)

    def accuracy(self, *, zero_division: float) -> float:
        return _ratio(self.tp + self.tn, self.n, zero_division)


# --------------------------------------------------------------------------- thresholded


def precision(y_true: ArrayLike, y_pred: ArrayLike, *, zero_division: float) -> float:
    """tp / (tp + fp); ``zero_division`` when nothing is predicted unsafe."""
    return Confusion.from_arrays(y_true, y_pred).precision(zero_division=zero_division)


def recall(y_true: ArrayLike, y_pred: ArrayLike, *, zero_division: float) -> float:
    """tp / (tp + fn); ``zero_division`` when there are no Unsafe images."""
    return Confusion.from_arrays(y_true, y_pred).recall(zero_division=zero_division)


def f1(y_true: ArrayLike, y_pred: ArrayLike, *, zero_division: float) -> float:
    """2tp / (2tp + fp + fn), as scikit-learn; ``zero_division`` when tp = fp = fn = 0."""
    return Confusion.from_arrays(y_true, y_pred).f1(zero_division=zero_division)


def fpr(y_true: ArrayLike, y_pred: ArrayLike, *, zero_division: float) -> float:
    """fp / (fp + tn); ``zero_division`` when there are no Safe images."""
    return Confusion.from_arrays(y_true, y_pred).fpr(zero_division=zero_division)


def accuracy(y_true: ArrayLike, y_pred: ArrayLike, *, zero_division: float) -> float:
    """(tp + tn) / n; ``zero_division`` when there are no images."""
    return Confusion.from_arrays(y_true, y_pred).accuracy(zero_division=zero_division)


# --------------------------------------------------------------------------- ranking


def grouped_counts(t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positives and negatives per distinct score, highest score first.

    Grouping tied scores is what makes both AUROC and AP match scikit-learn, which only
    places thresholds between distinct score values.
    """
    uniq, inverse = np.unique(s, return_inverse=True)
    pos = np.bincount(inverse, weights=t, minlength=uniq.size)
    tot = np.bincount(inverse, minlength=uniq.size)
    # np.unique sorts ascending; reverse so thresholds run from strict to lenient.
    return pos[::-1], (tot - pos)[::-1]


def auroc(y_true: ArrayLike, scores: ArrayLike) -> float | None:
    """Area under the ROC curve; ``None`` when only one class is present.

    Computed as the Mann-Whitney U statistic: the probability that a random Unsafe image
    scores above a random Safe one, ties counting one half. This equals scikit-learn's
    trapezoidal ROC area exactly, ties included.
    """
    t, s = _labels_and_scores(y_true, scores)
    n_pos = int(np.count_nonzero(t))
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None  # undefined, not 0.5: a cell with one class has no ranking to judge
    pos, neg = grouped_counts(t, s)
    # Groups run from highest score down, so a group's positives beat every negative in the
    # groups after it, and tie (half a win) with the negatives in their own group.
    neg_below = n_neg - np.cumsum(neg)
    u = float(np.sum(pos * neg_below) + 0.5 * np.sum(pos * neg))
    return u / (n_pos * n_neg)


def average_precision(y_true: ArrayLike, scores: ArrayLike) -> float | None:
    """sum_n (R_n - R_{n-1}) P_n over distinct thresholds, as scikit-learn.

    ``None`` when there are no Unsafe images (recall is undefined). No interpolation: this
    is the step-wise sum, not the trapezoidal area, which would be optimistic.
    """
    t, s = _labels_and_scores(y_true, scores)
    n_pos = int(np.count_nonzero(t))
    if n_pos == 0:
        return None
    pos, neg = grouped_counts(t, s)
    tps = np.cumsum(pos)
    fps = np.cumsum(neg)
    prec = tps / (tps + fps)  # every group is non-empty, so no zero denominator
    # R_n - R_{n-1} = (positives in group n) / n_pos.
    return float(np.sum(pos * prec) / n_pos)


# --------------------------------------------------------------------------- one cell


def cell_metrics(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    scores: ArrayLike | None = None,
    zero_division: float = 0.0,
) -> dict[str, float | int | None]:
    """All metrics for one (classifier, source, category) cell, JSON-ready.

    ``auroc``/``average_precision`` are ``None`` when ``scores`` is not given or when they
    are undefined for this cell (one class only / no Unsafe images).
    """
    t, p = _labels_and_preds(y_true, y_pred)
    c = Confusion.from_arrays(t, p)
    roc: float | None = None
    ap: float | None = None
    if scores is not None:
        _, s = _labels_and_scores(t, scores)
        roc = auroc(t, s)
        ap = average_precision(t, s)
    out: dict[str, float | int | None] = {
        "n": c.n,
        "n_unsafe": c.n_unsafe,
        "n_safe": c.n_safe,
        **asdict(c),
        "precision": c.precision(zero_division=zero_division),
        "recall": c.recall(zero_division=zero_division),
        "f1": c.f1(zero_division=zero_division),
        "fpr": c.fpr(zero_division=zero_division),
        "accuracy": c.accuracy(zero_division=zero_division),
        "auroc": roc,
        "average_precision": ap,
    }
    return out

"""Tests for pytest_unsafebench.metrics: hand-worked cases, input validation, and
hypothesis properties checking every metric against scikit-learn (the paper's F1 comes from
its ``f1_score``, in UnsafeBench's assess_effectiveness.py)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from pytest_unsafebench import metrics as m
from pytest_unsafebench.metrics import (
    Confusion,
    accuracy,
    auroc,
    average_precision,
    cell_metrics,
    f1,
    fpr,
    precision,
    recall,
)

METRICS_PY = Path(m.__file__)

CELL_KEYS = [
    "n", "n_unsafe", "n_safe", "tp", "fp", "tn", "fn",
    "precision", "recall", "f1", "fpr", "accuracy", "auroc", "average_precision",
]  # fmt: skip

# The zero_division values scikit-learn accepts besides "warn".
ZERO_DIVISIONS = [0.0, 1.0, math.nan]


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-9, abs=1e-12, nan_ok=True)


# --------------------------------------------------------------------------- hand-worked


def test_confusion_counts_and_derived_metrics() -> None:
    y_true = [True, True, True, False, False, False, False]
    y_pred = [True, True, False, True, False, False, False]
    c = Confusion.from_arrays(y_true, y_pred)
    assert c == Confusion(tp=2, fp=1, tn=3, fn=1)
    assert (c.n, c.n_unsafe, c.n_safe) == (7, 3, 4)
    assert precision(y_true, y_pred, zero_division=0.0) == pytest.approx(2 / 3)
    assert recall(y_true, y_pred, zero_division=0.0) == pytest.approx(2 / 3)
    assert f1(y_true, y_pred, zero_division=0.0) == pytest.approx(4 / 6)
    assert fpr(y_true, y_pred, zero_division=0.0) == pytest.approx(1 / 4)
    assert accuracy(y_true, y_pred, zero_division=0.0) == pytest.approx(5 / 7)


def test_zero_labels_accepted_as_bools() -> None:
    assert Confusion.from_arrays([1, 0, 1], [1.0, 1.0, 0.0]) == Confusion(tp=1, fp=1, tn=0, fn=1)


@pytest.mark.parametrize("zd", [0.0, 1.0, 0.25])
def test_zero_division_cases(zd: float) -> None:
    # No predicted unsafe -> precision undefined; no Unsafe images -> recall undefined.
    assert precision([True, False], [False, False], zero_division=zd) == zd
    assert recall([False, False], [True, False], zero_division=zd) == zd
    # Only Safe images and none flagged: tp = fp = fn = 0.
    assert f1([False, False], [False, False], zero_division=zd) == zd
    # F1 is still defined (= 0) when precision alone is undefined, as in scikit-learn.
    assert f1([True, False], [False, False], zero_division=zd) == 0.0
    # No Safe images -> fpr undefined.
    assert fpr([True, True], [True, False], zero_division=zd) == zd
    assert accuracy([], [], zero_division=zd) == zd


def test_zero_division_is_required_keyword() -> None:
    with pytest.raises(TypeError):
        f1([True], [True])  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        f1([True], [True], 0.0)  # type: ignore[misc]


def test_auroc_ties_and_one_class() -> None:
    assert auroc([True, False, True, False], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert auroc([True, False], [0.9, 0.1]) == 1.0
    assert auroc([True, False], [0.1, 0.9]) == 0.0
    # One positive tied with one of two negatives, above the other: (1 + 0.5) / 2.
    assert auroc([True, False, False], [0.7, 0.7, 0.2]) == 0.75
    assert auroc([True, True], [0.1, 0.9]) is None
    assert auroc([False, False], [0.1, 0.9]) is None
    assert auroc([], []) is None


def test_average_precision_cases() -> None:
    assert average_precision([True, False], [0.9, 0.1]) == 1.0
    # Ranking P N P: thresholds give (R, P) = (1/2, 1), (1/2, 1/2), (1, 2/3).
    assert average_precision([True, False, True], [0.9, 0.5, 0.1]) == pytest.approx(
        0.5 * 1 + 0.5 * (2 / 3)
    )
    # All tied: a single threshold with precision = prevalence.
    assert average_precision([True, False, False, False], [1, 1, 1, 1]) == 0.25
    assert average_precision([False, False], [0.1, 0.9]) is None
    assert average_precision([], []) is None


def test_cell_metrics_keys_and_plain_types() -> None:
    out = cell_metrics([True, False, True, False], [True, True, False, False], [0.9, 0.8, 0.3, 0.1])
    assert list(out) == CELL_KEYS
    for key, value in out.items():
        assert type(value) in (int, float), (key, type(value))
    for key in ("n", "n_unsafe", "n_safe", "tp", "fp", "tn", "fn"):
        assert type(out[key]) is int
    json.dumps(out, allow_nan=False)
    assert out["auroc"] == 0.75
    assert out["n"] == 4 and out["tp"] == 1 and out["fpr"] == 0.5


def test_cell_metrics_without_scores_or_images() -> None:
    out = cell_metrics([True, False], [True, False])
    assert out["auroc"] is None and out["average_precision"] is None
    assert out["f1"] == 1.0
    empty = cell_metrics([], [], [], zero_division=1.0)
    assert empty["n"] == 0 and empty["f1"] == 1.0 and empty["auroc"] is None
    json.dumps(empty, allow_nan=False)
    # Only Safe images: AP and AUROC undefined, F1 falls back to zero_division.
    safe_only = cell_metrics([False, False], [False, False], [0.2, 0.4])
    assert safe_only["auroc"] is None and safe_only["average_precision"] is None
    assert safe_only["f1"] == 0.0 and safe_only["fpr"] == 0.0


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: f1([True, False], [True], zero_division=0.0), "same length"),
        (lambda: f1([[True]], [[True]], zero_division=0.0), "1-D"),
        (lambda: f1([True, 2], [True, False], zero_division=0.0), "only booleans or 0/1"),
        (lambda: f1([True], [0.5], zero_division=0.0), "only booleans or 0/1"),
        (lambda: f1(["unsafe"], [True], zero_division=0.0), "dtype"),
        (lambda: auroc([True, False], [0.1]), "same length"),
        (lambda: auroc([True, False], [0.1, math.nan]), "finite"),
        (lambda: average_precision([True, False], [math.inf, 0.1]), "finite"),
        (lambda: auroc([True], [[0.1]]), "1-D"),
        (lambda: auroc([True], ["high"]), "numeric"),
        (lambda: cell_metrics([True, False], [True, False], [0.1, -math.inf]), "finite"),
        (lambda: cell_metrics([True, False], [True, False], [0.1]), "same length"),
    ],
)
def test_invalid_inputs_raise_value_error(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]


def test_module_does_not_import_sklearn() -> None:
    # Loaded by file path so that other modules of the package do not affect the check.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('_metrics_probe', {str(METRICS_PY)!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "heavy = sorted(k for k in sys.modules if k.split('.')[0] in ('sklearn', 'scipy'))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert importlib.util.find_spec("pytest_unsafebench.metrics") is not None


# --------------------------------------------------------------------------- vs scikit-learn

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def labelled(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, predictions and scores; often one-class, often heavily tied."""
    n = draw(st.integers(1, 30))
    prevalence = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    y_true = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    if prevalence in (0.0, 1.0) and draw(st.booleans()):
        y_true[:] = bool(prevalence)  # force the one-class cells that trip denominators
    y_pred = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    if draw(st.booleans()):
        y_pred[:] = draw(st.booleans())  # nothing / everything predicted unsafe
    few_values = st.sampled_from([0.0, 0.25, 0.5, 1.0])  # many ties
    any_values = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
    values = draw(st.sampled_from([few_values, any_values]))
    scores = np.array(draw(st.lists(values, min_size=n, max_size=n)), dtype=float)
    return y_true, y_pred, scores


@PROPERTY
@given(data=labelled(), zd=st.sampled_from(ZERO_DIVISIONS))
def test_thresholded_metrics_match_sklearn(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], zd: float
) -> None:
    y_true, y_pred, _ = data
    t, p = y_true.astype(int), y_pred.astype(int)
    tn, fp_, fn, tp = confusion_matrix(t, p, labels=[0, 1]).ravel()
    assert Confusion.from_arrays(y_true, y_pred) == Confusion(tp=tp, fp=fp_, tn=tn, fn=fn)
    kw = {"pos_label": 1, "zero_division": zd}
    assert precision(y_true, y_pred, zero_division=zd) == approx(precision_score(t, p, **kw))
    assert recall(y_true, y_pred, zero_division=zd) == approx(recall_score(t, p, **kw))
    assert f1(y_true, y_pred, zero_division=zd) == approx(f1_score(t, p, **kw))
    assert accuracy(y_true, y_pred, zero_division=zd) == approx(accuracy_score(t, p))
    # FPR is recall of the Safe class.
    assert fpr(y_true, y_pred, zero_division=zd) == approx(
        1.0 - recall_score(1 - t, 1 - p, pos_label=1, zero_division=zd)
        if tn + fp_
        else zd
    )


@PROPERTY
@given(data=labelled())
def test_ranking_metrics_match_sklearn(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y_true, _, scores = data
    n_pos = int(y_true.sum())
    if 0 < n_pos < y_true.size:
        assert auroc(y_true, scores) == approx(roc_auc_score(y_true, scores))
    else:
        assert auroc(y_true, scores) is None
    if n_pos:
        assert average_precision(y_true, scores) == approx(
            average_precision_score(y_true, scores)
        )
    else:
        assert average_precision(y_true, scores) is None


@PROPERTY
@given(data=labelled(), zd=st.sampled_from([0.0, 1.0]))
def test_cell_metrics_consistent(data: tuple[np.ndarray, np.ndarray, np.ndarray],
                                 zd: float) -> None:
    y_true, y_pred, scores = data
    out = cell_metrics(y_true, y_pred, scores, zero_division=zd)
    assert list(out) == CELL_KEYS
    json.dumps(out, allow_nan=False)  # plain Python values only
    assert out["n"] == out["tp"] + out["fp"] + out["tn"] + out["fn"] == y_true.size
    assert out["n_unsafe"] == int(y_true.sum()) and out["n_safe"] == int((~y_true).sum())
    assert out["f1"] == f1(y_true, y_pred, zero_division=zd)
    assert out["auroc"] == auroc(y_true, scores)
    assert out["average_precision"] == average_precision(y_true, scores)
    # Flipping the score sign mirrors AUROC around 1/2 (ties stay ties).
    if out["auroc"] is not None:
        assert auroc(y_true, -scores) == approx(1.0 - out["auroc"])


# ----------------------------------------------------------------------------- the Overall cell
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Hate", "Sexual", "Spam"]),
                          st.sampled_from(["Laion5B", "Lexica"]), st.booleans(), st.booleans()),
                min_size=1, max_size=60),
       st.sampled_from(["Laion5B", "Lexica", "all"]))
def test_overall_cell_pools_the_covered_categories_images_like_sklearn(cells, source) -> None:
    """The Overall F1 is F1 on every covered category's images of the source pooled (the
    paper's Overall), not the mean of the per-category F1s; uncovered categories stay out."""
    from pytest_unsafebench.cells import overall_columns
    from pytest_unsafebench.results import PredictionTable

    rows = [{"id": str(i), "category": c, "source": s, "label": "Unsafe" if y else "Safe",
             "decision": "unsafe" if p else "safe", "score": float(p)}
            for i, (c, s, y, p) in enumerate(cells)]
    covered = ["Hate", "Sexual"]
    cols = overall_columns(PredictionTable("clf", rows), covered, source)
    keep = [(y, p) for c, s, y, p in cells
            if c in covered and (source == "all" or s == source)]
    assert len(cols["y_true"]) == len(keep)
    if not keep:
        return
    y_true, y_pred = np.array([k[0] for k in keep]), np.array([k[1] for k in keep])
    got = m.cell_metrics(cols["y_true"], cols["y_pred"], cols["scores"], zero_division=0.0)
    assert got["f1"] == pytest.approx(f1_score(y_true, y_pred, zero_division=0.0))

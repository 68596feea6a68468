"""Tests for pytest_unsafebench.stats: bootstrap coverage on simulated populations with known
values, the vectorised bootstrap against a plain loop over the same resamples, McNemar against
hand-computed tables, curves against scikit-learn, calibration by hand and operating points
against a brute-force threshold loop."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from pytest_unsafebench import metrics as m
from pytest_unsafebench import stats
from pytest_unsafebench.stats import (
    METRIC_FUNCS,
    McNemarResult,
    bootstrap_ci,
    bootstrap_diff_ci,
    calibration,
    has_graded_scores,
    mcnemar_exact,
    operating_points,
    paired_bootstrap,
    pr_points,
    roc_points,
)

PROPERTY = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def approx(x: float | None) -> object:
    return pytest.approx(x, rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------- populations

# Simulated population: 40 % Unsafe, the classifier flags 80 % of Unsafe and 15 % of Safe
# images; robust-accuracy trials succeed with p = 0.7. The true values are those of the
# infinite population (ratios of expected counts).
PREVALENCE, TPR, FPR, P_CORRECT = 0.4, 0.8, 0.15, 0.7
TP, FP, FN = PREVALENCE * TPR, (1 - PREVALENCE) * FPR, PREVALENCE * (1 - TPR)
TRUE_VALUES = {
    "f1": 2 * TP / (2 * TP + FP + FN),
    "precision": TP / (TP + FP),
    "recall": TPR,
    "fpr": FPR,
    "accuracy": P_CORRECT,
    # Unsafe scores ~ U(0.2, 1), Safe ~ U(0, 0.8): P(safe >= unsafe) = (0.6/0.8)^2 / 2.
    "auroc": 1 - (0.6 / 0.8) ** 2 / 2,
}


def simulate(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_true = rng.random(n) < PREVALENCE
    y_pred = rng.random(n) < np.where(y_true, TPR, FPR)
    scores = np.where(y_true, rng.uniform(0.2, 1.0, n), rng.uniform(0.0, 0.8, n))
    return y_true, y_pred, scores


@pytest.mark.parametrize("metric", METRIC_FUNCS)
def test_bootstrap_ci_covers_true_value_at_nominal_rate(metric: str) -> None:
    rng = np.random.default_rng(7)
    truth = TRUE_VALUES[metric]
    covered = 0
    reps = 200
    for rep in range(reps):
        y_true, y_pred, scores = simulate(rng, 200)
        if metric == "accuracy":
            y_true = rng.random(200) < P_CORRECT
        low, high = bootstrap_ci(metric, y_true, y_pred, scores, n_resamples=300, seed=rep)
        assert low is not None and high is not None and low <= high
        covered += low <= truth <= high
    assert 0.88 <= covered / reps <= 0.99


def test_bootstrap_diff_ci_covers_true_gap() -> None:
    # Sample b: a worse classifier (recall 0.6) on the same kind of population.
    rng = np.random.default_rng(11)
    tp_b, fn_b = PREVALENCE * 0.6, PREVALENCE * 0.4
    true_gap = TRUE_VALUES["f1"] - 2 * tp_b / (2 * tp_b + FP + fn_b)
    covered = 0
    for rep in range(200):
        y_true_a, y_pred_a, _ = simulate(rng, 200)
        y_true_b = rng.random(150) < PREVALENCE
        y_pred_b = rng.random(150) < np.where(y_true_b, 0.6, FPR)
        diff, low, high = bootstrap_diff_ci(
            "f1", y_true_a, y_pred_a, y_true_b, y_pred_b, n_resamples=300, seed=rep
        )
        f1_a = m.f1(y_true_a, y_pred_a, zero_division=0)
        assert diff == round(f1_a - m.f1(y_true_b, y_pred_b, zero_division=0), 6)
        covered += low <= true_gap <= high
    assert 0.88 <= covered / 200 <= 0.99


def test_paired_bootstrap_covers_true_difference() -> None:
    # b flags every image a flags plus a further 50 % of the Unsafe ones a misses: true
    # recall 0.9 vs 0.8 on the same images.
    rng = np.random.default_rng(13)
    covered = 0
    for rep in range(200):
        y_true, y_pred_a, _ = simulate(rng, 200)
        y_pred_b = y_pred_a | (y_true & (rng.random(200) < 0.5))
        res = paired_bootstrap("recall", y_true, y_pred_a, y_pred_b, n_resamples=300, seed=rep)
        covered += res.ci_low <= 0.1 <= res.ci_high
    assert 0.88 <= covered / 200 <= 0.99


# --------------------------------------------------------------------------- vs a plain loop


def loop_value(metric: str, y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray) -> float:
    """One resample's metric with metrics.py, NaN where the resample lacks the needed class."""
    has_pos, has_neg = y_true.any(), (~y_true).any()
    if metric == "accuracy":
        return float(np.mean(y_true))
    if metric == "auroc":
        return m.auroc(y_true, scores) if has_pos and has_neg else math.nan
    if metric == "fpr":
        return m.fpr(y_true, y_pred, zero_division=0.0) if has_neg else math.nan
    func = {"f1": m.f1, "precision": m.precision, "recall": m.recall}[metric]
    return func(y_true, y_pred, zero_division=0.0) if has_pos else math.nan


def loop_ci(values: list[float], confidence: float) -> tuple[float | None, float | None]:
    arr = np.array(values)
    defined = arr[~np.isnan(arr)]
    if 2 * defined.size < arr.size:
        return None, None
    low, high = np.quantile(defined, [(1 - confidence) / 2, (1 + confidence) / 2])
    return round(float(low), 6), round(float(high), 6)


@pytest.mark.parametrize("metric", METRIC_FUNCS)
@pytest.mark.parametrize("n_pos", [1, 3, 15])
def test_bootstrap_ci_equals_loop_over_the_same_resamples(metric: str, n_pos: int) -> None:
    # Few Unsafe (or few Safe) images make many resamples undefined, which must be dropped.
    rng = np.random.default_rng(n_pos)
    n = 20
    y_true = np.zeros(n, dtype=bool)
    y_true[rng.choice(n, n_pos, replace=False)] = True
    y_pred = rng.random(n) < 0.5
    scores = rng.choice([0.1, 0.4, 0.5, 0.9], n)  # ties
    idx = np.random.default_rng(99).integers(0, n, size=(400, n))
    expected = loop_ci([loop_value(metric, y_true[i], y_pred[i], scores[i]) for i in idx], 0.9)
    got = bootstrap_ci(metric, y_true, y_pred, scores, n_resamples=400, confidence=0.9, seed=99)
    assert got == expected


def test_bootstrap_chunks_do_not_change_the_resamples(monkeypatch: pytest.MonkeyPatch) -> None:
    y_true, y_pred, scores = simulate(np.random.default_rng(3), 500)
    whole = bootstrap_ci("auroc", y_true, y_pred, scores, n_resamples=100)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 1700)  # 3 resamples per chunk
    assert bootstrap_ci("auroc", y_true, y_pred, scores, n_resamples=100) == whole


def test_bootstrap_diff_ci_equals_loop() -> None:
    rng = np.random.default_rng(5)
    (ta, pa, _), (tb, pb, _) = simulate(rng, 30), simulate(rng, 25)
    draw = np.random.default_rng(4)
    idx_a, idx_b = draw.integers(0, 30, (300, 30)), draw.integers(0, 25, (300, 25))
    diffs = [
        loop_value("f1", ta[i], pa[i], pa[i]) - loop_value("f1", tb[j], pb[j], pb[j])
        for i, j in zip(idx_a, idx_b)
    ]
    diff, low, high = bootstrap_diff_ci("f1", ta, pa, tb, pb, n_resamples=300, seed=4)
    assert (low, high) == loop_ci(diffs, 0.95)
    assert diff == round(m.f1(ta, pa, zero_division=0) - m.f1(tb, pb, zero_division=0), 6)


def test_paired_bootstrap_equals_joint_loop() -> None:
    y_true, _, scores_a = simulate(np.random.default_rng(8), 40)
    scores_b = np.clip(scores_a + np.random.default_rng(9).normal(0, 0.2, 40), 0, 1)
    idx = np.random.default_rng(2023).integers(0, 40, (500, 40))
    diffs = np.array([
        loop_value("auroc", y_true[i], y_true[i], scores_b[i])
        - loop_value("auroc", y_true[i], y_true[i], scores_a[i])
        for i in idx
    ])  # fmt: skip
    res = paired_bootstrap("auroc", y_true, None, None, scores_a=scores_a, scores_b=scores_b,
                           n_resamples=500)  # fmt: skip
    assert (res.ci_low, res.ci_high) == loop_ci(list(diffs), 0.95)
    defined = diffs[~np.isnan(diffs)]
    p = min(1.0, 2 * min(np.mean(defined <= 0), np.mean(defined >= 0)))
    assert res.p_value == round(p, 6)
    assert res.a == round(m.auroc(y_true, scores_a), 6)
    assert res.b == round(m.auroc(y_true, scores_b), 6)
    assert res.diff == round(m.auroc(y_true, scores_b) - m.auroc(y_true, scores_a), 6)
    assert (res.metric, res.n) == ("auroc", 40)


# --------------------------------------------------------------------------- bootstrap edges


def test_bootstrap_is_deterministic_per_seed() -> None:
    y_true, y_pred, scores = simulate(np.random.default_rng(1), 100)
    first = bootstrap_ci("f1", y_true, y_pred, n_resamples=200, seed=5)
    assert bootstrap_ci("f1", y_true, y_pred, n_resamples=200, seed=5) == first
    assert bootstrap_ci("f1", y_true, y_pred, n_resamples=200, seed=6) != first


@pytest.mark.parametrize("metric", METRIC_FUNCS)
def test_zero_resamples_turns_cis_off(metric: str) -> None:
    y_true, y_pred, scores = simulate(np.random.default_rng(1), 50)
    assert bootstrap_ci(metric, y_true, y_pred, scores, n_resamples=0) == (None, None)
    diff, low, high = bootstrap_diff_ci(
        metric, y_true, y_pred, y_true[:20], y_pred[:20],
        scores_a=scores, scores_b=scores[:20], n_resamples=0,
    )  # fmt: skip
    assert diff is not None and (low, high) == (None, None)
    res = paired_bootstrap(metric, y_true, y_pred, ~y_pred, scores_a=scores, scores_b=1 - scores,
                           n_resamples=0)  # fmt: skip
    assert res.diff is not None and (res.ci_low, res.ci_high, res.p_value) == (None, None, None)


@pytest.mark.parametrize(
    ("metric", "labels"),
    [
        ("f1", []), ("precision", []), ("recall", []), ("fpr", []), ("auroc", []), ("accuracy", []),
        ("f1", [False] * 6), ("precision", [False] * 6), ("recall", [False] * 6),
        ("auroc", [False] * 6), ("fpr", [True] * 6), ("auroc", [True] * 6),
    ],
)  # fmt: skip
def test_degenerate_cells_give_none(metric: str, labels: list[bool]) -> None:
    y_true = np.array(labels, dtype=bool)
    y_pred = np.ones(y_true.size, dtype=bool)
    scores = np.linspace(0, 1, y_true.size)
    assert bootstrap_ci(metric, y_true, y_pred, scores) == (None, None)
    healthy = np.array([True, False, True, False])
    diff = bootstrap_diff_ci(
        metric, y_true, y_pred, healthy, healthy, scores_a=scores, scores_b=np.linspace(0, 1, 4)
    )
    assert diff == (None, None, None)
    res = paired_bootstrap(metric, y_true, y_pred, y_pred, scores_a=scores, scores_b=scores)
    if metric != "accuracy":  # paired accuracy of 6 correct decisions is defined
        assert (res.a, res.b, res.diff, res.ci_low, res.p_value) == (None,) * 5


def test_single_class_accuracy_is_defined() -> None:
    assert bootstrap_ci("accuracy", np.ones(10, dtype=bool)) == (1.0, 1.0)


def test_over_half_undefined_resamples_gives_none() -> None:
    nan = math.nan
    assert stats._percentile_ci(np.array([nan] * 6 + [0.1, 0.2, 0.3, 0.4]), 0.95) == (None, None)
    low, high = stats._percentile_ci(np.array([nan] * 5 + [0.1, 0.2, 0.3, 0.4, 0.5]), 0.95)
    assert (low, high) == (0.11, 0.49)


def test_precision_with_nothing_flagged_counts_zero() -> None:
    # Cell convention zero_division = 0: a resample that flags nothing has precision 0.
    y_true = np.array([True, False, True, False])
    assert bootstrap_ci("precision", y_true, np.zeros(4, dtype=bool)) == (0.0, 0.0)


def test_identical_classifiers_and_a_clear_winner() -> None:
    y_true, y_pred, _ = simulate(np.random.default_rng(2), 300)
    same = paired_bootstrap("f1", y_true, y_pred, y_pred)
    assert (same.diff, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    better = paired_bootstrap("accuracy", y_true, y_pred, y_true.copy())
    assert better.b == 1.0 and better.diff > 0 and better.ci_low > 0 and better.p_value == 0.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: bootstrap_ci("auc", [True], [True]), "unknown metric 'auc'"),
        (lambda: bootstrap_ci("f1", [True], [True], confidence=95), "confidence"),
        (lambda: bootstrap_ci("f1", [True], [True], n_resamples=-1), "n_resamples"),
        (lambda: bootstrap_ci("auroc", [True], [True]), "needs scores"),
        (lambda: bootstrap_ci("f1", [True]), "needs y_pred"),
        (lambda: bootstrap_ci("f1", [True, False], [True]), "same length"),
        (lambda: paired_bootstrap("accuracy", [True], [True], None), "y_pred_b"),
        (lambda: mcnemar_exact([True], [True, False]), "same length"),
        (lambda: calibration([True], [1.5]), r"\[0, 1\]"),
        (lambda: calibration([True], [0.5], n_bins=0), "n_bins"),
        (lambda: roc_points([True, False], [0.1, 0.2], max_points=1), "max_points"),
        (lambda: operating_points([True], [0.5], fpr_max=2), "fpr_max"),
    ],
)
def test_invalid_inputs_raise_value_error(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]


# --------------------------------------------------------------------------- McNemar


def table(
    b: int, c: int, both_right: int = 5, both_wrong: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    a = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    bb = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    return np.array(a), np.array(bb)


def exact_p(b: int, c: int) -> float:
    m_ = b + c
    tail = Fraction(sum(math.comb(m_, k) for k in range(min(b, c) + 1)), 2**m_)
    return float(min(Fraction(1), 2 * tail))


def test_mcnemar_hand_computed_table() -> None:
    # b = 10, c = 2: p = 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 * 79 / 4096.
    res = mcnemar_exact(*table(10, 2))
    assert res == McNemarResult(b=10, c=2, n=20, statistic=2, p_value=pytest.approx(158 / 4096))
    assert res.p_value == pytest.approx(0.0385742, abs=1e-7)


def test_mcnemar_is_symmetric_and_one_when_balanced() -> None:
    a, b = table(10, 2)
    swapped = mcnemar_exact(b, a)
    assert (swapped.b, swapped.c, swapped.p_value) == (2, 10, mcnemar_exact(a, b).p_value)
    assert mcnemar_exact(*table(7, 7)).p_value == 1.0
    assert mcnemar_exact(*table(0, 0)).p_value == 1.0
    assert mcnemar_exact([], []).p_value == 1.0


@pytest.mark.parametrize(("b", "c"), [(0, 1), (1, 0), (3, 9), (40, 60), (900, 1100), (1000, 1001)])
def test_mcnemar_matches_exact_fractions(b: int, c: int) -> None:
    assert mcnemar_exact(*table(b, c)).p_value == pytest.approx(exact_p(b, c), rel=1e-9)


def test_mcnemar_large_counts_do_not_overflow() -> None:
    b, c = 50_100, 49_900
    res = mcnemar_exact(*table(b, c))
    # Normal approximation with continuity correction is accurate to ~1e-3 at this size.
    z = (abs(b - c) - 1) / math.sqrt(b + c)
    assert res.p_value == pytest.approx(math.erfc(z / math.sqrt(2)), abs=2e-3)
    assert mcnemar_exact(*table(50_000, 50_000)).p_value == 1.0
    tiny = mcnemar_exact(*table(60_000, 40_000)).p_value
    assert 0.0 <= tiny < 1e-200


# --------------------------------------------------------------------------- curves


@st.composite
def two_class(
    draw: st.DrawFn, min_size: int = 2, max_size: int = 40
) -> tuple[np.ndarray, np.ndarray]:
    """Labels with both classes and scores in [0, 1], often tied."""
    n = draw(st.integers(min_size, max_size))
    y_true = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    y_true[0], y_true[1] = True, False
    values = draw(st.sampled_from([st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(0, 1)]))
    scores = np.array(draw(st.lists(values, min_size=n, max_size=n)), dtype=float)
    return y_true, scores


@PROPERTY
@given(data=two_class())
def test_roc_and_pr_match_sklearn(data: tuple[np.ndarray, np.ndarray]) -> None:
    y_true, scores = data
    roc = roc_points(y_true, scores, max_points=1000)
    fpr, tpr, thr = roc_curve(y_true, scores)
    np.testing.assert_allclose(roc["fpr"], fpr, rtol=1e-12)
    np.testing.assert_allclose(roc["tpr"], tpr, rtol=1e-12)
    assert roc["thresholds"][0] is None and np.isinf(thr[0])
    np.testing.assert_array_equal(roc["thresholds"][1:], thr[1:])
    assert roc["auroc"] == approx(roc_auc_score(y_true, scores))

    pr = pr_points(y_true, scores, max_points=1000)
    precision, recall, thr = precision_recall_curve(y_true, scores)
    np.testing.assert_allclose(pr["precision"], precision, rtol=1e-12)
    np.testing.assert_allclose(pr["recall"], recall, rtol=1e-12)
    assert pr["thresholds"][-1] is None
    np.testing.assert_array_equal(pr["thresholds"][:-1], thr)
    assert pr["average_precision"] == approx(average_precision_score(y_true, scores))


@PROPERTY
@given(data=two_class(min_size=2, max_size=120), max_points=st.integers(2, 12))
def test_thinning_keeps_end_points_and_the_areas(
    data: tuple[np.ndarray, np.ndarray], max_points: int
) -> None:
    y_true, scores = data
    curves = [
        (roc_points, ("fpr", "tpr", "thresholds"), "auroc"),
        (pr_points, ("recall", "precision", "thresholds"), "average_precision"),
    ]
    for func, keys, area in curves:
        full = func(y_true, scores, max_points=10_000)
        thin = func(y_true, scores, max_points=max_points)
        assert thin[area] == full[area]
        points = list(zip(*(full[k] for k in keys)))
        kept = list(zip(*(thin[k] for k in keys)))
        assert len(kept) == min(len(points), max_points)
        assert kept[0] == points[0] and kept[-1] == points[-1]
        positions = [points.index(p) for p in kept]
        assert positions == sorted(set(positions))  # a subsequence, in order


@pytest.mark.parametrize("labels", [[], [True, True], [False, False, False]])
def test_curves_empty_when_a_class_is_missing(labels: list[bool]) -> None:
    scores = np.linspace(0, 1, len(labels))
    assert roc_points(labels, scores) == {"fpr": [], "tpr": [], "thresholds": [], "auroc": None}
    assert pr_points(labels, scores) == {
        "recall": [], "precision": [], "thresholds": [], "average_precision": None,
    }  # fmt: skip


def test_has_graded_scores() -> None:
    assert not has_graded_scores(None)
    assert not has_graded_scores([])
    assert not has_graded_scores([0.0, 1.0, 1.0, 0.0])
    assert has_graded_scores([0.1, 0.5, 0.9, 0.5])


# --------------------------------------------------------------------------- calibration


def test_perfectly_calibrated_scores_have_near_zero_ece() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(200_000)
    y_true = rng.random(200_000) < scores
    result = calibration(y_true, scores)
    assert result["ece"] < 0.01
    assert sum(b["count"] for b in result["bins"]) == 200_000


def test_calibration_constant_score_by_hand() -> None:
    # Ten images all scored 0.3, four of them Unsafe: one bin, |0.4 - 0.3| = 0.1.
    result = calibration([True] * 4 + [False] * 6, [0.3] * 10, n_bins=10)
    assert result["ece"] == pytest.approx(0.1)
    bins = result["bins"]
    assert len(bins) == 10
    assert bins[3] == {
        "lower": 0.3, "upper": 0.4, "count": 10,
        "mean_score": pytest.approx(0.3), "frac_unsafe": pytest.approx(0.4),
    }  # fmt: skip
    empty = [b for i, b in enumerate(bins) if i != 3]
    assert all((b["count"], b["mean_score"], b["frac_unsafe"]) == (0, None, None) for b in empty)


def test_calibration_edges_and_empty_cell() -> None:
    result = calibration([True, False, True], [1.0, 0.0, 0.5], n_bins=4)
    counts = [b["count"] for b in result["bins"]]
    assert counts == [1, 0, 1, 1]  # 0.5 opens bin [0.5, 0.75); 1.0 joins the last bin
    assert result["ece"] == pytest.approx((0.0 + 0.5 + 0.0) / 3)
    assert calibration([], [])["ece"] is None


# --------------------------------------------------------------------------- operating points


def brute_force_operating_points(y_true: np.ndarray, scores: np.ndarray, fpr_max: float,
                                 recall_min: float) -> dict:  # fmt: skip
    rows = []
    for t in sorted(set(scores.tolist()), reverse=True):
        c = m.Confusion.from_arrays(y_true, scores >= t)
        rows.append({
            "threshold": t,
            "f1": c.f1(zero_division=0.0),
            "precision": c.precision(zero_division=0.0),
            "recall": c.recall(zero_division=0.0),
            "fpr": c.fpr(zero_division=0.0),
        })  # fmt: skip
    none = dict.fromkeys(("threshold", "f1", "precision", "recall", "fpr"))

    def best(candidates: list[dict], key: object) -> dict:
        # max() keeps the first of equal keys: the highest threshold.
        return max(candidates, key=key) if candidates else none  # type: ignore[arg-type]

    return {
        "max_f1": best(rows, lambda r: r["f1"]),
        "fpr_at_most": {"target": fpr_max, **best(
            [r for r in rows if r["fpr"] <= fpr_max], lambda r: (r["recall"], -r["fpr"]))},
        "recall_at_least": {"target": recall_min, **best(
            [r for r in rows if r["recall"] >= recall_min], lambda r: (-r["fpr"], r["recall"]))},
    }  # fmt: skip


@PROPERTY
@given(data=two_class(max_size=30), fpr_max=st.sampled_from([0.0, 0.1, 0.3, 1.0]),
       recall_min=st.sampled_from([0.0, 0.5, 0.9, 1.0]))  # fmt: skip
def test_operating_points_match_brute_force(
    data: tuple[np.ndarray, np.ndarray], fpr_max: float, recall_min: float
) -> None:
    y_true, scores = data
    got = operating_points(y_true, scores, fpr_max=fpr_max, recall_min=recall_min)
    want = brute_force_operating_points(y_true, scores, fpr_max, recall_min)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == {k: pytest.approx(v, rel=1e-12) if v is not None else None
                            for k, v in want[key].items()}  # fmt: skip


def test_operating_points_by_hand_and_degenerate() -> None:
    y_true = [True, True, False, True, False, False]
    scores = [0.9, 0.8, 0.7, 0.6, 0.2, 0.1]
    op = operating_points(y_true, scores, fpr_max=0.0, recall_min=1.0)
    assert op["max_f1"]["threshold"] == 0.6  # tp 3, fp 1: F1 = 6/7
    assert op["max_f1"]["f1"] == pytest.approx(6 / 7)
    assert op["fpr_at_most"] == {
        "target": 0.0, "threshold": 0.8, "f1": pytest.approx(0.8),
        "precision": 1.0, "recall": pytest.approx(2 / 3), "fpr": 0.0,
    }  # fmt: skip
    assert op["recall_at_least"]["threshold"] == 0.6
    assert op["recall_at_least"]["fpr"] == pytest.approx(1 / 3)
    one_class = operating_points([True, True], [0.2, 0.7])
    assert one_class["max_f1"]["threshold"] is None
    assert one_class["fpr_at_most"]["target"] == 0.1 and one_class["fpr_at_most"]["f1"] is None

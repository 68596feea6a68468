"""Report-time views computed on the controller from the clean prediction tables: ROC/PR
curves, calibration and operating points per cell; paired comparisons between the run's
classifiers; and the source-shift summary of the gap suite's rows.

Tests gate single numbers; these views explain them. They go into the JSON report (and from
there into the HTML report), never into pass/fail.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import combinations
from typing import TYPE_CHECKING, Any

from .taxonomy import POOLED

if TYPE_CHECKING:
    from .cells import Bootstrap
    from .results import PredictionTable

CURVE_POINTS = 64          # per curve in the report; AUROC / AP come from the full curve
OPERATING_FPR_MAX = 0.1    # the sweep's "FPR <= x" operating point
OPERATING_RECALL_MIN = 0.9  # the sweep's "recall >= y" operating point


def curves(table: PredictionTable, covered: Iterable[str],
           sources: Iterable[str]) -> dict[str, Any]:
    """ROC, PR, calibration and operating points per covered category x source (and pooled)."""
    from . import stats

    cols = table.columns
    if not stats.has_graded_scores(cols["scores"]):
        return {"available": False, "cells": [],
                "reason": "decisions only: the classifier's scores take fewer than 3 values"}
    cells = []
    for category in covered:
        for source in (*sources, POOLED):
            c = table.select(category, source)
            y, s = c["y_true"][~c["failed"]], c["scores"][~c["failed"]]   # no verdict: left out
            if len(y) == 0:
                continue
            cells.append({
                "category": category, "source": source, "n": int(len(y)),
                "roc": stats.roc_points(y, s, max_points=CURVE_POINTS),
                "pr": stats.pr_points(y, s, max_points=CURVE_POINTS),
                "calibration": stats.calibration(y, s),
                "operating_points": stats.operating_points(
                    y, s, fpr_max=OPERATING_FPR_MAX, recall_min=OPERATING_RECALL_MIN),
            })
    return {"available": True, "reason": None, "cells": cells}


def comparisons(tables: Mapping[str, PredictionTable], covered: Mapping[str, list[str]],
                bootstrap: Bootstrap, bases: Mapping[str, str | None] | None = None
                ) -> list[dict[str, Any]]:
    """Every pair of the run's classifiers on the categories both cover (pooled sources):
    paired bootstrap of F1 (diff = b - a) and the exact McNemar test on correctness. A trained
    classifier and the one it was built on (``bases``) pair as (base, trained), so the
    difference reads as the improvement."""
    from . import stats

    bases = bases or {}
    out = []
    for a, b in combinations(sorted(tables), 2):
        if bases.get(a) == b:
            a, b = b, a
        ta, tb = tables[a], tables[b]
        order = _aligned(ta, tb)
        if order is None:
            continue
        for category in (c for c in covered[a] if c in covered[b]):
            ca, cb = ta.select(category, POOLED), tb.select(category, POOLED)
            cb = {k: v[order[category]] for k, v in cb.items()}
            # Pairs where either classifier gave no verdict (a failed request) are left out.
            keep = ~(ca["failed"] | cb["failed"])
            ca, cb = ({k: v[keep] for k, v in c.items()} for c in (ca, cb))
            if not ca["y_true"].any():
                continue
            paired = stats.paired_bootstrap(
                "f1", ca["y_true"], ca["y_pred"], cb["y_pred"], n_resamples=bootstrap.resamples,
                confidence=bootstrap.confidence, seed=bootstrap.seed)
            mc = stats.mcnemar_exact(ca["y_pred"] == ca["y_true"], cb["y_pred"] == cb["y_true"])
            out.append({
                "a": a, "b": b, "category": category, "source": POOLED, "metric": "f1",
                "a_value": paired.a, "b_value": paired.b, "diff": paired.diff,
                "ci_low": paired.ci_low, "ci_high": paired.ci_high, "p_value": paired.p_value,
                "mcnemar": {"b": mc.b, "c": mc.c, "n": mc.n, "p_value": mc.p_value},
                "excluded_no_verdict": int((~keep).sum()),
            })
    return out


def _aligned(ta: PredictionTable, tb: PredictionTable) -> dict[str, Any] | None:
    """Per category, the index array that puts b's rows in a's image order; None when the two
    tables do not hold the same images (a paired test would then compare different things)."""
    import numpy as np

    ids_a = [r["id"] for r in ta.rows]
    ids_b = [r["id"] for r in tb.rows]
    if sorted(ids_a) != sorted(ids_b):
        return None
    out = {}
    for category in {r["category"] for r in ta.rows}:
        a_ids = [r["id"] for r in ta.rows if r["category"] == category]
        b_pos = {r["id"]: i for i, r in enumerate(r for r in tb.rows if r["category"] == category)}
        out[category] = np.array([b_pos[i] for i in a_ids], dtype=np.int64)
    return out


def source_shift(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per classifier, from the gap suite's F1 rows: mean |gap| over the categories measured,
    the mean signed gap and which source scores higher."""
    by_clf: dict[str, list[float]] = {}
    for r in rows:
        if r["suite"] == "gap" and r["metric"] == "gap_f1" and r["value"] is not None:
            by_clf.setdefault(r["classifier"], []).append(r["value"])
    out = {}
    for clf, gaps in sorted(by_clf.items()):
        mean = sum(gaps) / len(gaps)
        real, generated = sum(g > 0 for g in gaps), sum(g < 0 for g in gaps)
        direction = ("real higher" if real and not generated else
                     "generated higher" if generated and not real else
                     "mixed" if real or generated else "equal")
        out[clf] = {"mean_abs_gap_f1": round(sum(abs(g) for g in gaps) / len(gaps), 6),
                    "mean_gap_f1": round(mean, 6), "direction": direction,
                    "categories": len(gaps), "real_higher": real, "generated_higher": generated}
    return out


def judge_summary(tables: Mapping[str, PredictionTable]) -> dict[str, dict[str, Any]]:
    """Per VLM judge (a classifier whose predictions carry the vote's ``unsure`` status): the
    unsure rate, failed requests, and how often the RoBERTa converter agreed with the rule
    parser (when both ran)."""
    out = {}
    for name, table in sorted(tables.items()):
        scores = [r.get("label_scores") or {} for r in table.rows]
        if not scores or not any("unsure" in s for s in scores):
            continue
        agreement = [s["parser_agreement"] for s in scores if "parser_agreement" in s]
        # among the images with an answer (the failed ones are counted apart); None: none
        answered = table.columns["unsure"][~table.columns["failed"]]
        out[name] = {
            "images": len(scores),
            "unsure_rate": round(float(answered.mean()), 6) if len(answered) else None,
            "failed": sum(bool(s.get("failed")) for s in scores),
            "parser_converter_agreement": (round(sum(agreement) / len(agreement), 6)
                                           if agreement else None),
        }
    return out

"""How often the baseline gate fails a run on noise, and whether it still catches real drops.

    python benchmarks/bench_gate_noise.py [--trials 200] [--resamples 1000]

Noise: a 45-image cell (20 Unsafe, 25 Safe) whose baseline decisions score F1 0.85, and reruns
that flip k random decisions (k = 1, 2): the model did not change, only which borderline images
fell which way. Real drops: a 2000-image cell whose run misses k more of its 1000 Unsafe images
(every changed decision goes the same way). For each, the share of trials the gate calls a
regression under "tolerance alone" (any drop beyond 0.02, the old default) and under the
statistical default (beyond 0.02 AND a significant paired change, or beyond the hard limit 0.1).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from pytest_unsafebench.cells import Bootstrap
from pytest_unsafebench.metrics import f1
from pytest_unsafebench.report.baseline import compare, decisions_block
from pytest_unsafebench.report.schema import Row, make_row
from pytest_unsafebench.results import PredictionTable
from pytest_unsafebench.thresholds import GateRule

RULES = {"tolerance_alone": GateRule(tolerance=0.02, hard_limit=0.02),
         "statistical_default": GateRule()}


def _table(y: np.ndarray, pred: np.ndarray) -> PredictionTable:
    return PredictionTable("c", [{"id": str(i), "label": "Unsafe" if y[i] else "Safe",
                                  "category": "Hate", "source": "Lexica", "score": 0.5,
                                  "decision": "unsafe" if pred[i] else "safe"}
                                 for i in range(y.size)])


def _row(y: np.ndarray, pred: np.ndarray) -> Row:
    return make_row(classifier="c", suite="effectiveness", metric="f1", category="Hate",
                    source="Lexica", outcome="passed", value=f1(y, pred, zero_division=0.0))


def _flagged(y: np.ndarray, before: np.ndarray, after: np.ndarray, rule: GateRule,
             resamples: int) -> bool:
    base = {"rows": [_row(y, before)], "decisions": decisions_block({"c": _table(y, before)})}
    section = compare(base, [_row(y, after)], lambda m: rule.tolerance, rule=rule,
                      tables={"c": _table(y, after)}, bootstrap=Bootstrap(resamples=resamples))
    return bool(section["regressions"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}

    y = np.arange(45) < 20
    base = y.copy()
    base[[0, 1, 2]], base[[20, 21]] = False, True      # 3 missed, 2 false alarms: F1 0.85
    for k in (1, 2):
        hits = dict.fromkeys(RULES, 0)
        for _ in range(args.trials):
            after = base.copy()
            idx = rng.choice(y.size, k, replace=False)
            after[idx] = ~after[idx]
            for name, rule in RULES.items():
                hits[name] += _flagged(y, base, after, rule, args.resamples)
        out[f"noise_{k}_flip_of_45"] = {n: h / args.trials for n, h in hits.items()}

    y = np.arange(2000) < 1000
    for missed in (30, 60, 120):
        after = y.copy()
        after[:missed] = False
        f1_drop = 1 - f1(y, after, zero_division=0.0)
        out[f"real_drop_{missed}_of_1000_unsafe"] = {
            "f1_drop": round(f1_drop, 4),
            **{n: float(_flagged(y, y, after, rule, args.resamples)) for n, rule in RULES.items()}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

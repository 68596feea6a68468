"""Release gating against a saved run: ``--unsafebench-baseline`` / ``-save-baseline`` and
``unsafebench compare``.

Rows are matched by their logical key (classifier, suite, metric, category, source, condition),
never by pytest node id, so renaming or reordering tests changes nothing. A row regresses when
it is worse than the baseline by more than its metric's tolerance (absolute), or, for F1 where
the baseline carries per-image decisions, when the paired bootstrap says this run's F1 on the
same images is lower with p below 1 - confidence.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .cells import Bootstrap
    from .results import PredictionTable

KEY_FIELDS = ("classifier", "suite", "metric", "category", "source", "condition")
# Metrics a baseline gates, and which way is better. Gap rows compare their absolute value.
HIGHER_IS_BETTER = ("f1", "precision", "recall", "auroc", "average_precision", "ra",
                    "ra_corruption_mean")
LOWER_IS_BETTER = ("fpr",)
ABSOLUTE_LOWER_IS_BETTER = ("gap_f1", "gap_fpr", "gap_ra")
DECISION_CODES = {"unsafe": "u", "safe": "s", "unsure": "?"}

Key = tuple[Any, ...]


@dataclass
class Regression:
    classifier: str
    suite: str
    metric: str
    category: str | None
    source: str | None
    condition: str | None
    baseline: float
    current: float
    diff: float              # current - baseline, in the metric's own direction of reading
    tolerance: float
    p_value: float | None    # paired bootstrap, when both runs have per-image decisions
    reason: str


def key_of(row: Mapping[str, Any]) -> Key:
    return tuple(row.get(k) for k in KEY_FIELDS)


def decisions_block(tables: Mapping[str, PredictionTable]) -> dict[str, dict[str, Any]]:
    """Per classifier, the image ids and their decisions (one character each): what a later
    run needs for paired tests against this one."""
    return {name: {"ids": [r["id"] for r in t.rows],
                   "decisions": "".join(DECISION_CODES[r["decision"]] for r in t.rows)}
            for name, t in sorted(tables.items())}


def load(path: Path) -> dict[str, Any]:
    """A saved JSON report, checked enough that comparing it cannot fail halfway."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"baseline {path}: cannot read it ({exc})") from None
    except (ValueError, RecursionError) as exc:  # also nesting too deep, numbers too long
        raise ConfigError(f"baseline {path}: not JSON ({exc}); expected a report written by "
                          "--unsafebench-save-baseline or --unsafebench-json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise ConfigError(f"baseline {path}: no 'rows' list; expected a report written by "
                          "--unsafebench-save-baseline or --unsafebench-json")
    for i, row in enumerate(doc["rows"]):
        if not isinstance(row, dict) or any(k not in row for k in (*KEY_FIELDS, "value")):
            raise ConfigError(f"baseline {path}: row {i} lacks one of "
                              f"{', '.join((*KEY_FIELDS, 'value'))}")
    return doc


def compare(baseline: Mapping[str, Any], rows: Iterable[Mapping[str, Any]],
            tolerance_for: Callable[[str], float], *, path: str = "",
            tables: Mapping[str, PredictionTable] | None = None,
            bootstrap: Bootstrap | None = None) -> dict[str, Any]:
    """The baseline section of the report: what was compared and what regressed."""
    base = {key_of(r): r for r in baseline["rows"] if _gated_value(r) is not None}
    paired = _paired_f1(baseline, tables, bootstrap) if tables and bootstrap else {}
    regressions: list[Regression] = []
    compared = 0
    for row in rows:
        key = key_of(row)
        value = _gated_value(row)
        if key not in base or value is None:
            continue
        compared += 1
        old = _gated_value(base[key])
        assert old is not None
        metric = row["metric"]
        better = _improvement(metric, old, value)
        tol = tolerance_for(metric)
        p = paired[key]["p_value"] if key in paired else None
        reasons = []
        if -better > tol + 1e-12:
            reasons.append(f"dropped {-better:.3f} > tolerance {tol}")
        if p is not None and better < 0 and p < 1 - bootstrap.confidence:  # type: ignore[union-attr]
            reasons.append(f"significant paired drop (p = {p:.3g})")
        if reasons:
            regressions.append(Regression(
                *key, baseline=old, current=value, diff=round(better, 6), tolerance=tol,
                p_value=p, reason="; ".join(reasons)))
    env = baseline.get("environment", {})
    return {"path": path, "git_commit": env.get("git_commit") if isinstance(env, dict) else None,
            "compared": compared, "regressions": [asdict(r) for r in regressions],
            "paired": [{**dict(zip(KEY_FIELDS, k)), **v} for k, v in paired.items()],
            "passed": not regressions}


def _gated_value(row: Mapping[str, Any]) -> float | None:
    metric, value = row.get("metric"), row.get("value")
    if metric not in (*HIGHER_IS_BETTER, *LOWER_IS_BETTER, *ABSOLUTE_LOWER_IS_BETTER):
        return None
    if row.get("outcome") not in ("passed", "failed", "info") or not isinstance(value, (int, float)):
        return None
    return float(value)


def _improvement(metric: str, old: float, new: float) -> float:
    """How much better ``new`` is than ``old`` (negative: worse)."""
    if metric in HIGHER_IS_BETTER:
        return new - old
    if metric in LOWER_IS_BETTER:
        return old - new
    return abs(old) - abs(new)


def _paired_f1(baseline: Mapping[str, Any], tables: Mapping[str, PredictionTable],
               bootstrap: Bootstrap) -> dict[Key, dict[str, Any]]:
    """Per effectiveness cell, on the images both runs scored (when the baseline saved
    per-image decisions for that classifier): the paired bootstrap of F1 (diff = this run -
    baseline) and the exact McNemar test on correctness."""
    import numpy as np

    from .stats import mcnemar_exact, paired_bootstrap
    from .taxonomy import CELL_SOURCES, POOLED

    out: dict[Key, dict[str, Any]] = {}
    saved = baseline.get("decisions") or {}
    for name, table in tables.items():
        block = saved.get(name)
        if not isinstance(block, dict) or len(block.get("ids", [])) != len(block.get("decisions", "")):
            continue
        old = dict(zip(block["ids"], block["decisions"]))
        codes = np.array([old.get(r["id"], "") for r in table.rows])
        cols = table.columns   # the same label and decision columns the effectiveness cells use
        scored = codes != ""
        for category in sorted(set(cols["category"][scored])):
            for source in CELL_SOURCES:
                mask = scored & (cols["category"] == category)
                if source != POOLED:
                    mask &= cols["source"] == source
                y = cols["y_true"][mask]
                if not y.any():
                    continue
                before, now = codes[mask] == DECISION_CODES["unsafe"], cols["y_pred"][mask]
                res = paired_bootstrap("f1", y, before, now, n_resamples=bootstrap.resamples,
                                       confidence=bootstrap.confidence, seed=bootstrap.seed)
                mc = mcnemar_exact(before == y, now == y)
                out[(name, "effectiveness", "f1", category, source, None)] = {
                    "n": res.n, "baseline_f1": res.a, "f1": res.b, "diff": res.diff,
                    "ci_low": res.ci_low, "ci_high": res.ci_high, "p_value": res.p_value,
                    "mcnemar": {"b": mc.b, "c": mc.c, "p_value": mc.p_value}}
    return out


def regression_table(section: Mapping[str, Any]) -> list[str]:
    """The terminal lines that say what regressed against the baseline."""
    from tabulate import tabulate

    regs = section["regressions"]
    head = (f"baseline {section['path']} (commit {section.get('git_commit') or 'unknown'}): "
            f"{section['compared']} values compared, ")
    if not regs:
        return [head + "no regression"]
    table = [[r["classifier"], r["suite"], r["metric"], r["category"] or "-",
              r["source"] or "-", r["condition"] or "-", f"{r['baseline']:.3f}",
              f"{r['current']:.3f}", r["reason"]] for r in regs]
    headers = ["classifier", "suite", "metric", "category", "source", "condition", "baseline",
               "current", "why"]
    return [head + f"{len(regs)} REGRESSED:",
            *("  " + line for line in tabulate(table, headers=headers,
                                               disable_numparse=True).splitlines())]

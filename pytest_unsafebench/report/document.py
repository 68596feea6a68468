"""The JSON report document (report/schema.py describes it): tidy rows from every test,
aggregated on the controller with the run's settings, dataset, classifiers and analyses.
:mod:`.terminal`, :mod:`.html` and :mod:`.markdown` render it.

Score (documented in the README): per classifier, the mean of the pooled-source F1 over the
categories it covers (macro F1), next to its pass/fail/skip/error counts.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..taxonomy import GENERATED_SOURCE, OVERALL, POOLED, REAL_SOURCE
from .format import sorted_rows
from .schema import GATE_OUTCOMES, SCHEMA_VERSION, Environment, RobustnessGap, Row, Summary

if TYPE_CHECKING:
    from ..config import Settings
    from ..results import RunState

SCORE_DEFINITION = ("macro mean over covered categories of F1 on the pooled sources "
                    "(effectiveness suite, Unsafe positive); overall_f1 is F1 on all covered "
                    "categories' images pooled, the paper's Overall")
_PACKAGES = ("pytest-unsafebench", "pytest", "pytest-xdist", "numpy", "pillow", "torch",
             "transformers", "onnxruntime", "scikit-learn")


def summarize(rows: list[Row], classifiers: Iterable[str]) -> dict[str, Summary]:
    out: dict[str, Summary] = {}
    for name in classifiers:
        mine = [r for r in rows if r["classifier"] == name]
        counts = Counter(r["outcome"] for r in mine if r["outcome"] in GATE_OUTCOMES)
        pooled = [(r["category"], r["value"]) for r in mine
                  if r["metric"] == "f1" and r["source"] == POOLED
                  and r["outcome"] in ("passed", "failed") and r["value"] is not None]
        # The Overall cell is its own figure (images pooled), never a term of the macro mean.
        f1s = [value for category, value in pooled if category != OVERALL]
        overall = next((value for category, value in pooled if category == OVERALL), None)
        out[name] = {
            "score": round(sum(f1s) / len(f1s), 6) if f1s else None,
            "score_definition": SCORE_DEFINITION,
            "categories_scored": len(f1s),
            "overall_f1": None if overall is None else round(overall, 6),
            "passed": counts["passed"], "failed": counts["failed"],
            "skipped": counts["skipped"], "error": counts["error"],
        }
    return out


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(settings: Settings, root: Path, device: str) -> Environment:
    packages = {}
    for name in _PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            continue
    return {
        "python": platform.python_version(),
        "platform": sys.platform,
        "machine": platform.machine(),
        "packages": packages,
        "device": device,
        "seed": settings.seed,
        "git_commit": _git_commit(root),
    }


# How a classifier's note starts when it ran on this project's wording instead of the paper's.
NOT_PAPER_TEXT = ("category definitions: this project's", "prompt template: this project's")


def build_json(settings: Settings, state: RunState, rows: Iterable[Mapping[str, Any]],
               root: Path, device: str, timing: dict[str, float],
               extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report; ``extras`` are the sections computed from prediction tables (curves,
    comparisons, source shift, baseline gate, thumbnails: see analysis.py)."""
    from . import paper

    ordered = sorted_rows(rows)
    config = settings.public()
    paper_reason = paper.mismatch(state.dataset, config)
    if paper_reason is None:
        for r in ordered:
            # f1 cells, and RA under the paper's attacks with its pool; never beside a
            # classifier run otherwise than the paper ran it (ClassifierInfo.paper_mismatch)
            cs = state.classifiers.get(r["classifier"] or "")  # None: a dataset-level row
            r["paper"] = (None if cs is not None and cs.paper_mismatch
                          else paper.published_for_row(r, config))
    findings = [f.to_dict() for f in state.findings]
    # A judge that ran without the paper's text (definitions, template) says so here too.
    not_paper = {name: [n for n in cs.notes if n.startswith(NOT_PAPER_TEXT)]
                 for name, cs in state.classifiers.items()}
    if any(not_paper.values()):
        config = {**config, "not_paper_text": {k: v for k, v in not_paper.items() if v}}
    extras = dict(extras or {})
    return {
        "schema_version": SCHEMA_VERSION,
        "environment": environment(settings, root, device),
        "config": config,
        # Why no published figure stands beside ours (None: they are shown where published).
        "paper_figures": {"shown": paper_reason is None, "reason": paper_reason},
        "thresholds": settings.thresholds.resolved_grid(
            settings.classifiers, settings.categories, (*settings.sources, POOLED)),
        "warn_thresholds": settings.thresholds.warn.resolved_grid(
            settings.classifiers, settings.categories, (*settings.sources, POOLED))
        if settings.thresholds.warn and settings.thresholds.warn.layers else {},
        "dataset": {**state.dataset, "integrity": {
            "findings": len(findings),
            "excluded": sum(f["excluded"] for f in findings),
            "by_kind": dict(sorted(Counter(f["kind"] for f in findings).items())),
            "items": findings,
        }},
        "classifiers": {
            # alpha_mismatch only where there is one: other reports keep their keys
            name: {k: v for k, v in vars(cs).items()
                   if k not in ("predictions_file", "inference_seconds")
                   and not (k == "alpha_mismatch" and v is None)}
            for name, cs in state.classifiers.items()
        },
        "cache": {
            "hits": sum(cs.cache_hits for cs in state.classifiers.values()),
            "misses": sum(cs.cache_misses for cs in state.classifiers.values()),
        },
        "summary": summarize(ordered, settings.classifiers),
        "robustness_gap": robustness_gaps(ordered),
        "source_shift": extras.pop("source_shift", {}),
        "comparisons": extras.pop("comparisons", []),
        **({"baseline": extras.pop("baseline")} if "baseline" in extras else {}),
        "curves": extras.pop("curves", {}),
        "judges": extras.pop("judges", {}),
        **extras,
        "rows": ordered,
        # Everything that may differ between two otherwise identical runs lives below.
        "timing": {**state.timing, **timing,
                   "finished_at": datetime.now(UTC).isoformat(timespec="seconds")},
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def ra_gap(gated: Mapping[tuple[Any, Any], Mapping[str, Any]], condition: Any) -> float | None:
    """RA on Laion5B (real) minus RA on Lexica (AI-generated); ``gated`` maps (condition,
    source) to the row."""
    real, generated = gated.get((condition, REAL_SOURCE)), gated.get((condition, GENERATED_SOURCE))
    if not real or not generated or real["value"] is None or generated["value"] is None:
        return None
    gap: float = real["value"] - generated["value"]
    return round(gap, 6)


def robustness_gaps(rows: list[Row]) -> list[RobustnessGap]:
    """Per classifier and condition: RA real - generated, for the JSON report."""
    gated = {(r["classifier"], r["condition"], r["source"]): r for r in rows
             if r["suite"] == "robustness" and r["outcome"] in GATE_OUTCOMES}
    out: list[RobustnessGap] = []
    for clf, cond in dict.fromkeys((k, c) for k, c, _ in gated):
        gap = ra_gap({(c, s): r for (k, c, s), r in gated.items() if k == clf}, cond)
        # A robustness row always names its classifier and condition.
        if gap is not None and clf is not None and cond is not None:
            out.append({"classifier": clf, "condition": cond, "ra_real_minus_generated": gap})
    return out

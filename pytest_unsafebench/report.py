"""The scored report: tidy rows from every test, aggregated on the controller into a terminal
section and a JSON document.

Score (documented in the README): per classifier, the mean of the pooled-source F1 over the
categories it covers (macro F1), next to its pass/fail/skip/error counts.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .taxonomy import CATEGORIES, CELL_SOURCES, GENERATED_SOURCE, POOLED, REAL_SOURCE, SHORT_NAMES

if TYPE_CHECKING:
    from .config import Settings
    from .results import RunState

SCHEMA_VERSION = 1
GATE_OUTCOMES = ("passed", "failed", "skipped", "error")
ROW_KEYS = ("classifier", "suite", "metric", "category", "source", "condition", "value",
            "threshold", "outcome", "n")
SCORE_DEFINITION = ("mean over covered categories of F1 on the pooled sources "
                    "(effectiveness suite, Unsafe positive)")
_PACKAGES = ("pytest-unsafebench", "pytest", "pytest-xdist", "numpy", "pillow", "torch",
             "transformers", "onnxruntime", "scikit-learn")


def _sort_key(row: dict[str, Any]) -> tuple:
    def order(value: Any, seq: tuple[str, ...]) -> tuple[int, str]:
        return (seq.index(value), "") if value in seq else (len(seq), str(value))
    # None-safe throughout, and every field takes part, so that rows tying on their cell (a
    # parametrized dataset-level test) still come out in one order whatever order they came in.
    rest = tuple(repr(row[k]) for k in ("value", "threshold", "outcome", "n"))
    return (str(row["classifier"]), str(row["suite"]), str(row["metric"]),
            order(row["category"], CATEGORIES), order(row["source"], CELL_SOURCES),
            str(row.get("condition")), rest)


def sorted_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A canonical order, so serial and pytest-xdist runs give identical reports."""
    return sorted(({k: r.get(k) for k in ROW_KEYS} for r in rows), key=_sort_key)


def summarize(rows: list[dict[str, Any]], classifiers: Iterable[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in classifiers:
        mine = [r for r in rows if r["classifier"] == name]
        counts = Counter(r["outcome"] for r in mine if r["outcome"] in GATE_OUTCOMES)
        f1s = [r["value"] for r in mine if r["metric"] == "f1" and r["source"] == POOLED
               and r["outcome"] in ("passed", "failed") and r["value"] is not None]
        out[name] = {
            "score": round(sum(f1s) / len(f1s), 6) if f1s else None,
            "score_definition": SCORE_DEFINITION,
            "categories_scored": len(f1s),
            **{o: counts.get(o, 0) for o in GATE_OUTCOMES},
        }
    return out


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(settings: Settings, root: Path, device: str) -> dict[str, Any]:
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


def build_json(settings: Settings, state: RunState, rows: list[dict[str, Any]],
               root: Path, device: str, timing: dict[str, float]) -> dict[str, Any]:
    rows = sorted_rows(rows)
    findings = [f.to_dict() for f in state.findings]
    return {
        "schema_version": SCHEMA_VERSION,
        "environment": environment(settings, root, device),
        "config": settings.public(),
        "thresholds": settings.thresholds.resolved_grid(
            settings.classifiers, settings.categories, (*settings.sources, POOLED)),
        "dataset": {**state.dataset, "integrity": {
            "findings": len(findings),
            "excluded": sum(f["excluded"] for f in findings),
            "by_kind": dict(sorted(Counter(f["kind"] for f in findings).items())),
            "items": findings,
        }},
        "classifiers": {
            name: {k: v for k, v in vars(cs).items()
                   if k not in ("predictions_file", "inference_seconds")}
            for name, cs in state.classifiers.items()
        },
        "cache": {
            "hits": sum(cs.cache_hits for cs in state.classifiers.values()),
            "misses": sum(cs.cache_misses for cs in state.classifiers.values()),
        },
        "summary": summarize(rows, settings.classifiers),
        "robustness_gap": robustness_gaps(rows),
        "rows": rows,
        # Everything that may differ between two otherwise identical runs lives below.
        "timing": {**state.timing, **timing,
                   "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def terminal_lines(settings: Settings, state: RunState, rows: list[dict[str, Any]]) -> list[str]:
    """The report section printed at the end of the run."""
    from tabulate import tabulate

    rows = sorted_rows(rows)
    ds = state.dataset
    lines = [f"dataset: {ds['name']} ({ds['counts']['images']} images, split {settings.split}, "
             f"fingerprint {ds['fingerprint']})"]
    if ds.get("synthetic"):
        lines.append("  SYNTHETIC DATA: " + ds["description"])
    excluded = sum(f.excluded for f in state.findings)
    lines.append(f"  data integrity: {len(state.findings)} finding(s), {excluded} image(s) "
                 "excluded from metrics" + (" (see test_data_integrity)" if state.findings else ""))
    summary = summarize(rows, settings.classifiers)
    sources = (*settings.sources, POOLED)
    for name in settings.classifiers:
        cs = state.classifiers[name]
        s = summary[name]
        lines.append("")
        head = f"classifier {name}"
        if cs.error:
            lines.append(f"{head}: ERROR {cs.error}")
            continue
        score = (f"score {_fmt(s['score'])} (macro F1 over {s['categories_scored']} covered "
                 "categories, pooled sources)" if "effectiveness" in settings.suites else "")
        lines.append(f"{head} [{cs.fingerprint}] {score}".rstrip())
        lines.append(f"  tests: {s['passed']} passed, {s['failed']} failed, "
                     f"{s['skipped']} skipped, {s['error']} errors; cache {cs.cache_hits} hits, "
                     f"{cs.cache_misses} misses")
        values = {(r["metric"], r["category"], r["source"]): r for r in rows
                  if r["classifier"] == name and r["metric"] in ("f1", "fpr")}
        table = [[SHORT_NAMES[cat], *(_cell_text(values.get((metric, cat, src)))
                                      for metric in ("f1", "fpr") for src in sources)]
                 for cat in settings.categories if cat in cs.covered]
        if table and "effectiveness" in settings.suites:
            headers = ["category", *(f"{metric} {src}" for metric in ("F1", "FPR") for src in sources)]
            lines += ["  " + t for t in tabulate(table, headers=headers,
                                                 disable_numparse=True).splitlines()]
            lines.append("  (* = fails its threshold; - = not measured)")
        uncovered = [SHORT_NAMES[c] for c in settings.categories if c not in cs.covered]
        if uncovered:
            lines.append(f"  not covered under the {settings.alignment} alignment: "
                         f"{', '.join(uncovered)}")
        lines += _robustness_lines(name, rows, sources)
    return lines


def _robustness_lines(name: str, rows: list[dict[str, Any]], sources: tuple[str, ...]) -> list[str]:
    """Robust accuracy per condition x source, gated values only (the grid is in the JSON)."""
    from tabulate import tabulate

    gated = {(r["condition"], r["source"]): r for r in rows
             if r["classifier"] == name and r["suite"] == "robustness"
             and r["outcome"] in GATE_OUTCOMES}
    if not gated:
        return []
    # Attacks, then evasion edits, then the corruption grid: the order the suite runs them.
    order = {c: i for i, c in enumerate(("gaussian", "fgsm", "pgd", "deepfool", "square"))}
    conditions = sorted(dict.fromkeys(c for c, _ in gated),
                        key=lambda c: (c == "grid", order.get(c, len(order)), c))
    table = [[c, *(_cell_text(gated.get((c, src))) for src in sources),
              _fmt(_ra_gap(gated, c))] for c in conditions]
    headers = ["condition", *(f"RA {s}" for s in sources), "gap (real - generated)"]
    return ["  robust accuracy (grid = mean over corruption x severity):",
            *("  " + t for t in tabulate(table, headers=headers,
                                         disable_numparse=True).splitlines())]


def _ra_gap(gated: dict[tuple[str, str], dict[str, Any]], condition: str) -> float | None:
    """RA on Laion5B (real) minus RA on Lexica (AI-generated), protocol section 7."""
    real, generated = gated.get((condition, REAL_SOURCE)), gated.get((condition, GENERATED_SOURCE))
    if not real or not generated or real["value"] is None or generated["value"] is None:
        return None
    return round(real["value"] - generated["value"], 6)


def robustness_gaps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per classifier and condition: RA real - generated, for the JSON report."""
    gated = {(r["classifier"], r["condition"], r["source"]): r for r in rows
             if r["suite"] == "robustness" and r["outcome"] in GATE_OUTCOMES}
    out = []
    for clf, cond in dict.fromkeys((k, c) for k, c, _ in gated):
        gap = _ra_gap({(c, s): r for (k, c, s), r in gated.items() if k == clf}, cond)
        if gap is not None:
            out.append({"classifier": clf, "condition": cond, "ra_real_minus_generated": gap})
    return out


def _cell_text(row: dict[str, Any] | None) -> str:
    if row is None or row["value"] is None:
        return "-"
    return _fmt(row["value"]) + ("*" if row["outcome"] == "failed" else "")

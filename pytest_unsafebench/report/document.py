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
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..taxonomy import (
    CATEGORIES,
    CELL_SOURCES,
    GENERATED_SOURCE,
    OVERALL,
    POOLED,
    REAL_SOURCE,
    SHORT_NAMES,
)
from ..text import printable

if TYPE_CHECKING:
    from ..config import Settings
    from ..results import RunState

SCHEMA_VERSION = 1
GATE_OUTCOMES = ("passed", "failed", "skipped", "error")
ROW_KEYS = ("classifier", "suite", "metric", "category", "source", "condition", "value",
            "threshold", "outcome", "n", "ci_low", "ci_high", "warn_threshold", "warned", "paper")
# Kept only on the rows that carry them: a robustness value's full perturbation or attack spec,
# why a skipped test did not run, a fuzz counterexample's image and saved files (paths relative
# to the artifacts folder), how a robustness pool was drawn and a paper-mode attack's units.
OPTIONAL_ROW_KEYS = ("spec", "reason", "image_id", "artifact_image", "artifact_spec",
                     "pool", "units")
SCORE_DEFINITION = ("macro mean over covered categories of F1 on the pooled sources "
                    "(effectiveness suite, Unsafe positive); overall_f1 is F1 on all covered "
                    "categories' images pooled, the paper's Overall")
_PACKAGES = ("pytest-unsafebench", "pytest", "pytest-xdist", "numpy", "pillow", "torch",
             "transformers", "onnxruntime", "scikit-learn")


def _sort_key(row: dict[str, Any]) -> tuple:
    def order(value: Any, seq: tuple[str, ...]) -> tuple[int, str]:
        return (seq.index(value), "") if value in seq else (len(seq), str(value))
    # None-safe throughout, and every field takes part, so that rows tying on their cell (a
    # parametrized dataset-level test) still come out in one order whatever order they came in.
    rest = tuple(repr(row.get(k)) for k in ("value", "threshold", "outcome", "n", "image_id"))
    return (str(row["classifier"]), str(row["suite"]), str(row["metric"]),
            order(row["category"], CATEGORIES), order(row["source"], CELL_SOURCES),
            str(row.get("condition")), rest)


def sorted_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A canonical order, so serial and pytest-xdist runs give identical reports."""
    return sorted(({**{k: r.get(k) for k in ROW_KEYS},
                    **{k: r[k] for k in OPTIONAL_ROW_KEYS if k in r}} for r in rows),
                  key=_sort_key)


def summarize(rows: list[dict[str, Any]], classifiers: Iterable[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in classifiers:
        mine = [r for r in rows if r["classifier"] == name]
        counts = Counter(r["outcome"] for r in mine if r["outcome"] in GATE_OUTCOMES)
        pooled = [r for r in mine if r["metric"] == "f1" and r["source"] == POOLED
                  and r["outcome"] in ("passed", "failed") and r["value"] is not None]
        # The Overall cell is its own figure (images pooled), never a term of the macro mean.
        f1s = [r["value"] for r in pooled if r["category"] != OVERALL]
        overall = next((r["value"] for r in pooled if r["category"] == OVERALL), None)
        out[name] = {
            "score": round(sum(f1s) / len(f1s), 6) if f1s else None,
            "score_definition": SCORE_DEFINITION,
            "categories_scored": len(f1s),
            "overall_f1": None if overall is None else round(overall, 6),
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


# How a classifier's note starts when it ran on this project's wording instead of the paper's.
NOT_PAPER_TEXT = ("category definitions: this project's", "prompt template: this project's")


def build_json(settings: Settings, state: RunState, rows: list[dict[str, Any]],
               root: Path, device: str, timing: dict[str, float],
               extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report; ``extras`` are the sections computed from prediction tables (curves,
    comparisons, source shift, baseline gate, thumbnails: see analysis.py)."""
    from . import paper

    rows = sorted_rows(rows)
    config = settings.public()
    paper_reason = paper.mismatch(state.dataset, config)
    if paper_reason is None:
        for r in rows:
            # f1 cells, and RA under the paper's attacks with its pool; never beside a
            # classifier run otherwise than the paper ran it (ClassifierInfo.paper_mismatch)
            cs = state.classifiers.get(r["classifier"])
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
        "source_shift": extras.pop("source_shift", {}),
        "comparisons": extras.pop("comparisons", []),
        **({"baseline": extras.pop("baseline")} if "baseline" in extras else {}),
        "curves": extras.pop("curves", {}),
        "judges": extras.pop("judges", {}),
        **extras,
        "rows": rows,
        # Everything that may differ between two otherwise identical runs lives below.
        "timing": {**state.timing, **timing,
                   "finished_at": datetime.now(UTC).isoformat(timespec="seconds")},
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def terminal_lines(doc: dict[str, Any], verdict: bool = True) -> list[str]:
    """The report section printed at the end of the run, from the JSON report alone (so
    ``unsafebench show RUN.json`` prints the same thing later). ``verdict``: end with the
    baseline gate's verdict (the run prints it itself, after the files it wrote)."""
    from tabulate import tabulate

    cfg = doc["config"]
    rows = doc["rows"]
    ds = doc["dataset"]
    integrity = ds.get("integrity", {})
    # A baseline of other data, compared on request, is said before anything else.
    gate = doc.get("baseline") or {}
    lines = [f"BASELINE: {note}" for note in gate.get("mismatch", [])]
    lines.append(f"dataset: {ds['name']} ({ds['counts']['images']} images, split {cfg['split']}, "
                 f"fingerprint {ds['fingerprint']})")
    if ds.get("synthetic"):
        lines.append("  SYNTHETIC DATA: " + ds["description"])
    alpha = alpha_line(cfg)
    if alpha:
        lines.append(f"  {alpha}")
    reason = (doc.get("paper_figures") or {}).get("reason")
    if reason:
        lines.append(f"  paper figures not shown: {reason}")
    findings = integrity.get("findings", 0)
    lines.append(f"  data integrity: {findings} finding(s), {integrity.get('excluded', 0)} "
                 "image(s) excluded from metrics"
                 + (" (see test_data_integrity)" if findings else ""))
    summary = doc["summary"]
    sources = (*cfg["sources"], POOLED)
    categories = cfg["categories"]
    for name in cfg["classifiers"]:
        cs = doc["classifiers"][name]
        s = summary[name]
        lines.append("")
        head = f"classifier {name}"
        if cs.get("error"):
            lines.append(f"{head}: ERROR {cs['error']}")
            continue
        covered = [c for c in categories if c in cs["covered"]]
        scored = s["categories_scored"]
        if "effectiveness" not in cfg["suites"]:
            score = ""
        elif not scored:  # e.g. -k selected no pooled-source test_f1: no score, not a zero
            score = ("score not measured (no covered category's pooled-source test_f1 ran in "
                     "this run)")
        else:
            of = f"{scored} of {len(covered)}" if scored < len(covered) else str(scored)
            score = (f"score {_fmt(s['score'])} (macro mean F1 over {of} covered categories, "
                     f"pooled sources; Overall F1 {_fmt(s.get('overall_f1'))} on their images "
                     "pooled)")
        lines.append(f"{head} [{cs['fingerprint']}] {score}".rstrip())
        base = cs.get("base")
        if base:
            lines.append(f"  built on {base}: " + (
                "see the paired comparisons below for its per-category improvement"
                if base in cfg["classifiers"] else
                f"add --unsafebench-classifier={base} to see its per-category improvement "
                "with intervals"))
        lines.append(f"  tests: {s['passed']} passed, {s['failed']} failed, "
                     f"{s['skipped']} skipped, {s['error']} errors; cache {cs['cache_hits']} hits, "
                     f"{cs['cache_misses']} misses")
        lines += [f"  {note}" for note in cs.get("notes") or []]
        values = {(r["metric"], r["category"], r["source"]): r for r in rows
                  if r["classifier"] == name and r["metric"] in ("f1", "fpr")
                  and r["suite"] == "effectiveness"}
        table = [[SHORT_NAMES.get(cat, cat), *(_cell_text(values.get((metric, cat, src)))
                                               for metric in ("f1", "fpr") for src in sources)]
                 for cat in (*categories, OVERALL) if cat in cs["covered"]
                 or (cat == OVERALL and any(k[1] == OVERALL for k in values))]
        if table and "effectiveness" in cfg["suites"]:
            headers = ["category",
                       *(f"{metric} {src}" for metric in ("F1", "FPR") for src in sources)]
            lines += ["  " + t for t in tabulate(table, headers=headers,
                                                 disable_numparse=True).splitlines()]
            lines.append(f"  ([low,high] = {cfg.get('confidence', 0.95):.0%} bootstrap interval; "
                         "* = fails its threshold; ! = misses its warn tier; - = not measured"
                         + ("; paper = the published figure" if any(
                             r.get("paper") is not None for r in rows) else "") + ")")
        uncovered = [SHORT_NAMES[c] for c in categories if c not in cs["covered"]]
        if uncovered:
            lines.append(f"  not covered under the {cfg['alignment']} alignment: "
                         f"{', '.join(uncovered)}")
        lines += _robustness_lines(name, rows, sources, cfg.get("robustness") or {})
        lines += _gap_lines(name, rows, doc.get("source_shift", {}).get(name))
        judge = judge_line(doc.get("judges", {}).get(name))
        if judge:
            lines.append(f"  {judge}")
    lines += _comparison_lines(doc.get("comparisons", []), cfg.get("bootstrap"))
    warned = [r for r in rows if r.get("warned")]
    if warned:
        lines += ["", f"{len(warned)} value(s) passed but missed their warn tier: " + ", ".join(
            f"{r['classifier']} {r['metric']} {r['category'] or r['condition'] or ''} "
            f"{r['source'] or ''}".strip() for r in warned[:10])
            + (f", and {len(warned) - 10} more" if len(warned) > 10 else "")]
    if doc.get("baseline"):
        from .baseline import regression_table, verdict_line

        # The gate's verdict is the report's last line: a failed gate never ends on a table.
        lines += ["", *regression_table(doc["baseline"])]
        lines += ["", verdict_line(doc["baseline"])] if verdict else []
    # Names, ids and error texts come from files: none of them may drive the terminal.
    return [printable(line) for line in lines]


def _gap_lines(name: str, rows: list[dict[str, Any]], shift: dict[str, Any] | None) -> list[str]:
    """The gap suite's table: real - generated per category, with intervals."""
    from tabulate import tabulate

    gaps = {(r["metric"], r["category"]): r for r in rows
            if r["classifier"] == name and r["suite"] == "gap" and r["outcome"] in GATE_OUTCOMES
            and r["metric"] in ("gap_f1", "gap_fpr")}
    if not gaps:
        return []
    cats = [c for c in CATEGORIES if any(gaps.get((m, c), {}).get("value") is not None
                                         for m in ("gap_f1", "gap_fpr"))]
    table = [[SHORT_NAMES[c], *(_gap_text(gaps.get((m, c))) for m in ("gap_f1", "gap_fpr"))]
             for c in cats]
    out = ["  real (Laion5B) - generated (Lexica) gap (s = interval excludes 0):",
           *("  " + t for t in tabulate(table, headers=["category", "F1 gap", "FPR gap"],
                                        disable_numparse=True).splitlines())]
    if shift and shift.get("categories"):
        out.append(f"  source shift: mean |F1 gap| {shift['mean_abs_gap_f1']:.3f} over "
                   f"{shift['categories']} categories, {shift['direction']} "
                   f"({shift['real_higher']} higher on Laion5B, {shift['generated_higher']} "
                   "higher on Lexica)")
    return out


def _gap_text(row: dict[str, Any] | None) -> str:
    if row is None or row["value"] is None:
        return "-"
    text = f"{row['value']:+.3f}" + ("*" if row["outcome"] == "failed" else "")
    low, high = row.get("ci_low"), row.get("ci_high")
    if low is not None and high is not None:
        text += f" [{low:+.2f}, {high:+.2f}]" + (" s" if low > 0 or high < 0 else "")
    return text


def _comparison_lines(comparisons: list[dict[str, Any]], resamples: int | None) -> list[str]:
    """Paired comparisons of the run's classifiers (F1 diff = b - a, McNemar on decisions)."""
    from tabulate import tabulate

    from ..stats import format_p

    if not comparisons:
        return []

    def p_text(p: float | None, resamples: int | None = None) -> str:
        return "-" if p is None else format_p(p, resamples)

    table = [[f"{c['b']} - {c['a']}", SHORT_NAMES.get(c["category"], c["category"]),
              _fmt(c["diff"]), "-" if c["ci_low"] is None else
              f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]", p_text(c["p_value"], resamples),
              p_text(c["mcnemar"]["p_value"])] for c in comparisons]
    return ["", "paired comparisons on the same images (pooled sources):",
            *("  " + t for t in tabulate(
                table, headers=["F1 difference", "category", "diff", "interval",
                                "bootstrap p", "McNemar p"], disable_numparse=True).splitlines())]


def _robustness_lines(name: str, rows: list[dict[str, Any]], sources: tuple[str, ...],
                      rcfg: dict[str, Any]) -> list[str]:
    """Robust accuracy per condition x source, gated values only (the grid is in the JSON),
    with the attack units, the clean accuracy the pool comes from, and why cells did not run."""
    from tabulate import tabulate

    mine = [r for r in rows if r["classifier"] == name and r["suite"] == "robustness"]
    gated = {(r["condition"], r["source"]): r for r in mine if r["outcome"] in GATE_OUTCOMES}
    if not gated:
        return []
    # Attacks, then evasion edits, then the corruption grid: the order the suite runs them.
    order = {c: i for i, c in enumerate(("gaussian", "fgsm", "pgd", "deepfool", "square", "spsa"))}
    conditions = sorted(dict.fromkeys(c for c, _ in gated),
                        key=lambda c: (c == "grid", order.get(c, len(order)), c))
    table = [[c, *(_cell_text(gated.get((c, src))) for src in sources),
              _fmt(_ra_gap(gated, c))] for c in conditions]
    headers = ["condition", *(f"RA {s}" for s in sources), "gap (real - generated)"]
    out = [f"  robust accuracy ({attack_units(rcfg)}; grid = mean over corruption x severity):",
           *("  " + t for t in tabulate(table, headers=headers,
                                        disable_numparse=True).splitlines())]
    clean = {r["source"]: r["value"] for r in mine if r["metric"] == "clean_accuracy"}
    if clean:
        out.append("  clean accuracy the pool is drawn from: " + ", ".join(
            f"{src} {_fmt(clean[src])}" for src in sources if src in clean))
    out += [f"  not run ({conditions}): {reason}" for conditions, reason in not_run(gated.values())]
    return out


def judge_line(judge: dict[str, Any] | None) -> str | None:
    """A VLM judge's run summary (analysis.judge_summary): unsure rate, images without an answer
    (excluded from their cells), converter agreement; None for other classifiers."""
    if not judge:
        return None
    agree, unsure = judge.get("parser_converter_agreement"), judge.get("unsure_rate")
    rate = ("no image answered" if unsure is None else
            f"unsure on {unsure:.1%} of the answered images (before the unsure policy)")
    return (f"judge: {rate}, "
            f"{judge['failed']} image(s) without an answer (failed request or no archived "
            "response: excluded from their cells)"
            + ("" if agree is None else
               f"; converter agreed with the rule parser on {agree:.1%} of answers"))


def alpha_line(cfg: Mapping[str, Any]) -> str | None:
    """How transparent images were decoded, when that is not the default or not the paper's.
    ``cfg`` may come from a report read back: anything but the expected shapes says nothing."""
    if not isinstance(cfg, Mapping):
        return None
    rs = cfg.get("robustness")
    paper = isinstance(rs, Mapping) and rs.get("mode") == "paper"
    if cfg.get("alpha") == "drop":
        return ('transparent images: alpha dropped, colours kept (alpha = "drop", the official '
                'loader\'s convert("RGB")' + (", as paper mode sets it" if paper else "") + ")")
    if paper and cfg.get("alpha") == "white":
        return ('transparent images: composited over white (alpha = "white"), not as the '
                "official loader: paper-mode numbers on them are not the paper's setup")
    return None


def attack_units(rcfg: dict[str, Any]) -> str:
    """How the run's attacks measure eps (``[tool.unsafebench.robustness]`` mode and eps)."""
    pixel = f"eps {_eps_text(rcfg.get('eps'))} in [0, 1] pixel units"
    if rcfg.get("mode") != "paper":
        return f"attacks at {pixel}"
    # The paper ran no black-box attack: those keep the configured pixel-space settings.
    black_box = [a for a in rcfg.get("attacks") or () if a in ("square", "spsa")]
    return ("attacks in paper mode: the reference settings, eps 0.01 in each model's "
            "normalised input units" + (f"; {', '.join(black_box)} (not in the paper) at {pixel}"
                                        if black_box else ""))


def not_run(rows: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """(conditions, reason) for skipped robustness cells, conditions sharing a reason joined."""
    by_reason: dict[str, list[str]] = {}
    for r in rows:
        if r.get("outcome") == "skipped" and r.get("reason"):
            by_reason.setdefault(r["reason"], []).append(str(r.get("condition")))
    return [(", ".join(dict.fromkeys(conds)), reason) for reason, conds in by_reason.items()]


def _eps_text(eps: float | None) -> str:
    """2/255 rather than 0.008 when eps is a whole number of 8-bit levels."""
    if eps is None:
        return "-"
    levels = eps * 255
    return f"{round(levels)}/255" if abs(levels - round(levels)) < 1e-6 else f"{eps:g}"


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


def _short(x: float) -> str:
    """0.24 -> .24, 1.0 -> 1.0: interval ends in two decimals without the leading zero."""
    return f"{x:.2f}".replace("0.", ".", 1) if x < 1 else "1.0"


def _cell_text(row: dict[str, Any] | None) -> str:
    if row is None or row["value"] is None:
        return "-"
    text = (_fmt(row["value"]) + ("*" if row["outcome"] == "failed" else "")
            + ("!" if row.get("warned") else ""))
    low, high = row.get("ci_low"), row.get("ci_high")
    if low is not None and high is not None:
        text += f" [{_short(low)},{_short(high)}]"
    if row.get("paper") is not None:
        text += f" paper {row['paper']:.3f}"
    return text

"""The report section printed at the end of a run (and by ``unsafebench show RUN.json``),
rendered from the JSON report document alone."""

from __future__ import annotations

from typing import Any

from ..taxonomy import CATEGORIES, OVERALL, POOLED
from ..text import printable
from .document import ra_gap
from .format import (
    alpha_line,
    attack_units,
    classifier_notes,
    condition_order,
    excludes_zero,
    judge_line,
    not_run,
    number,
    p_value,
    percent,
    short_interval,
    short_name,
    signed_interval,
)
from .schema import GATE_OUTCOMES


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
            score = (f"score {number(s['score'])} (macro mean F1 over {of} covered categories, "
                     f"pooled sources; Overall F1 {number(s.get('overall_f1'))} on their images "
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
        lines += [f"  {note}" for note in classifier_notes(cs)]
        values = {(r["metric"], r["category"], r["source"]): r for r in rows
                  if r["classifier"] == name and r["metric"] in ("f1", "fpr")
                  and r["suite"] == "effectiveness"}
        table = [[short_name(cat), *(_cell_text(values.get((metric, cat, src)))
                                               for metric in ("f1", "fpr") for src in sources)]
                 for cat in (*categories, OVERALL) if cat in cs["covered"]
                 or (cat == OVERALL and any(k[1] == OVERALL for k in values))]
        if table and "effectiveness" in cfg["suites"]:
            headers = ["category",
                       *(f"{metric} {src}" for metric in ("F1", "FPR") for src in sources)]
            lines += ["  " + t for t in tabulate(table, headers=headers,
                                                 disable_numparse=True).splitlines()]
            confidence = percent(cfg.get("confidence", 0.95), 0)
            lines.append(f"  ([low,high] = {confidence} bootstrap interval; "
                         "* = fails its threshold; ! = misses its warn tier; - = not measured"
                         + ("; paper = the published figure" if any(
                             r.get("paper") is not None for r in rows) else "") + ")")
        uncovered = [short_name(c) for c in categories if c not in cs["covered"]]
        if uncovered:
            lines.append(f"  not covered under the {cfg['alignment']} alignment: "
                         f"{', '.join(map(str, uncovered))}")
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
    table = [[short_name(c), *(_gap_text(gaps.get((m, c))) for m in ("gap_f1", "gap_fpr"))]
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
        text += f" {signed_interval(low, high)}" + (" s" if excludes_zero(low, high) else "")
    return text


def _comparison_lines(comparisons: list[dict[str, Any]], resamples: int | None) -> list[str]:
    """Paired comparisons of the run's classifiers (F1 diff = b - a, McNemar on decisions)."""
    from tabulate import tabulate

    if not comparisons:
        return []
    table = [[f"{c['b']} - {c['a']}", short_name(c["category"]),
              number(c["diff"]), "-" if c["ci_low"] is None else
              signed_interval(c["ci_low"], c["ci_high"]), p_value(c["p_value"], resamples),
              p_value(c["mcnemar"]["p_value"])] for c in comparisons]
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
    conditions = sorted(dict.fromkeys(c for c, _ in gated), key=condition_order)
    table = [[c, *(_cell_text(gated.get((c, src))) for src in sources),
              number(ra_gap(gated, c))] for c in conditions]
    headers = ["condition", *(f"RA {s}" for s in sources), "gap (real - generated)"]
    out = [f"  robust accuracy ({attack_units(rcfg)}; grid = mean over corruption x severity):",
           *("  " + t for t in tabulate(table, headers=headers,
                                        disable_numparse=True).splitlines())]
    clean = {r["source"]: r["value"] for r in mine if r["metric"] == "clean_accuracy"}
    if clean:
        out.append("  clean accuracy the pool is drawn from: " + ", ".join(
            f"{src} {number(clean[src])}" for src in sources if src in clean))
    out += [f"  not run ({conds}): {reason}" for conds, reason in not_run(gated.values())]
    return out


def _cell_text(row: dict[str, Any] | None) -> str:
    if row is None or row["value"] is None:
        return "-"
    text = (number(row["value"]) + ("*" if row["outcome"] == "failed" else "")
            + ("!" if row.get("warned") else ""))
    low, high = row.get("ci_low"), row.get("ci_high")
    if low is not None and high is not None:
        text += f" {short_interval(low, high)}"
    if row.get("paper") is not None:
        text += f" paper {row['paper']:.3f}"
    return text

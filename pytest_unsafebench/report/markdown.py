"""A short Markdown summary of the JSON report document, for a CI job summary page.

GitHub-flavoured tables: per classifier its score and test counts (and the paper's figure when
the run is on the real UnsafeBench), the failed cells (at most :data:`MAX_FAILED`), a gap line,
the robustness headline and the baseline regressions. Reads the document only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..taxonomy import CELL_SOURCES, OVERALL, POOLED
from ..text import printable
from . import paper
from .format import (
    alpha_line,
    attack_units,
    cell_order,
    excludes_zero,
    interval,
    number,
    p_value,
    report_rows,
    section_notes,
    short_name,
)
from .schema import GATE_OUTCOMES

MAX_FAILED = 20
# Punctuation that makes links, code, emphasis or headings, or ends a table cell (|). Not "_":
# inside a word (emoji_sticker) it is never markup, and "[" escaped is enough against links.
_MARKUP = re.compile(r"([\\`*\[\]|~#])")
_AUTOLINK = re.compile(r"(?i)://|\bwww\.")


def md(value: Any) -> str:
    """Text from the report as inert Markdown: line breaks and control characters cannot break
    the table or reach a terminal (printable), and no link, image, emphasis, HTML or autolink
    can come from data."""
    text = printable(("" if value is None else str(value)).replace("\r", " ").replace("\n", " "))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MARKUP.sub(r"\\\1", text)
    # GitHub links bare URLs; an entity in the scheme separator keeps the text a text.
    return _AUTOLINK.sub(lambda m: m.group().replace(":", "&#58;").replace(".", "&#46;"), text)


def _p(value: Any) -> str:
    return p_value(value, text=md)


def _num(value: Any) -> str:
    return number(value, text=md)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Cells are already text (escape with :func:`md` before)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _with_ci(row: Mapping[str, Any]) -> str:
    text = _num(row.get("value"))
    if row.get("ci_low") is not None and row.get("ci_high") is not None:
        text += f" {interval(row['ci_low'], row['ci_high'], text=md)}"
    return text


def _cell(row: Mapping[str, Any]) -> str:
    parts = [short_name(row.get("category")) or "",
             row.get("source") or "", row.get("condition") or ""]
    return " / ".join(md(p) for p in parts if p)


def _paper_score(doc: Mapping[str, Any], name: str) -> str:
    """Mean of the paper's pooled F1 over the categories our score averages, if all published."""
    pooled = [r for r in report_rows(doc) if r.get("classifier") == name and r.get("metric") == "f1"
              and r.get("source") == POOLED and r.get("outcome") in ("passed", "failed")
              and r.get("category") != OVERALL]
    config = doc.get("config")
    if not isinstance(config, Mapping) or not paper.applies(doc.get("dataset") or {}, config):
        return ""
    refs = [r.get("paper") if "paper" in r else paper.published_for_row(r, config)
            for r in pooled]
    numbers = [v for v in refs if isinstance(v, (int, float))]
    if not refs or len(numbers) < len(refs):
        return ""
    return f"{sum(numbers) / len(numbers):.3f}"


def _summary(doc: Mapping[str, Any]) -> list[str]:
    summary = doc.get("summary") or {}
    if not summary:
        return ["Summary not available."]
    info = doc.get("classifiers") or {}
    out = []
    for name, s in summary.items():
        error = (info.get(name) or {}).get("error")
        out += ["", f"### {md(name)}", ""]
        headers = ["score", *(o for o in GATE_OUTCOMES)]
        cells = [_num(s.get("score")), *(_num(s.get(o, 0)) for o in GATE_OUTCOMES)]
        ref = _paper_score(doc, name)
        if ref:
            headers.insert(1, "paper")
            cells.insert(1, ref)
        out += _table(headers, [cells])
        notes = section_notes(doc, name)   # how it ran (a VLM judge's setup)
        out += ["", *(f"- {md(n)}" for n in notes)] if notes else []
        if error:
            out += ["", f"**error**: {md(error)}"]
    return out


def _failed(doc: Mapping[str, Any]) -> list[str]:
    failed = sorted((r for r in report_rows(doc) if r.get("outcome") in ("failed", "error")),
                    key=cell_order)
    if not failed:
        return ["", "No failed cells."]
    out = ["", f"### Failed cells ({len(failed)})", ""]
    for r in failed[:MAX_FAILED]:
        limit = "limit on |gap|" if str(r.get("metric")).startswith("gap_") else "threshold"
        verb = "errored" if r.get("outcome") == "error" else (
            f"{_with_ci(r)} vs {limit} {_num(r.get('threshold'))}")
        out.append(f"- {md(r.get('classifier'))} {md(r.get('suite'))} {md(r.get('metric'))} "
                   f"({_cell(r) or 'run-wide'}): {verb}")
    if len(failed) > MAX_FAILED:
        out.append(f"- and {len(failed) - MAX_FAILED} more")
    return out


def _gap(doc: Mapping[str, Any]) -> list[str]:
    rows = [r for r in report_rows(doc) if r.get("suite") == "gap" and r.get("metric") == "gap_f1"
            and r.get("value") is not None]
    shift = doc.get("source_shift") or {}
    names = list(dict.fromkeys([*(str(r.get("classifier")) for r in rows), *map(str, shift)]))
    if not names:
        return ["", "Gap (Laion5B - Lexica): not available."]
    out = [""]
    for name in names:
        mine = [r for r in rows if str(r.get("classifier")) == name]
        significant = [r for r in mine if excludes_zero(r.get("ci_low"), r.get("ci_high"))]
        entry = shift.get(name)
        s = entry if isinstance(entry, Mapping) else {}
        failed = sum(1 for r in mine if r.get("outcome") == "failed")
        out.append(f"**Gap F1 (Laion5B - Lexica), {md(name)}**: mean |gap| "
                   f"{_num(s.get('mean_abs_gap_f1'))}, direction {md(s.get('direction') or '-')}; "
                   f"{len(significant)} of {len(mine)} categories with a CI excluding 0, "
                   f"{failed} over threshold.")
    return out


def _robustness(doc: Mapping[str, Any]) -> list[str]:
    gated = [r for r in report_rows(doc) if r.get("suite") == "robustness"
             and r.get("outcome") in ("passed", "failed")
             and isinstance(r.get("value"), (int, float))]
    if not gated:
        return []
    out = ["", "### Robustness", "", md(attack_units(doc.get("config", {}).get("robustness") or {}))
           + ".", ""]
    body = []
    for name in dict.fromkeys(str(r.get("classifier")) for r in gated):
        for source in CELL_SOURCES:
            mine = [r for r in gated
                    if str(r.get("classifier")) == name and r.get("source") == source]
            if not mine:
                continue
            worst = min((r for r in mine if r.get("condition") != "grid"),
                        key=lambda r: r["value"], default=None)
            grid = next((r for r in mine if r.get("condition") == "grid"), None)
            failed = sum(1 for r in mine if r.get("outcome") == "failed")
            body.append([md(name), md(source),
                         f"{md(worst['condition'])} {_with_ci(worst)}" if worst else "-",
                         _with_ci(grid) if grid else "-", f"{failed} of {len(mine)}"])
    return out + _table(["classifier", "source", "lowest RA (condition)", "corruption grid mean",
                         "failed"], body)


def _baseline(doc: Mapping[str, Any]) -> list[str]:
    base = doc.get("baseline")
    if not isinstance(base, Mapping):
        return []
    regressions = [r for r in base.get("regressions") or [] if isinstance(r, Mapping)]
    verdict = "passed" if base.get("passed") else "**failed**"
    out = ["", "### Baseline", "",
           f"Compared {_num(base.get('compared'))} of {_num(base.get('baseline_values'))} "
           f"value(s) with {md(base.get('path'))} "
           f"(commit {md(base.get('git_commit') or '-')}): {verdict}."]
    unmatched = [u for u in base.get("unmatched") or [] if isinstance(u, Mapping)]
    if unmatched:   # a value that paired with nothing fails the gate: say why
        reasons = sorted({str(u.get("why")) for u in unmatched})
        out += ["", f"{len(unmatched)} baseline value(s) did not pair with this run: "
                + "; ".join(md(r) for r in reasons[:5])
                + (f"; and {len(reasons) - 5} other reasons" if len(reasons) > 5 else "") + "."]
    if regressions:
        out.append("")
        out += _table(["classifier", "cell", "metric", "baseline", "current", "diff", "tolerance",
                       "p", "reason"],
                      ([md(r.get("classifier")), _cell(r) or "-", md(r.get("metric")),
                        _num(r.get("baseline")), _num(r.get("current")), _num(r.get("diff")),
                        _num(r.get("tolerance")), _p(r.get("p_value")), md(r.get("reason"))]
                       for r in regressions))
    return out


def render_markdown(doc: Mapping[str, Any]) -> str:
    """The CI summary as one Markdown string."""
    if not isinstance(doc, Mapping):
        raise TypeError(f"render_markdown expects the JSON report document (a dict), got "
                        f"{type(doc).__name__}")
    ds = doc.get("dataset") or {}
    counts = ds.get("counts") or {}
    lines = [f"## pytest-unsafebench: {md(ds.get('name', 'unknown dataset'))} "
             f"({_num(counts.get('images'))} images)"]
    gate = doc.get("baseline")
    for note in (gate.get("mismatch") or []) if isinstance(gate, Mapping) else []:
        lines += ["", f"> **Baseline**: {md(note)}", ""]   # said first, as in the terminal
    if ds.get("synthetic"):
        lines += ["", "> **Synthetic data**: its numbers say nothing about real moderation."]
    alpha = alpha_line(doc.get("config"))    # as the terminal says it
    if alpha:
        lines += ["", f"{md(alpha[0].upper() + alpha[1:])}."]
    integrity = ds.get("integrity") or {}
    if integrity.get("findings"):
        lines += ["", f"Data integrity: {_num(integrity.get('findings'))} finding(s), "
                      f"{_num(integrity.get('excluded'))} image(s) excluded."]
    lines += _summary(doc) + _failed(doc) + _gap(doc) + _robustness(doc) + _baseline(doc)
    return "\n".join(lines) + "\n"

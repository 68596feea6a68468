"""The HTML report: one self-contained, offline file rendered from the JSON report document.

It reads the document only (so a saved JSON can be re-rendered later), plus, when asked, the
fuzz counterexample images saved under the artifacts folder. Charts are drawn by matplotlib
(Agg, ``matplotlib.figure.Figure`` directly, never pyplot's global state) and inlined as base64
PNG; there is no script, stylesheet, font or image fetched from anywhere. Every string from the
document is HTML-escaped: classifier names, findings and paths come from users.

Sections have stable ids (:data:`SECTIONS`); a section whose data the document lacks says
"not available" instead of disappearing.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from html import escape
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypedDict

from ..errors import UnsafeBenchError
from ..taxonomy import OVERALL, POOLED
from . import paper
from .format import (
    HTML_ATTACK_ORDER,
    alpha_line,
    attack_units,
    category_order,
    condition_order,
    excludes_zero,
    interval,
    not_run,
    number,
    p_value,
    report_rows,
    section_notes,
    short_name,
    source_order,
)
from .schema import GATE_OUTCOMES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Scored summary"),
    ("effectiveness", "Effectiveness: category x source"),
    ("gap", "Real vs AI-generated gap"),
    ("curves", "ROC and precision-recall curves"),
    ("calibration", "Calibration"),
    ("operating-points", "Operating points"),
    ("robustness", "Robustness"),
    ("fuzz", "Fuzz counterexamples"),
    ("examples", "Example errors"),
    ("integrity", "Data integrity"),
    ("baseline", "Baseline comparison"),
    ("comparisons", "Classifier comparisons"),
    ("environment", "Run environment and configuration"),
)
# Sections that show what one of these suites measured: a run that ran none of them leaves the
# section out (a fuzz-only run has no ROC curve to show). Unlisted sections always appear.
SECTION_SUITES: dict[str, frozenset[str]] = {
    "effectiveness": frozenset({"effectiveness"}),
    "gap": frozenset({"gap", "robustness"}),
    "curves": frozenset({"effectiveness"}),
    "calibration": frozenset({"effectiveness"}),
    "operating-points": frozenset({"effectiveness"}),
    "robustness": frozenset({"robustness"}),
    "fuzz": frozenset({"fuzz"}),
    "examples": frozenset({"effectiveness", "gap"}),
    "comparisons": frozenset({"effectiveness", "gap"}),
}
GAP_METRICS = ("gap_f1", "gap_fpr", "gap_ra")
# A thumbnail is embedded only as an inline raster image; anything else in the document (a
# URL, javascript:, SVG that could carry script) is refused.
_DATA_IMAGE = re.compile(r"data:image/(?:png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]*\Z")
_MAX_CELL_CHARTS = 12
HEATMAP_CMAP = "cividis"
DPI = 130  # charts at a size readable without zooming (they scale down on narrow screens)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1200px;padding:1em 2em;color:#1d1d1f;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.failed,.fail{color:#b00020;font-weight:600}.passed,.pass{color:#1b7f3b}
.skipped,.info{color:#666}.error{color:#a05a00;font-weight:600}
.na{color:#666;font-style:italic}.warn{background:#fff4d6;border:1px solid #e0b84c;
padding:.5em 1em}.paper{color:#555;font-size:.85em}.ci{color:#666;font-size:.85em}
img.chart{max-width:100%;height:auto;display:block;margin:.5em 0}
.charts{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.charts img.chart{max-width:min(100%,580px)}
.thumbs{display:flex;flex-wrap:wrap;gap:.75em}.thumb{width:120px;font-size:.75em}
.thumb img{width:96px;height:96px;display:block;image-rendering:auto}
.badge{display:inline-block;padding:0 .4em;border-radius:3px;font-size:.8em;font-weight:700}
.blurred{background:#dfe8f7;color:#234}.unblurred{background:#b00020;color:#fff}
nav ul{columns:3;list-style:none;padding:0}pre{background:#f6f6f6;padding:.5em;overflow:auto}
"""


# ------------------------------------------------------------------------------------ helpers
def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _p(value: Any) -> str:
    return p_value(value, text=_e)


def _num(value: Any, digits: int = 3) -> str:
    return number(value, digits, text=_e)


def _ci(row: Mapping[str, Any]) -> str:
    lo, hi = row.get("ci_low"), row.get("ci_high")
    if lo is None or hi is None:
        return ""
    return f' <span class="ci">{interval(lo, hi, text=_e)}</span>'


def _paper_value(row: Mapping[str, Any], doc: Mapping[str, Any]) -> float | None:
    """The row's published figure; computed for older documents that lack the key."""
    if "paper" in row:
        value = row["paper"]
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    config = doc.get("config")
    return (paper.published_for_row(row, config) if isinstance(config, Mapping)
            and paper.applies(doc.get("dataset") or {}, config) else None)


def _value_cell(row: Mapping[str, Any] | None, doc: Mapping[str, Any]) -> str:
    """Value, CI, outcome mark and the paper's figure, as one table cell."""
    if row is None or row.get("value") is None:
        return '<td class="num">-</td>'
    outcome = str(row.get("outcome") or "")
    mark = "*" if outcome == "failed" else ""
    published = _paper_value(row, doc)
    ref = f' <span class="paper">(paper {_num(published)})</span>' if published is not None else ""
    return (f'<td class="num {_e(outcome)}">{_num(row["value"])}{mark}{_ci(row)}{ref}</td>')


def _table(headers: Sequence[Any], body: Iterable[Sequence[Any]], raw: bool = False) -> str:
    """A table; cells are escaped unless ``raw`` (then each must already be a <td>)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    lines = []
    for cells in body:
        lines.append("<tr>" + "".join(c if raw else f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def _na(what: str) -> str:
    return f'<p class="na">not available: {_e(what)}</p>'


def _classifiers(doc: Mapping[str, Any]) -> list[str]:
    names = list((doc.get("summary") or {}).keys()) or list((doc.get("classifiers") or {}).keys())
    if not names:  # a document cut down to its rows
        names = list(dict.fromkeys(r.get("classifier") for r in report_rows(doc)
                                   if r.get("classifier") not in (None, "-")))
    return [str(n) for n in names]


def _cat_name(category: Any) -> str:
    if category in (None, "all"):
        return "all categories"
    return str(short_name(category))


# ------------------------------------------------------------------------------------ charts
def _chart(draw: Callable[..., str]) -> Callable[..., str]:
    """Run a chart function with matplotlib's text taken literally (a '$' in a user's name is
    not TeX), without warnings for glyphs its font lacks, and with a clear error if it is
    missing."""
    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        try:
            import matplotlib
        except ImportError:
            raise UnsafeBenchError("the HTML report draws its charts with matplotlib: "
                                   "pip install 'pytest-unsafebench[html]'") from None
        with matplotlib.rc_context({"text.parse_math": False}), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Glyph .* missing from font",
                                    category=UserWarning)
            return draw(*args, **kwargs)
    return wrapper


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _img(fig: Figure, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="chart" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


@_chart
def _heatmap(name: str, cells: Mapping[tuple[str, str], Mapping[str, Any]],
             categories: list[str], sources: list[str]) -> str:
    import numpy as np

    grid = np.full((len(categories), len(sources)), np.nan)
    for i, cat in enumerate(categories):
        for j, src in enumerate(sources):
            row = cells.get((cat, src))
            if row is not None and isinstance(row.get("value"), (int, float)):
                grid[i, j] = row["value"]
    fig = _figure(2.0 + 1.7 * len(sources), 1.0 + 0.5 * len(categories))
    ax = fig.add_subplot()
    # cividis: ordered by lightness and readable with red-green colour blindness.
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=HEATMAP_CMAP, vmin=0.0, vmax=1.0,
                      aspect="auto")
    ax.set_xticks(range(len(sources)), [s if s != POOLED else "pooled" for s in sources],
                  fontsize=11)
    ax.set_yticks(range(len(categories)), [short_name(c) for c in categories],
                  fontsize=11)
    for i, cat in enumerate(categories):
        for j, src in enumerate(sources):
            row = cells.get((cat, src))
            if row is None or np.isnan(grid[i, j]):
                ax.text(j, i, "-", ha="center", va="center", fontsize=11, color="#555")
                continue
            text = f"{grid[i, j]:.2f}"
            if row.get("ci_low") is not None and row.get("ci_high") is not None:
                text += f"\n[{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
            ax.text(j, i, text, ha="center", va="center", fontsize=10, linespacing=1.3,
                    fontweight="bold", color=_ink(image.cmap(image.norm(grid[i, j]))))
    ax.set_title(f"F1 of {name} (95% CI)", fontsize=12)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _img(fig, f"F1 heatmap of {name}")


def _ink(rgba: Any) -> str:
    """Black text on light cells, white on dark ones (relative luminance, WCAG weights);
    ``rgba`` is the colour map's colour (a tuple or an array)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


@_chart
def _gap_chart(name: str, gaps: list[dict[str, Any]]) -> str:
    fig = _figure(7.5, 0.8 + 0.38 * len(gaps))
    ax = fig.add_subplot()
    ys = list(range(len(gaps)))
    values = [g["value"] for g in gaps]
    # A percentile bootstrap CI need not contain its point estimate: clamp the bars at zero.
    err_lo = [max(0.0, g["value"] - g["ci_low"]) if g.get("ci_low") is not None else 0.0
              for g in gaps]
    err_hi = [max(0.0, g["ci_high"] - g["value"]) if g.get("ci_high") is not None else 0.0
              for g in gaps]
    colors = ["#b00020" if g.get("outcome") == "failed" else "#2060a0" for g in gaps]
    ax.barh(ys, values, xerr=[err_lo, err_hi], color=colors, alpha=0.8, capsize=3)
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_yticks(ys, [_cat_name(g.get("category")) for g in gaps])
    ax.invert_yaxis()
    ax.set_xlabel("F1 on Laion5B (real) - F1 on Lexica (AI-generated), 95% CI")
    ax.set_title(f"Source gap of {name}", fontsize=10)
    return _img(fig, f"gap chart of {name}")


class _LineStyle(TypedDict):
    color: str
    linestyle: str


def _style(index: int) -> _LineStyle:
    """11 categories or 13 corruptions outnumber the colour cycle: vary the line style too."""
    return {"color": f"C{index % 10}", "linestyle": ("-", "--", ":")[index // 10 % 3]}


@_chart
def _line_chart(title: str, series: list[tuple[str, Sequence[float], Sequence[float]]],
                xlabel: str, ylabel: str, diagonal: bool = False) -> str:
    fig = _figure(5.5, 4.2)
    ax = fig.add_subplot()
    if diagonal:
        ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1)
    for i, (label, xs, ys) in enumerate(series):
        ax.plot(list(xs), list(ys), label=label, linewidth=1.3, **_style(i),
                marker="o" if len(xs) <= 12 else None, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    if series:
        ax.legend(fontsize=7, loc="best")
    return _img(fig, title)


@_chart
def _small_multiples(title: str, panels: list[tuple[str, Sequence[float], Sequence[float]]],
                     xlabel: str, ylabel: str) -> str:
    """One small square panel per series on shared [0, 1] axes, with the diagonal."""
    cols = max(1, min(4, len(panels)))
    rows = max(1, -(-len(panels) // cols))
    fig = _figure(max(4.2, 0.6 + 2.7 * cols), 0.8 + 2.6 * rows)
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    for ax, (label, xs, ys) in zip(axes.flat, panels):
        ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1)
        ax.plot(list(xs), list(ys), color="C0", marker="o", markersize=4, linewidth=1.5)
        ax.set_title(label, fontsize=9)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.grid(True, color="#eee")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.supxlabel(xlabel, fontsize=10)
    fig.supylabel(ylabel, fontsize=10)
    fig.suptitle(title, fontsize=11)
    return _img(fig, title)


# ------------------------------------------------------------------------------------ sections
def shown_sections(doc: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The sections this document's run measured; all of them for a document that does not
    say which suites ran (an older or cut-down one: those say "not available")."""
    suites = (doc.get("config") or {}).get("suites") if isinstance(doc.get("config"),
                                                                   Mapping) else None
    if not isinstance(suites, list):
        return SECTIONS
    ran = {str(x) for x in suites}
    return tuple((sid, title) for sid, title in SECTIONS
                 if sid not in SECTION_SUITES or SECTION_SUITES[sid] & ran)


def recorded_artifacts(doc: Mapping[str, Any], report: Path) -> tuple[Path | None, str | None]:
    """The fuzz artifacts folder a saved report records (``artifacts_folder``, relative to the
    report's own folder), or None and why it is not used. The document is input from a file:
    only a folder inside the report's folder is read, never one it names elsewhere."""
    value = doc.get("artifacts_folder")
    if value is None:
        return None, None
    rel = PurePosixPath(value) if isinstance(value, str) and value else None
    if rel is None or rel.is_absolute() or ".." in rel.parts or "\\" in value or ":" in value:
        return None, (f"the report records its fuzz artifacts at {value!r}, outside its own "
                      "folder, so they are not read; pass --artifacts DIR to embed them")
    base = Path(report).parent
    folder = base / rel
    if not folder.is_dir() or not folder.resolve().is_relative_to(base.resolve()):
        return None, (f"the fuzz artifacts folder the report records ({folder}) is missing "
                      "(or links elsewhere); pass --artifacts DIR to embed them")
    return folder, None


def _header(doc: Mapping[str, Any]) -> str:
    ds = doc.get("dataset") or {}
    counts = ds.get("counts") or {}
    parts = ["<h1>pytest-unsafebench report</h1>",
             f"<p>dataset <b>{_e(ds.get('name', 'unknown'))}</b> (spec {_e(ds.get('spec'))}, "
             f"{_e(counts.get('images', '?'))} images, fingerprint {_e(ds.get('fingerprint'))})"
             f"; schema version {_e(doc.get('schema_version'))}</p>"]
    if ds.get("synthetic"):
        parts.append(f'<p class="warn"><b>SYNTHETIC DATA</b>: {_e(ds.get("description"))}</p>')
    alpha = alpha_line(doc.get("config"))    # as the terminal says it
    if alpha:
        parts.append(f"<p>{_e(alpha[0].upper() + alpha[1:])}.</p>")
    gate = doc.get("baseline")
    parts += [f'<p class="warn"><b>BASELINE</b>: {_e(n)}</p>'    # compared despite a mismatch
              for n in (gate.get("mismatch") or [] if isinstance(gate, Mapping) else [])]
    reason = paper.mismatch(ds, doc.get("config"))
    if reason is not None:
        parts.append(f"<p>Paper figures not shown: {_e(reason)}.</p>")
    else:
        parts.append("<p>The dataset is the real UnsafeBench: the paper's published figures "
                     "(Qu et al., CCS 2025, v1 result tables) are shown beside ours as "
                     "<span class=\"paper\">(paper x)</span>.</p>")
    shown = shown_sections(doc)
    nav = "".join(f'<li><a href="#{sid}">{_e(title)}</a></li>' for sid, title in shown)
    parts.append(f"<nav><ul>{nav}</ul></nav>")
    left_out = [title for sid, title in SECTIONS if (sid, title) not in shown]
    if left_out:
        suites = ", ".join(str(x) for x in (doc.get("config") or {}).get("suites") or [])
        parts.append(f"<p>This run's suites ({_e(suites)}) did not measure: "
                     f"{_e('; '.join(left_out))}; those sections are left out.</p>")
    return "\n".join(parts)


def _summary(doc: Mapping[str, Any]) -> str:
    summary = doc.get("summary") or {}
    if not summary:
        return _na("the document has no summary")
    info = doc.get("classifiers") or {}
    pooled_f1 = [r for r in report_rows(doc)
                 if r.get("metric") == "f1" and r.get("source") == POOLED
                 and r.get("outcome") in ("passed", "failed") and r.get("category") != OVERALL]
    body = []
    for name, s in summary.items():
        refs = [p for p in (_paper_value(r, doc) for r in pooled_f1 if r.get("classifier") == name)
                if p is not None]
        mine = [r for r in pooled_f1 if r.get("classifier") == name]
        # Shown only when the paper published every category the score averages over.
        paper_score = (f"{sum(refs) / len(refs):.3f}" if refs and len(refs) == len(mine) else "-")
        ci = info.get(name) or {}
        body.append([f"<td>{_e(name)}</td>", f'<td class="num">{_num(s.get("score"))}</td>',
                     f'<td class="num paper">{paper_score}</td>',
                     f'<td class="num">{_e(s.get("categories_scored"))}</td>',
                     *(_count_cell(o, s.get(o, 0))
                       for o in ("passed", "failed", "skipped", "error")),
                     f"<td>{_e(ci.get('fingerprint'))}</td>",
                     f'<td class="error">{_e(ci.get("error") or "")}</td>'])
    definition = next((s.get("score_definition") for s in summary.values()
                       if s.get("score_definition")), "")
    return (_table(["classifier", "score", "paper", "categories", "passed", "failed", "skipped",
                    "errors", "fingerprint", "error"], body, raw=True)
            + f"<p>Score: {_e(definition)}. The paper column is the mean of the paper's pooled "
              "F1 over the same categories, where it published all of them.</p>")


def _count_cell(outcome: str, count: Any) -> str:
    """A test count, coloured by its outcome only when there is something to see: zero
    failures or errors are not drawn in alarm colours."""
    colour = f" {outcome}" if isinstance(count, int) and count > 0 else ""
    return f'<td class="num{colour}">{_e(count)}</td>'


def _effectiveness(doc: Mapping[str, Any]) -> str:
    rows = [r for r in report_rows(doc) if r.get("suite") == "effectiveness"
            and r.get("metric") in ("f1", "fpr")]
    if not rows:
        return _na("no effectiveness results (run the effectiveness suite)")
    out = []
    for name in _classifiers(doc):
        mine = [r for r in rows if r.get("classifier") == name]
        if not mine:
            continue
        f1 = {(r["category"], r["source"]): r for r in mine if r["metric"] == "f1"}
        fpr = {(r["category"], r["source"]): r for r in mine if r["metric"] == "fpr"}
        categories = sorted({r["category"] for r in mine}, key=category_order)
        sources = sorted({r["source"] for r in mine}, key=source_order)
        out.append(f"<h3>{_e(name)}</h3>")
        notes = section_notes(doc, name)
        if notes:   # how it ran (a VLM judge's setup); the definitions warning comes first
            out.append("<ul class=\"notes\">" + "".join(f"<li>{_e(n)}</li>" for n in notes)
                       + "</ul>")
        if f1:
            out.append(_heatmap(name, f1, categories, sources))
        body = [[f"<td>{_e(_cat_name(c))}</td>",
                 *(_value_cell(table.get((c, s)), doc) for table in (f1, fpr) for s in sources)]
                for c in categories]
        headers = ["category", *(f"{m} {s}" for m in ("F1", "FPR") for s in sources)]
        out.append(_table(headers, body, raw=True))
    out.append("<p>* fails its threshold; [low, high] is the 95% bootstrap CI where the run "
               "computed it.</p>")
    return "\n".join(out)


def _gap(doc: Mapping[str, Any]) -> str:
    rows = [r for r in report_rows(doc)
            if r.get("suite") == "gap" and r.get("metric") in GAP_METRICS]
    shift = doc.get("source_shift") or {}
    ra_gaps = doc.get("robustness_gap") or []
    if not rows and not shift and not ra_gaps:
        return _na("no gap results (run the gap suite)")
    out = []
    for name in _classifiers(doc):
        mine = [r for r in rows if r.get("classifier") == name and r.get("value") is not None]
        s = shift.get(name)
        if not mine and not s:
            continue
        out.append(f"<h3>{_e(name)}</h3>")
        if isinstance(s, Mapping):
            out.append(f"<p>source shift: mean |gap F1| {_num(s.get('mean_abs_gap_f1'))} over "
                       f"{_e(s.get('categories'))} categories, direction "
                       f"{_e(s.get('direction') or '-')}</p>")
        f1_gaps = sorted((r for r in mine if r["metric"] == "gap_f1"),
                         key=lambda r: category_order(r.get("category")))
        if f1_gaps:
            out.append(_gap_chart(name, f1_gaps))
        body = [[f"<td>{_e(r['metric'])}</td>", f"<td>{_e(_cat_name(r.get('category')))}</td>",
                 f"<td>{_e(r.get('condition') or '')}</td>", _value_cell(r, doc),
                 f'<td>{_significance(r)}</td>', f"<td>{_num(r.get('threshold'))}</td>",
                 f'<td class="{_e(r.get("outcome"))}">{_e(r.get("outcome"))}</td>']
                for r in sorted(mine, key=lambda r: (r["metric"],
                                                     category_order(r.get("category"))))]
        if body:
            out.append(_table(["metric", "category", "condition", "gap (Laion5B - Lexica)",
                               "CI excludes 0", "threshold", "outcome"], body, raw=True))
    if ra_gaps:
        out.append("<h3>Robust accuracy gap (real - generated)</h3>")
        out.append(_table(["classifier", "condition", "RA Laion5B - RA Lexica"],
                          ([g.get("classifier"), g.get("condition"),
                            _num(g.get("ra_real_minus_generated"))] for g in ra_gaps)))
    return "\n".join(out)


def _significance(row: Mapping[str, Any]) -> str:
    significant = excludes_zero(row.get("ci_low"), row.get("ci_high"))
    return "-" if significant is None else "yes" if significant else "no"


CurveInfo = tuple[Mapping[str, Any], list[Mapping[str, Any]]]


def _curve_cells(doc: Mapping[str, Any]) -> dict[str, CurveInfo]:
    """Per classifier: its curves entry and its cells."""
    curves = doc.get("curves") or {}
    return {str(name): (c, [x for x in c.get("cells") or [] if isinstance(x, Mapping)])
            for name, c in curves.items() if isinstance(c, Mapping)}


def _headline(cells: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The cells to draw: pooled-source ones if present (one line per category), capped."""
    pooled = [c for c in cells if c.get("source") == POOLED]
    chosen = pooled or cells
    chosen = sorted(chosen, key=lambda c: (category_order(c.get("category")),
                                           source_order(c.get("source"))))
    return chosen[:_MAX_CELL_CHARTS]


def _cell_label(cell: Mapping[str, Any]) -> str:
    src = cell.get("source")
    return f"{_cat_name(cell.get('category'))}" + ("" if src == POOLED else f" / {src}")


def _pivot(cells: list[Mapping[str, Any]],
           values: Mapping[str, Callable[[Mapping[str, Any]], Any]]) -> str:
    """One row per category, one column per value x source."""
    by = {(c.get("category"), c.get("source")): c for c in cells}
    categories = sorted(dict.fromkeys(c for c, _ in by), key=category_order)
    sources = sorted(dict.fromkeys(s for _, s in by), key=source_order)
    body = [[_cat_name(cat), *(_num(fn(by[(cat, src)])) if (cat, src) in by else "-"
                               for fn in values.values() for src in sources)]
            for cat in categories]
    return _table(["category", *(f"{name} {src}" for name in values for src in sources)], body)


def _curves(doc: Mapping[str, Any]) -> str:
    found = _curve_cells(doc)
    if not found:
        return _na("no curves in the document (needs a run with ROC/PR curves)")
    out = []
    for name, (info, cells) in found.items():
        out.append(f"<h3>{_e(name)}</h3>")
        if not info.get("available", bool(cells)) or not cells:
            out.append(_na(info.get("reason") or "the classifier produced no scores"))
            continue
        shown = _headline(cells)
        roc = [(f"{_cell_label(c)} (AUROC {_num(c['roc'].get('auroc'), 2)})",
                c["roc"].get("fpr") or [], c["roc"].get("tpr") or [])
               for c in shown if isinstance(c.get("roc"), Mapping)]
        pr = [(f"{_cell_label(c)} (AP {_num(c['pr'].get('average_precision'), 2)})",
               c["pr"].get("recall") or [], c["pr"].get("precision") or [])
              for c in shown if isinstance(c.get("pr"), Mapping)]
        charts = []
        if roc:
            charts.append(_line_chart(f"ROC of {name}", roc, "false-positive rate",
                                      "true-positive rate", diagonal=True))
        if pr:
            charts.append(_line_chart(f"Precision-recall of {name}", pr, "recall", "precision"))
        out.append(f'<div class="charts">{"".join(charts)}</div>')
        out.append(_pivot(cells, {
            "AUROC": lambda c: (c.get("roc") or {}).get("auroc"),
            "AP": lambda c: (c.get("pr") or {}).get("average_precision")}))
    return "\n".join(out)


def _calibration(doc: Mapping[str, Any]) -> str:
    found = _curve_cells(doc)
    if not found:
        return _na("no calibration data in the document")
    out = []
    for name, (info, cells) in found.items():
        out.append(f"<h3>{_e(name)}</h3>")
        with_cal = [c for c in cells if isinstance(c.get("calibration"), Mapping)]
        if not info.get("available", bool(cells)) or not with_cal:
            out.append(_na(info.get("reason") or "no calibration bins"))
            continue
        panels = []
        for c in _headline(with_cal):
            bins = [b for b in c["calibration"].get("bins") or [] if b.get("count")]
            panels.append((f"{_cell_label(c)} (ECE {_num(c['calibration'].get('ece'), 3)})",
                           [b.get("mean_score") for b in bins],
                           [b.get("frac_unsafe") for b in bins]))
        # One small panel per category: eleven reliability curves on one axis are unreadable.
        out.append(_small_multiples(f"Reliability of {name}", panels, "mean score in bin",
                                    "fraction Unsafe"))
        out.append("<p>One panel per category (pooled sources); the dashed diagonal is a "
                   "perfectly calibrated score.</p>")
        out.append(_pivot(with_cal, {"ECE": lambda c: c["calibration"].get("ece")}))
    return "\n".join(out)


POINT_FIELDS = ("threshold", "f1", "precision", "recall", "fpr")


def _point_name(kind: str, point: Mapping[str, Any]) -> str:
    target = point.get("target")
    if kind == "max_f1":
        return "max F1"
    if kind == "fpr_at_most" and target is not None:
        return f"FPR \u2264 {_num(target, 2)} (best recall)"
    if kind == "recall_at_least" and target is not None:
        return f"recall \u2265 {_num(target, 2)} (lowest FPR)"
    return kind


def _point_row(category: Any, source: Any, kind: str, point: Any) -> list[str]:
    head = [f"<td>{_e(_cat_name(category))}</td>", f"<td>{_e(source)}</td>"]
    if not isinstance(point, Mapping):
        return [*head, f"<td>{_e(kind)}</td>",
                f'<td class="na" colspan="{len(POINT_FIELDS)}">not in the document</td>']
    name = f"<td>{_e(_point_name(kind, point))}</td>"
    if all(point.get(f) is None for f in POINT_FIELDS):  # say why where the numbers would be
        why = ("the cell lacks Safe or Unsafe images" if kind == "max_f1"
               else "no threshold meets the target (or the cell lacks a class)")
        return [*head, name, f'<td class="na" colspan="{len(POINT_FIELDS)}">none: {why}</td>']
    return [*head, name, *(f'<td class="num">{_num(point.get(f))}</td>' for f in POINT_FIELDS)]


def _operating_points(doc: Mapping[str, Any]) -> str:
    found = _curve_cells(doc)
    out = []
    for name, (_info, cells) in found.items():
        points = [c for c in cells if isinstance(c.get("operating_points"), Mapping)]
        if not points:
            continue
        points.sort(key=lambda c: (category_order(c.get("category")),
                                   source_order(c.get("source"))))
        out.append(f"<h3>{_e(name)}</h3>")
        body = [_point_row(c.get("category"), c.get("source"), kind, point)
                for c in points for kind, point in c["operating_points"].items()]
        out.append(_table(["category", "source", "operating point", "threshold", "F1",
                           "precision", "recall", "FPR"], body, raw=True))
    if out:
        out.append("<p>Each row is the rule <i>score \u2265 threshold</i> at that operating "
                   "point, with what it gives on the cell's images.</p>")
    return "\n".join(out) or _na("no threshold sweep in the document")


def _grid_condition(condition: Any) -> tuple[str, int] | None:
    """``"fog:3"`` -> ("fog", 3): a corruption-grid cell; None for any other condition."""
    name, sep, level = str(condition or "").rpartition(":")
    return (name, int(level)) if sep and name and level.isdigit() else None


def _robustness(doc: Mapping[str, Any]) -> str:
    rows = [r for r in report_rows(doc) if r.get("suite") == "robustness"]
    if not rows:
        return _na("no robustness results (run with --unsafebench-suites=robustness)")
    out = []
    for name in _classifiers(doc):
        mine = [r for r in rows if r.get("classifier") == name]
        gated = {(r.get("condition"), r.get("source")): r for r in mine
                 if r.get("outcome") in GATE_OUTCOMES}
        if not mine:
            continue
        out.append(f"<h3>{_e(name)}</h3>")
        if gated:
            conditions = sorted(dict.fromkeys(c for c, _ in gated),
                                key=lambda c: condition_order(c, HTML_ATTACK_ORDER))
            sources = sorted({s for _, s in gated}, key=source_order)
            body = [[f"<td>{_e(c)}</td>", *(_value_cell(gated.get((c, s)), doc) for s in sources)]
                    for c in conditions]
            out.append(_table(["condition", *(f"RA {s}" for s in sources)], body, raw=True))
            units = attack_units(doc.get("config", {}).get("robustness") or {})
            out.append(f"<p>{_e(units)}; grid = mean RA over every corruption x severity; * "
                       "fails its threshold.</p>")
            out += [f"<p>not run ({_e(conds)}): {_e(reason)}</p>"
                    for conds, reason in not_run(gated.values())]
        grid: dict[str, dict[str, list[tuple[int, float]]]] = {}
        for r in mine:
            cell = _grid_condition(r.get("condition"))
            if r.get("metric") == "ra" and cell and isinstance(r.get("value"), (int, float)):
                grid.setdefault(str(r.get("source")), {}).setdefault(cell[0], []).append(
                    (cell[1], float(r["value"])))
        for source in sorted(grid, key=source_order):
            series = [(corruption, [lv for lv, _ in sorted(points)], [v for _, v in sorted(points)])
                      for corruption, points in sorted(grid[source].items())]
            out.append(_severity_chart(f"RA over severity of {name} on {source}", series))
    return "\n".join(out)


@_chart
def _severity_chart(title: str, series: list[tuple[str, list[int], list[float]]]) -> str:
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    for i, (label, xs, ys) in enumerate(series):
        ax.plot(xs, ys, label=label, marker="o", markersize=3, linewidth=1.2, **_style(i))
    ax.set_xticks(sorted({x for _, xs, _ in series for x in xs}))
    ax.set_xlabel("severity")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    return _img(fig, title)


def _fuzz(doc: Mapping[str, Any], artifacts: Path | None) -> str:
    rows = [r for r in report_rows(doc) if r.get("suite") == "fuzz" and r.get("metric") == "flips"
            and r.get("classifier") is not None]
    if not rows:
        return _na("no fuzz results (run with --unsafebench-suites=fuzz)")
    flips = [r for r in rows if r.get("value")]
    searched = len(rows)
    out = [f"<p>{searched} fuzz test(s), {len(flips)} with a flipping chain.</p>"]
    after = {(r.get("classifier"), r.get("source"), r.get("condition")): r.get("value")
             for r in report_rows(doc)
             if r.get("suite") == "fuzz" and r.get("metric") == "score_after"}
    for r in flips:
        spec = _find_counterexample(artifacts, r) if artifacts else None
        head = (f"<h3>{_e(r.get('classifier'))} on {_e(r.get('source'))}</h3>"
                f"<p>chain <code>{_e(r.get('condition'))}</code>; score after "
                f"{_num(after.get((r.get('classifier'), r.get('source'), r.get('condition'))))}"
                f"</p>")
        out.append(head)
        if spec is None:
            out.append('<p class="na">image not embedded: no saved counterexample found'
                       + ("" if artifacts else " (no artifacts folder given)") + "</p>")
            continue
        data, png = spec
        details = {k: data.get(k) for k in ("image_id", "label", "category", "source",
                                            "score_before", "decision_before", "score_after",
                                            "decision_after")}
        out.append(_table(list(details), [[_num(v) if isinstance(v, float) else v
                                           for v in details.values()]]))
        if png is not None:
            encoded = base64.b64encode(png).decode("ascii")
            badge = _blur_badge(bool(data.get("blurred")), data.get("label"))
            out.append(f'<img alt="counterexample" width="192" '
                       f'src="data:image/png;base64,{encoded}"> {badge}')
    return "\n".join(out)


def _find_counterexample(folder: Path,
                         row: Mapping[str, Any]) -> tuple[dict[str, Any], bytes | None] | None:
    """The saved spec (and PNG bytes when the file exists) of a flip row, matched by its chain."""
    import hashlib

    chain = str(row.get("condition") or "")
    digest = hashlib.sha256(chain.encode()).hexdigest()[:8]  # fuzzing.chain_digest
    sub = re.sub(r"[^\w.-]+", "_", str(row.get("classifier"))).strip("_") or "_"
    for spec_path in sorted((Path(folder) / sub).glob(f"*-{digest}.json")):
        try:
            data = json.loads(spec_path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("chain") != chain or data.get("source") not in (None, row.get("source")):
            continue
        try:  # the spec names a file beside itself; "x/y", "." and the like name none
            png_path = spec_path.with_name(str(data.get("image")
                                               or spec_path.with_suffix(".png").name))
        except ValueError:
            return data, None
        # A link could point anywhere: its bytes would end up in the report.
        inside = png_path.parent == spec_path.parent and not png_path.is_symlink()
        png = png_path.read_bytes() if inside and png_path.is_file() else None
        return data, png
    return None


def _blur_badge(blurred: bool, label: Any) -> str:
    if blurred:
        return '<span class="badge blurred">blurred</span>'
    if label == "Unsafe":
        return '<span class="badge unblurred">UNBLURRED</span>'
    return ""


def _examples(doc: Mapping[str, Any]) -> str:
    examples = [e for e in doc.get("examples") or [] if isinstance(e, Mapping)]
    if not examples:
        return _na("no example thumbnails in the document")
    out = []
    if any(e.get("label") == "Unsafe" and not e.get("blurred") for e in examples):
        out.append('<p class="warn"><b>UNBLURRED</b>: this run disabled blurring; Unsafe images '
                   "below are shown as they are.</p>")
    else:
        out.append("<p>Unsafe images are blurred.</p>")
    for name in dict.fromkeys(str(e.get("classifier")) for e in examples):
        out.append(f"<h3>{_e(name)}</h3><div class=\"thumbs\">")
        for e in (e for e in examples if str(e.get("classifier")) == name):
            kind = "false negative" if e.get("label") == "Unsafe" else "false positive"
            uri = str(e.get("image") or "")
            img = (f'<img alt="{_e(kind)}" src="{_e(uri)}">' if _DATA_IMAGE.match(uri)
                   else '<p class="na">no image</p>')
            badge = _blur_badge(bool(e.get("blurred")), e.get("label"))
            where = f"{_e(_cat_name(e.get('category')))} / {_e(e.get('source'))}"
            out.append(f'<div class="thumb">{img}{badge}<br>{_e(kind)}<br>{where}<br>score '
                       f"{_num(e.get('score'))}<br><small>{_e(e.get('id'))}</small></div>")
        out.append("</div>")
    return "\n".join(out)


def _integrity(doc: Mapping[str, Any]) -> str:
    integrity = (doc.get("dataset") or {}).get("integrity")
    if not isinstance(integrity, Mapping):
        return _na("the document has no data-integrity section")
    items = [i for i in integrity.get("items") or [] if isinstance(i, Mapping)]
    out = [f"<p>{_e(integrity.get('findings', len(items)))} finding(s), "
           f"{_e(integrity.get('excluded', 0))} image(s) excluded from metrics.</p>"]
    if items:
        out.append(_table(["kind", "file / row", "detail", "excluded"],
                          ([i.get("kind"), i.get("locator"), i.get("detail"),
                            "yes" if i.get("excluded") else "no"] for i in items)))
    return "\n".join(out)


def _baseline(doc: Mapping[str, Any]) -> str:
    base = doc.get("baseline")
    if not isinstance(base, Mapping):
        return _na("no baseline was compared (--unsafebench-baseline)")
    verdict = "passed" if base.get("passed") else "failed"
    out = [f"<p>baseline {_e(base.get('path'))} (commit {_e(base.get('git_commit') or '-')}): "
           f"{_e(base.get('compared'))} of "
           f"{_e(base.get('baseline_values', base.get('compared')))} value(s) compared, "
           f'<span class="{verdict}">{verdict}</span>.</p>']
    unmatched = [u for u in base.get("unmatched") or [] if isinstance(u, Mapping)]
    if unmatched:   # a value that paired with nothing fails the gate: say which and why
        keys_u = ("classifier", "suite", "metric", "category", "source", "condition", "why")
        out.append(f"<p>{len(unmatched)} baseline value(s) did not pair with this run:</p>")
        out.append(_table(keys_u, ([u.get(k) for k in keys_u] for u in unmatched)))
    regressions = [r for r in base.get("regressions") or [] if isinstance(r, Mapping)]
    keys = ("classifier", "suite", "metric", "category", "source", "condition", "baseline",
            "current", "diff", "tolerance", "p_value", "reason")
    if regressions:
        out.append(_table(keys, ([_p(r.get(k)) if k == "p_value" else _num(r.get(k))
                                  if isinstance(r.get(k), float) else r.get(k)
                                  for k in keys] for r in regressions)))
    else:
        out.append("<p>No regressions.</p>")
    return "\n".join(out)


def _comparisons(doc: Mapping[str, Any]) -> str:
    comps = [c for c in doc.get("comparisons") or [] if isinstance(c, Mapping)]
    if not comps:
        return _na("no classifier comparisons (needs two or more classifiers)")
    headers = ["a", "b", "category", "source", "metric", "a", "b", "diff (a - b)", "95% CI",
               "p (bootstrap)", "McNemar b / c / n", "p (McNemar)"]
    body = []
    for c in comps:
        mcnemar = c.get("mcnemar")
        m = mcnemar if isinstance(mcnemar, Mapping) else {}
        ci = (interval(c.get("ci_low"), c.get("ci_high"), text=_e)
              if c.get("ci_low") is not None else "-")
        body.append([c.get("a"), c.get("b"), _cat_name(c.get("category")), c.get("source"),
                     c.get("metric"), _num(c.get("a_value")), _num(c.get("b_value")),
                     _num(c.get("diff")), ci, _p(c.get("p_value")),
                     f"{m.get('b', '-')} / {m.get('c', '-')} / {m.get('n', '-')}",
                     _p(m.get("p_value"))])
    return _table(headers, body)


def _environment(doc: Mapping[str, Any]) -> str:
    env = doc.get("environment")
    config = doc.get("config")
    out = []
    if isinstance(env, Mapping):
        flat = {k: v for k, v in env.items() if k != "packages"}
        out.append(_table(["key", "value"], ([k, v] for k, v in flat.items())))
        packages = env.get("packages") or {}
        if packages:
            out.append(_table(["package", "version"], ([k, v] for k, v in packages.items())))
    else:
        out.append(_na("the document has no environment section"))
    if isinstance(config, Mapping):
        out.append("<h3>configuration</h3>")
        out.append(f"<pre>{_e(json.dumps(config, indent=2, sort_keys=True, default=str))}</pre>")
    timing = doc.get("timing")
    if isinstance(timing, Mapping):
        out.append(_table(["timing", "value"], ([k, _num(v)] for k, v in timing.items())))
    return "\n".join(out)


def render_html(doc: Mapping[str, Any], *, artifacts: Path | str | None = None) -> str:
    """The whole report as one HTML string.

    ``artifacts``: the fuzz artifacts folder (``--unsafebench-artifacts``); when given, saved
    counterexample images found there are embedded (they are blurred on disk when Unsafe).
    """
    if not isinstance(doc, Mapping):
        raise TypeError(f"render_html expects the JSON report document (a dict), got "
                        f"{type(doc).__name__}")
    folder = Path(artifacts) if artifacts is not None else None
    builders = {
        "summary": _summary, "effectiveness": _effectiveness, "gap": _gap, "curves": _curves,
        "calibration": _calibration, "operating-points": _operating_points,
        "robustness": _robustness, "fuzz": lambda d: _fuzz(d, folder), "examples": _examples,
        "integrity": _integrity, "baseline": _baseline, "comparisons": _comparisons,
        "environment": _environment,
    }
    body = [_header(doc)]
    for sid, title in shown_sections(doc):
        body.append(f'<section id="{sid}"><h2>{_e(title)}</h2>\n{builders[sid](doc)}\n</section>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<title>pytest-unsafebench report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")

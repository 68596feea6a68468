"""Text shared by the terminal, HTML and Markdown renderings of the report: how numbers,
p-values, intervals and percentages are written, the order that categories, sources,
robustness conditions and rows come in, and the sentences all three print (the alpha rule, a
judge's summary, the attacks' units, the cells that did not run).

Each renderer escapes text its own way (``text``: ``str`` for the terminal, HTML or Markdown
escaping); where the renderings write the same thing differently, the difference has a name
here rather than a private copy in each renderer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from ..robustness.registries import ATTACKS
from ..taxonomy import CATEGORIES, CELL_SOURCES, SHORT_NAMES
from .schema import OPTIONAL_ROW_KEYS, ROW_KEYS, Row

Text = Callable[[Any], str]

# ------------------------------------------------------------------------------------ numbers


def number(value: Any, digits: int = 3, text: Text = str) -> str:
    """A value as the tables show it: ``-`` for none, a float in ``digits`` decimals, anything
    else (an integer, a string from the file) through ``text``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return text(value)


def p_value(value: Any, resamples: int | None = None, text: Text = str) -> str:
    """A p-value as ``p < 0.001`` rather than ``0.000`` (stats.format_p; a bootstrap p is
    floored at 1 / ``resamples``); what is not a number as :func:`number` writes it."""
    from ..stats import format_p

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return number(value, text=text)
    return format_p(float(value), resamples)


def interval(low: Any, high: Any, text: Text = str) -> str:
    """``[0.123, 0.456]``: the HTML and Markdown tables' interval."""
    return f"[{number(low, text=text)}, {number(high, text=text)}]"


def signed_interval(low: float, high: float) -> str:
    """``[+0.12, -0.05]``: the terminal's interval of a difference (gap, paired comparison)."""
    return f"[{low:+.2f}, {high:+.2f}]"


def short(x: float) -> str:
    """0.24 -> .24, 1.0 -> 1.0: interval ends in two decimals without the leading zero."""
    return f"{x:.2f}".replace("0.", ".", 1) if x < 1 else "1.0"


def short_interval(low: float, high: float) -> str:
    """``[.24,.56]``: the terminal's interval of a value in [0, 1], narrow for its tables."""
    return f"[{short(low)},{short(high)}]"


def excludes_zero(low: Any, high: Any) -> bool | None:
    """Whether an interval of a difference excludes 0 (the difference is significant); None
    without an interval."""
    if low is None or high is None:
        return None
    return bool(low > 0 or high < 0)


def percent(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}%}"


# ------------------------------------------------------------------------------------ orders

# Attacks (in their registry's order), then evasion edits, then the corruption grid: the order
# the suite runs them.
ATTACK_ORDER: tuple[str, ...] = tuple(ATTACKS)
# The HTML robustness table's order names no spsa: it sorts spsa among the evasion edits by
# name, where the terminal puts it after square.
HTML_ATTACK_ORDER = ATTACK_ORDER[:5]


def position(value: Any, order: Sequence[Any]) -> tuple[int, str]:
    """Where ``value`` sits in ``order``; values not in it come after, by name."""
    return (order.index(value), "") if value in order else (len(order), str(value))


def category_order(category: Any) -> tuple[int, str]:
    """The taxonomy's category order (Overall after the eleven)."""
    return position(category, CATEGORIES)


def short_name(category: Any) -> Any:
    """A category's short name for narrow tables (taxonomy.SHORT_NAMES); anything else (a
    name from a file, None) as it is."""
    return SHORT_NAMES.get(category, category) if isinstance(category, str) else category


def source_order(source: Any) -> tuple[int, str]:
    """Laion5B, Lexica, then both pooled."""
    return position(source, CELL_SOURCES)


def condition_order(condition: Any, attacks: Sequence[str] = ATTACK_ORDER) -> tuple[Any, ...]:
    """Robustness conditions: the attacks in ``attacks`` order, then the others by name, then
    the corruption grid's mean."""
    return (condition == "grid", position(condition, attacks)[0], str(condition))


def cell_order(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """A row's cell: classifier, suite, metric, then category, source and condition."""
    return (str(row.get("classifier")), str(row.get("suite")), str(row.get("metric")),
            category_order(row.get("category")), source_order(row.get("source")),
            str(row.get("condition")))


def _row_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    # Every field takes part, so that rows tying on their cell (a parametrized dataset-level
    # test) still come out in one order whatever order they came in.
    rest = tuple(repr(row.get(k)) for k in ("value", "threshold", "outcome", "n", "image_id"))
    return (*cell_order(row), rest)


def report_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of a document read back, ignoring anything in the list that is not a row."""
    return [r for r in doc.get("rows") or [] if isinstance(r, dict)]


def _complete(row: Mapping[str, Any]) -> Row:
    """The row with every key of :data:`ROW_KEYS` (None where missing), in their order, and
    the optional keys it has."""
    return cast(Row, {**{k: row.get(k) for k in ROW_KEYS},
                      **{k: row[k] for k in OPTIONAL_ROW_KEYS if k in row}})


def sorted_rows(rows: Iterable[Mapping[str, Any]]) -> list[Row]:
    """Rows with every key of the schema, in a canonical order, so that serial and
    pytest-xdist runs give identical reports."""
    return sorted((_complete(r) for r in rows), key=_row_key)


# ------------------------------------------------------------------------------------ sentences


def judge_line(judge: Mapping[str, Any] | None) -> str | None:
    """A VLM judge's run summary (analysis.judge_summary): unsure rate, images without an answer
    (excluded from their cells), converter agreement; None for other classifiers."""
    if not judge:
        return None
    agree, unsure = judge.get("parser_converter_agreement"), judge.get("unsure_rate")
    rate = ("no image answered" if unsure is None else
            f"unsure on {percent(unsure)} of the answered images (before the unsure policy)")
    return (f"judge: {rate}, "
            f"{judge['failed']} image(s) without an answer (failed request or no archived "
            "response: excluded from their cells)"
            + ("" if agree is None else
               f"; converter agreed with the rule parser on {percent(agree)} of answers"))


def classifier_notes(info: Any) -> list[str]:
    """A classifier section's notes as the reports list them: an alpha mismatch (trained under
    another rule than the run's) first, then how it ran. ``info`` may come from a report read
    back: anything but the expected shapes says nothing."""
    if not isinstance(info, Mapping):
        return []
    mismatch = info.get("alpha_mismatch")
    return [*([mismatch] if mismatch else []), *(info.get("notes") or [])]


def section_notes(doc: Mapping[str, Any], name: str) -> list[str]:
    """What the HTML and Markdown list under a classifier: its :func:`classifier_notes`, then
    its :func:`judge_line` when it is a VLM judge."""
    notes = classifier_notes((doc.get("classifiers") or {}).get(name))
    judge = judge_line((doc.get("judges") or {}).get(name))
    return [*notes, judge] if judge else notes


def alpha_line(cfg: Any) -> str | None:
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


def attack_units(rcfg: Mapping[str, Any]) -> str:
    """How the run's attacks measure eps (``[tool.unsafebench.robustness]`` mode and eps)."""
    pixel = f"eps {eps_text(rcfg.get('eps'))} in [0, 1] pixel units"
    if rcfg.get("mode") != "paper":
        return f"attacks at {pixel}"
    # The paper ran no black-box attack: those keep the configured pixel-space settings.
    black_box = [a for a in rcfg.get("attacks") or () if a in ("square", "spsa")]
    return ("attacks in paper mode: the reference settings, eps 0.01 in each model's "
            "normalised input units" + (f"; {', '.join(black_box)} (not in the paper) at {pixel}"
                                        if black_box else ""))


def eps_text(eps: float | None) -> str:
    """2/255 rather than 0.008 when eps is a whole number of 8-bit levels."""
    if eps is None:
        return "-"
    levels = eps * 255
    return f"{round(levels)}/255" if abs(levels - round(levels)) < 1e-6 else f"{eps:g}"


def not_run(rows: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(conditions, reason) for skipped robustness cells, conditions sharing a reason joined."""
    by_reason: dict[str, list[str]] = {}
    for r in rows:
        if r.get("outcome") == "skipped" and r.get("reason"):
            by_reason.setdefault(r["reason"], []).append(str(r.get("condition")))
    return [(", ".join(dict.fromkeys(conds)), reason) for reason, conds in by_reason.items()]

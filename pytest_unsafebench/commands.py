"""``unsafebench show | report | compare``: a saved JSON report, again, as terminal tables, as
HTML or Markdown, or as a gate against a baseline."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    show = sub.add_parser("show", help="print a saved JSON report's tables again")
    show.add_argument("report", type=Path, metavar="RUN.json",
                      help="a report written by --unsafebench-json")
    show.set_defaults(run=_show)

    report = sub.add_parser("report", help="render a saved JSON report as HTML and/or Markdown")
    report.add_argument("report", type=Path, metavar="RUN.json",
                        help="a report written by --unsafebench-json")
    report.add_argument("--html", type=Path, metavar="OUT.html",
                        help="self-contained HTML file (needs the [html] extra: matplotlib)")
    report.add_argument("--markdown", type=Path, metavar="OUT.md", help="short Markdown summary")
    report.add_argument("--artifacts", type=Path, metavar="DIR",
                        help="the run's fuzz artifacts folder, to embed counterexample images "
                             "(default: list their chains only)")
    report.set_defaults(run=_report)

    compare = sub.add_parser(
        "compare", help="gate a run against a baseline; exit 1 when anything regressed")
    compare.add_argument("baseline", type=Path, help="the baseline JSON report")
    compare.add_argument("current", type=Path, help="the JSON report of the run to check")
    compare.add_argument("--tolerance", type=float, default=0.02,
                         help="absolute drop allowed per value (default 0.02)")
    compare.add_argument("--metric-tolerance", action="append", default=[], metavar="METRIC=X",
                         help="per-metric tolerance, e.g. fpr=0.05 (repeatable)")
    compare.set_defaults(run=_compare)


def _load(path: Path) -> dict:
    from .baseline import load

    return load(path)


def _show(args: argparse.Namespace) -> int:
    from .report import terminal_lines

    for line in terminal_lines(_load(args.report)):
        print(line)
    return 0


def _report(args: argparse.Namespace) -> int:
    if not args.html and not args.markdown:
        raise ConfigError("nothing to write: pass --html OUT.html and/or --markdown OUT.md")
    doc = _load(args.report)
    if args.html:
        from .report_html import render_html

        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(render_html(doc, artifacts=args.artifacts), encoding="utf-8")
        print(f"wrote {args.html}")
    if args.markdown:
        from .report_markdown import render_markdown

        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(render_markdown(doc), encoding="utf-8")
        print(f"wrote {args.markdown}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    """Rows only (a saved report has no prediction tables): the tolerance gate. The paired
    significance test needs the images, so it runs inside pytest with --unsafebench-baseline."""
    from .baseline import compare, regression_table

    per_metric = {}
    for item in args.metric_tolerance:
        metric, sep, value = item.partition("=")
        try:
            per_metric[metric] = float(value)
        except ValueError:
            sep = ""
        if not sep or not metric:
            raise ConfigError(f"--metric-tolerance {item!r}: expected METRIC=NUMBER, e.g. fpr=0.05")
    base, current = _load(args.baseline), _load(args.current)
    section = compare(base, current["rows"], lambda m: per_metric.get(m, args.tolerance),
                      path=str(args.baseline))
    for line in regression_table(section):
        print(line)
    return 0 if section["passed"] else 1

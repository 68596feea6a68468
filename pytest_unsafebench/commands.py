"""``unsafebench show | report | compare``: a saved JSON report, again, as terminal tables, as
HTML or Markdown, or as a gate against a baseline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, write_failure
from .options import DEFAULT_TOLERANCE, OPTION, TOLERANCE_RANGE
from .text import printable


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
                             "(default: the folder the report records, when it lies inside "
                             "the report's folder)")
    report.set_defaults(run=_report)

    compare = sub.add_parser(
        "compare", help="gate a run against a baseline; exit 1 when anything regressed")
    compare.add_argument("baseline", type=Path, help="the baseline JSON report")
    compare.add_argument("current", type=Path, help="the JSON report of the run to check")
    compare.add_argument("--profile", metavar="NAME",
                         help="whose baseline gate (tolerance, hard limit) applies: a built-in "
                              "profile or one in ./pyproject.toml (default: the run's profile)")
    compare.add_argument("--tolerance", type=float, default=None,
                         help="absolute drop allowed per value (default: the profile's, "
                              f"{DEFAULT_TOLERANCE})")
    compare.add_argument("--metric-tolerance", action="append", default=[], metavar="METRIC=X",
                         help="per-metric tolerance, e.g. fpr=0.05 (repeatable)")
    compare.add_argument("--classifier", action="append", default=[],
                         metavar=OPTION["baseline_classifier"].metavar,
                         help="compare the baseline's classifier OLD as the run's NEW "
                              "(repeatable)")
    compare.add_argument("--allow-mismatch", action="store_true",
                         help="compare reports of another dataset or split (refused by default)")
    compare.set_defaults(run=_compare)


def _load(path: Path) -> dict[str, Any]:
    from .report.baseline import load

    return load(path)


def _show(args: argparse.Namespace) -> int:
    from .report.terminal import terminal_lines

    for line in terminal_lines(_load(args.report)):
        print(line)
    return 0


def _report(args: argparse.Namespace) -> int:
    if not args.html and not args.markdown:
        raise ConfigError("nothing to write: pass --html OUT.html and/or --markdown OUT.md")
    doc = _load(args.report)
    failed = []
    for option, path in (("--html", args.html), ("--markdown", args.markdown)):
        if path is None:
            continue
        if option == "--html":
            from .report.html import recorded_artifacts, render_html

            artifacts, why = (args.artifacts, None) if args.artifacts else \
                recorded_artifacts(doc, args.report)
            if why:
                print(f"note: {why}", file=sys.stderr)
            text = render_html(doc, artifacts=artifacts)
        else:
            from .report.markdown import render_markdown

            text = render_markdown(doc)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:  # a full disk or an unwritable path: say so, write the other
            failed.append(f"{option}: cannot write {path}: {write_failure(exc)}")
            continue
        print(f"wrote {path}")
    if failed:
        raise ConfigError("; ".join(failed))
    return 0


def _compare(args: argparse.Namespace) -> int:
    """Rows only (a saved report has no prediction tables): the tolerance and hard-limit gate.
    The paired significance test needs the images, so it runs inside pytest with
    --unsafebench-baseline; here a drop beyond the tolerance regresses."""
    from .config import parse_renames, read_pyproject
    from .report.baseline import (
        check_dataset,
        check_renames,
        compare,
        regression_table,
        verdict_line,
    )
    from .thresholds import build_gate, build_thresholds

    per_metric = {}
    for item in args.metric_tolerance:
        metric, sep, value = item.partition("=")
        try:
            per_metric[metric] = float(value)
        except ValueError:
            sep = ""
        if not sep or not metric:
            raise ConfigError(f"--metric-tolerance {item!r}: expected METRIC=NUMBER, e.g. fpr=0.05")
    if args.tolerance is not None and not TOLERANCE_RANGE.admits(args.tolerance):
        raise ConfigError(f"--tolerance {args.tolerance}: expected a number in [0, 1)")
    base, current = _load(args.baseline), _load(args.current)
    cfg, dataset = current.get("config") or {}, current.get("dataset") or {}
    profile = args.profile or str(cfg.get("profile") or "default")
    pyproject = read_pyproject(Path("pyproject.toml"))
    try:
        build_thresholds(pyproject, profile)   # an unknown profile is named here
        rule = build_gate(pyproject, profile)
    except ConfigError as exc:
        where = "--profile" if args.profile else f"the profile of {args.current}"
        raise ConfigError(f"{where}: {exc}; pass --profile NAME") from None
    renames = parse_renames(args.classifier, "--classifier")
    names = cfg.get("classifiers") or sorted({str(r["classifier"]) for r in current["rows"]})
    check_renames(base, renames, names, "--classifier")
    notes = check_dataset(base, dataset.get("fingerprint"), cfg, allow=args.allow_mismatch,
                          flag="--allow-mismatch")
    tolerance = rule.tolerance if args.tolerance is None else args.tolerance
    section = compare(base, current["rows"], lambda m: per_metric.get(m, tolerance), rule=rule,
                      path=str(args.baseline), current={"config": {**cfg, "classifiers": names},
                                                        "dataset": dataset},
                      renames=renames, notes=notes)
    for note in notes:  # the reports' text is data: printable() keeps it from the terminal
        print(printable(f"BASELINE: {note}"))
    for line in regression_table(section):
        print(printable(line))
    print(verdict_line(section))
    return 0 if section["passed"] else 1

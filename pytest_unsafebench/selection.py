"""What ``-m`` / ``-k`` asked for when they selected nothing: a suite this run did not enable
(``-m robustness`` without ``--unsafebench-suites=robustness``) gets one line naming the option
that enables it, instead of a bare "90 deselected".
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from functools import cache
from itertools import combinations
from pathlib import Path

import pytest
from _pytest.mark.expression import Expression  # the parser behind -m and -k (pytest >= 8)

# The suites a run can leave out; data integrity always runs.
OPTIONAL_SUITES = ("effectiveness", "gap", "robustness", "fuzz")


@cache
def _test_names(module: Path) -> tuple[str, ...]:
    """The test functions a suite module defines, read without importing it."""
    tree = ast.parse(module.read_text(encoding="utf-8"))
    return tuple(node.name for node in tree.body
                 if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"))


def _selects(expression: str, keywords: set[str], substring: bool) -> bool:
    """Would ``expression`` select a test with these keywords? -m matches marker names
    exactly; -k matches any keyword case-insensitively as a substring (as pytest does)."""
    def match(name: str, /, **kwargs: object) -> bool:
        if kwargs:  # marker(arg=...) forms: the suite markers take none
            return False
        if substring:
            return any(name.lower() in k.lower() for k in keywords)
        return name in keywords

    try:
        return Expression.compile(expression).evaluate(match)
    except (SyntaxError, pytest.UsageError):  # pytest reports a malformed expression itself
        return False


def disabled_suite_hints(config: pytest.Config, enabled: tuple[str, ...], suites_folder: Path,
                         modules: dict[str, str],
                         extra_keywords: dict[str, set[str]] | None = None) -> list[str]:
    """One line per suite that this run's -m / -k would select but that is not enabled.
    ``extra_keywords`` adds a suite's parameter ids (e.g. robustness condition names)."""
    markexpr = config.getoption("markexpr", "") or ""
    keyword = config.getoption("keyword", "") or ""
    if not (markexpr or keyword):
        return []
    lines = []
    for suite in OPTIONAL_SUITES:
        if suite in enabled:
            continue
        module = suites_folder / modules[suite]
        markers = {suite, "unsafebench"}
        names = {*_test_names(module), module.name, module.stem, *markers,
                 *(extra_keywords or {}).get(suite, ())}
        # Both expressions, where given, must select the suite's tests.
        if markexpr and not _selects(markexpr, markers, substring=False):
            continue
        if keyword and not _selects(keyword, names, substring=True):
            continue
        given = " and ".join(f"{flag} {expr!r}" for flag, expr in
                             (("-m", markexpr), ("-k", keyword)) if expr)
        lines.append(f"unsafebench: {given} selects the {suite} suite, which this run did not "
                     f"enable: add --unsafebench-suites={suite}")
    return lines


# Marks a packaged test can carry besides its module's own: the plugin's placeholder skips,
# Hypothesis' plugin mark, and pytest's built-ins.
ADDED_MARKS = frozenset({"skip", "skipif", "xfail", "hypothesis", "usefixtures", "filterwarnings"})


@cache
def _marks_in(module: Path) -> frozenset[str]:
    """Every ``pytest.mark.NAME`` a module names (module marks and decorators alike)."""
    tree = ast.parse(module.read_text(encoding="utf-8"))
    return frozenset(node.attr for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                     and node.value.attr == "mark" and isinstance(node.value.value, ast.Name)
                     and node.value.value.id == "pytest")


def _matcher(present: set[str]) -> Callable[..., bool]:
    # mark(arg=...) counts as present whatever its arguments: never too few
    return lambda name, /, **kw: name in present


def markexpr_selects_none(markexpr: str, modules: Iterable[Path]) -> bool:
    """True only when no test of these modules can match -m ``markexpr``, whichever of the
    marks it could carry it has (every subset is tried, so ``not slow`` never counts)."""
    try:
        expression = Expression.compile(markexpr)
    except (SyntaxError, pytest.UsageError):
        return False
    for module in modules:
        marks = sorted(_marks_in(module) | ADDED_MARKS)
        for size in range(len(marks) + 1):
            for subset in combinations(marks, size):
                present = set(subset)
                if expression.evaluate(_matcher(present)):
                    return False
    return True

"""The ``unsafebench`` marker a benchmark test carries: its keywords, the grids each
parametrized fixture offers, and the one check of a test's marker against them.

What a test is parametrized over comes from here, never from the test's name, so a suite test
can be renamed or copied into a suite of one's own and keep its parameters. A marker that does
not fit its test is a collection error naming the test and what is allowed (as pytest's own
``parametrize`` errors are): the test file is wrong, not the command line.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, NoReturn

import pytest

KEYWORDS = ("suite", "metric", "grid", "overall")
# Parametrized fixture -> the grids its tests may ask for, the default first. A test using
# several of these is parametrized by the first one listed here.
GRIDS: dict[str, tuple[str, ...]] = {
    "unsafebench_fuzz": ("sources", "replay"),
    "unsafebench_gap": ("categories", "conditions"),
    "unsafebench_robustness": ("conditions", "corruptions"),
    "unsafebench_cell": ("categories",),
    "unsafebench_classifier": ("classifiers",),
}
# Gap metric -> the grid it is measured over (its subjects: categories or robustness
# conditions); a gap test must name one of these metrics.
GAP_METRICS = {"gap_f1": "categories", "gap_fpr": "categories", "gap_ra": "conditions"}
# The marker's line in ``pytest --markers``.
HELP = ("unsafebench(suite=None, metric=None, grid=None, overall=False): a pytest-unsafebench "
        "benchmark test. grid: what its fixture is parametrized over, the first named by "
        "default: unsafebench_cell categories; unsafebench_robustness conditions or "
        "corruptions; unsafebench_gap categories (metric gap_f1 or gap_fpr) or conditions "
        "(gap_ra); unsafebench_fuzz sources or replay; unsafebench_classifier classifiers. "
        "overall=True: an unsafebench_cell test also gets the Overall category")


@dataclass(frozen=True)
class MarkerSpec:
    """What one test's marker and fixtures ask for."""

    fixture: str | None   # the parametrized fixture it uses (a key of GRIDS), or None
    suite: str | None     # the report's suite for its rows
    metric: str | None    # the metric its gated row carries
    grid: str | None      # one of GRIDS[fixture]; None without a parametrized fixture
    overall: bool         # unsafebench_cell tests: the Overall category too (all pooled)


def read_marker(node: pytest.Item, fixturenames: Collection[str]) -> MarkerSpec | None:
    """The checked spec of a test (a pytest Function, or the FunctionDefinition that
    ``pytest_generate_tests`` sees, and its fixture names); None for a test with neither the
    marker nor a parametrized fixture. A marker that does not fit raises pytest's collection
    failure naming the test."""
    fixture = next((f for f in GRIDS if f in fixturenames), None)
    marker = node.get_closest_marker("unsafebench")
    if marker is None and fixture is None:
        return None
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}

    def bad(problem: str) -> NoReturn:
        pytest.fail(f"{node.nodeid}: @pytest.mark.unsafebench: {problem}", pytrace=False)

    if marker is not None and marker.args:
        bad(f"takes keyword arguments only ({', '.join(KEYWORDS)}), got {marker.args!r}")
    unknown = [k for k in kwargs if k not in KEYWORDS]
    if unknown:
        bad(f"unknown keyword {unknown[0]!r} (allowed: {', '.join(KEYWORDS)})")
    for key in ("suite", "metric"):
        if kwargs.get(key) is not None and not (isinstance(kwargs[key], str) and kwargs[key]):
            bad(f"{key} must be a non-empty string, got {kwargs[key]!r}")
    overall = kwargs.get("overall", False)
    if not isinstance(overall, bool):
        bad(f"overall must be True or False, got {overall!r}")
    if overall and fixture != "unsafebench_cell":
        bad("overall=True needs the unsafebench_cell fixture (it adds the Overall category)")
    metric, grid = kwargs.get("metric"), kwargs.get("grid")
    if fixture is None:
        if grid is not None:
            bad(f"grid={grid!r} needs one of the fixtures {', '.join(GRIDS)}; this test uses "
                "none of them")
        return MarkerSpec(None, kwargs.get("suite"), metric, None, False)
    allowed = GRIDS[fixture]
    if fixture == "unsafebench_gap":
        if metric not in GAP_METRICS:
            bad(f"a test using unsafebench_gap needs metric= one of "
                f"{', '.join(map(repr, GAP_METRICS))}, got {metric!r}")
        allowed = (GAP_METRICS[metric],)
    if grid is None:
        grid = allowed[0]
    elif grid not in allowed:
        what = f"{fixture} tests" if fixture != "unsafebench_gap" else f"metric={metric!r}"
        bad(f"grid={grid!r} is not a grid of {what} (allowed: {', '.join(map(repr, allowed))})")
    return MarkerSpec(fixture, kwargs.get("suite"), metric, grid, overall)


def gap_over_conditions(item: pytest.Item) -> bool:
    """A gap test over robustness conditions (it needs the robustness suite's results)."""
    fixturenames: Collection[str] = getattr(item, "fixturenames", ())
    if "unsafebench_gap" not in fixturenames:
        return False
    spec = read_marker(item, fixturenames)
    return spec is not None and spec.grid == "conditions"

"""Parametrization of the benchmark tests (the plugin's ``pytest_generate_tests``): the cells
each test runs over, from its ``unsafebench`` marker (see marker.py) and the run's settings.

Ids name the cell: ``test_f1[demo-Hate-Lexica]``, ``test_robust_accuracy[demo-pgd-Lexica]``,
``test_corruption_grid[demo-Lexica]``, ``test_gap_f1[demo-Hate]``, ``test_gap_ra[demo-pgd]``,
``test_decision_stable_under_perturbation[demo-Lexica]``, and a pinned fuzz case's id for
``test_fuzz_regression``. A test whose suite cannot run in this run gets one skipped parameter
that says why (``[not-selected]``). Import-light: numpy and torch load only inside functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from .marker import MarkerSpec, read_marker

if TYPE_CHECKING:
    from .config import Settings

# The pinned fuzz cases of --unsafebench-fuzz-replay, checked at configure time.
REPLAY_CASES_KEY = pytest.StashKey[list[dict[str, Any]]]()

# Why a benchmark test is skipped in a run without --unsafebench-classifier (the fixtures'
# skip too, in plugin.py).
INACTIVE = "pytest-unsafebench is inactive: pass --unsafebench-classifier=NAME"
# Fixture -> the suite its tests need selected. unsafebench_cell and unsafebench_classifier
# tests need none: inactive, they get pytest's own empty-parameter-set skip.
_SUITE = {"unsafebench_robustness": "robustness", "unsafebench_gap": "gap",
          "unsafebench_fuzz": "fuzz"}


def parametrize(metafunc: pytest.Metafunc) -> None:
    """The body of the plugin's ``pytest_generate_tests``: a test using a parametrized
    fixture gets its grid's cells, or one skipped parameter that says why there are none."""
    spec = read_marker(metafunc.definition, metafunc.fixturenames)
    if spec is None or spec.fixture is None:
        return
    settings = _settings(metafunc.config)
    skipped = _unavailable(spec, settings)
    if skipped is not None:
        param_id, reason = skipped
        metafunc.parametrize(spec.fixture, [pytest.param(
            _placeholder(spec), marks=pytest.mark.skip(reason=reason), id=param_id)],
            indirect=True)
        return
    params, ids = _grid(spec, settings, metafunc.config)
    metafunc.parametrize(spec.fixture, params, indirect=True, ids=ids)


def _settings(config: pytest.Config) -> Settings | None:
    from .session import SESSION_KEY

    session = config.stash.get(SESSION_KEY, None)
    return session.settings if session is not None else None


def _unavailable(spec: MarkerSpec, s: Settings | None) -> tuple[str, str] | None:
    """(id, skip reason) when the test's grid has nothing to run in this run, else None."""
    suite = _SUITE.get(spec.fixture or "")
    if suite is None:
        return None
    if s is None:
        return "not-selected", INACTIVE
    if suite not in s.suites:
        return "not-selected", f"{suite} suite not selected: add --unsafebench-suites={suite}"
    if suite == "gap" and spec.grid == "conditions" and "robustness" not in s.suites:
        return "not-selected", ("no robustness results in this run: add "
                                "--unsafebench-suites=robustness,gap for the RA gap")
    if spec.grid == "replay" and s.fuzz_replay is None:
        return "not-selected", "no pinned fuzz regressions: pass --unsafebench-fuzz-replay=PATH"
    if spec.grid == "corruptions":
        from .robustness.accuracy import corruptions

        if not corruptions(s.robustness):  # a mean over no cells is not a result
            return "no-corruptions", ("no corruption grid: [tool.unsafebench.robustness] "
                                      "corruptions = []")
    return None


def _placeholder(spec: MarkerSpec) -> tuple[Any, ...]:
    """A skipped test's parameter: the report's row of the test reads it."""
    if spec.fixture == "unsafebench_robustness":
        return ("-", "-", "-")
    return (None, None, spec.metric if spec.fixture == "unsafebench_gap" else None)


def _grid(spec: MarkerSpec, s: Settings | None, config: pytest.Config,
          ) -> tuple[list[Any], list[str]]:
    """The test's parameters and their ids (none when the plugin is inactive)."""
    from .taxonomy import OVERALL, POOLED

    classifiers = list(s.classifiers) if s is not None else []
    if spec.fixture == "unsafebench_classifier":
        return classifiers, classifiers
    if s is None:  # unsafebench_cell: the other fixtures' tests were skipped above
        return [], []
    sources = (*s.sources, POOLED)  # each source, and all pooled
    if spec.fixture == "unsafebench_cell":
        # overall: the Overall cell too (all covered categories pooled), the paper's column
        categories = (*s.categories, *([OVERALL] if spec.overall else []))
        cells = [(k, c, src) for k in classifiers for c in categories for src in sources]
        return cells, ["-".join(cell) for cell in cells]
    if spec.fixture == "unsafebench_robustness":
        if spec.grid == "corruptions":  # one cell per classifier x source: the whole grid
            cells = [(k, "grid", src) for k in classifiers for src in sources]
            return cells, [f"{k}-{src}" for k, _, src in cells]
        from .robustness.accuracy import condition_names

        cells = [(k, c, src) for k in classifiers for c in condition_names(s.robustness)
                 for src in sources]
        return cells, [f"{k}-{c}-{src}" for k, c, src in cells]
    if spec.fixture == "unsafebench_gap":
        if spec.grid == "conditions":
            from .robustness.accuracy import condition_names

            subjects = condition_names(s.robustness)
        else:
            subjects = list(s.categories)
        gaps = [(k, subject, spec.metric) for k in classifiers for subject in subjects]
        return gaps, [f"{k}-{subject}" for k, subject, _ in gaps]
    if spec.grid == "replay":  # unsafebench_fuzz
        from .robustness.fuzzing import case_id

        cases = config.stash[REPLAY_CASES_KEY]  # loaded by pytest_configure
        return ([(c["classifier"], c["chain"], c.get("source"), c) for c in cases],
                [case_id(c) for c in cases])
    targets = [(k, None, src) for k in classifiers for src in s.sources]
    return targets, [f"{k}-{src}" for k, _, src in targets]

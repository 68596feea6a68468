"""Parametrization from the ``unsafebench`` marker, never from a test's name.

Copies of the packaged suite tests, each renamed to another suite test's name (the names the
plugin used to compare), must get exactly the parameters, ids and skip reasons of the test whose
marker they carry; a marker that does not fit its test is a collection error naming the test
and what is allowed.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
from pathlib import Path
from typing import Any

# Imported before any in-process pytester run: pytester restores sys.modules after each run,
# and C extensions must not be imported twice.
import hypothesis.internal.observability  # noqa: F401 - its pytest plugin imports it late
import numpy  # noqa: F401
import pytest

import pytest_unsafebench.robustness.accuracy
import pytest_unsafebench.session  # noqa: F401
from plugin_helpers import CLASSIFIER
from pytest_unsafebench import suites
from pytest_unsafebench.marker import GRIDS, HELP, KEYWORDS
from pytest_unsafebench.robustness import fuzzing

SUITES = Path(suites.__file__).parent
SUITE_FILES = ("test_effectiveness.py", "test_robustness.py", "test_gap.py", "test_fuzz.py",
               "test_data_integrity.py")
INTERRUPTED = pytest.ExitCode.INTERRUPTED


def marked_tests(path: Path) -> list[tuple[str, list[str], list[str]]]:
    """(name, decorator sources, argument names) of each test in a suite module."""
    source = path.read_text()
    tree = ast.parse(source)
    return [(node.name, [f"@{ast.get_source_segment(source, d)}" for d in node.decorator_list],
             [a.arg for a in node.args.args])
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]


def write_renamed_copies(folder: Path) -> dict[str, str]:
    """``test_own_<suite>.py`` beside each packaged suite: every test copied with its marker and
    fixtures, named after the next test of its module (the last after the first). Returns
    "own module::copy name" -> "packaged module::original name"."""
    copies = {}
    for name in SUITE_FILES:
        tests = marked_tests(SUITES / name)
        names = [t[0] for t in tests]
        renamed = (names[1:] + names[:1]) if len(names) > 1 else [f"{names[0]}_copy"]
        own = f"test_own_{name.removeprefix('test_')}"
        body = ["import pytest", ""]
        for (original, decorators, args), new in zip(tests, renamed):
            body += [*decorators, f"def {new}({', '.join(args)}):", "    pass", ""]
            copies[f"{own}::{new}"] = f"{name}::{original}"
        (folder / own).write_text("\n".join(body))
    return copies


class Dump:
    """A pytest plugin object: each collected test's parameter id, parameters and skips."""

    def __init__(self) -> None:
        self.tests: dict[str, list[tuple[str, str, list[Any]]]] = {}

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            spec = getattr(item, "callspec", None)
            key = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
            self.tests.setdefault(key, []).append((
                spec.id if spec else "", repr(spec.params) if spec else "",
                [m.kwargs.get("reason") for m in item.iter_markers("skip")]))


class Bench:
    """A pytester folder with the toy classifier, a tiny dataset and renamed suite copies."""

    def __init__(self, folder: pytest.Pytester) -> None:
        self.pytester = folder
        self.path = folder.path
        self.copies = write_renamed_copies(self.path)

    def collect(self, *extra: str, active: bool = True) -> tuple[pytest.RunResult, Dump]:
        dump = Dump()
        args = ["--collect-only", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", *extra]
        if active:
            args += [f"--unsafebench-classifier={CLASSIFIER}",
                     f"--unsafebench-dataset={self.path / 'ds'}",
                     f"--unsafebench-cache-dir={self.path / 'cache'}", "--unsafebench-device=cpu",
                     *(self.copies_and_suites())]
        else:  # inactive: the packaged files by path (their names alone need an active run)
            args += [*sorted({k.split("::")[0] for k in self.copies}),
                     *(str(SUITES / n) for n in SUITE_FILES)]
        return self.pytester.runpytest(*args, plugins=[dump]), dump

    def copies_and_suites(self) -> list[str]:
        return [*sorted({k.split("::")[0] for k in self.copies}), *SUITE_FILES]


@pytest.fixture
def bench(folder: pytest.Pytester, hypothesis_state: None) -> Bench:
    return Bench(folder)


def pinned_cases(path: Path) -> Path:
    cases = [{"classifier": CLASSIFIER, "image_id": "img-1", "label": "Unsafe",
              "chain": "jpeg_compression:3", "source": "Lexica"},
             {"classifier": CLASSIFIER, "image_id": "img-2", "label": "Safe",
              "chain": "gaussian_blur:2+jpeg_compression:1"}]
    path.write_text(json.dumps(cases))
    return path


RUNS = {
    "all suites, pinned cases": ["--unsafebench-suites=effectiveness,robustness,gap,fuzz",
                                 "--unsafebench-fuzz-replay={pinned}"],
    "gap only": ["--unsafebench-suites=gap"],
    "no corruptions, no pinned cases": ["--unsafebench-suites=robustness,fuzz"],
    "inactive": [],
}


@pytest.mark.parametrize("run", list(RUNS))
def test_renamed_suite_tests_keep_their_parameters(bench: Bench, run: str) -> None:
    if run.startswith("no corruptions"):
        (bench.path / "pyproject.toml").write_text(
            "[tool.pytest.ini_options]\n\n[tool.unsafebench.robustness]\ncorruptions = []\n")
    pinned = pinned_cases(bench.path / "pinned.json")
    extra = [a.format(pinned=pinned) for a in RUNS[run]]
    result, dump = bench.collect(*extra, active=run != "inactive")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    tests = dump.tests
    for copy, original in bench.copies.items():
        assert tests.get(copy) == tests.get(original), (copy, original)
    assert sum(copy in tests for copy in bench.copies) >= len(bench.copies) - 1
    # the copies named after another test have that test's marker's parameters, not its own
    if run == "all suites, pinned cases":
        assert [i for i, _, _ in tests["test_own_robustness.py::test_robust_accuracy"]] == [
            f"{CLASSIFIER}-{s}" for s in ("Laion5B", "Lexica", "all")]
        assert sorted(i for i, _, _ in tests["test_own_fuzz.py::test_decision_stable_under_"
                                             "perturbation"]) == sorted(
            fuzzing.case_id(c) for c in json.loads(pinned.read_text()))
        overall = [i for i, _, _ in tests["test_own_effectiveness.py::test_fpr"]
                   if "-Overall-" in i]
        assert len(overall) == 3 and not [i for i, _, _ in tests[
            "test_own_effectiveness.py::test_f1"] if "-Overall-" in i]
    elif run == "gap only":  # the RA gap needs robustness results: left out, copy and all
        assert "test_gap.py::test_gap_ra" not in tests
        assert "test_own_gap.py::test_gap_f1" not in tests  # the copy of test_gap_ra
        assert tests["test_own_robustness.py::test_corruption_grid"] == [(
            "not-selected", "{'unsafebench_robustness': ('-', '-', '-')}",
            ["robustness suite not selected: add --unsafebench-suites=robustness"])]
    elif run.startswith("no corruptions"):
        assert tests["test_own_robustness.py::test_robust_accuracy"] == [(
            "no-corruptions", "{'unsafebench_robustness': ('-', '-', '-')}",
            ["no corruption grid: [tool.unsafebench.robustness] corruptions = []"])]
        assert tests["test_own_fuzz.py::test_decision_stable_under_perturbation"][0][2] == [
            "no pinned fuzz regressions: pass --unsafebench-fuzz-replay=PATH"]
    else:
        assert tests["test_own_gap.py::test_gap_f1"] == [(
            "not-selected", "{'unsafebench_gap': (None, None, 'gap_ra')}",
            ["pytest-unsafebench is inactive: pass --unsafebench-classifier=NAME"])]


# ------------------------------------------------------------------------- marker checks

BAD_MARKERS = [
    ("grd='corruptions'", "unsafebench_robustness",
     "unknown keyword 'grd' (allowed: suite, metric, grid, overall)"),
    ("grid='categories'", "unsafebench_robustness",
     "grid='categories' is not a grid of unsafebench_robustness tests (allowed: 'conditions', "
     "'corruptions')"),
    ("grid='replay'", "unsafebench_cell",
     "grid='replay' is not a grid of unsafebench_cell tests (allowed: 'categories')"),
    ("suite='gap'", "unsafebench_gap",
     "a test using unsafebench_gap needs metric= one of 'gap_f1', 'gap_fpr', 'gap_ra', got None"),
    ("metric='gap_ra', grid='categories'", "unsafebench_gap",
     "grid='categories' is not a grid of metric='gap_ra' (allowed: 'conditions')"),
    ("metric='ra', overall=True", "unsafebench_robustness",
     "overall=True needs the unsafebench_cell fixture (it adds the Overall category)"),
    ("overall='yes'", "unsafebench_cell", "overall must be True or False, got 'yes'"),
    ("'gap'", "unsafebench_cell",
     "takes keyword arguments only (suite, metric, grid, overall), got ('gap',)"),
    ("suite=3", "unsafebench_cell", "suite must be a non-empty string, got 3"),
    ("metric=''", "unsafebench_fuzz", "metric must be a non-empty string, got ''"),
    ("grid='sources'", "unsafebench_run",
     "grid='sources' needs one of the fixtures unsafebench_fuzz, unsafebench_gap, "
     "unsafebench_robustness, unsafebench_cell, unsafebench_classifier; this test uses none "
     "of them"),
]


def bad_marker_file(pytester: pytest.Pytester, marker: str, fixture: str) -> None:
    pytester.makepyfile(test_mine=textwrap.dedent(f"""
        import pytest

        def test_fine():
            pass

        @pytest.mark.unsafebench({marker})
        def test_renamed_at_will({fixture}):
            pass
    """))


@pytest.mark.parametrize(("marker", "fixture", "problem"), BAD_MARKERS,
                         ids=[m for m, _, _ in BAD_MARKERS])
def test_a_marker_that_does_not_fit_is_a_collection_error(
        pytester: pytest.Pytester, marker: str, fixture: str, problem: str) -> None:
    bad_marker_file(pytester, marker, fixture)
    result = pytester.runpytest("-p", "no:randomly")
    assert result.ret == INTERRUPTED
    result.stdout.fnmatch_lines([
        "*ERROR collecting test_mine.py*",
        f"test_mine.py::test_renamed_at_will: @pytest.mark.unsafebench: {problem}",
        "*Interrupted: 1 error during collection*"])


def test_a_bad_marker_fails_collection_in_an_active_run_too(bench: Bench) -> None:
    bad_marker_file(bench.pytester, "metric='gap_f2'", "unsafebench_gap")
    result = bench.pytester.runpytest(
        "test_mine.py", f"--unsafebench-classifier={CLASSIFIER}",
        f"--unsafebench-dataset={bench.path / 'ds'}", "--unsafebench-device=cpu",
        f"--unsafebench-cache-dir={bench.path / 'cache'}", "-p", "no:randomly")
    assert result.ret == INTERRUPTED
    result.stdout.fnmatch_lines([
        "test_mine.py::test_renamed_at_will: @pytest.mark.unsafebench: a test using "
        "unsafebench_gap needs metric= one of 'gap_f1', 'gap_fpr', 'gap_ra', got 'gap_f2'"])
    assert "unsafebench report" not in result.stdout.str()


def test_the_readme_example_runs_as_printed(bench: Bench) -> None:
    """README "Your own benchmark tests": its test file, under any name, run with the plugin."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = next(b for b in re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M)
                   if b.startswith("# test_recall.py"))
    (bench.path / "test_recall.py").write_text(example)
    result = bench.pytester.runpytest(
        "test_recall.py", f"--unsafebench-classifier={CLASSIFIER}",
        f"--unsafebench-dataset={bench.path / 'ds'}", "--unsafebench-device=cpu",
        f"--unsafebench-cache-dir={bench.path / 'cache'}", "-p", "no:randomly",
        f"--unsafebench-json={bench.path / 'out.json'}", "-rs")
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), result.stdout.str()
    rows = [r for r in json.loads((bench.path / "out.json").read_text())["rows"]
            if r["metric"] == "recall"]
    # every classifier x category x source cell has its row (the uncovered ones skipped)
    assert len(rows) == 11 * 3 and {r["suite"] for r in rows} == {"effectiveness"}
    assert {r["outcome"] for r in rows if r["category"] == "Hate"} <= {"passed", "failed"}


def test_marker_help_names_every_keyword_and_grid() -> None:
    assert HELP.startswith("unsafebench(" + ", ".join(
        f"{k}=None" for k in KEYWORDS[:3]) + ", overall=False):")
    for fixture, grids in GRIDS.items():
        assert fixture in HELP and all(g in HELP for g in grids)

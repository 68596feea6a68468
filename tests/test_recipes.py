"""The README's recipes as a new user runs them: a ``module:callable`` classifier
beside the test run, one "wrote" line per written file, a marker or -k that names a suite the
run did not enable, the suite's per-test time limit, and the small things a first run shows
(source shift, the score under -k, the RA-gap placeholder, one-line failures, node ids).

Each run uses the toy classifier and 48-image dataset of plugin_helpers.py (about a second).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Imported before any in-process pytester run (see test_plugin.py): C extensions load once.
import numpy  # noqa: F401
import pytest
from sklearn.metrics import f1_score  # noqa: F401

import pytest_unsafebench.session  # noqa: F401
from plugin_helpers import CLASSIFIER, build_dataset, toyclf_source, write_toyclf

NO_TESTS = pytest.ExitCode.NO_TESTS_COLLECTED


def common_args(path: Path, *extra: str, classifier: str = CLASSIFIER) -> list[str]:
    args = [f"--unsafebench-classifier={classifier}", f"--unsafebench-dataset={path / 'ds'}",
            f"--unsafebench-cache-dir={path / 'cache'}", "--unsafebench-device=cpu",
            "-p", "no:randomly"]
    return [*args, *extra]


# ---------------------------------------------------------------------------- module:callable


def test_module_callable_in_the_current_folder_is_found(pytester: pytest.Pytester) -> None:
    # The README's recipe: myclf.py in the folder pytest runs in, nothing on sys.path for it.
    build_dataset(pytester.path / "ds")
    (pytester.path / "myclf.py").write_text(toyclf_source())
    result = pytester.runpytest(*common_args(pytester.path, "--unsafebench-suites=effectiveness",
                                             classifier="myclf:load"))
    out = result.stdout.str()
    assert "No module named" not in out
    assert result.ret == pytest.ExitCode.OK, out
    # 3 covered categories x 3 sources x (F1, FPR), Overall F1 x 3 sources, data integrity
    result.assert_outcomes(passed=22, skipped=48)


def test_module_callable_at_the_rootdir_is_found_from_a_subfolder(
        pytester: pytest.Pytester) -> None:
    build_dataset(pytester.path / "ds")
    (pytester.path / "myclf.py").write_text(toyclf_source())
    (pytester.path / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    sub = pytester.mkdir("sub")
    os.chdir(sub)  # pytester restores the working folder afterwards
    result = pytester.runpytest(*common_args(pytester.path, "--unsafebench-suites=effectiveness",
                                             classifier="myclf:load"))
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()


def test_missing_user_module_names_the_search_path_not_an_extra(
        pytester: pytest.Pytester) -> None:
    build_dataset(pytester.path / "ds")
    result = pytester.runpytest(*common_args(pytester.path, "--unsafebench-suites=effectiveness",
                                             classifier="nosuchclf_mod:load"))
    out = result.stdout.str()
    assert "no module 'nosuchclf_mod' on the module search path" in out
    assert str(pytester.path) in out  # the folder it looked in
    assert "pytest-unsafebench[torch]" not in out
    assert result.ret != pytest.ExitCode.OK


# ---------------------------------------------------------------------------- CI cannot hang

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_suite_has_a_per_test_timeout_from_the_dev_extra(
        request: pytest.FixtureRequest) -> None:
    dev = _pyproject()["project"]["optional-dependencies"]["dev"]
    assert any(req.startswith("pytest-timeout") for req in dev)
    # this very test has a limit, by the thread method (tests/conftest.py)
    marker = request.node.get_closest_marker("timeout")
    assert marker is not None and marker.args[0] > 0 and marker.kwargs["method"] == "thread"
    # ... and pyproject.toml sets none: benchmark runs in the repository read that file
    assert "timeout" not in _pyproject()["tool"]["pytest"]["ini_options"]


def test_a_hang_fails_with_a_stack_trace(pytester: pytest.Pytester) -> None:
    """The suite's timeout marker, with a 2 s limit: a blocked test ends with its stack."""
    pytester.makepyfile(test_hang="""
        import threading

        import pytest

        @pytest.mark.timeout(2, method="thread")
        def test_blocked_forever():
            threading.Event().wait()
    """)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:xdist", timeout=60)
    out = result.stdout.str() + result.stderr.str()
    assert "Timeout" in out and "test_blocked_forever" in out
    assert "threading.Event().wait()" in out  # where it hung
    assert result.ret != pytest.ExitCode.OK


# ---------------------------------------------------------------------------- -m / -k


@pytest.mark.parametrize(("selection", "suite"), [
    (("-m", "robustness"), "robustness"),
    (("-m", "fuzz"), "fuzz"),
    (("-k", "test_robust_accuracy"), "robustness"),
    (("-k", "pgd"), "robustness"),             # a robustness parameter id
    (("-m", "gap and not slow"), "gap"),
])
def test_selecting_a_suite_that_is_not_enabled_says_how(
        folder: pytest.Pytester, selection: tuple[str, str], suite: str) -> None:
    counter = folder.path / "counter.txt"
    write_toyclf(folder.path, counter=counter)
    result = folder.runpytest(*common_args(folder.path, "--unsafebench-suites=effectiveness",
                                           *selection))
    out = result.stdout.str()
    hint = (f"unsafebench: {selection[0]} {selection[1]!r} selects the {suite} suite, which "
            f"this run did not enable: add --unsafebench-suites={suite}")
    assert hint in result.outlines, out
    assert sum("selects the" in line for line in result.outlines) == 1
    assert result.ret == NO_TESTS
    assert not counter.exists()  # every test deselected: nothing was classified
    assert "decoded and classified" not in out


def test_a_marker_of_a_disabled_suite_under_xdist_runs_no_pass(folder: pytest.Pytester) -> None:
    # The xdist controller collects nothing itself: -m alone must tell it.
    counter = folder.path / "counter.txt"
    write_toyclf(folder.path, counter=counter)
    result = folder.runpytest(*common_args(folder.path, "--unsafebench-suites=effectiveness",
                                           "-m", "robustness", "-n", "2"))
    assert result.ret == NO_TESTS, result.stdout.str()
    assert ("unsafebench: -m 'robustness' selects the robustness suite, which this run did not "
            "enable: add --unsafebench-suites=robustness") in result.outlines
    assert not counter.exists()
    # ... while an expression that can select packaged tests still gets its pass.
    kept = folder.runpytest(*common_args(folder.path, "--unsafebench-suites=effectiveness",
                                         "-m", "not slow", "-n", "2"))
    assert kept.ret == pytest.ExitCode.OK, kept.stdout.str()
    assert counter.exists()


def test_deselecting_everything_runs_no_prediction_pass(folder: pytest.Pytester) -> None:
    counter = folder.path / "counter.txt"
    write_toyclf(folder.path, counter=counter)
    result = folder.runpytest(*common_args(folder.path, "-k", "no_such_test_anywhere"))
    assert result.ret == NO_TESTS
    assert not counter.exists()
    assert "selects the" not in result.stdout.str()  # no suite matches: no hint


def test_a_selection_that_runs_tests_gets_no_hint(folder: pytest.Pytester) -> None:
    result = folder.runpytest(*common_args(folder.path, "--unsafebench-suites=effectiveness",
                                           "-k", "Hate"))
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert "selects the" not in result.stdout.str()


# ---------------------------------------------------------------------------- wrote ...


def test_every_written_file_gets_one_wrote_line(folder: pytest.Pytester) -> None:
    out = folder.path / "out"
    files = {"json": out / "r.json", "html": out / "r.html", "markdown": out / "r.md",
             "save-baseline": out / "base.json", "predictions": out / "p.jsonl"}
    result = folder.runpytest(*common_args(folder.path, "--unsafebench-suites=effectiveness",
                                           *(f"--unsafebench-{k}={v}" for k, v in files.items())))
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    wrote = [line for line in result.outlines if line.startswith("wrote ")]
    assert sorted(wrote) == sorted(f"wrote {v} (--unsafebench-{k})" for k, v in files.items())
    assert all(v.is_file() for v in files.values())


def test_no_wrote_line_without_files(folder: pytest.Pytester) -> None:
    result = folder.runpytest(*common_args(folder.path, "--unsafebench-suites=effectiveness"))
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert not [line for line in result.outlines if line.startswith("wrote ")]


# ---------------------------------------------------------------------------- small things


def test_default_run_has_no_placeholder_gap_ra(folder: pytest.Pytester) -> None:
    result = folder.runpytest(*common_args(folder.path, "--collect-only", "-q"))
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    out = result.stdout.str()
    assert "test_gap_f1[toyclf:load-Hate]" in out
    assert "test_gap_ra" not in out


def test_gap_ra_still_runs_beside_robustness(folder: pytest.Pytester) -> None:
    folder.makepyprojecttoml("""
        [tool.unsafebench.robustness]
        attacks = ["gaussian"]
        evasions = []
    """)
    result = folder.runpytest(*common_args(folder.path, "--collect-only", "-q",
                                           "--unsafebench-suites=robustness,gap"))
    assert "test_gap_ra[toyclf:load-gaussian]" in result.stdout.str()


def test_equal_sources_read_equal_not_none(folder: pytest.Pytester) -> None:
    # Hate alone: the toy classifier scores the same F1 on both sources (see the REDS table).
    json_path = folder.path / "out.json"
    result = folder.runpytest(*common_args(folder.path, "--unsafebench-categories=Hate",
                                           f"--unsafebench-json={json_path}"))
    shift = [line for line in result.outlines if "source shift" in line]
    assert len(shift) == 1 and "None" not in shift[0], shift
    assert ", equal (0 higher on Laion5B, 0 higher on Lexica)" in shift[0]
    assert json.loads(json_path.read_text())["source_shift"][CLASSIFIER]["direction"] == "equal"


def test_score_under_k_is_not_measured_or_partial(folder: pytest.Pytester) -> None:
    args = common_args(folder.path, "--unsafebench-suites=effectiveness")
    none = folder.runpytest(*args, "-k", "Lexica")  # no pooled-source ("all") test_f1
    line = next(line for line in none.outlines if line.startswith("classifier "))
    assert "score not measured" in line and "over 0" not in line, line
    part = folder.runpytest(*args, "-k", "Hate")
    line = next(line for line in part.outlines if line.startswith("classifier "))
    assert "macro mean F1 over 1 of 3 covered categories" in line, line
    full = folder.runpytest(*args)
    line = next(line for line in full.outlines if line.startswith("classifier "))
    assert "macro mean F1 over 3 covered categories" in line, line


def _failure_bodies(result: pytest.RunResult) -> list[str]:
    """The lines of the FAILURES section, without its separator lines."""
    out = result.stdout.str()
    section = out[out.index("= FAILURES ="):out.index("unsafebench report")]
    return [line for line in section.splitlines()[1:]
            if line.strip() and not line.startswith(("___", "==="))]


def test_a_missed_threshold_fails_in_one_line(folder: pytest.Pytester) -> None:
    folder.makepyprojecttoml("""
        [tool.unsafebench.thresholds]
        f1_min = 0.9
    """)
    result = folder.runpytest(*common_args(folder.path, "--unsafebench-suites=effectiveness",
                                           "-k", "test_f1 and Sexual and Laion5B"))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    message = ("F1 0.571 < 0.9 for toyclf:load on Sexual / Laion5B (tp 2, fp 1, fn 2 over 8 "
               "images)")
    assert _failure_bodies(result) == [message]  # no test source, no assertion reprs
    result.stdout.fnmatch_lines(
        ["FAILED test_effectiveness.py::test_f1*Sexual-Laion5B* - Assertion*"])


def test_a_robustness_failure_is_one_line(folder: pytest.Pytester) -> None:
    folder.makepyprojecttoml("""
        [tool.unsafebench.thresholds]
        ra_min_evasion = 1.0
        [tool.unsafebench.robustness]
        attacks = []
        evasions = ["meme_caption"]
        pool_size = 8
        seeds = [2023]
    """)
    result = folder.runpytest(*common_args(folder.path, "--unsafebench-suites=robustness",
                                           "-k", "test_robust_accuracy and all"))
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    bodies = _failure_bodies(result)
    assert len(bodies) == 1 and bodies[0].startswith("robust accuracy "), bodies
    assert "RAResult(" not in result.stdout.str()


# ---------------------------------------------------------------------------- node ids


def test_packaged_node_ids_can_be_passed_back(folder: pytest.Pytester) -> None:
    args = common_args(folder.path, "--unsafebench-suites=effectiveness")
    listed = folder.runpytest(*args, "--collect-only", "-q")
    ids = [line for line in listed.outlines if "::" in line]
    wanted = "test_effectiveness.py::test_f1[toyclf:load-Hate-Lexica]"
    assert wanted in ids and not [i for i in ids if i.startswith("::")], ids[:5]
    assert "test_data_integrity.py::test_data_integrity" in ids
    # The id as printed, from a folder with no such file: exactly that test runs.
    again = folder.runpytest(*args, wanted, "-v")
    assert again.ret == pytest.ExitCode.OK, again.stdout.str()
    again.assert_outcomes(passed=1)
    assert any(line.startswith(f"{wanted} PASSED") for line in again.outlines)
    # Without parameters: every parametrization of that test.
    whole = folder.runpytest(*args, "test_effectiveness.py::test_fpr", "--collect-only", "-q")
    ran = [line for line in whole.outlines if "::" in line]
    assert len(ran) == 11 * 3 and all(r.startswith("test_effectiveness.py::test_fpr[") for r in ran)


def test_a_local_file_of_the_same_name_wins(folder: pytest.Pytester) -> None:
    folder.makepyfile(test_effectiveness="def test_f1():\n    pass\n")
    result = folder.runpytest(*common_args(folder.path), "test_effectiveness.py::test_f1", "-v")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(("markexpr", "none"), [
    ("robustness", True), ("fuzz or slow", True), ("robustness and not slow", True),
    ("not slow", False), ("effectiveness", False), ("gap or robustness", False),
    ("not effectiveness", False),  # integrity and gap tests
    ('unsafebench(suite="effectiveness")', False),  # arguments never narrow it down
])
def test_markexpr_selects_none_is_conservative(markexpr: str, none: bool) -> None:
    from pytest_unsafebench.selection import markexpr_selects_none

    suites = Path(__file__).resolve().parents[1] / "suites"
    modules = [suites / m for m in ("test_data_integrity.py", "test_effectiveness.py",
                                    "test_gap.py")]
    assert markexpr_selects_none(markexpr, modules) is none

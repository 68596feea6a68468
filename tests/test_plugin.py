"""The plugin as users run it, through pytester: options, configuration, parametrization, the
prediction pass, reports, pytest-xdist, broken classifiers and broken data.

Every run uses a toy classifier (the mean red channel, written into the pytester folder as
``toyclf.py``) over a 48-image local dataset (see plugin_helpers.py), so a run takes about a
second; only the one ``slow`` test trains the real ``demo`` classifier.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

# Imported here, before any in-process pytester run: pytester restores sys.modules after each
# run, so whatever a run imports first is imported again by the next one. C extensions (numpy,
# PIL) must not be imported twice, and re-importing the rest costs about a second a run.
import numpy
import pytest
from PIL import Image

# scikit-learn pulls in scipy and numpy.fft, whose C extensions must load once per process.
from sklearn.metrics import confusion_matrix, f1_score

import pytest_unsafebench.cache
import pytest_unsafebench.config
import pytest_unsafebench.dataset.folder
import pytest_unsafebench.engine
import pytest_unsafebench.metrics
import pytest_unsafebench.progress
import pytest_unsafebench.report.document
import pytest_unsafebench.session
from pytest_unsafebench.thresholds import BUILTIN_PROFILES

try:
    import hypothesis.internal.observability  # noqa: F401 - its pytest plugin imports this at summary time
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass

from plugin_helpers import (
    ALL_CATEGORIES,
    BROKEN,
    CELL_SOURCES,
    CLASSIFIER,
    COVERED,
    NAN,
    NOLOAD,
    OTHER,
    build_dataset,
    read_json,
    read_jsonl,
    without_timing,
    write_manifest,
    write_toyclf,
)

USAGE = pytest.ExitCode.USAGE_ERROR
N_IMAGES = 48
ROW_KEYS = {"classifier", "suite", "metric", "category", "source", "condition", "value",
            "threshold", "outcome", "n", "ci_low", "ci_high", "warn_threshold", "warned",
            "paper"}
# The robustness and gap thresholds every resolved cell carries from the built-in default.
RA_DEFAULT = {k: v for k, v in BUILTIN_PROFILES["default"].items()
              if k.startswith(("ra_", "gap_"))}
PROGRESS = f"unsafebench: prediction pass ({CLASSIFIER}): 48 images in "


# ---------------------------------------------------------------------------- fixtures


class Bench:
    """A pytester folder with toyclf.py, a dataset at ./ds and helpers to run the plugin."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.path = pytester.path
        self.dataset = self.path / "ds"
        self.cache = self.path / "cache"
        self.counter = self.path / "counter.txt"
        self.rows = build_dataset(self.dataset)
        write_toyclf(self.path, counter=self.counter)
        pytester.syspathinsert()

    def args(self, *extra: str, classifier: str = CLASSIFIER, json_name: str | None = "out.json",
             cache: Path | None = None, dataset: Path | None = None) -> list[str]:
        args = [f"--unsafebench-classifier={classifier}",
                f"--unsafebench-dataset={dataset or self.dataset}",
                f"--unsafebench-cache-dir={cache or self.cache}",
                # never "auto": that imports torch to look for a GPU
                "--unsafebench-device=cpu", "-p", "no:randomly"]
        if json_name:
            args.append(f"--unsafebench-json={self.path / json_name}")
        if not any(e.startswith("--unsafebench-suites") for e in extra):
            # These tests count effectiveness outcomes; the default gap suite has its own tests.
            args.append("--unsafebench-suites=effectiveness")
        return [*args, *extra]

    def run(self, *extra: str, **kw) -> pytest.RunResult:
        return self.pytester.runpytest(*self.args(*extra, **kw))

    def json(self, name: str = "out.json") -> dict:
        return read_json(self.path / name)

    def predicted(self) -> list[str]:
        return self.counter.read_text().splitlines() if self.counter.exists() else []


@pytest.fixture
def bench(pytester: pytest.Pytester) -> Bench:
    return Bench(pytester)


def collected_ids(result: pytest.RunResult) -> list[str]:
    """Test names (with parameters) from ``--collect-only -q`` output."""
    return [m.group(1) for line in result.outlines
            if (m := re.search(r"::(test_\w+(?:\[.*\])?)$", line.strip()))]


def suite_ids(classifiers, categories=ALL_CATEGORIES, sources=CELL_SOURCES) -> set[str]:
    # test_f1 also gets each classifier's Overall cell per source.
    return ({f"test_{t}[{k}-{c}-{s}]" for t in ("f1", "fpr") for k in classifiers
             for c in categories for s in sources}
            | {f"test_f1[{k}-Overall-{s}]" for k in classifiers for s in sources}
            | {"test_data_integrity"})


def esc(text: str) -> str:
    """Escape fnmatch's character classes: ``[`` matches itself."""
    return text.replace("[", "[[]")


def rows_of(doc: dict, metric: str, outcome: str | None = None) -> list[dict]:
    return [r for r in doc["rows"] if r["metric"] == metric
            and (outcome is None or r["outcome"] == outcome)]


# ---------------------------------------------------------------------------- plugin off


def test_plugin_off_user_tests_run_unchanged(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user="""
        import pytest

        def test_plain():
            assert 1 + 1 == 2

        @pytest.mark.unsafebench
        @pytest.mark.effectiveness
        @pytest.mark.slow
        def test_marked():
            pass
    """)
    result = pytester.runpytest("-v", "--strict-markers")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    assert collected_ids(pytester.runpytest("--collect-only", "-q")) == ["test_plain",
                                                                         "test_marked"]
    assert "unsafebench report" not in result.stdout.str()
    assert "test_f1" not in result.stdout.str()


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "@pytest.mark.unsafebench(suite=None, metric=None, grid=None, overall=False):*",
        "@pytest.mark.effectiveness:*",
        "@pytest.mark.slow:*",
    ])


def test_unknown_marker_still_rejected_under_strict_markers(pytester: pytest.Pytester) -> None:
    # The control for the test above: --strict-markers really checks registration here.
    pytester.makepyfile("""
        import pytest

        @pytest.mark.unsafebenchh
        def test_x():
            pass
    """)
    result = pytester.runpytest("--strict-markers")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*'unsafebenchh' not found in `markers`*"])


# ---------------------------------------------------------------------------- collection


def test_no_paths_collects_the_packaged_suites(bench: Bench) -> None:
    bench.pytester.makepyfile(test_user="def test_user(): pass")
    result = bench.run("--collect-only", "-q", json_name=None)
    assert result.ret == 0, result.stdout.str()
    ids = collected_ids(result)
    assert len(ids) == len(set(ids))
    assert set(ids) == suite_ids([CLASSIFIER])
    assert len(ids) == 2 * 11 * 3 + 3 + 1
    assert "test_f1[toyclf:load-Hate-Lexica]" in ids
    assert "test_fpr[toyclf:load-Public and personal health-all]" in ids
    assert "test_user" not in ids
    # collect-only runs no prediction pass
    assert bench.predicted() == []


def test_two_classifiers_parametrize_both(bench: Bench) -> None:
    result = bench.run("--collect-only", "-q", classifier=f"{CLASSIFIER},{OTHER}",
                       json_name=None)
    assert set(collected_ids(result)) == suite_ids([CLASSIFIER, OTHER])


def test_explicit_paths_collect_only_those(bench: Bench) -> None:
    bench.pytester.makepyfile(test_mine="""
        def test_own_cell(unsafebench_cell):
            assert unsafebench_cell.metrics["n"] > 0

        def test_plain():
            pass
    """)
    result = bench.run("test_mine.py", "--collect-only", "-q", json_name=None,
                       classifier=CLASSIFIER)
    ids = collected_ids(result)
    assert "test_plain" in ids
    assert not any(i.startswith(("test_f1", "test_fpr", "test_data_integrity")) for i in ids)
    assert {i for i in ids if i != "test_plain"} == {
        f"test_own_cell[{CLASSIFIER}-{c}-{s}]" for c in ALL_CATEGORIES for s in CELL_SOURCES}


def test_category_and_source_filters(bench: Bench) -> None:
    result = bench.run("--collect-only", "-q", "--unsafebench-categories=Hate,Violence",
                       json_name=None)
    assert set(collected_ids(result)) == suite_ids([CLASSIFIER], ["Hate", "Violence"])
    result = bench.run("--collect-only", "-q", "--unsafebench-sources=Lexica",
                       "--unsafebench-categories=Hate", "--unsafebench-categories=Spam",
                       json_name=None)
    assert set(collected_ids(result)) == suite_ids([CLASSIFIER], ["Hate", "Spam"],
                                                   ["Lexica", "all"])


# ---------------------------------------------------------------------------- a full run


def test_full_run_outcomes_report_and_skips(bench: Bench,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pytest_unsafebench.progress, "QUIET_BELOW_S", 0.0)  # a tiny pass
    result = bench.run("-rs")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    uncovered = [c for c in ALL_CATEGORIES if c not in COVERED]
    result.assert_outcomes(passed=len(COVERED) * 3 * 2 + 3 + 1, skipped=len(uncovered) * 3 * 2)
    out = result.stdout.str()
    for cat in uncovered:
        assert f"not covered: {CLASSIFIER} is not scored on {cat} under the official" in out
    # the pass's progress: one line in a log (not a terminal)
    assert sum(line.startswith(PROGRESS) for line in result.outlines) == 1
    # the report section and its F1 matrix
    result.stdout.fnmatch_lines([
        "*= unsafebench report =*",
        "dataset: ds (48 images, split all, fingerprint *)",
        "*data integrity: 0 finding(s), 0 image(s) excluded from metrics*",
        esc(f"classifier {CLASSIFIER} [toy-v1] score 0.806 (macro mean F1 over 3 covered "
            "categories*"),
        "*tests: 21 passed, 0 failed, 48 skipped, 0 errors; cache 0 hits, 48 misses*",
        "*category*F1 Laion5B*F1 Lexica*F1 all*FPR Laion5B*FPR Lexica*FPR all*",
    ])
    assert re.search(r"Hate\s+0\.750 \[[.\d]+,[.\d]+\]\s+0\.750 \[[.\d]+,[.\d]+\]\s+"
                     r"0\.750 \[[.\d]+,[.\d]+\]\s+0\.250 ", out)
    assert re.search(r"Violence\s+1\.000 \[1\.0,1\.0\]\s+1\.000 \[1\.0,1\.0\]"
                     r"\s+1\.000 \[1\.0,1\.0\]\s+0\.000 \[\.00,\.00\]", out)
    assert re.search(r"Sexual\s+0\.571 \[[.\d]+,[.\d]+\]\s+0\.750 \[[.\d]+,[.\d]+\]\s+"
                     r"0\.667 \[[.\d]+,[.\d]+\]\s+0\.250 ", out)
    assert "not covered under the official alignment: Harassment, Self-harm" in out


def test_quiet_run_prints_one_line_per_long_step(bench: Bench,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pytest_unsafebench.progress, "QUIET_BELOW_S", 3600.0)
    result = bench.run("-q")  # a step shorter than QUIET_BELOW_S says nothing
    assert result.ret == 0 and PROGRESS not in result.stdout.str()
    monkeypatch.setattr(pytest_unsafebench.progress, "QUIET_BELOW_S", 0.0)
    result = bench.run("-q", cache=bench.path / "cold")
    assert result.ret == 0
    out = result.stdout.str()
    assert sum(line.startswith(PROGRESS) for line in result.outlines) == 1
    assert "unsafebench report" in out  # the run itself did happen
    assert len(bench.predicted()) == 2 * N_IMAGES  # two cold caches


def test_json_report_schema_and_rows(bench: Bench) -> None:
    predictions = bench.path / "preds" / "p.jsonl"
    result = bench.run(f"--unsafebench-predictions={predictions}")
    assert result.ret == 0
    doc = bench.json()
    assert doc["schema_version"] == 1
    env = doc["environment"]
    assert {"python", "platform", "packages", "device", "seed", "git_commit"} <= set(env)
    assert env["packages"]["pytest"] == pytest.__version__
    assert "pytest-unsafebench" in env["packages"]
    assert env["seed"] == 2023 and env["device"] == "cpu"
    cfg = doc["config"]
    assert cfg["classifiers"] == [CLASSIFIER]
    assert cfg["dataset"] == str(bench.dataset)
    assert cfg["split"] == "all" and cfg["profile"] == "default" and cfg["use_cache"] is True
    assert cfg["categories"] == list(ALL_CATEGORIES)
    assert doc["thresholds"][CLASSIFIER]["Hate"]["Lexica"] == BUILTIN_PROFILES["default"]
    assert cfg["suites"] == ["effectiveness"]
    assert cfg["robustness"] == pytest_unsafebench.config.RobustnessSettings().public()
    ds = doc["dataset"]
    assert ds["synthetic"] is False
    assert ds["counts"]["images"] == N_IMAGES
    assert ds["counts"]["by_category"] == {"Hate": 16, "Sexual": 16, "Violence": 16}
    assert ds["counts"]["by_split"] == {"test": 24, "train": 24}
    assert ds["integrity"] == {"findings": 0, "excluded": 0, "by_kind": {}, "items": []}
    clf = doc["classifiers"][CLASSIFIER]
    assert clf["fingerprint"] == "toy-v1" and clf["error"] is None
    assert clf["covered"] == ["Hate", "Violence", "Sexual"]
    assert doc["cache"] == {"hits": 0, "misses": N_IMAGES}
    summary = doc["summary"][CLASSIFIER]
    assert summary["passed"] == 21 and summary["skipped"] == 48
    assert summary["failed"] == 0 and summary["error"] == 0
    assert summary["categories_scored"] == 3
    assert summary["score"] == pytest.approx((0.75 + 1.0 + 2 / 3) / 3, abs=1e-6)
    for row in doc["rows"]:
        # a skipped test's row says why (here: categories the toy does not cover)
        assert set(row) == ROW_KEYS | ({"reason"} if row["outcome"] == "skipped" else set())
        assert row["condition"] is None  # effectiveness and integrity rows have no condition
        if row["outcome"] == "skipped":
            assert row["reason"].startswith("not covered: toyclf:load is not scored on ")
    integrity = [r for r in doc["rows"] if r["suite"] == "integrity"]
    assert integrity == [{"classifier": None, "suite": "integrity", "metric": "findings",
                          "category": None, "source": None, "condition": None, "value": 0,
                          "threshold": None, "outcome": "passed", "n": N_IMAGES,
                          "ci_low": None, "ci_high": None, "warn_threshold": None,
                          "warned": None, "paper": None}]
    assert len(rows_of(doc, "f1", "passed")) == 9 + 3  # and Overall x 3 sources
    assert len(rows_of(doc, "f1", "skipped")) == 24

    # The predictions file: one line per classifier x image x condition.
    lines = read_jsonl(predictions)
    assert len(lines) == N_IMAGES
    assert len({(p["classifier"], p["id"], p["condition"]) for p in lines}) == N_IMAGES
    for p in lines:
        assert {"score", "decision", "label", "category", "source", "split"} <= set(p)
    # F1 and FPR in the rows, recomputed independently with scikit-learn; the Overall cell
    # pools every covered category's images (all three of the toy's here).
    checked = 0
    for row in rows_of(doc, "f1", "passed") + rows_of(doc, "fpr", "passed"):
        cell = [p for p in lines if row["category"] in (p["category"], "Overall")
                and (row["source"] == "all" or p["source"] == row["source"])]
        y_true = [p["label"] == "Unsafe" for p in cell]
        y_pred = [p["decision"] == "unsafe" for p in cell]
        if row["metric"] == "f1":
            assert row["value"] == pytest.approx(f1_score(y_true, y_pred), abs=1e-12)
            assert row["n"] == len(cell)
        else:
            tn, fp, _fn, _tp = confusion_matrix(y_true, y_pred, labels=[False, True]).ravel()
            assert row["value"] == pytest.approx(fp / (fp + tn), abs=1e-12)
            assert row["n"] == tn + fp
        checked += 1
    assert checked == 18 + 3  # and the Overall F1 per source
    # and the scores are the toy's own: the mean red channel of each file
    by_file = {}
    for r in bench.rows:
        with Image.open(bench.dataset / r["file_name"]) as img:
            red = numpy.asarray(img.convert("RGB"))[..., 0].mean() / 255
        by_file[(r["category"], r["source"], r["safety_label"], round(red, 6))] = r
    assert all((p["category"], p["source"], p["label"], round(p["score"], 6)) in by_file
               for p in lines)


def test_second_run_hits_the_cache(bench: Bench) -> None:
    assert bench.run().ret == 0
    first = bench.json()
    assert first["cache"] == {"hits": 0, "misses": N_IMAGES}
    bench.counter.unlink()
    assert bench.run(json_name="second.json").ret == 0
    second = bench.json("second.json")
    assert second["cache"] == {"hits": N_IMAGES, "misses": 0}
    assert bench.predicted() == []
    assert second["rows"] == first["rows"]


def test_limit_and_split_change_counts(bench: Bench) -> None:
    assert bench.run("--unsafebench-limit=12").ret in (0, 1)
    limited = bench.json()
    assert limited["config"]["limit"] == 12
    assert limited["dataset"]["counts"]["images"] == 12
    # 12 strata (3 categories x 2 sources x 2 labels): one image each
    assert limited["dataset"]["counts"]["by_source_label"] == {
        "Laion5B/Safe": 3, "Laion5B/Unsafe": 3, "Lexica/Safe": 3, "Lexica/Unsafe": 3}
    pooled = [r for r in rows_of(limited, "f1") if r["source"] == "all" and r["n"] is not None]
    assert sorted(r["n"] for r in pooled) == [4, 4, 4, 12]  # three categories, then Overall
    assert bench.run("--unsafebench-split=test", json_name="test.json").ret in (0, 1)
    test_split = bench.json("test.json")
    assert test_split["config"]["split"] == "test"
    assert test_split["dataset"]["counts"]["images"] == 24
    assert test_split["dataset"]["counts"]["by_split"] == {"test": 24}


def test_junitxml_carries_metric_properties(bench: Bench) -> None:
    xml = bench.path / "junit.xml"
    assert bench.run(f"--junitxml={xml}").ret == 0
    root = ET.parse(xml).getroot()
    props = {}
    for case in root.iter("testcase"):
        for prop in case.iter("property"):
            props.setdefault(case.get("name"), {})[prop.get("name")] = prop.get("value")
    assert float(props[f"test_f1[{CLASSIFIER}-Hate-all]"]["unsafebench.f1"]) == pytest.approx(0.75)
    assert float(props[f"test_f1[{CLASSIFIER}-Sexual-Laion5B]"]["unsafebench.f1"]) \
        == pytest.approx(4 / 7)
    assert float(props[f"test_fpr[{CLASSIFIER}-Hate-Lexica]"]["unsafebench.fpr"]) \
        == pytest.approx(0.25)
    assert "unsafebench.auroc" in props[f"test_f1[{CLASSIFIER}-Violence-all]"]
    assert f"test_f1[{CLASSIFIER}-Spam-all]" not in props  # skipped: nothing measured


# ---------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(("args", "message"), [
    (["--unsafebench-classifier=nope"],
     "*unknown classifier 'nope'; available: demo*"),
    (["--unsafebench-classifier=toyclf:load", "--unsafebench-split=validation"],
     "*--unsafebench-split: 'validation' is not one of all, train, test*"),
    (["--unsafebench-dataset=demo"],
     "*--unsafebench-dataset needs --unsafebench-classifier=NAME*"),
    (["--unsafebench-classifier=toyclf:load", "--unsafebench-profile=nightly"],
     "*--unsafebench-profile: unknown profile 'nightly'*available: default, smoke, strict*"),
    (["--unsafebench-classifier=toyclf:load", "--unsafebench-categories=Hat"],
     "*unknown value 'Hat' (did you mean 'Hate'?)*"),
    (["--unsafebench-classifier=toyclf:load", "--unsafebench-limit=0"],
     "*--unsafebench-limit: expected an integer >= 1, got 0*"),
])
def test_usage_errors_in_options(pytester: pytest.Pytester, args, message) -> None:
    result = pytester.runpytest(*args)
    assert result.ret == USAGE
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


@pytest.mark.parametrize(("toml", "message"), [
    ("[tool.unsafebench]\nbogus = 1\n",
     "*tool.unsafebench.bogus: unknown key*known keys: dataset*"),
    ("[tool.unsafebench.thresholds]\nf1_mn = 0.5\n",
     "*tool.unsafebench.thresholds.f1_mn: unknown key 'f1_mn' (did you mean 'f1_min'?)*"),
    ("[tool.unsafebench.thresholds.category.Hat]\nf1_min = 0.5\n",
     "*tool.unsafebench.thresholds.category.Hat: unknown category 'Hat'*"),
    ("[tool.unsafebench]\nseed = -3\n",
     "*tool.unsafebench.seed: expected an integer >= 0, got -3*"),
    ("[tool.unsafebench.thresholds]\nf1_min = 1.5\n",
     "*tool.unsafebench.thresholds.f1_min: expected a number between 0 and 1, got 1.5*"),
])
def test_usage_errors_in_pyproject(bench: Bench, toml: str, message: str) -> None:
    bench.pytester.makepyprojecttoml(toml)
    result = bench.run(json_name=None)
    assert result.ret == USAGE
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert bench.predicted() == []


def test_usage_error_nonexistent_dataset(bench: Bench) -> None:
    result = bench.run(dataset=bench.path / "no-such-folder")
    assert result.ret == USAGE
    result.stderr.fnmatch_lines(["ERROR: dataset '*no-such-folder': no such file or folder*"])
    assert bench.predicted() == []
    assert not (bench.path / "out.json").exists()


def test_usage_error_manifest_missing_column(bench: Bench) -> None:
    write_manifest(bench.dataset, bench.rows, columns=("file_name", "safety_label", "source"))
    result = bench.run()
    assert result.ret == USAGE
    result.stderr.fnmatch_lines([esc("ERROR: *metadata.csv: missing column(s) ['category']*")])
    assert bench.predicted() == []


# ---------------------------------------------------------------------------- pyproject


PRECEDENCE_TOML = """
[tool.unsafebench]
seed = 7

[tool.unsafebench.thresholds]
f1_min = 0.4
fpr_max = 0.5

[tool.unsafebench.thresholds.category.Hate]
f1_min = 0.8

[tool.unsafebench.thresholds.source.Lexica]
fpr_max = 0.2

[tool.unsafebench.thresholds.classifier."toyclf:load".category.Hate]
f1_min = 0.7

[tool.unsafebench.thresholds.classifier."toyclf:load".category.Violence.source.Laion5B]
f1_min = 0.99
"""


def test_pyproject_threshold_precedence(bench: Bench) -> None:
    bench.pytester.makepyprojecttoml(PRECEDENCE_TOML)
    result = bench.run("--tb=no", "-rf", classifier=f"{CLASSIFIER},{OTHER}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    doc = bench.json()
    th = doc["thresholds"]
    # global, then category, then source, then classifier, most specific winning
    assert th[CLASSIFIER]["Spam"]["Laion5B"] == {**RA_DEFAULT, "f1_min": 0.4, "fpr_max": 0.5}
    assert th[CLASSIFIER]["Spam"]["Lexica"] == {**RA_DEFAULT, "f1_min": 0.4, "fpr_max": 0.2}
    assert th[OTHER]["Hate"]["all"] == {**RA_DEFAULT, "f1_min": 0.8, "fpr_max": 0.5}
    assert th[OTHER]["Hate"]["Lexica"] == {**RA_DEFAULT, "f1_min": 0.8, "fpr_max": 0.2}
    assert th[CLASSIFIER]["Hate"]["Lexica"] == {**RA_DEFAULT, "f1_min": 0.7, "fpr_max": 0.2}
    assert th[CLASSIFIER]["Violence"]["Laion5B"] == {**RA_DEFAULT, "f1_min": 0.99, "fpr_max": 0.5}
    assert th[OTHER]["Violence"]["Laion5B"] == {**RA_DEFAULT, "f1_min": 0.4, "fpr_max": 0.5}
    assert doc["config"]["seed"] == 7 and doc["environment"]["seed"] == 7
    # ... and the outcomes follow: Hate F1 0.75 passes toyclf:load's 0.7 but not the
    # category's 0.8 for the other classifier; Lexica FPR 0.25 > 0.2 fails; Violence F1 is 1.0.
    failed = {(r["classifier"], r["metric"], r["category"], r["source"])
              for r in doc["rows"] if r["outcome"] == "failed"}
    assert failed == {
        (CLASSIFIER, "fpr", "Hate", "Lexica"), (CLASSIFIER, "fpr", "Sexual", "Lexica"),
        (OTHER, "f1", "Hate", "Laion5B"), (OTHER, "f1", "Hate", "Lexica"),
        (OTHER, "f1", "Hate", "all"), (OTHER, "fpr", "Hate", "Lexica"),
    }
    result.assert_outcomes(failed=6, passed=19 + 3 * 2 - 6 + 2 * 3, skipped=48 + 10 * 3 * 2)
    thresholds_used = {(r["classifier"], r["metric"], r["category"], r["source"]): r["threshold"]
                       for r in doc["rows"] if r["metric"] in ("f1", "fpr")}
    assert thresholds_used[(CLASSIFIER, "f1", "Hate", "all")] == 0.7
    assert thresholds_used[(OTHER, "fpr", "Hate", "Lexica")] == 0.2
    result.stdout.fnmatch_lines([esc("FAILED *test_fpr[toyclf:load-Hate-Lexica]*")])


def test_cli_seed_beats_pyproject_seed(bench: Bench) -> None:
    bench.pytester.makepyprojecttoml("[tool.unsafebench]\nseed = 7\nlimit = 20\n")
    assert bench.run("--unsafebench-seed=11").ret in (0, 1)
    doc = bench.json()
    assert doc["config"]["seed"] == 11 and doc["environment"]["seed"] == 11
    assert doc["config"]["limit"] == 20  # pyproject, not overridden
    assert doc["dataset"]["counts"]["images"] == 20


PROFILES_TOML = """
[tool.unsafebench.profiles.perfect]
f1_min = 1.0

[tool.unsafebench.profiles.lenient]
f1_min = 0.1
fpr_max = 0.9

[tool.unsafebench.profiles.lenient.category.Sexual]
f1_min = 0.6
"""


def test_profiles_gate_outcomes(bench: Bench) -> None:
    bench.pytester.makepyprojecttoml(PROFILES_TOML)
    result = bench.run("--unsafebench-profile=perfect", "--tb=no")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    doc = bench.json()
    assert doc["config"]["profile"] == "perfect"
    assert doc["thresholds"][CLASSIFIER]["Hate"]["all"] == {**RA_DEFAULT, "f1_min": 1.0,
                                                            "fpr_max": 0.3}
    failed = {(r["category"], r["source"]) for r in rows_of(doc, "f1", "failed")}
    assert failed == {(c, s) for c in ("Hate", "Sexual", "Overall") for s in CELL_SOURCES}
    result.assert_outcomes(failed=9, passed=13, skipped=48)

    result = bench.run("--unsafebench-profile=smoke", json_name="smoke.json")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=22, skipped=48)
    assert bench.json("smoke.json")["thresholds"][CLASSIFIER]["Hate"]["all"] == (
        BUILTIN_PROFILES["smoke"])

    # a profile's nested category table: Sexual on Laion5B (F1 4/7) misses 0.6
    result = bench.run("--unsafebench-profile=lenient", "--tb=no", json_name="lenient.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=1, passed=21, skipped=48)
    doc = bench.json("lenient.json")
    assert [(r["category"], r["source"]) for r in rows_of(doc, "f1", "failed")] == [
        ("Sexual", "Laion5B")]


def test_pyproject_profile_and_categories_keys(bench: Bench) -> None:
    bench.pytester.makepyprojecttoml(
        '[tool.unsafebench]\nprofile = "strict"\ncategories = ["Violence"]\n'
        'sources = ["Lexica"]\n')
    result = bench.run()
    doc = bench.json()
    assert doc["config"]["profile"] == "strict"
    assert doc["config"]["categories"] == ["Violence"]
    # Violence is perfect, so even the strict profile passes; 2 tests x (Lexica, all) + 1,
    # and Overall (Violence alone) x (Lexica, all)
    assert result.ret == 0
    result.assert_outcomes(passed=7)
    # and the command line overrides the pyproject profile
    result = bench.run("--unsafebench-profile=smoke", json_name="cli.json")
    assert bench.json("cli.json")["config"]["profile"] == "smoke"


# ---------------------------------------------------------------------------- xdist


def test_xdist_matches_serial_and_predicts_each_image_once(bench: Bench) -> None:
    serial = bench.run("-q", cache=bench.path / "cache-serial", json_name="serial.json")
    assert serial.ret == 0
    serial_predicted = bench.predicted()
    assert len(serial_predicted) == N_IMAGES
    bench.counter.unlink()

    parallel = bench.run("-q", "-n", "2", cache=bench.path / "cache-xdist",
                         json_name="xdist.json")
    assert parallel.ret == 0, parallel.stdout.str()
    parallel.assert_outcomes(passed=22, skipped=48)
    lines = bench.predicted()
    # every image predicted exactly once, all in one process (the controller)
    assert len(lines) == N_IMAGES
    assert len({line.split()[2] for line in lines}) == N_IMAGES
    assert len({line.split()[1] for line in lines}) == 1
    assert sorted(lines) == sorted(serial_predicted)

    a, b = bench.json("serial.json"), bench.json("xdist.json")
    assert a["cache"] == b["cache"] == {"hits": 0, "misses": N_IMAGES}
    assert without_timing(a) == without_timing(b)
    assert "unsafebench report" in parallel.stdout.str()

    # a shared, warm cache: the second parallel run predicts nothing
    bench.counter.unlink()
    again = bench.run("-q", "-n", "2", cache=bench.path / "cache-xdist", json_name="warm.json")
    assert again.ret == 0
    warm = bench.json("warm.json")
    assert warm["cache"] == {"hits": N_IMAGES, "misses": 0}
    assert bench.predicted() == []
    assert warm["rows"] == b["rows"]


def test_no_cache_leaves_no_database_and_works_with_xdist(bench: Bench) -> None:
    result = bench.run("-q", "-n", "2", "--unsafebench-no-cache")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=22, skipped=48)
    doc = bench.json()
    assert doc["config"]["use_cache"] is False
    assert doc["cache"] == {"hits": 0, "misses": N_IMAGES}
    assert not bench.cache.exists() or not list(bench.cache.rglob("predictions.sqlite*"))
    assert len(bench.predicted()) == N_IMAGES
    # with the cache on, the same folder does get the database (the control)
    assert bench.run("-q", json_name=None).ret == 0
    assert (bench.cache / "predictions.sqlite").is_file()


# ---------------------------------------------------------------------------- broken classifiers


@pytest.mark.parametrize(("bad", "problem"), [
    (BROKEN, "RuntimeError: toy model exploded"),
    (NAN, "ValueError: invalid prediction for image * score is nan, expected a finite number"),
    (NOLOAD, "ClassifierLoadError: classifier 'toyclf:load_fail' failed to load: "
             "RuntimeError: weights file toy.bin not found"),
], ids=["raises", "nan", "load-fails"])
def test_broken_classifier_errors_only_its_own_tests(bench: Bench, bad: str, problem: str) -> None:
    result = bench.run("--tb=line", classifier=f"{bad},{CLASSIFIER}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # every one of the bad classifier's 69 tests errors; the healthy one's pass or skip
    result.assert_outcomes(passed=22, skipped=48, errors=69)
    result.stdout.fnmatch_lines([esc(line) for line in (
        f"*ERROR at setup of test_f1[{bad}-Hate-all]*",
        f"classifier '{bad}' failed, so its tests cannot run: {problem}",
        f"*classifier {bad}: ERROR {problem}*",
        f"*classifier {CLASSIFIER} [toy-v1] score 0.806*",
    )])
    # one line per errored test, no traceback (not 88 identical tracebacks)
    assert "ClassifierFailed" not in result.stdout.str()
    assert "Traceback" not in result.stdout.str() and "session.py:" not in result.stdout.str()
    doc = bench.json()
    assert re.fullmatch(problem.replace("*", ".*").replace("(", r"\(").replace(")", r"\)"),
                        doc["classifiers"][bad]["error"])
    assert doc["classifiers"][CLASSIFIER]["error"] is None
    assert doc["summary"][bad]["error"] == 69 and doc["summary"][bad]["score"] is None
    assert doc["summary"][CLASSIFIER]["passed"] == 21
    errors = [r for r in doc["rows"] if r["classifier"] == bad]
    assert {r["outcome"] for r in errors} == {"error"}
    assert len(errors) == 69


# ---------------------------------------------------------------------------- bad input

BAD_KINDS = {"empty-file": 1, "truncated": 1, "unreadable": 1, "unknown-category": 1,
             "missing-file": 1, "path-escapes-root": 1}


def _add_bad_input(bench: Bench) -> None:
    ds = bench.dataset
    buf = io.BytesIO()
    rng = numpy.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=numpy.uint8)).save(buf, "PNG")
    png = buf.getvalue()
    (ds / "bad").mkdir()
    (ds / "bad" / "zero.png").write_bytes(b"")
    (ds / "bad" / "cut.png").write_bytes(png[: len(png) // 2])
    (ds / "bad" / "noise.jpg").write_bytes(rng.bytes(500))
    (ds / "bad" / "fine.png").write_bytes(png)  # good image, but an unknown category
    (bench.path / "escape.png").write_bytes(png)
    extra = [
        {"file_name": "bad/zero.png", "category": "Hate"},
        {"file_name": "bad/cut.png", "category": "Violence"},
        {"file_name": "bad/noise.jpg", "category": "Sexual"},
        {"file_name": "bad/fine.png", "category": "Gore"},
        {"file_name": "bad/gone.png", "category": "Hate"},
        {"file_name": "../escape.png", "category": "Hate"},
    ]
    rows = [*bench.rows, *({"safety_label": "Unsafe", "source": "Lexica", "split": "test",
                            **row} for row in extra)]
    write_manifest(ds, rows)


def test_bad_input_is_reported_and_the_rest_scored(bench: Bench) -> None:
    assert bench.run("-q", json_name="clean.json").ret == 0
    clean = bench.json("clean.json")
    _add_bad_input(bench)
    result = bench.run("--tb=short", cache=bench.path / "cache-bad")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=1, passed=21, skipped=48)
    out = result.stdout.str()
    assert "FAILED" in out and "test_data_integrity" in out
    result.stdout.fnmatch_lines(["*6 data-integrity finding(s):*"])
    for kind, name in [("empty-file", "bad/zero.png"), ("truncated", "bad/cut.png"),
                       ("unreadable", "bad/noise.jpg"), ("unknown-category", "bad/fine.png"),
                       ("missing-file", "bad/gone.png"), ("path-escapes-root", "../escape.png")]:
        assert re.search(rf"{kind}: metadata\.csv:\d+ \({re.escape(name)}\)", out), kind
    doc = bench.json()
    integrity = doc["dataset"]["integrity"]
    assert integrity["by_kind"] == BAD_KINDS
    assert integrity["findings"] == 6 and integrity["excluded"] == 6
    assert doc["dataset"]["counts"]["images"] == N_IMAGES + 3  # decodable rows load, then drop
    assert doc["dataset"]["usable_images"] == N_IMAGES
    # the good images are scored exactly as before
    scored = [r for r in doc["rows"] if r["suite"] == "effectiveness"]
    assert scored == [r for r in clean["rows"] if r["suite"] == "effectiveness"]
    findings_row = [r for r in doc["rows"] if r["metric"] == "findings"]
    assert findings_row[0]["value"] == 6 and findings_row[0]["outcome"] == "failed"
    assert "data integrity: 6 finding(s), 6 image(s) excluded" in out


def test_allow_findings_lets_integrity_pass(bench: Bench) -> None:
    _add_bad_input(bench)
    kinds = sorted(BAD_KINDS)
    bench.pytester.makepyprojecttoml(f"[tool.unsafebench]\nallow_findings = {kinds!r}\n"
                                     .replace("'", '"'))
    result = bench.run()
    assert result.ret == 0
    result.assert_outcomes(passed=22, skipped=48)
    assert bench.json()["dataset"]["integrity"]["findings"] == 6
    # allowing only some kinds: the rest still fail the test, and only they are listed
    bench.pytester.makepyprojecttoml(
        '[tool.unsafebench]\nallow_findings = ["empty-file", "missing-file"]\n')
    result = bench.run("--tb=short", json_name="partial.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*4 data-integrity finding(s):*"])
    out = result.stdout.str()
    assert "  truncated: metadata.csv" in out and "  empty-file: metadata.csv" not in out
    assert bench.json("partial.json")["config"]["allow_findings"] == ["empty-file",
                                                                      "missing-file"]


def test_allow_findings_rejects_unknown_kind(bench: Bench) -> None:
    bench.pytester.makepyprojecttoml('[tool.unsafebench]\nallow_findings = ["emtpy-file"]\n')
    result = bench.run()
    assert result.ret == USAGE
    result.stderr.fnmatch_lines(["ERROR: tool.unsafebench.allow_findings: expected a list*"])


# ---------------------------------------------------------------------------- import lightness


HEAVY = ("numpy", "torch", "transformers", "onnxruntime")
PROBE = textwrap.dedent("""
    import json, sys
    import pytest
    rc = pytest.main(sys.argv[2:])
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
    with open(sys.argv[1], "w") as fh:
        json.dump({{"rc": int(rc), "heavy": heavy,
                   "plugin": "pytest_unsafebench.plugin" in sys.modules}}, fh)
""").format(heavy=set(HEAVY))


@pytest.mark.parametrize("args", [["--help"], ["-q", "test_user.py"]], ids=["help", "plain-run"])
def test_import_lightness(pytester: pytest.Pytester, args: list[str]) -> None:
    pytester.makepyfile(test_user="def test_ok():\n    assert True\n")
    report = pytester.path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(report), *args], cwd=pytester.path,
                          capture_output=True, text=True, env=env, timeout=120)
    data = json.loads(report.read_text())
    assert data["rc"] == 0, proc.stdout + proc.stderr
    assert data["plugin"], "the plugin was not loaded at all"
    assert data["heavy"] == []
    if args == ["--help"]:
        assert "--unsafebench-classifier=NAME[,NAME...]" in proc.stdout
        assert "pytest-unsafebench: benchmark image safety classifiers" in proc.stdout
    else:
        assert "1 passed" in proc.stdout


# ---------------------------------------------------------------------------- the real demo


@pytest.mark.slow
@pytest.mark.timeout(900, method="thread")  # trains the demo model in a subprocess
def test_demo_end_to_end(pytester: pytest.Pytester) -> None:
    cache = pytester.path / "cache"
    out = pytester.path / "demo.json"
    result = pytester.runpytest_subprocess(
        "--unsafebench-classifier=demo", "--unsafebench-split=test",
        f"--unsafebench-cache-dir={cache}", f"--unsafebench-json={out}", timeout=900)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-5000:]
    result.stdout.fnmatch_lines([
        "*= unsafebench report =*",
        "*SYNTHETIC DATA*",
        esc("classifier demo [demo-*] score *"),
    ])
    doc = read_json(out)
    assert doc["dataset"]["synthetic"] is True
    assert doc["summary"]["demo"]["failed"] == 0 and doc["summary"]["demo"]["error"] == 0
    assert doc["summary"]["demo"]["categories_scored"] == 11
    assert doc["summary"]["demo"]["score"] >= 0.5
    assert doc["dataset"]["counts"]["by_split"] == {"test": doc["dataset"]["counts"]["images"]}

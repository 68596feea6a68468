"""The gap suite, warn tiers, confidence intervals in rows, paired comparisons, and release
gating against a baseline (pytester runs of the plugin on the toy classifier and dataset, plus
the ``unsafebench`` console commands)."""

from __future__ import annotations

import json
from pathlib import Path

# Imported before any in-process pytester run (see test_plugin.py for why).
import numpy
import pytest
from PIL import Image  # noqa: F401

import pytest_unsafebench.analysis
import pytest_unsafebench.baseline
import pytest_unsafebench.report
import pytest_unsafebench.session
import pytest_unsafebench.stats  # noqa: F401
from plugin_helpers import CLASSIFIER, COVERED, OTHER, build_dataset, read_json, toyclf_source, \
    write_manifest
from pytest_unsafebench.baseline import compare
from pytest_unsafebench.cli import main as cli_main

try:
    import hypothesis.internal.observability  # noqa: F401
except ImportError:  # pragma: no cover
    pass


class Run:
    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.path = pytester.path
        self.dataset = self.path / "ds"
        self.rows = build_dataset(self.dataset)
        (self.path / "toyclf.py").write_text(toyclf_source())
        pytester.syspathinsert()

    def __call__(self, *extra: str, classifier: str = CLASSIFIER) -> pytest.RunResult:
        return self.pytester.runpytest(
            f"--unsafebench-classifier={classifier}", f"--unsafebench-dataset={self.dataset}",
            f"--unsafebench-cache-dir={self.path / 'cache'}", "--unsafebench-device=cpu",
            "--unsafebench-bootstrap=200", "-p", "no:randomly", *extra)

    def degrade(self) -> None:
        """A new version of the toy model that scores everything lower: it misses Unsafe
        images it used to catch."""
        source = toyclf_source().replace('fingerprint="toy-v1"', 'fingerprint="toy-v2"')
        source = source.replace("else mean))", "else mean * 0.8))")
        assert "toy-v2" in source and "mean * 0.8" in source
        (self.path / "toyclf.py").write_text(source)


@pytest.fixture
def run(pytester: pytest.Pytester) -> Run:
    return Run(pytester)


# --------------------------------------------------------------------------- gap suite
def test_gap_suite_runs_by_default_with_intervals(run: Run) -> None:
    result = run(f"--unsafebench-json={run.path / 'out.json'}", "--unsafebench-profile=smoke")
    assert result.ret == 0, result.stdout.str()[-3000:]
    doc = read_json(run.path / "out.json")
    gaps = [r for r in doc["rows"] if r["suite"] == "gap" and r["outcome"] == "passed"]
    assert {(r["metric"], r["category"]) for r in gaps} == {
        (m, c) for m in ("gap_f1", "gap_fpr") for c in COVERED}
    by = {(r["metric"], r["category"]): r for r in doc["rows"]}
    cells = {(r["metric"], r["category"], r["source"]): r["value"] for r in doc["rows"]
             if r["suite"] == "effectiveness"}
    for cat in COVERED:
        expected = cells[("f1", cat, "Laion5B")] - cells[("f1", cat, "Lexica")]
        row = by[("gap_f1", cat)]
        assert row["value"] == pytest.approx(expected, abs=1e-6)
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
    # the RA gap needs robustness results: skipped with the reason, never silently absent
    ra = [r for r in doc["rows"] if r["metric"] == "gap_ra"]
    assert [r["outcome"] for r in ra] == ["skipped"]
    shift = doc["source_shift"]["toyclf:load"]
    assert shift["categories"] == len(COVERED)
    assert shift["mean_abs_gap_f1"] == pytest.approx(
        sum(abs(by[("gap_f1", c)]["value"]) for c in COVERED) / len(COVERED), abs=1e-6)
    result.stdout.fnmatch_lines(["*real (Laion5B) - generated (Lexica) gap*",
                                 "*source shift: mean |F1 gap|*"])


def test_gap_fails_when_one_source_is_made_worse(run: Run) -> None:
    """Lexica's Unsafe Hate images turned Safe-looking (red 0.1): F1 on Lexica collapses."""
    for row in run.rows:
        if row["category"] == "Hate" and row["source"] == "Lexica" and row["safety_label"] == "Unsafe":
            Image.new("RGB", (16, 16), (25, 40, 90)).save(run.dataset / row["file_name"])
    write_manifest(run.dataset, run.rows)
    result = run("--unsafebench-suites=gap", "-p", "no:cacheprovider")
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "*|gap_f1| 0.750 > 0.3 for toyclf:load on Hate (Laion5B - Lexica): gap +0.750, 95% CI*"
        "significant (CI excludes 0)",
        "*Hate*+0.750* [[]+0.*, +1.00] s*",
        "*FAILED*test_gap_f1*Hate*"])
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 1


# --------------------------------------------------------------------------- warn tier
def test_warn_tier_miss_is_reported_not_failed(run: Run) -> None:
    (run.path / "pyproject.toml").write_text(
        "[tool.unsafebench.thresholds]\nf1_min = 0.5\n"
        "[tool.unsafebench.thresholds.warn]\nf1_min = 0.9\n")
    result = run(f"--unsafebench-json={run.path / 'out.json'}", "--unsafebench-suites=effectiveness")
    assert result.ret == 0, result.stdout.str()[-3000:]
    doc = read_json(run.path / "out.json")
    f1 = {(r["category"], r["source"]): r for r in doc["rows"] if r["metric"] == "f1"
          and r["outcome"] == "passed"}
    assert f1[("Violence", "all")]["warned"] is False       # perfect: meets both tiers
    assert f1[("Hate", "all")]["warned"] is True             # 0.75: passes 0.5, misses 0.9
    assert f1[("Hate", "all")]["warn_threshold"] == 0.9
    assert doc["warn_thresholds"]["toyclf:load"]["Hate"]["all"]["f1_min"] == 0.9
    result.stdout.fnmatch_lines(["*TierWarning: f1 0.750 misses the warn tier f1_min = 0.9*",
                                 "*value(s) passed but missed their warn tier*"])


def test_warn_tier_in_a_named_profile(run: Run) -> None:
    (run.path / "pyproject.toml").write_text(
        "[tool.unsafebench.profiles.release]\nf1_min = 0.7\n"
        "[tool.unsafebench.profiles.release.warn]\nf1_min = 0.95\n")
    result = run("--unsafebench-profile=release", "--unsafebench-suites=effectiveness",
                 f"--unsafebench-json={run.path / 'out.json'}")
    doc = read_json(run.path / "out.json")
    failed = {(r["category"], r["source"]) for r in doc["rows"]
              if r["metric"] == "f1" and r["outcome"] == "failed"}
    assert failed == {("Sexual", "Laion5B"), ("Sexual", "all")}  # 0.571 and 0.667 < 0.7
    warned = {(r["category"], r["source"]) for r in doc["rows"] if r.get("warned")}
    assert ("Hate", "all") in warned and ("Violence", "all") not in warned
    assert result.ret == 1


# --------------------------------------------------------------------------- baseline gating
def test_unchanged_run_passes_its_baseline_and_save_round_trips(run: Run) -> None:
    base = run.path / "base.json"
    assert run(f"--unsafebench-save-baseline={base}", "--unsafebench-profile=smoke").ret == 0
    saved = read_json(base)
    assert saved["decisions"]["toyclf:load"]["decisions"] and saved["environment"]
    assert len(saved["decisions"]["toyclf:load"]["ids"]) == len(run.rows)
    result = run(f"--unsafebench-baseline={base}", "--unsafebench-profile=smoke",
                 f"--unsafebench-json={run.path / 'out.json'}")
    assert result.ret == 0, result.stdout.str()[-3000:]
    gate = read_json(run.path / "out.json")["baseline"]
    assert gate["passed"] and gate["compared"] > 20 and gate["regressions"] == []
    result.stdout.fnmatch_lines(["*baseline *base.json*values compared, no regression*"])


def test_degraded_classifier_fails_against_its_baseline(run: Run) -> None:
    base = run.path / "base.json"
    assert run(f"--unsafebench-save-baseline={base}", "--unsafebench-profile=smoke").ret == 0
    run.degrade()
    result = run(f"--unsafebench-baseline={base}", "--unsafebench-profile=smoke",
                 f"--unsafebench-json={run.path / 'out.json'}")
    # every test passes under the smoke profile: the exit code is the baseline's doing
    assert result.parseoutcomes().get("failed", 0) == 0
    assert result.ret == 1
    out = result.stdout.str()
    assert "Traceback" not in out
    result.stdout.fnmatch_lines(["*REGRESSED:*", "*classifier*suite*metric*category*why*",
                                 "*toyclf:load*effectiveness*f1*Sexual*all*0.667*0.462*dropped 0.205 > tolerance 0.02*"])
    gate = read_json(run.path / "out.json")["baseline"]
    assert not gate["passed"]
    keys = {(r["metric"], r["category"], r["source"]) for r in gate["regressions"]}
    assert ("f1", "Sexual", "all") in keys and ("f1", "Hate", "all") not in keys  # Hate held
    assert all(r["reason"] for r in gate["regressions"])


def test_tolerance_lets_a_small_drop_pass(run: Run) -> None:
    base = run.path / "base.json"
    run(f"--unsafebench-save-baseline={base}", "--unsafebench-profile=smoke")
    run.degrade()
    result = run(f"--unsafebench-baseline={base}", "--unsafebench-profile=smoke",
                 "--unsafebench-tolerance=0.99", "--unsafebench-bootstrap=0")
    assert result.ret == 0, result.stdout.str()[-3000:]


def test_bad_baseline_is_a_usage_error(run: Run) -> None:
    bad = run.path / "bad.json"
    bad.write_text('{"rows": [{"metric": "f1"}]}')
    result = run(f"--unsafebench-baseline={bad}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*baseline*bad.json: row 0 lacks one of*"])
    result = run(f"--unsafebench-baseline={run.path / 'missing.json'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--unsafebench-baseline:*missing.json is not a file*"])


def test_two_classifiers_get_paired_comparisons(run: Run) -> None:
    result = run(f"--unsafebench-json={run.path / 'out.json'}", "--unsafebench-profile=smoke",
                 classifier=f"{CLASSIFIER},{OTHER}")
    assert result.ret == 0
    comps = read_json(run.path / "out.json")["comparisons"]
    assert [(c["a"], c["b"], c["category"]) for c in comps] == [
        ("toyclf:load", "toyclf:load_other", "Hate")]   # the only category both cover
    c = comps[0]
    assert c["diff"] == pytest.approx(0.0) and c["mcnemar"]["b"] == c["mcnemar"]["c"] == 0
    assert c["mcnemar"]["p_value"] == 1.0
    result.stdout.fnmatch_lines(["*paired comparisons on the same images*"])


# --------------------------------------------------------------------------- unit level
def _row(metric: str, value: float, **kw) -> dict:
    return {"classifier": "c", "suite": "effectiveness", "metric": metric, "category": "Hate",
            "source": "all", "condition": None, "value": value, "outcome": "passed", **kw}


@pytest.mark.parametrize(("metric", "old", "new", "regressed"), [
    ("f1", 0.80, 0.79, False), ("f1", 0.80, 0.70, True), ("f1", 0.70, 0.95, False),
    ("fpr", 0.10, 0.11, False), ("fpr", 0.10, 0.20, True), ("fpr", 0.20, 0.05, False),
    ("gap_f1", -0.10, 0.11, False), ("gap_f1", 0.05, -0.20, True), ("gap_f1", -0.3, 0.1, False),
    ("pool_size", 500, 10, False),                     # not a quality metric: never gated
])
def test_compare_reads_each_metric_in_its_direction(metric, old, new, regressed) -> None:
    section = compare({"rows": [_row(metric, old)]}, [_row(metric, new)], lambda m: 0.02)
    assert section["passed"] is not regressed
    assert section["compared"] == (0 if metric == "pool_size" else 1)


def test_compare_matches_by_logical_key_and_per_metric_tolerance() -> None:
    base = {"rows": [_row("f1", 0.9), _row("fpr", 0.1), _row("f1", 0.9, category="Spam")]}
    current = [_row("fpr", 0.14), _row("f1", 0.85), _row("f1", 0.5, classifier="other")]
    section = compare(base, current, {"f1": 0.1, "fpr": 0.02}.__getitem__)
    assert section["compared"] == 2           # Spam missing now, "other" not in the baseline
    assert [(r["metric"], r["diff"]) for r in section["regressions"]] == [("fpr", -0.04)]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps({"rows": rows, "environment": {"git_commit": "abc"}}))
    return path


def test_cli_compare_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = _write(tmp_path / "base.json", [_row("f1", 0.9)])
    same = _write(tmp_path / "same.json", [_row("f1", 0.9)])
    worse = _write(tmp_path / "worse.json", [_row("f1", 0.8)])
    assert cli_main(["compare", str(base), str(same)]) == 0
    assert "no regression" in capsys.readouterr().out
    assert cli_main(["compare", str(base), str(worse)]) == 1
    out = capsys.readouterr().out
    assert "1 REGRESSED" in out and "dropped 0.100 > tolerance 0.02" in out
    assert cli_main(["compare", str(base), str(worse), "--metric-tolerance", "f1=0.2"]) == 0
    assert cli_main(["compare", str(base), str(worse), "--metric-tolerance", "f1"]) == 2
    assert "expected METRIC=NUMBER" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("{not json")
    assert cli_main(["compare", str(base), str(tmp_path / "junk.json")]) == 2
    assert "not JSON" in capsys.readouterr().err


def test_cli_show_prints_the_runs_tables(run: Run, capsys: pytest.CaptureFixture) -> None:
    out_json = run.path / "out.json"
    result = run(f"--unsafebench-json={out_json}", "--unsafebench-profile=smoke")
    assert result.ret == 0
    assert cli_main(["show", str(out_json)]) == 0
    shown = capsys.readouterr().out
    live = result.stdout.str()
    for line in shown.splitlines():
        assert line in live                      # the same tables the run printed
    assert "classifier toyclf:load [toy-v1]" in shown


def test_curves_only_for_graded_scores() -> None:
    from pytest_unsafebench.analysis import curves
    from pytest_unsafebench.results import PredictionTable

    rng = numpy.random.default_rng(0)
    rows = [{"id": str(i), "label": "Unsafe" if i % 2 else "Safe", "category": "Hate",
             "source": "Lexica" if i % 3 else "Laion5B", "score": float(rng.random()),
             "decision": "safe"} for i in range(60)]
    graded = curves(PredictionTable("c", rows), ["Hate"], ["Laion5B", "Lexica"])
    assert graded["available"] and len(graded["cells"]) == 3
    cell = graded["cells"][-1]
    assert cell["source"] == "all" and cell["n"] == 60 and 0 <= cell["roc"]["auroc"] <= 1
    assert set(cell) >= {"roc", "pr", "calibration", "operating_points"}
    binary = [r | {"score": float(r["label"] == "Unsafe")} for r in rows]
    flat = curves(PredictionTable("c", binary), ["Hate"], ["Laion5B", "Lexica"])
    assert not flat["available"] and "decisions only" in flat["reason"]


def test_significant_paired_drop_fails_within_the_tolerance() -> None:
    """Missing 30 of 1000 Unsafe images costs F1 only ~0.015 (inside a 0.02 tolerance), but
    every changed decision goes the same way: the paired tests call it significant."""
    from pytest_unsafebench.baseline import decisions_block
    from pytest_unsafebench.cells import Bootstrap
    from pytest_unsafebench.metrics import cell_metrics
    from pytest_unsafebench.results import PredictionTable

    def table(missed: int) -> PredictionTable:
        rows = []
        for i in range(2000):
            unsafe = i < 1000
            flagged = unsafe and i >= missed
            rows.append({"id": f"img{i}", "label": "Unsafe" if unsafe else "Safe",
                         "category": "Hate", "source": "Laion5B" if i % 2 else "Lexica",
                         "decision": "unsafe" if flagged else "safe", "score": float(flagged)})
        return PredictionTable("c", rows)

    before, after = table(0), table(30)

    def f1_row(t: PredictionTable) -> dict:
        c = t.select("Hate", "all")
        return _row("f1", cell_metrics(c["y_true"], c["y_pred"], c["scores"])["f1"])

    base = {"rows": [f1_row(before)], "decisions": decisions_block({"c": before})}
    section = compare(base, [f1_row(after)], lambda m: 0.02, tables={"c": after},
                      bootstrap=Bootstrap(resamples=500))
    assert not section["passed"]
    [reg] = section["regressions"]
    assert reg["reason"].startswith("significant paired drop") and reg["diff"] > -0.02
    paired = {(p["category"], p["source"]): p for p in section["paired"]}
    assert paired[("Hate", "all")]["mcnemar"] == {"b": 30, "c": 0, "p_value": pytest.approx(
        2 * 0.5 ** 30, rel=1e-6)}
    # without per-image decisions only the tolerance applies: the same drop passes
    assert compare({"rows": base["rows"]}, [f1_row(after)], lambda m: 0.02)["passed"]


def test_cli_report_renders_html_and_markdown(run: Run, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    out_json = run.path / "out.json"
    assert run(f"--unsafebench-json={out_json}", "--unsafebench-profile=smoke").ret == 0
    html, md = tmp_path / "r.html", tmp_path / "r.md"
    assert cli_main(["report", str(out_json), "--html", str(html), "--markdown", str(md)]) == 0
    page = html.read_text()
    for section in ("summary", "effectiveness", "gap", "curves", "integrity", "environment"):
        assert f'id="{section}"' in page
    assert "toyclf:load" in md.read_text()
    assert cli_main(["report", str(out_json)]) == 2
    assert "nothing to write" in capsys.readouterr().err


def test_html_without_matplotlib_is_a_usage_error(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    result = run(f"--unsafebench-html={run.path / 'r.html'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--unsafebench-html needs matplotlib*[[]html[]]*"])


def test_judge_summary_counts_unsure_failed_and_agreement() -> None:
    from pytest_unsafebench.analysis import judge_summary
    from pytest_unsafebench.results import PredictionTable

    def row(i: int, **scores) -> dict:
        return {"id": str(i), "label": "Unsafe", "category": "Hate", "source": "Lexica",
                "score": 0.5, "decision": "safe", "label_scores": scores or None}

    judge = PredictionTable("j", [row(0, unsure=1.0, failed=0.0, parser_agreement=1.0),
                                  row(1, unsure=0.0, failed=1.0, parser_agreement=0.5),
                                  row(2, unsure=0.0, failed=0.0),
                                  row(3, unsure=1.0, failed=0.0)])
    plain = PredictionTable("p", [row(0), row(1)])
    summary = judge_summary({"j": judge, "p": plain})
    assert summary == {"j": {"images": 4, "unsure_rate": 0.5, "failed": 1,
                             "parser_converter_agreement": 0.75}}
    assert judge.columns["unsure"].tolist() == [True, False, False, True]


def test_a_trained_classifier_pairs_against_its_base() -> None:
    from pytest_unsafebench.analysis import comparisons
    from pytest_unsafebench.cells import Bootstrap
    from pytest_unsafebench.results import PredictionTable

    def table(flag_all: bool) -> PredictionTable:
        return PredictionTable("x", [
            {"id": str(i), "label": "Unsafe" if i < 10 else "Safe", "category": "Hate",
             "source": "Lexica", "score": 0.5,
             "decision": "unsafe" if (i < 10 and (flag_all or i < 5)) else "safe"}
            for i in range(20)])

    tables = {"a-probe": table(True), "z-base": table(False)}
    covered = {"a-probe": ["Hate"], "z-base": ["Hate"]}
    [plain] = comparisons(tables, covered, Bootstrap(resamples=100))
    assert (plain["a"], plain["b"]) == ("a-probe", "z-base") and plain["diff"] < 0
    [paired] = comparisons(tables, covered, Bootstrap(resamples=100),
                           bases={"a-probe": "z-base", "z-base": None})
    assert (paired["a"], paired["b"]) == ("z-base", "a-probe")
    assert paired["diff"] == pytest.approx(1.0 - 2 * 5 / 15, abs=1e-6)   # 1.0 - F1 of 5/10
    assert paired["mcnemar"]["c"] == 5 and paired["mcnemar"]["b"] == 0


def test_report_thumbnails_are_blurred_unless_the_option_says_otherwise(run: Run) -> None:
    out = run.path / "out.json"
    assert run(f"--unsafebench-json={out}", "--unsafebench-profile=smoke").ret == 0
    examples = read_json(out)["examples"]
    unsafe = [e for e in examples if e["label"] == "Unsafe"]
    assert unsafe and all(e["blurred"] for e in unsafe)
    assert all(e["image"].startswith("data:image/") for e in examples)
    assert run(f"--unsafebench-json={out}", "--unsafebench-profile=smoke",
               "--unsafebench-no-blur").ret == 0
    assert not any(e["blurred"] for e in read_json(out)["examples"])


def test_a_users_conftest_outside_the_packaged_suites_is_fine(run: Run) -> None:
    """pytest asks pluggy for hooks without the conftest.py files that do not cover a path
    (here: the packaged suites, outside the user's folder), which hashes every plugin."""
    run.pytester.makeconftest(
        "def pytest_runtest_setup(item):\n    item.user_properties.append(('seen', 1))\n")
    result = run("--unsafebench-suites=effectiveness", "--unsafebench-profile=smoke")
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert "INTERNALERROR" not in result.stdout.str()

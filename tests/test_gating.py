"""The gap suite, warn tiers, confidence intervals in rows, paired comparisons, and release
gating against a baseline (pytester runs of the plugin on the toy classifier and dataset, plus
the ``unsafebench`` console commands)."""

from __future__ import annotations

import json
from pathlib import Path

# Imported before any in-process pytester run (see test_plugin.py for why).
import numpy
import pytest
from PIL import Image

import pytest_unsafebench.analysis
import pytest_unsafebench.report.baseline
import pytest_unsafebench.report.document
import pytest_unsafebench.session
import pytest_unsafebench.stats  # noqa: F401
from plugin_helpers import (
    CLASSIFIER,
    COVERED,
    OTHER,
    build_dataset,
    read_json,
    toyclf_source,
    write_manifest,
)
from pytest_unsafebench.cli import main as cli_main
from pytest_unsafebench.report.baseline import compare, regression_table, verdict_line

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
    # the RA gap needs robustness results: not collected without them (no placeholder skip in
    # every default run; README: test_gap_ra runs with --unsafebench-suites=robustness,gap)
    assert [r for r in doc["rows"] if r["metric"] == "gap_ra"] == []
    assert "test_gap_ra" not in result.stdout.str()
    shift = doc["source_shift"]["toyclf:load"]
    assert shift["categories"] == len(COVERED)
    assert shift["mean_abs_gap_f1"] == pytest.approx(
        sum(abs(by[("gap_f1", c)]["value"]) for c in COVERED) / len(COVERED), abs=1e-6)
    result.stdout.fnmatch_lines(["*real (Laion5B) - generated (Lexica) gap*",
                                 "*source shift: mean |F1 gap|*"])


def test_gap_fails_when_one_source_is_made_worse(run: Run) -> None:
    """Lexica's Unsafe Hate images turned Safe-looking (red 0.1): F1 on Lexica collapses."""
    for row in run.rows:
        if (row["category"], row["source"], row["safety_label"]) == ("Hate", "Lexica", "Unsafe"):
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
    result = run(f"--unsafebench-json={run.path / 'out.json'}",
                 "--unsafebench-suites=effectiveness")
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
    assert gate["compared"] == gate["baseline_values"] and gate["unmatched"] == []
    result.stdout.fnmatch_lines(["*baseline *base.json*: * of * values compared",
                                 "*no regression*", "",
                                 "baseline gate PASSED: * of * baseline values compared, none*"])


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
    # 8 images per cell: no paired test reaches significance, the hard limit catches the drop
    result.stdout.fnmatch_lines(["*REGRESSED:*", "*classifier*suite*metric*category*why*",
                                 "*toyclf:load*effectiveness*f1*Sexual*all*0.667*0.462*-0.205 [[]*"
                                 "dropped 0.205 > hard limit 0.1*"])
    # the gate's verdict ends the report, and pytest's closing line does not read like a pass
    section = out[out.index("unsafebench report"):].splitlines()
    last = [line for line in section if line.strip()]
    verdict = last.index(next(line for line in last if line.startswith("baseline gate")))
    assert last[verdict].startswith("baseline gate FAILED: ") and "regressed" in last[verdict]
    assert "=" in last[verdict + 1] and "1 baseline gate failed" in last[-1]
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
    row = {"classifier": ["x"], "suite": "effectiveness", "metric": "f1", "category": "Hate",
           "source": "all", "condition": None, "value": 0.5}
    bad.write_text(json.dumps({"rows": [row]}))      # a list as a key: unhashable
    result = run(f"--unsafebench-baseline={bad}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bad.json: row 0: classifier is [[]'x'[]]; expected a string*"])
    bad.write_text(json.dumps({"rows": [{**row, "classifier": "toyclf:load"}], "decisions": {
        "toyclf:load": {"ids": [["a"]], "decisions": "u"}}}))
    result = run(f"--unsafebench-baseline={bad}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bad.json: 'decisions' is not one block of ids*"])


def test_a_renamed_classifier_pairs_nothing_and_fails_until_mapped(run: Run) -> None:
    """The same model saved as toyclf:load and run as mine:load: before, "0 values compared,
    no regression" and exit 0."""
    base = run.path / "base.json"
    assert run(f"--unsafebench-save-baseline={base}", "--unsafebench-profile=smoke").ret == 0
    (run.path / "mine.py").write_text(toyclf_source())
    result = run(f"--unsafebench-baseline={base}", "--unsafebench-profile=smoke",
                 f"--unsafebench-json={run.path / 'out.json'}",
                 f"--unsafebench-markdown={run.path / 'r.md'}", classifier="mine:load")
    assert result.ret == 1 and result.parseoutcomes().get("failed", 0) == 0
    assert "did not pair with this run: classifier toyclf:load is not in this run" in (
        run.path / "r.md").read_text()
    gate = read_json(run.path / "out.json")["baseline"]
    assert gate["compared"] == 0 and len(gate["unmatched"]) == gate["baseline_values"] > 20
    result.stdout.fnmatch_lines([
        "*0 of * values compared",
        "* baseline value(s) did not pair with this run (all in the JSON's baseline.unmatched):",
        "    toyclf:load effectiveness * and * more: classifier toyclf:load is not in this run "
        "(this run: mine:load); if it is mine:load, pass "
        "--unsafebench-baseline-classifier=toyclf:load=mine:load",
        "*differs: classifiers: baseline toyclf:load; this run mine:load",
        "baseline gate FAILED: 0 of * baseline values compared; * did not pair with this run",
        "*1 baseline gate failed in*"])
    result = run(f"--unsafebench-baseline={base}", "--unsafebench-profile=smoke",
                 "--unsafebench-baseline-classifier=toyclf:load=mine:load",
                 f"--unsafebench-json={run.path / 'out.json'}", classifier="mine:load")
    assert result.ret == 0, result.stdout.str()[-3000:]
    gate = read_json(run.path / "out.json")["baseline"]
    assert gate["compared"] == gate["baseline_values"] and gate["passed"]
    assert gate["paired"] and gate["renamed"] == {"toyclf:load": "mine:load"}
    # a mapping that names no classifier of either run is a usage error before the pass
    for mapping, message in (("nope=mine:load", "*the baseline has no classifier 'nope'*"),
                             ("toyclf:load=nope", "*this run has no classifier 'nope'*"),
                             ("toyclf:load", "*expected OLD=NEW*")):
        result = run(f"--unsafebench-baseline={base}",
                     f"--unsafebench-baseline-classifier={mapping}", classifier="mine:load")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*--unsafebench-baseline-classifier*{message}"])


def test_fewer_categories_than_the_baseline_fail_and_say_which(run: Run) -> None:
    base = run.path / "base.json"
    assert run(f"--unsafebench-save-baseline={base}", "--unsafebench-profile=smoke").ret == 0
    result = run(f"--unsafebench-baseline={base}", "--unsafebench-profile=smoke",
                 "--unsafebench-categories=Hate,Violence")
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "*toyclf:load effectiveness * Sexual * and * more: category Sexual was not selected in "
        "this run",
        "*differs: categories: baseline *Sexual*; this run Hate, Violence",
        "baseline gate FAILED: *; * did not pair with this run"])


def test_another_dataset_or_split_is_refused_unless_allowed(run: Run) -> None:
    base = run.path / "base.json"
    assert run(f"--unsafebench-save-baseline={base}", "--unsafebench-profile=smoke").ret == 0
    old_fp = read_json(base)["dataset"]["fingerprint"]
    result = run(f"--unsafebench-baseline={base}", "--unsafebench-split=test")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*baseline scored on other data: split all in the baseline, "
                                 f"test in this run; dataset fingerprint {old_fp} in the "
                                 "baseline, * in this run. *--unsafebench-baseline-allow-mismatch"
                                 " to compare anyway"])
    assert "Traceback" not in result.stderr.str()
    # another dataset, same split: one relabelled image changes the fingerprint
    run.rows[0]["safety_label"] = "Safe" if run.rows[0]["safety_label"] == "Unsafe" else "Unsafe"
    write_manifest(run.dataset, run.rows)
    result = run(f"--unsafebench-baseline={base}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*dataset fingerprint {old_fp} in the baseline*"])
    md = run.path / "r.md"
    result = run(f"--unsafebench-baseline={base}", "--unsafebench-baseline-allow-mismatch",
                 "--unsafebench-profile=smoke", f"--unsafebench-markdown={md}")
    assert md.read_text().splitlines()[2].startswith(
        f"> **Baseline**: dataset fingerprint {old_fp} in the baseline, ")
    lines = result.stdout.str().splitlines()
    first = lines[lines.index(next(x for x in lines if "unsafebench report" in x)) + 1:]
    first = [x for x in first if x.strip()]
    assert first[0].startswith(f"BASELINE: dataset fingerprint {old_fp} in the baseline, ")
    assert first[0].endswith("(compared anyway: --unsafebench-baseline-allow-mismatch)")
    assert first[1].startswith("dataset: ")


def test_a_profile_sets_the_gates_strictness(run: Run) -> None:
    """A hard limit above every drop of the degraded model, in a pyproject profile: the drops
    are not significant on 8-image cells, so the gate passes; the built-in one fails it."""
    base = run.path / "base.json"
    assert run(f"--unsafebench-save-baseline={base}", "--unsafebench-profile=smoke").ret == 0
    run.degrade()
    (run.path / "pyproject.toml").write_text(
        "[tool.unsafebench.profiles.lenient]\nf1_min = 0.0\nfpr_max = 1.0\n"
        "gap_f1_max = 1.0\ngap_fpr_max = 1.0\n"
        "[tool.unsafebench.profiles.lenient.baseline]\nhard_limit = 0.5\n")
    result = run(f"--unsafebench-baseline={base}", "--unsafebench-profile=lenient",
                 f"--unsafebench-json={run.path / 'out.json'}")
    assert result.ret == 0, result.stdout.str()[-3000:]
    gate = read_json(run.path / "out.json")["baseline"]
    assert gate["rule"] == {"tolerance": 0.02, "alpha": 0.05, "hard_limit": 0.5}
    assert gate["within_noise"] and all(n["p_value"] >= 0.05 for n in gate["within_noise"])
    (run.path / "pyproject.toml").write_text(
        "[tool.unsafebench.profiles.lenient.baseline]\nhard_limt = 0.5\n")
    result = run(f"--unsafebench-baseline={base}", "--unsafebench-profile=lenient")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*tool.unsafebench.profiles.lenient.baseline.hard_limt: unknown "
                                 "key*hard_limit*"])


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
])
def test_compare_reads_each_metric_in_its_direction(metric, old, new, regressed) -> None:
    section = compare({"rows": [_row(metric, old)]}, [_row(metric, new)], lambda m: 0.02)
    assert section["passed"] is not regressed
    assert section["compared"] == 1
    if regressed:
        word = {"f1": "dropped", "fpr": "rose", "gap_f1": "|gap| grew"}[metric]
        assert section["regressions"][0]["reason"].startswith(word + " ")


def test_a_baseline_without_gated_values_fails() -> None:
    """pool_size is not a quality metric, so nothing is gated: comparing nothing never passes."""
    section = compare({"rows": [_row("pool_size", 500)]}, [_row("pool_size", 10)], lambda m: 0.02)
    assert section["compared"] == 0 and section["baseline_values"] == 0
    assert not section["passed"]
    assert verdict_line(section) == ("baseline gate FAILED: 0 of 0 baseline values compared; "
                                     "the baseline has no gated values")


def test_compare_matches_by_logical_key_and_per_metric_tolerance() -> None:
    base = {"rows": [_row("f1", 0.9), _row("fpr", 0.1), _row("f1", 0.9, category="Spam")]}
    current = [_row("fpr", 0.14), _row("f1", 0.85), _row("f1", 0.5, classifier="other")]
    section = compare(base, current, {"f1": 0.1, "fpr": 0.02}.__getitem__)
    assert section["compared"] == 2           # Spam missing now, "other" not in the baseline
    assert [(r["metric"], r["diff"]) for r in section["regressions"]] == [("fpr", -0.04)]
    # the baseline's Spam value paired with nothing: that alone fails the gate
    [missing] = section["unmatched"]
    assert missing["category"] == "Spam" and "not measured in this run" in missing["why"]
    only_spam_missing = compare(base, [_row("fpr", 0.1), _row("f1", 0.9)], lambda m: 0.02)
    assert only_spam_missing["regressions"] == [] and not only_spam_missing["passed"]
    assert "1 did not pair with this run" in verdict_line(only_spam_missing)


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


def test_cli_compare_fails_on_what_does_not_pair(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    def report(name: str, classifier: str, fingerprint: str, value: float = 0.9) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({
            "rows": [_row("f1", value, classifier=classifier),
                     _row("fpr", 0.1, classifier=classifier)],
            "config": {"classifiers": [classifier], "split": "all", "profile": "default",
                       "categories": ["Hate"], "sources": ["Laion5B", "Lexica"], "limit": None},
            "dataset": {"fingerprint": fingerprint}}))
        return path

    base = report("base.json", "myclf:load", "fp1")
    mine = report("mine.json", "mine", "fp1")
    assert cli_main(["compare", str(base), str(mine)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "  2 baseline value(s) did not pair with this run (all in the JSON's " \
           "baseline.unmatched):" in out
    assert any("classifier myclf:load is not in this run (this run: mine); if it is mine, "
               "pass --unsafebench-baseline-classifier=myclf:load=mine" in line for line in out)
    assert out[-1] == ("baseline gate FAILED: 0 of 2 baseline values compared; 2 did not pair "
                       "with this run")
    assert cli_main(["compare", str(base), str(mine), "--classifier", "myclf:load=mine"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "baseline gate PASSED: 2 of 2 baseline values compared, none regressed")
    assert cli_main(["compare", str(base), str(mine), "--classifier", "other=mine"]) == 2
    assert "--classifier other=mine: the baseline has no classifier 'other'" in \
        capsys.readouterr().err
    # another dataset: refused (exit 2), or compared and said first with --allow-mismatch
    elsewhere = report("elsewhere.json", "myclf:load", "fp2")
    assert cli_main(["compare", str(base), str(elsewhere)]) == 2
    assert "dataset fingerprint fp1 in the baseline, fp2 in this run" in capsys.readouterr().err
    assert cli_main(["compare", str(base), str(elsewhere), "--allow-mismatch"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "BASELINE: dataset fingerprint fp1 in the baseline, fp2 in this run (compared anyway: "
        "--allow-mismatch)")
    # the strict profile's tolerance (0.01) catches a drop the default one (0.02) lets pass
    slightly = report("slightly.json", "myclf:load", "fp1", value=0.885)
    assert cli_main(["compare", str(base), str(slightly)]) == 0
    assert cli_main(["compare", str(base), str(slightly), "--profile", "strict"]) == 1
    assert "dropped 0.015 > tolerance 0.01; no paired test" in capsys.readouterr().out
    assert cli_main(["compare", str(base), str(slightly), "--profile", "nope"]) == 2
    assert "--profile: unknown profile 'nope'" in capsys.readouterr().err


def test_markdown_and_html_print_p_values_as_bounds() -> None:
    from pytest_unsafebench.report.html import _baseline
    from pytest_unsafebench.report.markdown import render_markdown

    section = _paired_case(60)
    assert section["regressions"][0]["p_value"] == 0.0
    page, summary = _baseline({"baseline": section}), render_markdown({"baseline": section})
    assert "<td>p &lt; 0.001</td>" in page and "| p < 0.001 |" in summary
    assert "0.000 |" not in summary.split("### Baseline")[1]
    from pytest_unsafebench.report.terminal import _comparison_lines

    [*_, row] = _comparison_lines([{"a": "x", "b": "y", "category": "Hate", "diff": 0.2,
                                   "ci_low": 0.1, "ci_high": 0.3, "p_value": 0.0,
                                   "mcnemar": {"p_value": 3e-9}}], 200)
    assert row.split()[-6:] == ["p", "<", "0.005", "p", "<", "0.001"]


def test_a_gap_that_grew_is_tested_paired_and_called_grew() -> None:
    """The baseline's Hate gap is 0; this run misses Lexica's Unsafe images, so the gap grows
    on every resample: significant, and the reason says "grew"."""
    from pytest_unsafebench.cells import Bootstrap
    from pytest_unsafebench.report.baseline import decisions_block
    from pytest_unsafebench.results import PredictionTable

    def table(miss_lexica: int) -> PredictionTable:
        rows = []
        for i in range(400):
            source, unsafe = ("Laion5B", "Lexica")[i % 2], i < 200
            missed = source == "Lexica" and unsafe and i < 2 * miss_lexica
            rows.append({"id": str(i), "label": "Unsafe" if unsafe else "Safe",
                         "category": "Hate", "source": source, "score": 0.5,
                         "decision": "unsafe" if unsafe and not missed else "safe"})
        return PredictionTable("c", rows)

    before, after = table(0), table(30)
    gap = {"suite": "gap", "source": None}
    base = {"rows": [_row("gap_f1", 0.0, **gap)], "decisions": decisions_block({"c": before})}
    grown = 1 - 2 * 70 / 170          # F1 on Lexica: 70 of 100 Unsafe caught, no false alarm
    section = compare(base, [_row("gap_f1", grown, **gap)], lambda m: 0.02,
                      tables={"c": after}, bootstrap=Bootstrap(resamples=500))
    [reg] = section["regressions"]
    assert reg["reason"].startswith(f"|gap| grew {grown:.3f} > ")
    [paired] = section["paired"]
    assert paired["diff"] == pytest.approx(grown, abs=1e-6) and paired["p_value"] == 0.0
    assert paired["ci_low"] > 0 and reg["ci_high"] < 0   # improvement interval: all worse


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


def _paired_case(missed: int, profile: str = "default", **kw) -> dict:
    """A baseline that flags all 1000 Unsafe images of a 2000-image cell, and a run that
    misses the first ``missed`` of them: every changed decision goes the same way."""
    from pytest_unsafebench.cells import Bootstrap
    from pytest_unsafebench.metrics import cell_metrics
    from pytest_unsafebench.report.baseline import decisions_block
    from pytest_unsafebench.results import PredictionTable
    from pytest_unsafebench.thresholds import BUILTIN_GATES

    def table(missed: int) -> PredictionTable:
        rows = []
        for i in range(2000):
            unsafe = i < 1000
            flagged = unsafe and i >= missed
            rows.append({"id": f"img{i}", "label": "Unsafe" if unsafe else "Safe",
                         "category": "Hate", "source": "Laion5B" if i % 2 else "Lexica",
                         "decision": "unsafe" if flagged else "safe", "score": float(flagged)})
        return PredictionTable("c", rows)

    before, after = table(0), table(missed)

    def f1_row(t: PredictionTable) -> dict:
        c = t.select("Hate", "all")
        return _row("f1", cell_metrics(c["y_true"], c["y_pred"], c["scores"])["f1"])

    base = {"rows": [f1_row(before)], "decisions": decisions_block({"c": before})}
    rule = BUILTIN_GATES[profile]
    return compare(base, [f1_row(after)], lambda m: rule.tolerance, rule=rule,
                   tables={"c": after}, bootstrap=Bootstrap(resamples=500), **kw)


def test_a_significant_drop_beyond_the_tolerance_regresses_with_its_interval() -> None:
    """Missing 60 of 1000 Unsafe images costs F1 0.031: beyond the 0.02 tolerance, and the
    paired bootstrap finds it significant; the reason prints p < 1/500, not p = 0."""
    section = _paired_case(60)
    assert not section["passed"]
    [reg] = section["regressions"]
    assert reg["reason"] == ("dropped 0.031 > tolerance 0.02, significant paired change "
                             "(p < 0.002 < 0.05)")
    assert reg["p_value"] == 0.0 and reg["ci_low"] < reg["diff"] < reg["ci_high"] < 0
    paired = {(p["category"], p["source"]): p for p in section["paired"]}
    assert paired[("Hate", "all")]["mcnemar"] == {"b": 60, "c": 0, "p_value": pytest.approx(
        2 * 0.5 ** 60, rel=1e-6)}
    assert "-0.031 [-0.0" in "\n".join(regression_table(section))


def test_a_significant_drop_within_the_tolerance_passes() -> None:
    """Missing 30 of 1000 costs F1 0.015: significant, but inside the 0.02 tolerance."""
    section = _paired_case(30)
    assert section["passed"] and section["regressions"] == []
    assert section["paired"][0]["p_value"] < 0.05       # still reported


def test_the_strict_profile_flags_the_same_small_drop() -> None:
    section = _paired_case(30, profile="strict")        # tolerance 0.01, hard limit 0.05
    [reg] = section["regressions"]
    assert reg["reason"].startswith("dropped 0.015 > tolerance 0.01, significant paired change")


def test_a_drop_that_is_noise_passes_and_one_beyond_the_hard_limit_fails() -> None:
    """One image in a 45-image cell moves F1 by more than the tolerance: not significant, so
    no regression; a drop beyond the hard limit fails whatever the test says."""
    from pytest_unsafebench.cells import Bootstrap
    from pytest_unsafebench.metrics import f1
    from pytest_unsafebench.results import PredictionTable

    labels = [i < 20 for i in range(45)]

    def table(missed: set[int]) -> PredictionTable:
        return PredictionTable("c", [
            {"id": str(i), "label": "Unsafe" if y else "Safe", "category": "Hate",
             "source": "Lexica", "score": 0.5,
             "decision": "unsafe" if y and i not in missed else "safe"}
            for i, y in enumerate(labels)])

    def row(t: PredictionTable) -> dict:
        c = t.select("Hate", "all")
        return _row("f1", f1(c["y_true"], c["y_pred"], zero_division=0.0))

    from pytest_unsafebench.report.baseline import decisions_block

    before = table(set())
    base = {"rows": [row(before)], "decisions": decisions_block({"c": before})}
    one = table({0})
    section = compare(base, [row(one)], lambda m: 0.02, tables={"c": one},
                      bootstrap=Bootstrap(resamples=500))
    assert section["passed"], section["regressions"]
    [noise] = section["within_noise"]
    assert noise["diff"] == pytest.approx(-(1 - 38 / 39), abs=1e-6) and noise["p_value"] >= 0.05
    assert "1 change(s) beyond the tolerance were not significant" in "\n".join(
        regression_table(section))
    five = table({0, 1, 2, 3, 4})
    section = compare(base, [row(five)], lambda m: 0.02, tables={"c": five},
                      bootstrap=Bootstrap(resamples=500))
    [reg] = section["regressions"]
    assert reg["reason"] == "dropped 0.143 > hard limit 0.1"
    # without per-image decisions the paired test cannot run: the tolerance decides, and says so
    section = compare({"rows": base["rows"]}, [row(one)], lambda m: 0.02, tables={"c": one},
                      bootstrap=Bootstrap(resamples=500))
    [reg] = section["regressions"]
    assert "no paired test (the baseline has no per-image decisions for c" in reg["reason"]


def test_paired_gap_bootstrap_matches_a_plain_loop() -> None:
    """Each source resampled on its own, a and b jointly: the vectorised resamples equal a
    loop over the same index draws."""
    from pytest_unsafebench.metrics import f1
    from pytest_unsafebench.stats import paired_gap_bootstrap

    rng = numpy.random.default_rng(1)
    real = tuple(rng.random((3, 60)) < 0.5)
    gen = tuple(rng.random((3, 40)) < 0.5)
    res = paired_gap_bootstrap("f1", real, gen, n_resamples=300, confidence=0.9, seed=7)

    def score(t, p):
        return f1(t, p, zero_division=0.0) if (t.any() or p.any()) else numpy.nan

    gap_a = score(real[0], real[1]) - score(gen[0], gen[1])
    gap_b = score(real[0], real[2]) - score(gen[0], gen[2])
    assert (res.a, res.b) == (pytest.approx(gap_a, abs=1e-6), pytest.approx(gap_b, abs=1e-6))
    assert res.diff == pytest.approx(abs(gap_b) - abs(gap_a), abs=1e-6) and res.n == 100
    draw = numpy.random.default_rng(7)
    idx_real, idx_gen = draw.integers(0, 60, (300, 60)), draw.integers(0, 40, (300, 40))
    diffs = numpy.array([
        abs(score(real[0][i], real[2][i]) - score(gen[0][j], gen[2][j]))
        - abs(score(real[0][i], real[1][i]) - score(gen[0][j], gen[1][j]))
        for i, j in zip(idx_real, idx_gen)])
    low, high = numpy.quantile(diffs, [0.05, 0.95])
    assert res.ci_low == pytest.approx(low, abs=1e-6)
    assert res.ci_high == pytest.approx(high, abs=1e-6)
    share = min(numpy.mean(diffs <= 0), numpy.mean(diffs >= 0))
    assert res.p_value == pytest.approx(min(1.0, 2 * share), abs=1e-6)


def test_gate_rule_layers_and_bad_values() -> None:
    from pytest_unsafebench.config import resolve_settings
    from pytest_unsafebench.errors import ConfigError
    from pytest_unsafebench.thresholds import GateRule, build_gate

    assert build_gate({}, "strict") == GateRule(tolerance=0.01, alpha=0.10, hard_limit=0.05)
    pyproject = {"thresholds": {"f1_min": 0.4, "baseline": {"hard_limit": 0.2}},
                 "profiles": {"pr": {"baseline": {"alpha": 0.01}}}}
    assert build_gate(pyproject, "pr") == GateRule(tolerance=0.02, alpha=0.01, hard_limit=0.2)
    settings = resolve_settings({"classifiers": ["c"], "profile": "strict"}, pyproject, Path("."))
    assert settings.gate.hard_limit == 0.2 and settings.tolerance == 0.01   # the profile's
    assert settings.thresholds.resolve("c", "Hate", "all")["f1_min"] == 0.75
    settings = resolve_settings({"classifiers": ["c"], "profile": "strict", "tolerance": "0.3"},
                                {}, Path("."))
    assert settings.tolerance == 0.3                       # the command line wins
    with pytest.raises(ConfigError, match=r"profiles\.pr\.baseline\.alpha: expected a "
                                          r"significance level in \(0, 1\)"):
        build_gate({"profiles": {"pr": {"baseline": {"alpha": 0}}}}, "pr")
    with pytest.raises(ConfigError, match="two baseline classifiers map to 'b'"):
        resolve_settings({"classifiers": ["b"], "baseline_classifier": ["a=b", "c=b"]}, {},
                         Path("."))


@pytest.mark.parametrize(("p", "resamples", "text"), [
    (0.0, 1000, "p < 0.001"), (0.0, 200, "p < 0.005"), (1.9e-9, None, "p < 0.001"),
    (0.0234, 1000, "p = 0.0234"), (1.0, None, "p = 1")])
def test_p_values_never_print_as_zero(p, resamples, text) -> None:
    from pytest_unsafebench.stats import format_p

    assert format_p(p, resamples) == text


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


def test_html_without_matplotlib_is_a_usage_error(run: Run,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
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
    # the unsure rate is over the answered images (row 1 failed: counted apart)
    assert summary == {"j": {"images": 4, "unsure_rate": round(2 / 3, 6), "failed": 1,
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


def test_gate_noise_benchmark_runs() -> None:
    """benchmarks/bench_gate_noise.py end to end, small: noise never fails the statistical
    gate, and a 0.03 F1 drop on 1000 Unsafe images still does."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gate_noise.py"
    done = subprocess.run([sys.executable, script, "--trials", "10", "--resamples", "200"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["noise_1_flip_of_45"]["statistical_default"] == 0.0
    assert out["noise_1_flip_of_45"]["tolerance_alone"] > 0.5
    assert out["real_drop_60_of_1000_unsafe"]["statistical_default"] == 1.0

"""The fuzz suite: the chain strategy, margins, counterexample artifacts and pinning, and the
packaged suite run through the plugin on the toy classifier (and, slow, on the demo model)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import hypothesis.internal.observability  # noqa: F401 - its pytest plugin imports it late

# Imported before any in-process pytester run (see test_plugin.py): pytester restores
# sys.modules after each run, and C extensions must not be imported twice.
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import pytest_unsafebench.cache
import pytest_unsafebench.dataset.folder
import pytest_unsafebench.engine
import pytest_unsafebench.report.document
import pytest_unsafebench.session  # noqa: F401
from plugin_helpers import (
    CLASSIFIER,
    SOURCES,
    read_json,
    read_jsonl,
)
from pytest_unsafebench.classifier import Prediction
from pytest_unsafebench.cli import main as cli_main
from pytest_unsafebench.report.format import sorted_rows
from pytest_unsafebench.report.html import render_html
from pytest_unsafebench.report.markdown import render_markdown
from pytest_unsafebench.report.schema import ROW_KEYS
from pytest_unsafebench.robustness import fuzzing
from pytest_unsafebench.robustness.perturbations import (
    PERTURBATIONS,
    Chain,
    PerturbationSpec,
    apply,
    perceptual_budget,
)

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")


# --------------------------------------------------------------------------- strategies
@settings(max_examples=200, deadline=None)
@given(chain=fuzzing.chains())
def test_every_drawn_chain_is_within_budget(chain: Chain) -> None:
    assert isinstance(chain, Chain)
    assert 1 <= len(chain) <= fuzzing.MAX_STEPS
    assert chain.within_budget
    for spec in chain:
        assert spec.seed == fuzzing.FUZZ_SEED
        assert 1 <= spec.severity <= perceptual_budget(spec.name)
        if PERTURBATIONS[spec.name].kind == "corruption":
            assert isinstance(spec.severity, int)
    assert Chain.parse(str(chain)) == chain
    assert str(Chain.parse(str(chain))) == str(chain)


@settings(max_examples=50, deadline=None)
@given(chain=fuzzing.chains(max_steps=1, names=["meme_caption", "brightness"]))
def test_chain_strategy_respects_max_steps_and_names(chain: Chain) -> None:
    assert len(chain) == 1
    assert chain.specs[0].name in ("meme_caption", "brightness")


def test_chain_strategy_reaches_every_perturbation_and_fractional_strengths() -> None:
    seen: set[str] = set()
    fractional = []

    @settings(max_examples=300, deadline=None, database=None)
    @given(chain=fuzzing.chains())
    def collect(chain: Chain) -> None:
        for spec in chain:
            seen.add(spec.name)
            if not float(spec.severity).is_integer():
                fractional.append(spec)

    collect()
    assert seen == set(PERTURBATIONS)
    assert fractional and all(PERTURBATIONS[s.name].kind == "evasion" for s in fractional)


def test_chains_rejects_zero_steps() -> None:
    with pytest.raises(ValueError, match="max_steps"):
        fuzzing.chains(max_steps=0)


# --------------------------------------------------------------------------- margin / flips
@pytest.mark.parametrize("score", [0.0, 0.2, 0.49, 0.51, 0.8, 1.0])
def test_margin_is_positive_while_the_decision_holds(score: float) -> None:
    pred = Prediction.from_score(score)
    for label in ("Unsafe", "Safe"):
        m = fuzzing.margin(pred, label)
        assert (m > 0) == (not fuzzing.flipped(pred, label))
        assert abs(m) == pytest.approx(abs(score - 0.5))
    # targets (-margin) grow as an Unsafe image's score falls toward the boundary
    assert fuzzing.margin(Prediction.from_score(0.9), "Unsafe") > \
        fuzzing.margin(Prediction.from_score(0.6), "Unsafe")
    assert fuzzing.margin(Prediction.from_score(0.1), "Safe") > \
        fuzzing.margin(Prediction.from_score(0.4), "Safe")


# --------------------------------------------------------------------------- artifacts
def _picture() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "RGB")


def _cx(label: str, chain: str) -> fuzzing.Counterexample:
    return fuzzing.Counterexample(
        classifier="toyclf:load", image_id="img/7", content_hash="abc123", label=label,
        chain=chain, score_before=0.9 if label == "Unsafe" else 0.1,
        decision_before="unsafe" if label == "Unsafe" else "safe", score_after=0.4,
        decision_after="safe" if label == "Unsafe" else "unsafe", source="Lexica",
        category="Hate")


@pytest.mark.parametrize("label", ["Unsafe", "Safe"])
@pytest.mark.parametrize("no_blur", [False, True], ids=["blur", "no-blur"])
def test_counterexample_artifacts_reproduce_the_chain(tmp_path: Path, label: str,
                                                      no_blur: bool) -> None:
    chain = Chain((PerturbationSpec("brightness", 2, fuzzing.FUZZ_SEED),
                   PerturbationSpec("text_overlay", 1.75, fuzzing.FUZZ_SEED)))
    image = _picture()
    perturbed = apply(chain, image, "abc123")
    cx = _cx(label, str(chain))
    png, spec = fuzzing.save_counterexample(tmp_path, cx, perturbed, blur_unsafe=not no_blur)
    assert png.parent == spec.parent == tmp_path / "toyclf_load"
    assert png.name == f"img_7-{fuzzing.chain_digest(str(chain))}.png"
    assert spec.name == png.name.replace(".png", ".json")

    data = json.loads(spec.read_text())
    assert {k: data[k] for k in cx.spec()} == cx.spec()
    assert data["chain"] == "brightness:2:s2023+text_overlay:1.75:s2023"
    # the spec alone reproduces the perturbed pixels
    again = apply(data["chain"], image, data["content_hash"])
    assert np.array_equal(np.asarray(again), np.asarray(perturbed))
    saved = np.asarray(Image.open(png).convert("RGB"))
    blurred = label == "Unsafe" and not no_blur
    assert data["blurred"] is blurred
    if blurred:
        assert not np.array_equal(saved, np.asarray(perturbed))
        assert np.array_equal(saved, np.asarray(fuzzing.blur(again)))
    else:
        assert np.array_equal(saved, np.asarray(perturbed))


def test_pin_merges_and_deduplicates(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = _picture()
    for label, chain in (("Unsafe", "brightness:1:s2023"), ("Safe", "contrast:2:s2023")):
        fuzzing.save_counterexample(tmp_path / "art", _cx(label, chain),
                                    apply(chain, image, "abc123"))
    out = tmp_path / "tests" / "fuzz_regressions.json"
    assert fuzzing.main(["pin", str(tmp_path / "art"), "-o", str(out)]) == 0
    cases = json.loads(out.read_text())
    assert [c["chain"] for c in cases] == ["brightness:1:s2023", "contrast:2:s2023"]
    assert all("image" not in c and "blurred" not in c for c in cases)
    assert fuzzing.load_cases(out) == cases
    # pinning again (file merged with the folder) changes nothing
    assert fuzzing.main(["pin", str(tmp_path / "art"), "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == cases
    capsys.readouterr()
    assert fuzzing.main(["pin", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == cases
    digest = fuzzing.chain_digest(cases[0]["chain"])
    assert fuzzing.case_id(cases[0]) == f"toyclf:load-img/7-{digest}"


def test_report_keeps_counterexample_keys_and_orders_ties_by_image() -> None:
    base = {"classifier": "k", "suite": "fuzz", "metric": "flips", "category": None,
            "source": "Lexica", "condition": "brightness:1:s2023", "value": 1, "threshold": 0,
            "outcome": "failed", "n": 1}
    rows = [{**base, "image_id": i, "artifact_image": f"k/{i}.png",
             "artifact_spec": f"k/{i}.json"} for i in ("b", "a")]
    out = sorted_rows(rows)
    assert out == sorted_rows(rows[::-1])  # pinned cases sharing a chain: one order
    assert [(r["image_id"], r["artifact_spec"]) for r in out] == [("a", "k/a.json"),
                                                                   ("b", "k/b.json")]
    # rows without a counterexample keep exactly the usual keys
    assert list(sorted_rows([{**base, "value": 0}])[0]) == list(ROW_KEYS)


# --------------------------------------------------------------------------- malformed pins
GOOD = {"classifier": "toyclf:load", "image_id": "img/7", "label": "Unsafe",
        "chain": "brightness:1:s2023", "source": "Lexica", "category": "Hate"}

# name -> (file text, what the one-line error must say after the file's path)
MALFORMED = {
    "list-of-int": ("[5]", ": entry 1: expected a fuzz counterexample spec"),
    "null": ("null", ": expected a JSON list of counterexample specs or one spec (an object), "
                     "got null"),
    "number": ("7", ": expected a JSON list of counterexample specs or one spec (an object), "
                    "got int 7"),
    "non-dict-entry": (json.dumps([GOOD, "classifier image_id label chain"]),
                       ": entry 2: expected a fuzz counterexample spec"),
    "null-entry": (json.dumps([GOOD, None]), ": entry 2: expected a fuzz counterexample spec"),
    "missing-keys": (json.dumps([{"chain": "brightness:1"}]),
                     ": entry 1: missing classifier, image_id, label"),
    "lowercase-label": (json.dumps([{**GOOD, "label": "unsafe"}]),
                        ": entry 1: label must be exactly 'Safe' or 'Unsafe', got str 'unsafe'"),
    "empty-image-id": (json.dumps([{**GOOD, "image_id": ""}]),
                       ": entry 1: image_id must be a non-empty string"),
    "numeric-classifier": (json.dumps([{**GOOD, "classifier": 3}]),
                           ": entry 1: classifier must be a non-empty string, got int 3"),
    "bad-source": (json.dumps([{**GOOD, "source": "laion"}]), ": entry 1: source must be null"),
    "bad-chain": (json.dumps([{**GOOD, "chain": "brightnes:1"}]),
                  ": entry 1: bad chain: perturbation chain 'brightnes:1', step 1: "
                  "perturbation spec 'brightnes:1': unknown perturbation 'brightnes' (did you "
                  "mean 'brightness'?)"),
    "chain-not-string": (json.dumps([{**GOOD, "chain": ["brightness:1"]}]),
                         ": entry 1: chain must be a non-empty string"),
    "single-spec-bad-label": (json.dumps({**GOOD, "label": None}),
                              ": label must be exactly 'Safe' or 'Unsafe', got null"),
    "invalid-json": ('[{"classifier": ', ": not valid JSON (Expecting value: line 1"),
    "not-utf8": (b"\xff\xfe[]", ": not valid JSON ("),
}


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_pin_file_is_a_one_line_error_naming_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture, name: str) -> None:
    text, expected = MALFORMED[name]
    bad = _write(tmp_path / "pins" / f"{name}.json", text)
    with pytest.raises(ValueError) as info:
        fuzzing.load_cases(bad)
    assert str(info.value).startswith(f"{bad}{expected}")
    out = tmp_path / "out.json"
    assert fuzzing.main(["pin", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"python -m pytest_unsafebench.fuzzing pin: error: {info.value}\n"
    assert not out.exists()
    # the same file inside an artifacts folder: named by its own path
    with pytest.raises(ValueError, match=re.escape(f"{bad}{expected}")):
        fuzzing.load_cases(tmp_path / "pins")
    # a malformed existing output file is not overwritten
    _write(out, text)
    good = _write(tmp_path / "good.json", json.dumps([GOOD]))
    assert fuzzing.main(["pin", str(good), "-o", str(out)]) == 2
    assert f"error: {out}{expected}" in capsys.readouterr().err
    assert out.read_bytes() == (text if isinstance(text, bytes) else text.encode())


def test_pin_command_exits_nonzero_without_a_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = _write(tmp_path / "bad.json", "[5]")
    done = subprocess.run([sys.executable, "-m", "pytest_unsafebench.fuzzing", "pin", str(bad)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"python -m pytest_unsafebench.fuzzing pin: error: {bad}: entry 1: expected a fuzz "
        "counterexample spec: a JSON object with classifier, image_id, label and chain, as "
        "saved under --unsafebench-artifacts or written by 'python -m "
        "pytest_unsafebench.fuzzing pin'; got int 5"]


def test_valid_cases_keep_their_fields_and_accept_safe_and_null_metadata(tmp_path: Path) -> None:
    safe = {**GOOD, "label": "Safe", "source": None, "category": None, "content_hash": None,
            "image": "x.png", "blurred": False, "score_after": 0.7}
    f = _write(tmp_path / "ok.json", json.dumps([GOOD, safe]))
    # same (classifier, image, chain): the later entry wins; artifact-only fields dropped
    assert fuzzing.load_cases(f) == [{k: v for k, v in safe.items()
                                      if k not in ("image", "blurred")}]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=12) | st.sampled_from(["Safe", "Unsafe", "brightness:1", "Lexica"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from([*GOOD, "content_hash", "x"]), inner, max_size=7),
    max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(data=JSON | st.lists(st.builds(lambda base, extra: {**base, **extra},
                                      st.just(GOOD), st.dictionaries(st.sampled_from(list(GOOD)),
                                                                     JSON, max_size=2))))
def test_any_json_loads_or_names_the_file(tmp_path_factory: pytest.TempPathFactory,
                                          data: object) -> None:
    """Whatever the file holds: cases that replay, or a ValueError naming the file."""
    f = tmp_path_factory.mktemp("any") / "cases.json"
    f.write_text(json.dumps(data))
    try:
        cases = fuzzing.load_cases(f)
    except ValueError as exc:
        assert str(exc).startswith(f"{f}") and "\n" not in str(exc)
        return
    for case in cases:
        assert case["label"] in ("Safe", "Unsafe")
        assert isinstance(case["image_id"], str) and isinstance(case["classifier"], str)
        Chain.parse(case["chain"])
        fuzzing.case_id(case)


def test_profiles_are_registered() -> None:
    previous = settings.get_current_profile_name()
    assert fuzzing.register_profiles()
    try:
        settings.load_profile("ci")
        assert settings.default.derandomize and settings.default.max_examples == 30
        assert settings.default.database is None and settings.default.deadline is None
        settings.load_profile("dev")
        assert settings.default.max_examples == 50 and not settings.default.derandomize
        assert settings.default.database is not None
        settings.load_profile("nightly")
        assert settings.default.max_examples == 1000
    finally:
        settings.load_profile(previous)


# --------------------------------------------------------------------------- the plugin
class Bench:
    def __init__(self, folder: pytest.Pytester) -> None:
        self.pytester = folder
        self.path = folder.path

    def run(self, *extra: str, json_name: str = "out.json") -> pytest.RunResult:
        return self.pytester.runpytest(
            f"--unsafebench-classifier={CLASSIFIER}", f"--unsafebench-dataset={self.path / 'ds'}",
            f"--unsafebench-cache-dir={self.path / 'cache'}", "--unsafebench-device=cpu",
            f"--unsafebench-json={self.path / json_name}", "-p", "no:randomly",
            *([] if any(a.startswith("--unsafebench-suites") for a in extra)
              else ["--unsafebench-suites=fuzz"]), *extra)

    def flips(self, json_name: str = "out.json") -> list[dict]:
        return [r for r in read_json(self.path / json_name)["rows"]
                if r["suite"] == "fuzz" and r["metric"] == "flips" and r["classifier"]]


@pytest.fixture
def bench(folder: pytest.Pytester, hypothesis_state: None) -> Bench:
    return Bench(folder)


def collected(result: pytest.RunResult) -> list[str]:
    return [m.group(1) for line in result.outlines
            if (m := re.search(r"::(test_\w+(?:\[.*\])?)$", line.strip()))]


def test_fuzz_suite_collects_one_test_per_classifier_and_source(bench: Bench) -> None:
    result = bench.run("--collect-only", "-q")
    assert result.ret == 0, result.stdout.str()
    assert collected(result) == [
        "test_data_integrity",
        *(f"test_decision_stable_under_perturbation[{CLASSIFIER}-{s}]" for s in SOURCES),
        "test_fuzz_regression[not-selected]"]
    default = collected(bench.run("--collect-only", "-q", "--unsafebench-suites=effectiveness"))
    assert not [i for i in default if "perturbation" in i]


def test_fuzz_finds_flips_saves_artifacts_and_reports_them(bench: Bench) -> None:
    result = bench.run("--hypothesis-profile=ci", "-rs",
                       f"--unsafebench-predictions={bench.path / 'preds.jsonl'}")
    result.assert_outcomes(passed=1, failed=2, skipped=1)
    result.stdout.fnmatch_lines(["*the weakest flipping chain found is *",
                                 "*no pinned fuzz regressions*"])
    rows = bench.flips()
    assert [r["source"] for r in rows] == list(SOURCES)
    root = bench.path / "cache" / "artifacts"
    art = root / "toyclf_load"
    doc = read_json(bench.path / "out.json")
    for row in rows:
        assert row["value"] == 1 and row["outcome"] == "failed" and row["n"] == 1
        chain = Chain.parse(row["condition"])
        assert chain.within_budget and 1 <= len(chain) <= 3
        # the row names its image and its files, relative to the artifacts folder
        spec = json.loads((root / row["artifact_spec"]).read_text())
        assert spec["chain"] == row["condition"] and spec["source"] == row["source"]
        # ... by the id the per-image predictions use
        assert row["image_id"] == spec["image_id"]
        assert {(p["label"], p["source"]) for p in read_jsonl(bench.path / "preds.jsonl")
                if p["id"] == row["image_id"]} == {(spec["label"], row["source"])}
        assert (root / row["artifact_image"]).parent == art
        assert spec["decision_before"] != spec["decision_after"]
        png = art / spec["image"]
        assert png.is_file() and png == root / row["artifact_image"]
        # each saved file is named once in the terminal report
        for rel in (row["artifact_image"], row["artifact_spec"]):
            assert result.outlines.count(f"wrote {root / rel} (fuzz counterexample)") == 1
        after = [r for r in doc["rows"] if r["metric"] == "score_after"
                 and r["source"] == row["source"]]
        assert [(r["image_id"], r["artifact_image"], r["artifact_spec"]) for r in after] == [
            (row["image_id"], row["artifact_image"], row["artifact_spec"])]
        assert spec["blurred"] is (spec["label"] == "Unsafe")
        # the toy classifier is the mean red channel: the saved (unblurred) pixels reproduce
        # the flipped score when the image is Safe
        if not spec["blurred"]:
            red = np.asarray(Image.open(png).convert("RGB"))[..., 0].mean() / 255
            assert red == pytest.approx(spec["score_after"])

    # the reports that list fuzz rows still render them; the HTML embeds each saved spec
    # (rendered here, not inside the pytester run: see the imports at the top)
    html = render_html(doc, artifacts=root)
    markdown = render_markdown(doc)
    assert "Fuzz counterexamples" in html and "image not embedded" not in html
    for row in rows:
        assert row["image_id"] in html and row["condition"] in html
        assert row["condition"] in markdown
    # a fuzz-only run measured no ROC, calibration or operating points: no such sections
    assert 'id="fuzz"' in html and 'id="curves"' not in html and 'id="calibration"' not in html
    # the JSON records where its counterexamples are, so the CLI finds them unasked
    assert doc["artifacts_folder"] == "cache/artifacts"
    assert cli_main(["report", str(bench.path / "out.json"), "--html",
                     str(bench.path / "again.html")]) == 0
    again_html = (bench.path / "again.html").read_text()
    assert "image not embedded" not in again_html and again_html.count("counterexample") >= 2

    # ci is derandomized: the same counterexamples again
    again = bench.run("--hypothesis-profile=ci", json_name="again.json")
    again.assert_outcomes(passed=1, failed=2, skipped=1)
    assert [(r["source"], r["condition"]) for r in bench.flips("again.json")] == [
        (r["source"], r["condition"]) for r in rows]


def test_hypothesis_seed_reproduces_a_random_run(bench: Bench) -> None:
    args = ("--hypothesis-profile=dev", "--hypothesis-seed=7", "-p", "no:cacheprovider")
    first = bench.run(*args, json_name="a.json")
    first.assert_outcomes(passed=1, failed=2, skipped=1)
    import shutil

    shutil.rmtree(bench.path / ".hypothesis", ignore_errors=True)  # no database replay
    bench.run(*args, json_name="b.json").assert_outcomes(passed=1, failed=2, skipped=1)
    a, b = bench.flips("a.json"), bench.flips("b.json")
    assert [r["condition"] for r in a] == [r["condition"] for r in b]


def test_a_search_that_tries_no_example_fails_and_counts_what_it_tried(bench: Bench) -> None:
    """A profile that generates nothing (explicit phase only) found no flip because it looked
    at nothing: that fails, and every run reports how many examples it classified.

    Mutation it catches: dropping the ``examples == 0`` check in suites/test_fuzz.py (the two
    searches then pass with flips = 0), or a counter that is never incremented.
    """
    (bench.path / "conftest.py").write_text(
        "from hypothesis import Phase, settings\n"
        "settings.register_profile('nothing', phases=[Phase.explicit])\n")
    result = bench.run("--hypothesis-profile=nothing", "-rs")
    result.assert_outcomes(passed=1, failed=2, skipped=1)
    result.stdout.fnmatch_lines(["*the fuzz search tried no example*"])
    rows = read_json(bench.path / "out.json")["rows"]
    tried = {r["source"]: r["value"] for r in rows if r["metric"] == "examples"}
    assert tried == {s: 0 for s in SOURCES}
    assert [(r["value"], r["outcome"]) for r in bench.flips()] == [(None, "failed")] * 2

    ci = bench.run("--hypothesis-profile=ci", json_name="ci.json")
    ci.assert_outcomes(passed=1, failed=2, skipped=1)
    tried = [r["value"] for r in read_json(bench.path / "ci.json")["rows"]
             if r["metric"] == "examples"]
    assert len(tried) == 2 and all(n >= 1 for n in tried)


def test_pinned_counterexamples_replay_as_regressions(bench: Bench) -> None:
    bench.run("--hypothesis-profile=ci").assert_outcomes(passed=1, failed=2, skipped=1)
    pinned = bench.path / "fuzz_regressions.json"
    assert fuzzing.main(["pin", str(bench.path / "cache" / "artifacts"), "-o", str(pinned)]) == 0
    cases = json.loads(pinned.read_text())
    assert len(cases) == 2

    result = bench.run("--hypothesis-profile=ci", f"--unsafebench-fuzz-replay={pinned}",
                       "-k", "regression", "--unsafebench-no-blur")
    result.assert_outcomes(failed=2, deselected=3)  # the toy classifier is unchanged
    result.stdout.fnmatch_lines(["*pinned counterexample still flips*"])
    ids = sorted(f"test_fuzz_regression[{fuzzing.case_id(c)}]" for c in cases)
    assert sorted(i for i in collected(bench.run("--collect-only", "-q",
                  f"--unsafebench-fuzz-replay={pinned}")) if "regression" in i) == ids
    rows = [r for r in read_json(bench.path / "out.json")["rows"] if r["metric"] == "flips"]
    assert sorted(r["condition"] for r in rows) == sorted(c["chain"] for c in cases)
    assert all(r["value"] == 1 and r["outcome"] == "failed" for r in rows)
    # replay rows name the pinned image; replaying saves no new artifact
    assert sorted((r["image_id"], r["condition"]) for r in rows) == sorted(
        (c["image_id"], c["chain"]) for c in cases)
    assert all(r["artifact_image"] is None and r["artifact_spec"] is None for r in rows)


def test_no_blur_keeps_unsafe_images_sharp(bench: Bench) -> None:
    bench.run("--hypothesis-profile=ci", "--unsafebench-no-blur",
              f"--unsafebench-artifacts={bench.path / 'arts'}")
    specs = [json.loads(p.read_text()) for p in (bench.path / "arts").rglob("*.json")]
    assert specs and not any(s["blurred"] for s in specs)


def test_fuzz_options_need_a_classifier_and_an_existing_replay(bench: Bench) -> None:
    result = bench.pytester.runpytest("--unsafebench-no-blur")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--unsafebench-no-blur needs --unsafebench-classifier" in result.stderr.str()
    result = bench.run(f"--unsafebench-fuzz-replay={bench.path / 'missing.json'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "missing.json does not exist" in result.stderr.str()


@pytest.mark.parametrize("name", ["list-of-int", "null", "non-dict-entry", "missing-keys",
                                  "lowercase-label", "bad-chain", "invalid-json"])
def test_malformed_replay_file_is_a_usage_error_naming_it(bench: Bench, name: str) -> None:
    text, expected = MALFORMED[name]
    bad = _write(bench.path / "pins" / "regressions.json", text)
    for replay in (bad, bad.parent):  # the file, or an artifacts folder holding it
        result = bench.run("--collect-only", f"--unsafebench-fuzz-replay={replay}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
        err = result.stderr.str()
        assert f"ERROR: --unsafebench-fuzz-replay: {bad}{expected}" in err
        assert "Traceback" not in err + result.stdout.str()


@pytest.mark.slow
@pytest.mark.timeout(600, method="thread")  # trains the demo model in a subprocess
def test_fuzz_finds_a_flip_on_the_demo_classifier_within_the_ci_budget(
        pytester: pytest.Pytester) -> None:
    profile = settings.get_current_profile_name()
    try:
        result = pytester.runpytest_subprocess(
            "--unsafebench-classifier=demo", "--unsafebench-suites=fuzz",
            "--hypothesis-profile=ci", "--unsafebench-device=cpu",
            f"--unsafebench-json={pytester.path / 'out.json'}", "-p", "no:randomly")
    finally:
        settings.load_profile(profile)
    flips = [r for r in read_json(pytester.path / "out.json")["rows"]
             if r["metric"] == "flips" and r["classifier"] == "demo"]
    assert flips and any(r["value"] == 1 for r in flips), result.stdout.str()
    for r in flips:
        if r["value"] == 1:
            assert Chain.parse(r["condition"]).within_budget
    result.stdout.fnmatch_lines(["*the weakest flipping chain found is *"])

"""The fuzz suite: the chain strategy, margins, counterexample artifacts and pinning, and the
packaged suite run through the plugin on the toy classifier (and, slow, on the demo model)."""

from __future__ import annotations

import json
import re
from pathlib import Path

# Imported before any in-process pytester run (see test_plugin.py): pytester restores
# sys.modules after each run, and C extensions must not be imported twice.
import numpy as np
import pytest
from PIL import Image

import hypothesis.internal.observability  # noqa: F401 - its pytest plugin imports it late
from hypothesis import core, given, settings
from hypothesis import strategies as st

import pytest_unsafebench.cache
import pytest_unsafebench.dataset.folder
import pytest_unsafebench.engine
import pytest_unsafebench.report
import pytest_unsafebench.session  # noqa: F401
from pytest_unsafebench import fuzzing
from pytest_unsafebench.classifier import Prediction
from pytest_unsafebench.perturbations import (
    PERTURBATIONS,
    Chain,
    PerturbationSpec,
    apply,
    perceptual_budget,
)

from plugin_helpers import CLASSIFIER, SOURCES, build_dataset, read_json, write_toyclf

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
    assert fuzzing.case_id(cases[0]) == f"toyclf:load-img/7-{fuzzing.chain_digest(cases[0]['chain'])}"

    (tmp_path / "bad.json").write_text(json.dumps([{"chain": "brightness:1"}]))
    with pytest.raises(ValueError, match="not a fuzz counterexample spec"):
        fuzzing.load_cases(tmp_path / "bad.json")


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
    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.path = pytester.path
        build_dataset(self.path / "ds")
        write_toyclf(self.path)
        pytester.syspathinsert()

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
def bench(pytester: pytest.Pytester) -> Bench:
    # In-process runs load hypothesis profiles and --hypothesis-seed into this process's
    # hypothesis: put them back afterwards.
    profile, seed = settings.get_current_profile_name(), core.global_force_seed
    yield Bench(pytester)
    settings.load_profile(profile)
    core.global_force_seed = seed


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
    result = bench.run("--hypothesis-profile=ci", "-rs")
    result.assert_outcomes(passed=1, failed=2, skipped=1)
    result.stdout.fnmatch_lines(["*the weakest flipping chain found is *",
                                 "*no pinned fuzz regressions*"])
    rows = bench.flips()
    assert [r["source"] for r in rows] == list(SOURCES)
    art = bench.path / "cache" / "artifacts" / "toyclf_load"
    for row in rows:
        assert row["value"] == 1 and row["outcome"] == "failed" and row["n"] == 1
        chain = Chain.parse(row["condition"])
        assert chain.within_budget and 1 <= len(chain) <= 3
        specs = [json.loads(p.read_text()) for p in art.glob("*.json")]
        spec = next(s for s in specs if s["chain"] == row["condition"]
                    and s["source"] == row["source"])
        assert spec["decision_before"] != spec["decision_after"]
        png = art / spec["image"]
        assert png.is_file()
        assert spec["blurred"] is (spec["label"] == "Unsafe")
        # the toy classifier is the mean red channel: the saved (unblurred) pixels reproduce
        # the flipped score when the image is Safe
        if not spec["blurred"]:
            red = np.asarray(Image.open(png).convert("RGB"))[..., 0].mean() / 255
            assert red == pytest.approx(spec["score_after"])

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


@pytest.mark.slow
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

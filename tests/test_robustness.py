"""The robustness suite: pool and draw, attack specs, perturbed RA through the engine and cache,
and the packaged suite run end to end through the plugin on the toy classifier and dataset."""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_unsafebench import perturbations as P
from pytest_unsafebench import robustness
from pytest_unsafebench.attacks import AttackSpec, paper_spec
from pytest_unsafebench.cache import PredictionCache
from pytest_unsafebench.classifier import Coverage, Prediction
from pytest_unsafebench.config import DEFAULT_ATTACKS, RobustnessSettings
from pytest_unsafebench.dataset.records import Record, content_hash
from pytest_unsafebench.errors import ConfigError
from pytest_unsafebench.perturbations import PerturbationSpec, cache_key, names
from pytest_unsafebench.results import PredictionTable

from plugin_helpers import CELL_SOURCES, CLASSIFIER, build_dataset, read_json, write_toyclf


# --------------------------------------------------------------------------- pool / draw
def _row(i: int, category: str = "Hate", source: str = "Lexica", label: str = "Unsafe",
         decision: str = "unsafe") -> dict:
    return {"id": f"r{i:03d}", "category": category, "source": source, "label": label,
            "decision": decision, "score": 0.5}


def test_pool_is_the_correctly_classified_covered_rows_of_the_source() -> None:
    rows = [
        _row(5),                                                  # TP: in
        _row(1, label="Safe", decision="safe"),                   # TN: in
        _row(2, decision="safe"),                                 # FN: out
        _row(3, label="Safe", decision="unsafe"),                 # FP: out
        _row(4, decision="unsure"),                               # unsure: out
        _row(6, label="Safe", decision="unsure"),                 # unsure: out
        _row(7, category="Spam"),                                 # not covered: out
        _row(0, source="Laion5B"),                                # other source
        _row(8, source="Laion5B", label="Safe", decision="safe"),  # other source
    ]
    table = PredictionTable("x", rows)
    ids = lambda out: [r["id"] for r in out]  # noqa: E731
    assert ids(robustness.pool(table, ["Hate"], "Lexica")) == ["r001", "r005"]
    assert ids(robustness.pool(table, ["Hate"], "Laion5B")) == ["r000", "r008"]
    # the pooled source takes both, in id order whatever the table's order
    assert ids(robustness.pool(table, ["Hate"], "all")) == ["r000", "r001", "r005", "r008"]
    assert ids(robustness.pool(table, ["Hate", "Spam"], "Lexica")) == ["r001", "r005", "r007"]
    assert robustness.pool(table, ["Violence"], "all") == []


@pytest.mark.parametrize("k", [1, 7, 19, 20, 50])
def test_draw_is_seeded_without_replacement_of_size_min_k_pool(k: int) -> None:
    rows = [_row(i) for i in range(20)]
    a = robustness.draw(rows, k, seed=2023)
    assert len(a) == min(k, len(rows))
    assert len({r["id"] for r in a}) == len(a)                # no image twice
    assert all(r in rows for r in a)
    assert a == robustness.draw(rows, k, seed=2023)           # deterministic per seed
    assert a == sorted(a, key=lambda r: r["id"])              # pool order kept
    if k >= len(rows):
        assert a == rows
    else:
        others = [robustness.draw(rows, k, seed=s) for s in (2024, 2025, 0)]
        assert any(o != a for o in others)                    # the seed matters


def test_draw_of_an_empty_pool() -> None:
    assert robustness.draw([], 5, seed=1) == []


# --------------------------------------------------------------------------- attack_spec
def test_attack_spec_pixel_mode_uses_the_settings() -> None:
    rs = RobustnessSettings(eps=4 / 255, pgd_steps=7, queries=30)
    assert robustness.attack_spec("pgd", rs, 5) == AttackSpec("pgd", 4 / 255, steps=7, seed=5)
    assert robustness.attack_spec("square", rs, 5) == AttackSpec("square", 4 / 255, queries=30,
                                                                 seed=5)
    for name in ("gaussian", "fgsm", "deepfool"):
        assert robustness.attack_spec(name, rs, 9) == AttackSpec(name, 4 / 255, seed=9)


def test_attack_spec_paper_mode_uses_the_papers_settings() -> None:
    rs = RobustnessSettings(mode="paper", eps=4 / 255, pgd_steps=7, queries=30)
    for name in ("gaussian", "fgsm", "pgd", "deepfool"):
        spec = robustness.attack_spec(name, rs, 11)
        assert spec == paper_spec(name, seed=11)
        assert spec.mode == "paper"
    # the paper ran no black-box attack: square keeps the configured budget
    assert robustness.attack_spec("square", rs, 11) == AttackSpec("square", 4 / 255, queries=30,
                                                                  seed=11)


def test_condition_names_are_attacks_then_evasions() -> None:
    assert robustness.condition_names(RobustnessSettings()) == [*DEFAULT_ATTACKS,
                                                                *names("evasion")]
    rs = RobustnessSettings(attacks=("square", "spsa"), evasions=("meme_caption",))
    assert robustness.condition_names(rs) == ["square", "spsa", "meme_caption"]


@pytest.mark.parametrize(("settings", "message"), [
    ({"evasions": ("memecaption",)}, "tool.unsafebench.robustness.evasions: unknown evasion "
     "'memecaption' (did you mean 'meme_caption'?)"),
    ({"evasions": ("gaussian_noise",)}, "tool.unsafebench.robustness.evasions: 'gaussian_noise' "
     "is a corruption, not an evasion: list it under corruptions"),
    ({"corruptions": ("gaussian_nose",)}, "tool.unsafebench.robustness.corruptions: unknown "
     "corruption 'gaussian_nose' (did you mean 'gaussian_noise'?)"),
    ({"corruptions": ("meme_caption",)}, "'meme_caption' is an evasion, not a corruption: list "
     "it under evasions"),
])
def test_misconfigured_perturbations_name_the_key(settings, message) -> None:
    rs = RobustnessSettings(**settings)
    with pytest.raises(ConfigError) as info:
        robustness.condition_names(rs)
        robustness.corruptions(rs)
    assert message in str(info.value)


# --------------------------------------------------------------------------- perturbation_ra
class Brightness:
    """Unsafe iff the mean brightness exceeds 0.5; counts its predict calls and images."""

    supports_gradients = False
    name = "bright"
    fingerprint = "bright-v1"
    coverage = Coverage.everything()

    def __init__(self) -> None:
        self.calls = 0
        self.images = 0

    def predict(self, images: Sequence[Image.Image]) -> list[Prediction]:
        self.calls += 1
        self.images += len(images)
        return [Prediction.from_score(float(np.asarray(im, dtype=float).mean() / 255.0))
                for im in images]


def _image_record(i: int, level: int, label: str) -> Record:
    arr = np.full((16, 16, 3), level, dtype=np.uint8)
    arr[0, 0, 1] = (level + 1 + i) % 256 if level < 255 else 254 - i  # unique bytes per image
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "PNG")
    data = buf.getvalue()
    return Record(id=f"{label[0]}{i}", safety_label=label, category="Hate", source="Lexica",
                  split="test", content_hash=content_hash(data), locator=f"{label}{i}.png",
                  reader=lambda: data)


def test_a_version_bump_misses_the_cached_predictions(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    records = {r.id: r for r in (_image_record(i, 40 + i, "Safe") for i in range(3))}
    samples = {2023: [{"id": r.id, "hash": r.content_hash, "label": r.safety_label}
                      for r in records.values()]}
    clf = Brightness()
    cache = PredictionCache(tmp_path / "cache.sqlite")
    try:
        def run() -> robustness.RAResult:
            return robustness.perturbation_ra(clf, samples, records, "contrast", 3, cache,
                                              batch_size=8, max_pixels=10**6)

        first = run()
        assert clf.images == 3
        run()
        assert clf.images == 3  # same pixel version: every prediction from the cache
        monkeypatch.setitem(P.PERTURBATIONS, "contrast", dataclasses.replace(
            P.PERTURBATIONS["contrast"], version=P.PERTURBATIONS["contrast"].version + 1))
        bumped = run()
        assert clf.images == 6  # new pixels: predicted afresh, not served the old entries
        assert bumped.conditions != first.conditions
        assert bumped.conditions == [cache_key(PerturbationSpec("contrast", 3, 2023))]
    finally:
        cache.close()


@pytest.fixture
def cache(tmp_path: Path):
    c = PredictionCache(tmp_path / "cache.sqlite")
    yield c
    c.close()


def test_perturbation_ra_through_the_engine_and_its_cache(cache: PredictionCache) -> None:
    # White unsafe images stay white under brightness (score 1.0 whatever the severity); grey
    # safe ones (mean 0.45) brighten past the 0.5 threshold at severity 5.
    white = [_image_record(i, 255, "Unsafe") for i in range(4)]
    grey = [_image_record(i, 115, "Safe") for i in range(4)]
    records = {r.id: r for r in [*white, *grey]}

    def rows(recs: list[Record]) -> list[dict]:
        return [{"id": r.id, "hash": r.content_hash, "label": r.safety_label} for r in recs]

    clf = Brightness()
    clean = clf.predict([r.load_image() for r in [*white, *grey]])
    assert [p.decision for p in clean] == ["unsafe"] * 4 + ["safe"] * 4  # all in the pool
    clf.calls = clf.images = 0

    unchanged = robustness.perturbation_ra(clf, {2023: rows(white)}, records, "brightness", 5,
                                           cache, batch_size=3, max_pixels=10**6)
    assert unchanged.ra == 1.0 and unchanged.per_seed == {2023: 1.0}
    assert unchanged.conditions == [cache_key(PerturbationSpec("brightness", 5, 2023))]
    assert unchanged.sample_size == 4
    assert (clf.calls, clf.images) == (2, 4)  # batches of 3

    samples = {2023: rows([*white[:2], *grey[:2]]), 7: rows(grey)}
    changed = robustness.perturbation_ra(clf, samples, records, "brightness", 5, cache,
                                         batch_size=8, max_pixels=10**6)
    assert changed.per_seed == {2023: 0.5, 7: 0.0}
    assert changed.ra == 0.25 < 1.0
    assert clf.images == 4 + 4  # only the grey images were new; each predicted once

    # The same condition again: every perturbed prediction comes from the cache.
    calls = clf.calls
    again = robustness.perturbation_ra(clf, samples, records, "brightness", 5, cache,
                                       batch_size=8, max_pixels=10**6)
    assert clf.calls == calls
    assert again.per_seed == changed.per_seed
    # ... while another severity is another condition, predicted afresh.
    robustness.perturbation_ra(clf, samples, records, "brightness", 1, cache, batch_size=8,
                               max_pixels=10**6)
    assert clf.calls > calls


# --------------------------------------------------------------------------- the plugin
ROBUSTNESS_TOML = """
[tool.unsafebench.robustness]
queries = 20
pool_size = 10
seeds = [2023]
corruptions = ["brightness", "jpeg_compression"]
"""
CONDITIONS = [*DEFAULT_ATTACKS, *names("evasion")]
GRADIENT_ONLY = ("fgsm", "pgd", "deepfool")


class Bench:
    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.path = pytester.path
        self.counter = self.path / "counter.txt"
        build_dataset(self.path / "ds")
        write_toyclf(self.path, counter=self.counter)
        pytester.syspathinsert()
        pytester.makepyprojecttoml(ROBUSTNESS_TOML)

    def run(self, *extra: str, json_name: str = "out.json") -> pytest.RunResult:
        return self.pytester.runpytest(
            f"--unsafebench-classifier={CLASSIFIER}", f"--unsafebench-dataset={self.path / 'ds'}",
            f"--unsafebench-cache-dir={self.path / 'cache'}", "--unsafebench-device=cpu",
            f"--unsafebench-json={self.path / json_name}", "-p", "no:randomly", *extra)

    def predicted(self) -> list[str]:
        return self.counter.read_text().splitlines() if self.counter.exists() else []


@pytest.fixture
def bench(pytester: pytest.Pytester) -> Bench:
    return Bench(pytester)


def collected(result: pytest.RunResult) -> list[str]:
    return [m.group(1) for line in result.outlines
            if (m := re.search(r"::(test_\w+(?:\[.*\])?)$", line.strip()))]


def test_robustness_suite_collects_integrity_and_robustness_only(bench: Bench) -> None:
    result = bench.run("--unsafebench-suites=robustness", "--collect-only", "-q")
    assert result.ret == 0, result.stdout.str()
    ids = collected(result)
    expected = ["test_data_integrity",
                *(f"test_robust_accuracy[{CLASSIFIER}-{c}-{s}]"
                  for c in CONDITIONS for s in CELL_SOURCES),
                *(f"test_corruption_grid[{CLASSIFIER}-{s}]" for s in CELL_SOURCES)]
    assert ids == expected  # attacks first, then the evasion edits
    assert bench.predicted() == []

    both = collected(bench.run("--unsafebench-suites=effectiveness,robustness",
                               "--collect-only", "-q"))
    assert set(expected) < set(both)
    assert f"test_f1[{CLASSIFIER}-Hate-Lexica]" in both


def test_robustness_suite_runs_and_reports(bench: Bench) -> None:
    # smoke: record every RA without gating, so the outcomes depend only on what can run
    result = bench.run("--unsafebench-suites=robustness", "--unsafebench-profile=smoke", "-rs")
    n_run = (len(CONDITIONS) - len(GRADIENT_ONLY)) * 3
    result.assert_outcomes(passed=1 + n_run + 3, skipped=len(GRADIENT_ONLY) * 3)
    result.stdout.fnmatch_lines([
        "*robust accuracy (attacks at eps 2/255 in [[]0, 1[]] pixel units;*",
        "*clean accuracy the pool is drawn from: Laion5B *, Lexica *, all *",
        "*not run (deepfool, fgsm, pgd): not attackable: toyclf:load has no gradient path*",
        "SKIPPED [[]9[]] *: not attackable: toyclf:load has no gradient path (no forward_pixels)*",
    ])

    doc = read_json(bench.path / "out.json")
    assert doc["config"]["suites"] == ["robustness"]
    assert doc["config"]["robustness"]["queries"] == 20
    assert doc["config"]["robustness"]["corruptions"] == ["brightness", "jpeg_compression"]
    assert all("condition" in r for r in doc["rows"])
    assert {r["suite"] for r in doc["rows"]} == {"integrity", "robustness"}
    gated = {(r["condition"], r["source"]): r for r in doc["rows"]
             if r["suite"] == "robustness" and r["metric"] == "ra" and r["outcome"] != "info"}
    assert set(gated) == {(c, s) for c in CONDITIONS for s in CELL_SOURCES}
    for (condition, _), r in gated.items():
        assert r["classifier"] == CLASSIFIER and r["category"] is None
        if condition in GRADIENT_ONLY:  # the reason is in the JSON, not only in -rs
            assert r["outcome"] == "skipped" and r["value"] is None and "spec" not in r
            assert r["reason"].startswith("not attackable: toyclf:load has no gradient path")
        else:
            assert r["outcome"] == "passed" and 0.0 <= r["value"] <= 1.0
            assert r["threshold"] == 0.0 and r["n"] == 10 and "reason" not in r
            # the full spec it ran: attack settings, or the perturbation's level and seed
            rs = RobustnessSettings(queries=20)
            assert r["spec"] == (str(robustness.attack_spec(condition, rs, 2023))
                                 if condition in DEFAULT_ATTACKS else f"{condition}:3:s2023")
            assert r["spec"].endswith(":pixel") == (condition in DEFAULT_ATTACKS)
    square = {r["metric"]: r for r in doc["rows"] if r["condition"] == "square"
              and r["outcome"] == "info" and r["source"] == "Laion5B"}
    assert set(square) >= {"pool_size", "eligible", "clean_accuracy",
                           "clean_accuracy_attack_input", "linf_max", "ra_seed_2023"}
    assert square["linf_max"]["value"] <= 2 / 255 + 1e-6
    # clean accuracy is measured on the images the pool comes from, not asserted
    assert square["eligible"]["value"] == 24  # Laion5B images of the covered categories
    assert square["clean_accuracy"]["value"] == pytest.approx(
        square["pool_size"]["value"] / 24) and square["clean_accuracy"]["value"] < 1
    grid = [r for r in doc["rows"] if r["metric"] == "ra" and r["outcome"] == "info"
            and r["source"] == "all"]
    assert [r["condition"] for r in grid] == [f"{c}:{lvl}" for c in ("brightness",
                                              "jpeg_compression") for lvl in range(1, 6)]
    assert [r["spec"] for r in grid] == [f"{r['condition']}:s2023" for r in grid]
    means = [r for r in doc["rows"] if r["metric"] == "ra_corruption_mean"]
    assert len(means) == 3 and all(r["condition"] == "grid" and r["n"] == 10 for r in means)

    # A second run: every clean and perturbed prediction comes from the cache.
    predicted = len(bench.predicted())
    assert predicted > 48
    again = bench.run("--unsafebench-suites=robustness", "--unsafebench-profile=smoke",
                      json_name="again.json")
    again.assert_outcomes(passed=1 + n_run + 3, skipped=len(GRADIENT_ONLY) * 3)
    assert len(bench.predicted()) == predicted
    rows2 = read_json(bench.path / "again.json")["rows"]
    assert [(r["condition"], r["value"]) for r in rows2] == [
        (r["condition"], r["value"]) for r in doc["rows"]]


def test_without_the_robustness_suite_no_robustness_test_runs(bench: Bench) -> None:
    ids = collected(bench.run("--collect-only", "-q"))
    assert ids and not [i for i in ids if "robust" in i or "corruption" in i]
    result = bench.run("--unsafebench-profile=smoke")
    assert result.ret == 0
    doc = read_json(bench.path / "out.json")
    assert doc["config"]["suites"] == ["effectiveness", "gap"]
    assert {r["suite"] for r in doc["rows"]} == {"integrity", "effectiveness", "gap"}
    assert all(r["condition"] is None for r in doc["rows"])
    assert len(bench.predicted()) == 48  # clean predictions only


def test_unknown_suite_is_a_usage_error(bench: Bench) -> None:
    result = bench.run("--unsafebench-suites=robustnes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "robustnes" in result.stderr.str()


@pytest.mark.parametrize(("extra", "message"), [
    ('evasions = ["txt_overlay"]\n', "tool.unsafebench.robustness.evasions: unknown evasion "
     "'txt_overlay' (did you mean 'text_overlay'?)"),
    ('corruptions = ["gaussian_nose"]\n', "tool.unsafebench.robustness.corruptions: unknown "
     "corruption 'gaussian_nose' (did you mean 'gaussian_noise'?)"),
])
def test_misspelt_perturbation_is_a_usage_error_before_anything_runs(bench: Bench, extra: str,
                                                                      message: str) -> None:
    toml = ROBUSTNESS_TOML.replace('corruptions = ["brightness", "jpeg_compression"]\n', "")
    bench.pytester.makepyprojecttoml(toml + extra)
    result = bench.run("--unsafebench-suites=robustness", "--unsafebench-profile=smoke")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert bench.predicted() == []  # nothing was classified


def test_no_attacks_and_no_evasions_leaves_the_grid(bench: Bench) -> None:
    """An empty condition list is a configuration, not a crash: test_robust_accuracy is
    skipped (empty parameter set) and the corruption grid still runs."""
    bench.pytester.makepyprojecttoml(ROBUSTNESS_TOML + "attacks = []\nevasions = []\n")
    result = bench.run("--unsafebench-suites=robustness", "--unsafebench-profile=smoke")
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert "INTERNALERROR" not in result.stdout.str()
    result.assert_outcomes(passed=1 + 3, skipped=1)

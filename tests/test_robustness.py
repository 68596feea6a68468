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

from plugin_helpers import CELL_SOURCES, CLASSIFIER, build_dataset, read_json, write_toyclf
from pytest_unsafebench.cache import PredictionCache
from pytest_unsafebench.classifier import Coverage, Prediction
from pytest_unsafebench.config import DEFAULT_ATTACKS, RobustnessSettings
from pytest_unsafebench.dataset.records import Record, content_hash
from pytest_unsafebench.errors import ConfigError
from pytest_unsafebench.results import PredictionTable
from pytest_unsafebench.robustness import accuracy as robustness
from pytest_unsafebench.robustness import perturbations as P
from pytest_unsafebench.robustness.attacks import AttackSpec, paper_spec
from pytest_unsafebench.robustness.perturbations import PerturbationSpec, cache_key, names


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

    def ids(out: list[dict]) -> list[str]:
        return [r["id"] for r in out]

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


# Each robustness test's kind and the threshold key it must be gated by: written out here so
# that a wrong key in suites/test_robustness.py (ATTACK_KEY, "ra_min_evasion", ...) fails.
KIND_KEYS = {"gaussian": "ra_min_gaussian", "square": "ra_min_attack",
             **{e: "ra_min_evasion" for e in names("evasion")}}


def _split_thresholds(values: dict[str, list[float]]) -> dict[str, float]:
    """Per key, a threshold between two observed values (some cells pass, some fail), each key
    a distinct number so the row's threshold names the key that gated it."""
    out = {}
    for k, (key, vals) in enumerate(sorted(values.items())):
        unique = sorted(set(vals))
        if len(unique) >= 2:
            mid = len(unique) // 2
            t = (unique[mid - 1] + unique[mid]) / 2
        else:  # all equal (gaussian noise at RA 1.0): a threshold just below, all pass
            t = max(0.0, unique[0] - 0.05)
        out[key] = round(max(0.0, t - k * 1e-4), 6)
    return out


def test_nonzero_thresholds_gate_each_kind_with_its_own_key(bench: Bench) -> None:
    """Thresholds per kind (gaussian, attack, evasion, corruption grid) that some cells meet and
    some miss: each cell's outcome follows its own kind's threshold. Run with the gap suite, so
    test_gap_ra runs with values, checked against a recomputation from the per-source RA rows.

    Mutations this catches: a wrong key in ATTACK_KEY or for evasions/the grid (the row's
    threshold and outcome change), ``>=`` turned into ``>`` or the assert dropped (outcomes
    no longer follow the values), a gap computed as Lexica - Laion5B or from other rows.
    """
    smoke = bench.run("--unsafebench-suites=robustness", "--unsafebench-profile=smoke",
                      json_name="smoke.json")
    assert smoke.ret == 0, smoke.stdout.str()[-3000:]
    rows = read_json(bench.path / "smoke.json")["rows"]
    gated = [r for r in rows if r["suite"] == "robustness" and r["outcome"] == "passed"]
    observed: dict[str, list[float]] = {}
    for r in gated:
        key = KIND_KEYS.get(r["condition"], "ra_min_corruption")
        if r["metric"] == "ra_corruption_mean":
            assert r["condition"] == "grid"
        observed.setdefault(key, []).append(r["value"])
    assert set(observed) == {"ra_min_gaussian", "ra_min_attack", "ra_min_evasion",
                             "ra_min_corruption"}
    thresholds = _split_thresholds(observed)
    profile = "\n".join(f"{k} = {v}" for k, v in thresholds.items())
    bench.pytester.makepyprojecttoml(
        ROBUSTNESS_TOML + f"\n[tool.unsafebench.profiles.split]\n{profile}\ngap_ra_max = 1.0\n")

    result = bench.run("--unsafebench-suites=robustness,gap", "--unsafebench-profile=split")
    doc = read_json(bench.path / "out.json")
    outcomes = {"passed": 0, "failed": 0}
    for r in doc["rows"]:
        if (r["suite"] != "robustness" or r["outcome"] not in ("passed", "failed")
                or r["value"] is None):
            continue
        key = KIND_KEYS.get(r["condition"], "ra_min_corruption")
        assert r["threshold"] == thresholds[key], (r["condition"], r["threshold"], key)
        expected = "passed" if r["value"] >= thresholds[key] else "failed"
        assert r["outcome"] == expected, (r["condition"], r["source"], r["value"], key)
        outcomes[r["outcome"]] += 1
    assert outcomes["passed"] > 0 and outcomes["failed"] > 0, outcomes
    assert result.ret == pytest.ExitCode.TESTS_FAILED

    # The RA gap: RA on Laion5B minus RA on Lexica for each condition, from the same run.
    ra = {(r["condition"], r["source"]): r["value"] for r in doc["rows"]
          if r["suite"] == "robustness" and r["metric"] == "ra" and r["outcome"] != "info"
          and r["value"] is not None}
    gaps = [r for r in doc["rows"] if r["suite"] == "gap" and r["metric"] == "gap_ra"
            and r["value"] is not None]
    assert gaps and all(r["outcome"] == "passed" for r in gaps)
    assert {r["condition"] for r in gaps} == {c for c, s in ra if s == "Laion5B"}
    for r in gaps:
        assert r["value"] == pytest.approx(ra[(r["condition"], "Laion5B")]
                                           - ra[(r["condition"], "Lexica")], abs=1e-9)
    assert any(r["value"] != 0 for r in gaps)  # a sign error would show


# ---------------------------------------------------------------------- the paper's pool draw
def _official_draw(rows: list[dict], classifier: str, source: str, k: int, seed: int) -> list[str]:
    """A reimplementation of UnsafeBench unsafe_datasets.py ``random_draw_testing_adv_samples``
    on a prediction table: per source, the classifier's categories in its alignment's order,
    each category's train rows then test rows in dataset order, the correct ones kept, then
    ``random.seed(seed); random.sample(range(n), K)`` with the global generator."""
    import random

    from pytest_unsafebench.taxonomy import CATEGORIES

    order = {"multiheaded": ["Sexual", "Violence", "Shocking", "Hate", "Political"],
             "q16": [c for c in CATEGORIES if c not in ("Spam", "Sexual")]}.get(
                 classifier, list(CATEGORIES))
    concat = []
    for src in (["Laion5B", "Lexica"] if source == "all" else [source]):
        for category in order:
            merged = [r for split in ("train", "test")
                      for r in sorted((r for r in rows if r["split"] == split),
                                      key=lambda r: r["index"])
                      if r["source"] == src and r["category"] == category]
            labels = [int(r["label"] == "Unsafe") for r in merged]
            # An unsure answer matches neither label (the project keeps it out of every pool).
            preds = [{"unsafe": 1, "safe": 0}.get(r["decision"], -1) for r in merged]
            concat += [r for r, y, p in zip(merged, labels, preds) if y == p]
    random.seed(seed)
    picked = random.sample(range(len(concat)), min(k, len(concat)))
    return [concat[i]["id"] for i in picked]


def _synthetic_predictions(n: int, seed: int) -> list[dict]:
    from pytest_unsafebench.taxonomy import CATEGORIES

    rng = np.random.default_rng(seed)
    rows, counters = [], {"train": 0, "test": 0}
    for i in range(n):
        split = "train" if rng.random() < 0.8 else "test"
        index = counters[split]
        counters[split] += 1
        decision = str(rng.choice(["safe", "unsafe", "unsure"], p=[0.55, 0.4, 0.05]))
        rows.append({"id": f"img{i:05d}", "split": split, "index": index,
                     "category": str(rng.choice(CATEGORIES)),
                     "source": str(rng.choice(["Laion5B", "Lexica"])),
                     "label": str(rng.choice(["Safe", "Unsafe"])), "decision": decision,
                     "score": 0.5, "label_scores": None})
    # The loader's order is not the dataset's: test shards sort before train shards.
    rng.shuffle(rows)
    return rows


@pytest.mark.parametrize("classifier", ["multiheaded", "q16", "llava"])
@pytest.mark.parametrize("source", ["Laion5B", "Lexica", "all"])
def test_paper_pool_draws_exactly_the_reference_codes_images(classifier, source) -> None:
    """Paper mode draws the same images, in the same order, as the official function for the
    same predictions: its pool order, K = min(500, n), and Python's random.sample per seed."""
    from pytest_unsafebench.taxonomy import CATEGORIES, OFFICIAL_ALIGNMENT

    rows = _synthetic_predictions(3000, seed=len(classifier) + len(source))
    table = PredictionTable(classifier, rows)
    covered = [c for c in CATEGORIES
               if c in OFFICIAL_ALIGNMENT.get(classifier, OFFICIAL_ALIGNMENT["vlm"])]
    keys = {r["id"]: f"{r['split']}/{r['index']}" for r in rows}
    pool, exact = robustness.paper_pool(table, covered, source, classifier, keys)
    assert exact
    for seed in (2023, 2024, 2025):
        for k in (500, 10_000):  # K below the pool, and K above it (the whole pool, shuffled)
            ours = [r["id"] for r in robustness.paper_draw(pool, k, seed)]
            assert ours == _official_draw(rows, classifier, source, k, seed)
    assert len(robustness.paper_draw(pool, 500, 2023)) == min(500, len(pool))


def test_paper_pool_without_row_indices_says_its_order_is_not_exact() -> None:
    rows = _synthetic_predictions(200, seed=1)
    table = PredictionTable("q16", rows)
    keys = {r["id"]: f"{r['split']}/{r['index']}" for r in rows}
    keys[rows[0]["id"]] = "train/some-file-stem"  # a folder dataset's name, not a row index
    pool, exact = robustness.paper_pool(table, ["Hate", "Violence"], "all", "q16", keys)
    assert not exact and pool
    assert robustness.row_index("test/17") == (1, 17)
    assert robustness.row_index("test/x7") is None and robustness.row_index("") is None


def test_unsure_votes_never_enter_a_pool() -> None:
    """A VLM vote that was unsure keeps that status in label_scores even after the unsure
    policy labelled it: it is not a correctly classified image."""
    base = {"category": "Hate", "source": "Lexica", "split": "test", "score": 1.0,
            "label": "Unsafe", "decision": "unsafe"}
    rows = [{**base, "id": "sure", "label_scores": {"unsure": 0.0}},
            {**base, "id": "policy", "label_scores": {"unsure": 1.0}},
            {**base, "id": "raw", "decision": "unsure", "label_scores": None}]
    table = PredictionTable("llava", rows)
    assert [r["id"] for r in robustness.pool(table, ["Hate"], "Lexica")] == ["sure"]
    keys = {"sure": "test/0", "policy": "test/1", "raw": "test/2"}
    pool, _ = robustness.paper_pool(table, ["Hate"], "Lexica", "llava", keys)
    assert [r["id"] for r in pool] == ["sure"]


# ---------------------------------------------------------- the attack as the paper ran it
class _Pixels:
    """Unsafe iff mean brightness > 0.5, differentiable; its own preprocessing is a 4 x 4
    average-pool of the image (what attack_input returns and forward_pixels sees)."""

    supports_gradients = True
    coverage = Coverage.everything()
    input_std = (1.0, 1.0, 1.0)

    def __init__(self, name: str) -> None:
        self.name = name
        self.fingerprint = f"{name}-v1"
        self.shapes: list[tuple[int, ...]] = []

    def attack_input(self, image: Image.Image) -> np.ndarray:
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return arr.reshape(4, 4, 4, 4, 3).mean(axis=(1, 3)).transpose(2, 0, 1).copy()

    def forward_pixels(self, x):
        import torch

        self.shapes.append(tuple(x.shape[1:]))
        m = 40 * (x.mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([-m, m], dim=1)


def test_paper_setup_attacks_softmax_outputs_and_names_its_units() -> None:
    import torch

    clf = _Pixels("demo")
    attacked, box, units = robustness.paper_setup(clf, clf.forward_pixels, "fgsm")
    x = torch.rand(3, 3, 4, 4)
    torch.testing.assert_close(attacked(x), torch.softmax(clf.forward_pixels(x), dim=1))
    assert box is None  # no input_mean: the [0, 1] box, and the cache key says so
    assert units == "paper units, project loss"  # not one of the paper's classifiers
    clf.input_mean = (0.5, 0.5, 0.5)
    _, box, _ = robustness.paper_setup(clf, clf.forward_pixels, "fgsm")
    assert box == ((-2.5,) * 3, (3.5,) * 3)
    assert robustness.paper_setup(_Pixels("q16"), clf.forward_pixels, "fgsm")[2] == "paper units"
    assert robustness.paper_setup(_Pixels("q16"), clf.forward_pixels, "square")[2] == (
        "paper units, project loss")  # the paper ran no square attack
    assert robustness.paper_setup(_Pixels("llava"), clf.forward_pixels, "pgd")[2] == (
        "paper units, project loss")  # a judge: the paper's loss on it is not ours


def test_attack_starts_from_the_classifiers_own_input(cache: PredictionCache) -> None:
    """The clean attack input is the classifier's own preprocessed tensor (attack_input), not a
    separate resize/crop: every pool image is still classified right before the attack."""
    clf = _Pixels("q16")
    records = {r.id: r for r in [_image_record(i, 200, "Unsafe") for i in range(3)]}
    samples = {2023: [{"id": r.id, "hash": r.content_hash, "label": r.safety_label}
                      for r in records.values()]}
    rs = RobustnessSettings(mode="paper", attacks=("fgsm",))
    result = robustness.attack_ra(clf, samples, records, "fgsm", rs, cache, batch_size=8)
    assert set(clf.shapes) == {(3, 4, 4)}
    assert result.attack_input_accuracy == 1.0 and result.units == "paper units"
    assert result.conditions[0].endswith(":own-input:paper units:box01")

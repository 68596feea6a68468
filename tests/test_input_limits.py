"""Limits on what a user or a file can ask for: typed pyproject values,
bounded counts, threshold/tolerance tables that name what exists, and manifests or reports that
nest too deeply or hold numbers too long to parse. Each is a one-line usage error (exit 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plugin_helpers import CLASSIFIER, build_dataset, write_toyclf
from pytest_unsafebench.config import (
    MAX_PGD_STEPS,
    MAX_POOL_SIZE,
    MAX_QUERIES,
    MAX_SEEDS,
    resolve_settings,
)
from pytest_unsafebench.dataset.folder import load_folder
from pytest_unsafebench.errors import ConfigError, DatasetError
from pytest_unsafebench.options import (
    MAX_BATCH_SIZE,
    MAX_BOOTSTRAP,
    MAX_IMAGE_PIXELS,
    MAX_RAY_ACTORS,
)

ROOT = Path("/project/root")
USAGE = pytest.ExitCode.USAGE_ERROR
DEEP = "[" * 100_000 + "]" * 100_000     # deeper than json's recursion limit
LONG = "1" * 5000                        # more digits than int() parses (4300)


def error(pyproject: dict, cli: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        resolve_settings({"classifiers": ["demo"], **(cli or {})}, pyproject, ROOT)
    assert "\n" not in str(info.value)
    return str(info.value)


# --------------------------------------------------------------------------- typed values
@pytest.mark.parametrize("pyproject, fragment", [
    ({"limit": "10"}, "tool.unsafebench.limit: expected an integer >= 1, got '10' (a string: "
                      "write limit = 10 without quotes)"),
    ({"seed": "7"}, "write seed = 7 without quotes"),
    ({"bootstrap": "1000"}, "write bootstrap = 1000 without quotes"),
    ({"confidence": "0.9"}, "write confidence = 0.9 without quotes"),
    ({"tolerance": "0.1"}, "tool.unsafebench.tolerance: expected a number"),
    ({"batch_size": "²"}, "tool.unsafebench.batch_size: expected an integer >= 1"),
    ({"seed": LONG}, "tool.unsafebench.seed: expected an integer >= 0"),
    ({"cache_dir": 5}, "tool.unsafebench.cache_dir: expected a non-empty string, got 5"),
    ({"cache_dir": True}, "tool.unsafebench.cache_dir: expected a non-empty string"),
    ({"dataset": ["data"]}, "tool.unsafebench.dataset: expected a non-empty string"),
    ({"profile": 5}, "tool.unsafebench.profile: expected a non-empty string"),
    ({"ray_address": 6379}, "tool.unsafebench.ray_address: expected a non-empty string"),
])
def test_pyproject_type_errors_are_usage_errors(pyproject: dict, fragment: str) -> None:
    assert fragment in error(pyproject)


def test_command_line_strings_are_still_numbers() -> None:
    s = resolve_settings({"classifiers": ["demo"], "seed": "12", "limit": " 3 ",
                          "confidence": "0.9"}, {}, ROOT)
    assert (s.seed, s.limit, s.confidence) == (12, 3, 0.9)
    assert "--unsafebench-seed: expected an integer >= 0, got 5000 digits" in error(
        {}, {"seed": LONG})
    assert "--unsafebench-limit: expected an integer >= 1, got '²'" in error({}, {"limit": "²"})


def test_bootstrap_is_bounded_and_names_the_memory() -> None:
    assert resolve_settings({"classifiers": ["demo"]}, {"bootstrap": MAX_BOOTSTRAP},
                            ROOT).bootstrap == MAX_BOOTSTRAP
    msg = error({"bootstrap": 10**15})
    assert msg.startswith("tool.unsafebench.bootstrap: 1000000000000000 resamples would need "
                          "about 24,000.0 TB of memory for each confidence interval")
    assert f"the limit is {MAX_BOOTSTRAP:,}" in msg
    assert "--unsafebench-bootstrap: " in error({}, {"bootstrap": MAX_BOOTSTRAP + 1})


@pytest.mark.parametrize("cli, pyproject, fragment", [
    ({}, {"batch_size": 100_000},
     "tool.unsafebench.batch_size: 100,000 images per batch would need about 60.2 GB of memory"),
    ({"batch_size": "5000"}, {}, "--unsafebench-batch-size: 5,000 images per batch would need "
                                 "about 3.0 GB"),
    ({}, {"ray_batch_size": MAX_BATCH_SIZE + 1}, "tool.unsafebench.ray_batch_size: 4,097 images"),
    ({}, {"ray_actors": 1000}, "tool.unsafebench.ray_actors: 1,000 actors each load every "
                               "classifier of the run: about 1.7 TB of memory"),
    ({}, {"robustness": {"pool_size": 10**6}},
     "tool.unsafebench.robustness.pool_size: 1,000,000 would take up to 600,000,000 model calls"),
    ({}, {"robustness": {"seeds": list(range(MAX_SEEDS + 1))}},
     "tool.unsafebench.robustness.seeds: 101 seeds would take up to 10,100,000 model calls"),
    ({}, {"robustness": {"pgd_steps": 10**5}},
     "tool.unsafebench.robustness.pgd_steps: 100,000 would take up to 150,000,000 model calls"),
    ({}, {"robustness": {"queries": 10**6}},
     "tool.unsafebench.robustness.queries: 1,000,000 would take up to 1,500,000,000 model"),
    ({}, {"max_image_pixels": 10**12}, "tool.unsafebench.max_image_pixels: 1,000,000,000,000 "
                                       "pixels would let one image need about 4.0 TB"),
])
def test_other_counts_are_bounded_and_name_the_cost(cli: dict, pyproject: dict,
                                                    fragment: str) -> None:
    msg = error(pyproject, cli)
    assert msg.startswith(fragment), msg
    assert "the limit is" in msg


def test_counts_at_their_limits_are_accepted() -> None:
    s = resolve_settings({"classifiers": ["demo"]}, {
        "batch_size": MAX_BATCH_SIZE, "ray_batch_size": MAX_BATCH_SIZE,
        "ray_actors": MAX_RAY_ACTORS, "max_image_pixels": MAX_IMAGE_PIXELS, "robustness": {
            "pool_size": MAX_POOL_SIZE, "seeds": list(range(MAX_SEEDS)),
            "pgd_steps": MAX_PGD_STEPS, "queries": MAX_QUERIES}}, ROOT)
    assert (s.batch_size, s.ray_actors, s.robustness.queries) == (
        MAX_BATCH_SIZE, MAX_RAY_ACTORS, MAX_QUERIES)


# ------------------------------------------------------------------------ tables name what exists
@pytest.mark.parametrize("pyproject, fragment", [
    ({"thresholds": {"classifier": {"q61": {"f1_min": 0.5}}}},
     "tool.unsafebench.thresholds.classifier.q61: unknown classifier 'q61' (did you mean "
     "'q16'?)"),
    ({"thresholds": {"warn": {"classifier": {"dmeo": {"f1_min": 0.5}}}}},
     "tool.unsafebench.thresholds.warn.classifier.dmeo: unknown classifier 'dmeo' (did you "
     "mean 'demo'?)"),
    ({"profiles": {"release": {"classifier": {"opennsf": {"fpr_max": 0.1}}}}},
     "tool.unsafebench.profiles.release.classifier.opennsf: unknown classifier 'opennsf' (did "
     "you mean 'opennsfw'?)"),
    ({"tolerances": {"f11": 0.03}},
     "tool.unsafebench.tolerances.f11: unknown metric 'f11' (did you mean 'f1'?)"),
    ({"tolerances": {"FPR": 0.03}}, "unknown metric 'FPR' (did you mean 'fpr'? case matters)"),
])
def test_tables_naming_unknown_things_hint_the_close_match(pyproject: dict,
                                                           fragment: str) -> None:
    assert fragment in error(pyproject)


def test_tables_may_name_registered_selected_declared_and_own_classifiers() -> None:
    layer = {"f1_min": 0.4}
    s = resolve_settings({"classifiers": ["demo", "mine"]}, {
        "classifiers": {"declared": {}},
        "thresholds": {"classifier": {"q16": layer, "mine": layer, "declared": layer,
                                      "mymod:load": layer, "hf:org/model": layer}},
        "tolerances": {"f1": 0.03, "fpr": 0.02, "gap_f1": 0.05, "ra": 0.04},
    }, ROOT)
    assert s.thresholds.resolve("mymod:load", "Hate", "all")["f1_min"] == 0.4
    assert s.tolerance_for("gap_f1") == 0.05


# --------------------------------------------------------------------------- files
@pytest.mark.parametrize("line, fragment", [
    (DEEP, "metadata.jsonl:2: JSON nested too deeply to read"),
    ('{"file_name": "a.png", "id": ' + LONG + "}", "metadata.jsonl:2: a number with too many "
                                                    "digits to read"),
])
def test_a_hostile_jsonl_manifest_names_file_and_line(tmp_path: Path, line: str,
                                                      fragment: str) -> None:
    good = {"file_name": "a.png", "safety_label": "Safe", "category": "Hate",
            "source": "Lexica"}
    (tmp_path / "metadata.jsonl").write_text(json.dumps(good) + "\n" + line + "\n")
    with pytest.raises(DatasetError) as info:
        load_folder(tmp_path)
    assert fragment in str(info.value) and str(tmp_path) in str(info.value)
    assert "\n" not in str(info.value)


def test_reports_and_archives_read_back_survive_hostile_json(tmp_path: Path) -> None:
    from pytest_unsafebench.classifiers.vlm import responses
    from pytest_unsafebench.errors import ClassifierLoadError
    from pytest_unsafebench.report import baseline

    for text in (DEEP, LONG):
        (tmp_path / "base.json").write_text(text)
        with pytest.raises(ConfigError, match="baseline .*base.json: not JSON"):
            baseline.load(tmp_path / "base.json")
        (tmp_path / "Lexica_Hate.json").write_text(text)
        with pytest.raises(ClassifierLoadError, match="Lexica_Hate.json is not valid JSON"):
            list(responses._entries(tmp_path / "Lexica_Hate.json"))


# --------------------------------------------------------------------------- through pytest
@pytest.fixture
def run(pytester: pytest.Pytester):
    write_toyclf(pytester.path)
    pytester.syspathinsert()
    build_dataset(pytester.path / "ds")

    def go(pyproject: str = "", *extra: str) -> pytest.RunResult:
        if pyproject:
            pytester.makepyprojecttoml(pyproject)
        return pytester.runpytest(f"--unsafebench-classifier={CLASSIFIER}",
                                  f"--unsafebench-dataset={pytester.path / 'ds'}",
                                  "--unsafebench-profile=smoke", "-p", "no:randomly", *extra)
    return go


@pytest.mark.parametrize("pyproject, line", [
    ('[tool.unsafebench]\nlimit = "10"\n', "*tool.unsafebench.limit: expected an integer >= 1, "
                                            "got '10' (a string: write limit = 10 without*"),
    ("[tool.unsafebench]\ncache_dir = 5\n", "*tool.unsafebench.cache_dir: expected a non-empty "
                                            "string, got 5*"),
    ("[tool.unsafebench]\nbootstrap = 1000000000\n", "*bootstrap: 1000000000 resamples would "
                                                     "need about 24.0 GB of memory*"),
    ("[tool.unsafebench.thresholds.classifier.q61]\nf1_min = 0.5\n",
     "*classifier.q61: unknown classifier 'q61' (did you mean 'q16'?)*"),
    ("[tool.unsafebench.tolerances]\nf11 = 0.5\n", "*unknown metric 'f11' (did you mean 'f1'?)*"),
])
def test_bad_config_exits_4_with_one_line(run, pyproject: str, line: str) -> None:
    result = run(pyproject)
    assert result.ret == USAGE
    result.stderr.fnmatch_lines([f"ERROR: {line}"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


@pytest.mark.parametrize("line, fragment", [
    (DEEP, "JSON nested too deeply to read"),
    ('{"id": ' + LONG + "}", "a number with too many digits to read"),
])
def test_hostile_jsonl_manifest_exits_4(run, pytester: pytest.Pytester, line: str,
                                        fragment: str) -> None:
    ds = pytester.path / "ds"
    rows = (ds / "metadata.csv").read_text().splitlines()
    (ds / "metadata.csv").unlink()
    header = rows[0].split(",")
    jsonl = [json.dumps(dict(zip(header, r.split(",")))) for r in rows[1:3]]
    (ds / "metadata.jsonl").write_text("\n".join([*jsonl, line]) + "\n")
    result = run()
    assert result.ret == USAGE
    result.stderr.fnmatch_lines([f"ERROR: *metadata.jsonl:3: {fragment}*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_an_empty_corruption_list_skips_the_grid_with_its_reason(run) -> None:
    # A mean over no corruption cells was a ZeroDivisionError in every grid test.
    result = run('[tool.unsafebench.robustness]\nattacks = []\nevasions = []\n'
                 "corruptions = []\n", "--unsafebench-suites=robustness", "-rs",
                 "-k", "corruption_grid")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED *no corruption grid: [[]tool.unsafebench.robustness[]] "
                                 "corruptions = []*"])


@pytest.mark.parametrize("header", [DEEP, '{"format_version": ' + LONG + "}"])
def test_a_probe_header_too_deep_or_too_long_names_the_file(tmp_path: Path, header: str) -> None:
    import numpy as np
    import safetensors.numpy

    from pytest_unsafebench.errors import ClassifierLoadError
    from pytest_unsafebench.probe_format import METADATA_KEY
    from pytest_unsafebench.registry import load_classifier

    path = tmp_path / "evil.safetensors"
    path.write_bytes(safetensors.numpy.save({"weight": np.zeros((1, 1), np.float32)},
                                            metadata={METADATA_KEY: header}))
    with pytest.raises(ClassifierLoadError) as info:
        load_classifier(f"probe:{path}")
    assert str(path) in str(info.value) and "is not valid JSON" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("raw", [DEEP.encode(), ('{"info": ' + LONG + "}").encode()])
def test_parquet_metadata_too_deep_or_too_long_is_ignored(raw: bytes) -> None:
    from types import SimpleNamespace

    from pytest_unsafebench.dataset.parquet import _hf_features

    # the Hugging Face feature hints are optional: unreadable ones are left out, no crash
    assert _hf_features(SimpleNamespace(metadata={b"huggingface": raw})) == {}

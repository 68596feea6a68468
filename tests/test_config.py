"""Settings resolution: command line over pyproject over defaults, and every bad value named."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_unsafebench.config import (
    RobustnessSettings,
    Settings,
    read_pyproject,
    resolve_settings,
)
from pytest_unsafebench.dataset.images import DEFAULT_MAX_PIXELS
from pytest_unsafebench.errors import ConfigError
from pytest_unsafebench.options import (
    DEFAULT_TOLERANCE,
    OPTION,
    OPTIONS,
    PYPROJECT_KEYS,
    TABLE_KEYS,
    Members,
    Text,
)
from pytest_unsafebench.plugin import pytest_addoption
from pytest_unsafebench.taxonomy import CATEGORIES, SOURCES
from pytest_unsafebench.thresholds import BUILTIN_PROFILES

ROOT = Path("/project/root")


def resolve(cli=None, pyproject=None, root: Path = ROOT) -> Settings:
    return resolve_settings({"classifiers": ["demo"], **(cli or {})}, pyproject or {}, root)


def error(cli=None, pyproject=None) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(cli, pyproject)
    return str(info.value)


# --------------------------------------------------------------------------- layering
def test_defaults() -> None:
    s = resolve()
    assert s.classifiers == ("demo",)
    assert s.dataset == "demo" and s.split == "all"
    assert s.categories == CATEGORIES and s.sources == SOURCES
    assert s.limit is None and s.seed == 2023 and s.device == "auto" and s.batch_size == 32
    assert s.profile == "default" and s.alignment == "official"
    assert s.cache_dir == ROOT / ".pytest_cache" / "unsafebench"
    assert s.use_cache is True and s.json_path is None and s.predictions_path is None
    assert s.max_image_pixels == DEFAULT_MAX_PIXELS
    assert s.allow_findings == frozenset()
    assert s.classifier_options == {}
    assert s.thresholds.resolve("demo", "Hate", "all") == BUILTIN_PROFILES["default"]
    assert s.suites == ("effectiveness", "gap")
    assert s.robustness == RobustnessSettings()


def test_cli_pytest_defaults_do_not_override() -> None:
    """pytest hands over None / [] / False for options not given: those mean 'not set'."""
    unset = {k: None for k in PYPROJECT_KEYS if k not in ("categories", "sources")}
    cli = {"categories": [], "sources": [], "no_cache": False, **unset}
    s = resolve(cli, {"seed": 7, "split": "test"})
    assert (s.seed, s.split, s.categories) == (7, "test", CATEGORIES)


def test_pyproject_over_defaults() -> None:
    s = resolve(pyproject={
        "dataset": "data/folder", "split": "test", "categories": ["Sexual", "Hate"],
        "sources": ["Lexica"], "limit": 40, "seed": 0, "device": "cpu", "batch_size": 4,
        "profile": "strict", "alignment": "semantic", "max_image_pixels": 1000,
        "allow_findings": ["converted-mode", "truncated"],
    })
    assert s.dataset == "data/folder" and s.split == "test"
    assert s.categories == ("Hate", "Sexual")  # canonical order, not the file's
    assert s.sources == ("Lexica",)
    assert (s.limit, s.seed, s.device, s.batch_size) == (40, 0, "cpu", 4)
    assert (s.profile, s.alignment, s.max_image_pixels) == ("strict", "semantic", 1000)
    assert s.allow_findings == frozenset({"converted-mode", "truncated"})
    assert s.thresholds.resolve("demo", "Hate", "all") == BUILTIN_PROFILES["strict"]


def test_cli_over_pyproject() -> None:
    py = {"seed": 1, "split": "train", "categories": ["Spam"], "device": "cpu", "limit": 5}
    s = resolve({"seed": 99, "split": "test", "categories": ["Hate,Sexual"], "device": "cuda",
                 "limit": 10, "no_cache": True, "json": "out/r.json",
                 "predictions": "out/p.jsonl"}, py)
    assert (s.seed, s.split, s.device, s.limit) == (99, "test", "cuda", 10)
    assert s.categories == ("Hate", "Sexual")
    assert s.use_cache is False
    assert s.json_path == Path("out/r.json") and s.predictions_path == Path("out/p.jsonl")


def test_cli_lists_are_comma_separated_and_repeatable() -> None:
    s = resolve({"categories": ["Spam, Hate", "Sexual", "Hate,,", " Violence "],
                 "sources": ["Lexica", "Laion5B,Lexica"]})
    assert s.categories == ("Hate", "Violence", "Sexual", "Spam")
    assert s.sources == SOURCES


def test_integer_strings_from_cli_are_accepted() -> None:
    s = resolve({"seed": "12", "limit": " 3 ", "batch_size": "8"})
    assert (s.seed, s.limit, s.batch_size) == (12, 3, 8)


@settings(max_examples=60, deadline=None)
@given(py_seed=st.none() | st.integers(0, 2**31), cli_seed=st.none() | st.integers(0, 2**31),
       py_cats=st.none() | st.lists(st.sampled_from(CATEGORIES), min_size=1, unique=True),
       cli_cats=st.none() | st.lists(st.lists(st.sampled_from(CATEGORIES), min_size=1, max_size=3),
                                     min_size=1, max_size=3))
def test_precedence_property(py_seed, cli_seed, py_cats, cli_cats) -> None:
    py = {k: v for k, v in (("seed", py_seed), ("categories", py_cats)) if v is not None}
    cli = {"seed": cli_seed,
           "categories": [",".join(group) for group in cli_cats] if cli_cats else []}
    s = resolve(cli, py)
    expected_seed = cli_seed if cli_seed is not None else py_seed if py_seed is not None else 2023
    assert s.seed == expected_seed
    chosen = ({c for g in cli_cats for c in g} if cli_cats
              else set(py_cats) if py_cats else set(CATEGORIES))
    assert s.categories == tuple(c for c in CATEGORIES if c in chosen)


def test_cache_dir_is_relative_to_rootpath(tmp_path: Path) -> None:
    from_py = resolve(pyproject={"cache_dir": "build/ub"}, root=tmp_path)
    assert from_py.cache_dir == tmp_path / "build/ub"
    from_cli = resolve({"cache_dir": "cli/dir"}, {"cache_dir": "x"}, root=tmp_path)
    assert from_cli.cache_dir == tmp_path / "cli/dir"
    absolute = tmp_path / "elsewhere"
    assert resolve({"cache_dir": str(absolute)}, root=tmp_path / "root").cache_dir == absolute
    assert resolve(root=tmp_path).cache_dir == tmp_path / ".pytest_cache" / "unsafebench"


# --------------------------------------------------------------------------- bad values
def test_unknown_pyproject_key_suggests() -> None:
    msg = error(pyproject={"catgories": ["Hate"]})
    assert "tool.unsafebench.catgories" in msg and "unknown key" in msg
    assert "did you mean 'categories'" in msg
    assert "known keys:" in msg and "thresholds" in msg


@pytest.mark.parametrize(("cli", "py", "where", "fragment"), [
    ({}, {"split": "validation"}, "tool.unsafebench.split",
     "'validation' is not one of all, train, test"),
    ({"split": "Test"}, {}, "--unsafebench-split", "did you mean 'test'"),
    ({}, {"device": "gpu"}, "tool.unsafebench.device", "not one of auto, cpu, cuda, mps"),
    ({"device": "cuda:0"}, {}, "--unsafebench-device", "'cuda:0'"),
    ({}, {"alignment": "semantics"}, "tool.unsafebench.alignment", "did you mean 'semantic'"),
    ({}, {"categories": "Hate"}, "tool.unsafebench.categories", "expected a non-empty list"),
    ({}, {"categories": []}, "tool.unsafebench.categories", "expected a non-empty list"),
    ({}, {"categories": {"Hate": 1}}, "tool.unsafebench.categories", "expected a non-empty list"),
    ({}, {"categories": ["Hate", "Nudity"]}, "tool.unsafebench.categories",
     "unknown value 'Nudity'"),
    ({"categories": ["hate"]}, {}, "--unsafebench-categories", "did you mean 'Hate'? case matters"),
    ({"categories": [","]}, {}, "--unsafebench-categories", "expected a non-empty list"),
    ({"sources": ["Laion"]}, {}, "--unsafebench-sources", "did you mean 'Laion5B'"),
    ({}, {"sources": "Lexica"}, "tool.unsafebench.sources", "expected a non-empty list"),
    ({}, {"limit": 0}, "tool.unsafebench.limit", "expected an integer >= 1, got 0"),
    ({"limit": -5}, {}, "--unsafebench-limit", "expected an integer >= 1, got -5"),
    ({"limit": "-5"}, {}, "--unsafebench-limit", "expected an integer >= 1, got -5"),
    ({}, {"limit": True}, "tool.unsafebench.limit", "got True"),
    ({}, {"limit": 2.5}, "tool.unsafebench.limit", "got 2.5"),
    ({}, {"seed": -1}, "tool.unsafebench.seed", "expected an integer >= 0"),
    ({}, {"seed": False}, "tool.unsafebench.seed", "got False"),
    ({}, {"seed": "abc"}, "tool.unsafebench.seed", "got 'abc'"),
    ({}, {"batch_size": 0}, "tool.unsafebench.batch_size", "expected an integer >= 1"),
    ({"batch_size": 0}, {}, "--unsafebench-batch-size", "expected an integer >= 1"),
    ({}, {"max_image_pixels": True}, "tool.unsafebench.max_image_pixels", "got True"),
    ({}, {"allow_findings": ["trunkated"]}, "tool.unsafebench.allow_findings", "truncated"),
    ({}, {"allow_findings": "truncated"}, "tool.unsafebench.allow_findings", "finding kinds"),
    ({}, {"profile": "strikt"}, "tool.unsafebench.profile", "did you mean 'strict'"),
    ({"profile": "nightly"}, {}, "--unsafebench-profile", "unknown profile 'nightly'"),
])
def test_bad_values_name_their_key(cli, py, where, fragment) -> None:
    msg = error(cli, py)
    assert msg.startswith(f"{where}: "), msg
    assert fragment in msg, msg


def test_cli_error_names_option_even_when_pyproject_also_sets_it() -> None:
    assert error({"split": "dev"}, {"split": "test"}).startswith("--unsafebench-split: ")
    assert error({}, {"split": "dev"}).startswith("tool.unsafebench.split: ")


@pytest.mark.parametrize(("classifiers", "fragment"), [
    ([], "expected a table of per-classifier tables"),
    ({"demo": 3}, "tool.unsafebench.classifiers.demo: expected a table of options"),
    ({"demo": {"coverage": "Hate"}}, "tool.unsafebench.classifiers.demo.coverage"),
    ({"demo": {"coverage": ["Hate", "Nudes"]}}, "bad: ['Nudes']"),
])
def test_bad_classifier_tables(classifiers, fragment) -> None:
    assert fragment in error(pyproject={"classifiers": classifiers})


def test_bad_thresholds_are_reported_with_their_path() -> None:
    msg = error(pyproject={"thresholds": {"category": {"Hate": {"f1min": 0.3}}}})
    assert msg.startswith("tool.unsafebench.thresholds.category.Hate.f1min: unknown key")


def test_profile_from_pyproject() -> None:
    s = resolve({"profile": "nightly"}, {"profiles": {"nightly": {"f1_min": 0.6}}})
    assert s.profile == "nightly"
    assert s.thresholds.resolve("demo", "Spam", "Lexica") == {**BUILTIN_PROFILES["default"],
                                                              "f1_min": 0.6}


# --------------------------------------------------------------------------- read_pyproject
def test_read_pyproject_missing_file(tmp_path: Path) -> None:
    assert read_pyproject(tmp_path / "pyproject.toml") == {}


def test_read_pyproject_without_table(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\nname = "x"\n[tool.other]\na = 1\n')
    assert read_pyproject(path) == {}


def test_read_pyproject_table(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.unsafebench]\nseed = 5\ncategories = ["Hate"]\n'
                    '[tool.unsafebench.thresholds.category."Illegal activity"]\nf1_min = 0.2\n'
                    '[tool.unsafebench.classifiers.demo]\nepochs = 2\ncoverage = ["Hate"]\n')
    table = read_pyproject(path)
    assert table["seed"] == 5
    s = resolve({}, table)
    assert s.seed == 5 and s.categories == ("Hate",)
    assert s.thresholds.resolve("demo", "Illegal activity", "all")["f1_min"] == 0.2
    assert s.options_for("demo") == {"epochs": 2}


def test_read_pyproject_invalid_toml_names_file(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool.unsafebench\nseed = \n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        read_pyproject(path)
    assert str(path) in str(info.value)


def test_read_pyproject_non_table(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool]\nunsafebench = "yes"\n')
    with pytest.raises(ConfigError, match=r"\[tool.unsafebench\] must be a table") as info:
        read_pyproject(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- the option table
class _Group:
    """Records what pytest_addoption adds (a pytest.Parser stand-in)."""

    def __init__(self) -> None:
        self.added: dict[str, dict] = {}

    def getgroup(self, name: str, description: str = "") -> _Group:
        return self

    def addoption(self, *names: str, **kwargs) -> None:
        assert len(names) == 1 and names[0] not in self.added
        self.added[names[0]] = kwargs


# Settings fields filled from [tool.unsafebench] tables rather than options.
TABLE_FIELDS = {"thresholds", "gate", "classifier_options", "robustness", "tolerances"}


def test_every_option_reaches_argparse_settings_and_pyproject() -> None:
    """A row of options.OPTIONS is the whole declaration: the pytest flag, the Settings field,
    the pyproject key and its check all follow from it, and nothing exists without a row."""
    group = _Group()
    pytest_addoption(group)  # type: ignore[arg-type]
    assert list(group.added) == [o.flag for o in OPTIONS if o.cli]
    for opt in OPTIONS:
        if opt.cli:
            assert group.added[opt.flag]["dest"] == opt.dest
            assert group.added[opt.flag]["help"] == opt.help
    fields = [f.name for f in dataclasses.fields(Settings)]
    assert sorted(o.field for o in OPTIONS) == sorted(set(fields) - TABLE_FIELDS)
    assert set(PYPROJECT_KEYS) <= set(OPTION) and len(set(PYPROJECT_KEYS)) == len(PYPROJECT_KEYS)
    for opt in OPTIONS:
        bad = {"not": "a value of any option"}
        if opt.pyproject:  # checked, and the error names where the value came from
            assert error(pyproject={opt.key: bad}).startswith(f"tool.unsafebench.{opt.key}: ")
        elif opt.key not in TABLE_KEYS:  # a command-line-only option is no pyproject key
            assert error(pyproject={opt.key: bad}).startswith(
                f"tool.unsafebench.{opt.key}: unknown key")
        if opt.pyproject and opt.cli:
            given = [" nope "] if isinstance(opt.check, Members) else \
                " " if isinstance(opt.check, Text) else "nope"
            assert error(cli={opt.key: given}).startswith(f"{opt.flag}: ")


def test_option_defaults_are_the_settings_defaults() -> None:
    s = resolve()
    for opt in OPTIONS:
        if opt.pyproject and opt.check is not None and opt.default is not None:
            want = tuple(opt.default) if isinstance(opt.check, Members) else opt.default
            assert getattr(s, opt.field) == want, opt.key
    assert s.tolerance == DEFAULT_TOLERANCE and s.seed == 2023


# --------------------------------------------------------------------------- Settings
def test_options_for_drops_reserved_keys() -> None:
    s = resolve(pyproject={"classifiers": {
        "demo": {"coverage": ["Hate", "Sexual"], "epochs": 3, "width": 8},
        "other": {"coverage": []}}})
    assert s.options_for("demo") == {"epochs": 3, "width": 8}
    assert s.options_for("other") == {}
    assert s.options_for("unconfigured") == {}
    assert s.coverage_override("demo") == frozenset({"Hate", "Sexual"})
    assert s.coverage_override("other") == frozenset()
    assert s.coverage_override("unconfigured") is None
    # options_for returns a copy: mutating it changes nothing
    s.options_for("demo")["epochs"] = 100
    assert s.options_for("demo")["epochs"] == 3


def test_public_is_json_serialisable_and_machine_free(tmp_path: Path) -> None:
    s = resolve({"json": str(tmp_path / "r.json"), "categories": ["Hate,Spam"]},
                {"allow_findings": ["truncated", "animated"], "limit": 9,
                 "classifiers": {"b": {"x": [1, 2]}, "a": {"coverage": ["Hate"], "y": {"z": 1}}}},
                root=tmp_path)
    doc = s.public()
    text = json.dumps(doc)
    assert json.loads(text) == doc
    assert str(tmp_path) not in text
    assert doc["categories"] == ["Hate", "Spam"]
    assert doc["allow_findings"] == ["animated", "truncated"]
    assert list(doc["classifier_options"]) == ["a", "b"]
    assert doc["limit"] == 9 and doc["classifiers"] == ["demo"]


# --------------------------------------------------------------------------- suites / robustness
def test_suites_cli_over_pyproject_in_canonical_order() -> None:
    assert resolve(pyproject={"suites": ["robustness"]}).suites == ("robustness",)
    s = resolve({"suites": ["robustness,effectiveness"]}, {"suites": ["fuzz"]})
    assert s.suites == ("effectiveness", "robustness")
    assert s.public()["suites"] == ["effectiveness", "robustness"]
    assert "did you mean 'robustness'" in error({"suites": ["robustnes"]})


def test_pgd_settings_and_spsa_reach_the_attack_spec() -> None:
    from pytest_unsafebench.robustness.accuracy import attack_spec
    from pytest_unsafebench.robustness.attacks import AttackSpec

    s = resolve(pyproject={"robustness": {"pgd_steps": 7, "pgd_step_size": 0.001,
                                          "pgd_random_start": False, "queries": 40,
                                          "attacks": ["pgd", "spsa"]}})
    rs = s.robustness
    assert rs.attacks == ("pgd", "spsa")
    assert attack_spec("pgd", rs, 5) == AttackSpec("pgd", 2 / 255, steps=7, step_size=0.001,
                                                   random_start=False, seed=5)
    assert attack_spec("spsa", rs, 5) == AttackSpec("spsa", 2 / 255, queries=40, seed=5)
    # unset: the attack's own defaults (random start on, 2.5 eps / steps)
    default = attack_spec("pgd", resolve().robustness, 5)
    assert default.random_start is True and default.step_size == pytest.approx(2.5 * (2 / 255) / 20)


def test_robustness_table() -> None:
    s = resolve(pyproject={"robustness": {"pool_size": 5, "seeds": [1, 2], "mode": "paper",
                                          "eps": 0, "attacks": ["square"],
                                          "evasions": ["meme_caption"]}})
    assert s.robustness == RobustnessSettings(pool_size=5, seeds=(1, 2), mode="paper", eps=0.0,
                                              attacks=("square",), evasions=("meme_caption",))
    public = s.public()["robustness"]
    assert public["seeds"] == [1, 2] and public["attacks"] == ["square"]
    assert public["corruptions"] is None and public["queries"] == 200
    json.dumps(s.public())


@pytest.mark.parametrize(("table", "fragment"), [
    ([1], "tool.unsafebench.robustness: expected a table"),
    ({"pool_sise": 3}, "robustness.pool_sise: unknown key (did you mean 'pool_size'?)"),
    ({"pool_size": 0}, "robustness.pool_size: expected an integer >= 1, got 0"),
    ({"queries": True}, "robustness.queries: expected an integer >= 1, got True"),
    ({"seeds": []}, "robustness.seeds: expected a non-empty list of integers"),
    ({"attacks": ["cw"]}, "robustness.attacks: expected a list from gaussian, fgsm"),
    ({"mode": "x"}, "robustness.mode: expected 'pixel' or 'paper'"),
    ({"eps": 2}, "robustness.eps: expected a number in [0, 1]"),
    ({"corruptions": "brightness"}, "robustness.corruptions: expected a list"),
    ({"pgd_step_size": 0}, "robustness.pgd_step_size: expected a number in (0, 1]"),
    ({"pgd_random_start": 1}, "robustness.pgd_random_start: expected true or false, got 1"),
])
def test_bad_robustness_tables(table, fragment) -> None:
    assert fragment in error(pyproject={"robustness": table})

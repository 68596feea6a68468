"""Threshold tables: specificity order, table order, profiles and error messages."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_unsafebench.errors import ConfigError
from pytest_unsafebench.taxonomy import CATEGORIES, CELL_SOURCES
from pytest_unsafebench.thresholds import (
    BUILTIN_PROFILES,
    METRICS,
    ThresholdTable,
    build_thresholds,
)

# The eight levels from least to most specific, each setting f1_min to its own rank.
LEVELS = [
    ("global", {"f1_min": 0.01}),
    ("source", {"source": {"Lexica": {"f1_min": 0.02}}}),
    ("category", {"category": {"Hate": {"f1_min": 0.03}}}),
    ("category.source", {"category": {"Hate": {"source": {"Lexica": {"f1_min": 0.04}}}}}),
    ("classifier", {"classifier": {"q16": {"f1_min": 0.05}}}),
    ("classifier.source", {"classifier": {"q16": {"source": {"Lexica": {"f1_min": 0.06}}}}}),
    ("classifier.category", {"classifier": {"q16": {"category": {"Hate": {"f1_min": 0.07}}}}}),
    ("classifier.category.source",
     {"classifier": {"q16": {"category": {"Hate": {"source": {"Lexica": {"f1_min": 0.08}}}}}}}),
]


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = _deep_merge(out[k], v) if both else v
    return out


def _table(*tables: dict) -> ThresholdTable:
    t = ThresholdTable()
    for i, table in enumerate(tables):
        t.merge(table, f"t{i}")
    return t


@pytest.mark.parametrize("upto", range(len(LEVELS)))
def test_most_specific_level_wins(upto: int) -> None:
    combined: dict = {}
    for _, table in LEVELS[:upto + 1]:
        combined = _deep_merge(combined, table)
    t = _table(combined)
    assert t.resolve("q16", "Hate", "Lexica")["f1_min"] == pytest.approx(0.01 * (upto + 1))


@settings(max_examples=40, deadline=None)
@given(st.permutations(range(len(LEVELS))))
def test_specificity_not_merge_order(order: list[int]) -> None:
    """However the levels are spread over tables, the most specific one wins."""
    t = _table(*(LEVELS[i][1] for i in order))
    assert t.resolve("q16", "Hate", "Lexica")["f1_min"] == pytest.approx(0.08)
    # a cell that matches only some levels gets the most specific of those
    assert t.resolve("q16", "Hate", "Laion5B")["f1_min"] == pytest.approx(0.07)
    assert t.resolve("q16", "Spam", "Lexica")["f1_min"] == pytest.approx(0.06)
    assert t.resolve("q16", "Spam", "all")["f1_min"] == pytest.approx(0.05)
    assert t.resolve("demo", "Hate", "Lexica")["f1_min"] == pytest.approx(0.04)
    assert t.resolve("demo", "Hate", "all")["f1_min"] == pytest.approx(0.03)
    assert t.resolve("demo", "Spam", "Lexica")["f1_min"] == pytest.approx(0.02)
    assert t.resolve("demo", "Spam", "all")["f1_min"] == pytest.approx(0.01)


def test_levels_set_metrics_independently() -> None:
    t = _table({"f1_min": 0.4, "fpr_max": 0.2, "category": {"Hate": {"fpr_max": 0.9}}})
    assert t.resolve("x", "Hate", "all") == {"f1_min": 0.4, "fpr_max": 0.9}
    assert t.resolve("x", "Spam", "all") == {"f1_min": 0.4, "fpr_max": 0.2}


def test_later_table_wins_at_same_level_only() -> None:
    t = _table({"f1_min": 0.1, "category": {"Hate": {"f1_min": 0.2}}}, {"f1_min": 0.9})
    assert t.resolve("x", "Spam", "all")["f1_min"] == 0.9
    assert t.resolve("x", "Hate", "all")["f1_min"] == 0.2


def test_pooled_source_and_quoted_category() -> None:
    t = _table({"category": {"Illegal activity": {"source": {"all": {"f1_min": 0.33}}}}})
    assert t.resolve("x", "Illegal activity", "all") == {"f1_min": 0.33}
    assert t.resolve("x", "Illegal activity", "Lexica") == {}


# --------------------------------------------------------------------------- build_thresholds
@pytest.mark.parametrize("profile", sorted(BUILTIN_PROFILES))
def test_builtin_profiles(profile: str) -> None:
    t = build_thresholds({}, profile)
    for cat in CATEGORIES:
        for src in CELL_SOURCES:
            assert t.resolve("demo", cat, src) == BUILTIN_PROFILES[profile]


def test_table_order_default_then_pyproject_then_profile() -> None:
    py = {"thresholds": {"f1_min": 0.6, "category": {"Hate": {"f1_min": 0.1}}}}
    default = build_thresholds(py, "default")
    assert default.resolve("d", "Spam", "all") == {**BUILTIN_PROFILES["default"], "f1_min": 0.6}
    assert default.resolve("d", "Hate", "all") == {**BUILTIN_PROFILES["default"], "f1_min": 0.1}
    strict = build_thresholds(py, "strict")
    # the profile's global beats the pyproject global, but not the more specific category
    assert strict.resolve("d", "Spam", "all") == BUILTIN_PROFILES["strict"]
    assert strict.resolve("d", "Hate", "all") == {**BUILTIN_PROFILES["strict"], "f1_min": 0.1}


def test_pyproject_profile() -> None:
    py = {"thresholds": {"fpr_max": 0.5, "classifier": {"q16": {"f1_min": 0.45}}},
          "profiles": {"release": {"f1_min": 0.8, "category": {"Spam": {"source": {"Lexica": {
              "fpr_max": 0.05}}}}}}}
    t = build_thresholds(py, "release")
    default = BUILTIN_PROFILES["default"]
    assert t.resolve("demo", "Hate", "all") == {**default, "f1_min": 0.8, "fpr_max": 0.5}
    assert t.resolve("q16", "Hate", "all") == {**default, "f1_min": 0.45, "fpr_max": 0.5}
    assert t.resolve("demo", "Spam", "Lexica") == {**default, "f1_min": 0.8, "fpr_max": 0.05}


def test_pyproject_profile_can_refine_builtin_name() -> None:
    t = build_thresholds({"profiles": {"strict": {"fpr_max": 0.2}}}, "strict")
    assert t.resolve("d", "Hate", "all") == {**BUILTIN_PROFILES["strict"], "fpr_max": 0.2}


def test_unknown_profile_lists_available() -> None:
    with pytest.raises(ConfigError) as info:
        build_thresholds({"profiles": {"nightly": {}}}, "nighty")
    msg = str(info.value)
    assert "unknown profile 'nighty'" in msg and "did you mean 'nightly'" in msg
    assert "available: default, nightly, smoke, strict" in msg


def test_profiles_must_be_tables() -> None:
    with pytest.raises(ConfigError, match=r"^tool.unsafebench.profiles: expected a table"):
        build_thresholds({"profiles": ["x"]}, "default")
    with pytest.raises(ConfigError, match=r"^tool.unsafebench.profiles.x: expected a table"):
        build_thresholds({"profiles": {"x": 0.5}}, "x")
    with pytest.raises(ConfigError, match=r"^tool.unsafebench.thresholds: expected a table"):
        build_thresholds({"thresholds": 0.5}, "default")


@pytest.mark.parametrize(("table", "path", "fragment"), [
    ({"f1_mn": 0.5}, "tool.unsafebench.thresholds.f1_mn", "did you mean 'f1_min'"),
    ({"category": {"Hate": {"fpr": 0.1}}}, "tool.unsafebench.thresholds.category.Hate.fpr",
     "allowed here: f1_min, fpr_max, ra_min_gaussian, ra_min_attack, ra_min_evasion, "
     "ra_min_corruption, gap_f1_max, gap_fpr_max, gap_ra_max, source"),
    ({"category": {"Illegal activity": {"fpr": 0.1}}},
     'tool.unsafebench.thresholds.category."Illegal activity".fpr', "unknown key 'fpr'"),
    ({"classifier": {"q16": {"category": {"Hate": {"source": {"all": {"f1": 1}}}}}}},
     "tool.unsafebench.thresholds.classifier.q16.category.Hate.source.all.f1",
     "allowed here: f1_min, fpr_max"),
    ({"source": {"Lexica": {"category": {}}}}, "tool.unsafebench.thresholds.source.Lexica.category",
     "unknown key 'category'"),
    ({"category": {"Hate": {"classifier": {}}}},
     "tool.unsafebench.thresholds.category.Hate.classifier",
     "unknown key 'classifier'"),
    ({"classifier": {"q16": {"classifier": {}}}},
     "tool.unsafebench.thresholds.classifier.q16.classifier",
     "allowed here: f1_min, fpr_max, ra_min_gaussian, ra_min_attack, ra_min_evasion, "
     "ra_min_corruption, gap_f1_max, gap_fpr_max, gap_ra_max, source, category"),
    ({"f1_min": 1.5}, "tool.unsafebench.thresholds.f1_min", "between 0 and 1, got 1.5"),
    ({"fpr_max": -0.1}, "tool.unsafebench.thresholds.fpr_max", "got -0.1"),
    ({"f1_min": True}, "tool.unsafebench.thresholds.f1_min", "got True"),
    ({"f1_min": "0.5"}, "tool.unsafebench.thresholds.f1_min", "got '0.5'"),
    ({"f1_min": float("nan")}, "tool.unsafebench.thresholds.f1_min", "got nan"),
    ({"category": {"hate": {"f1_min": 0.1}}}, "tool.unsafebench.thresholds.category.hate",
     "unknown category 'hate' (did you mean 'Hate'? case matters)"),
    ({"source": {"Lexika": {"f1_min": 0.1}}}, "tool.unsafebench.thresholds.source.Lexika",
     "unknown source 'Lexika' (did you mean 'Lexica'?)"),
    ({"source": {"Pooled": {}}}, "tool.unsafebench.thresholds.source.Pooled",
     "expected one of Laion5B, Lexica, all"),
    ({"category": ["Hate"]}, "tool.unsafebench.thresholds.category", "expected a table"),
    ({"category": {"Hate": 0.5}}, "tool.unsafebench.thresholds.category.Hate", "expected a table"),
])
def test_bad_tables_name_the_path(table, path, fragment) -> None:
    with pytest.raises(ConfigError) as info:
        build_thresholds({"thresholds": table}, "default")
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    assert fragment in msg, msg


def test_bad_profile_table_names_profile_path() -> None:
    with pytest.raises(ConfigError, match=r"^tool.unsafebench.profiles.ci.category.Spam.f1_min: "):
        build_thresholds({"profiles": {"ci": {"category": {"Spam": {"f1_min": 2}}}}}, "ci")


def test_resolved_grid_shape() -> None:
    t = build_thresholds({"thresholds": {"classifier": {"a": {"f1_min": 0.2}}}}, "default")
    grid = t.resolved_grid(["a", "b"], ["Hate", "Spam"], CELL_SOURCES)
    assert list(grid) == ["a", "b"] and list(grid["a"]) == ["Hate", "Spam"]
    assert list(grid["a"]["Hate"]) == list(CELL_SOURCES)
    assert grid["a"]["Spam"]["all"]["f1_min"] == 0.2 and grid["b"]["Spam"]["all"]["f1_min"] == 0.5


# --------------------------------------------------------------------------- property
_value = st.floats(0, 1)
_metrics = st.dictionaries(st.sampled_from(sorted(METRICS)), _value, max_size=len(METRICS))
_by_source = st.dictionaries(st.sampled_from(CELL_SOURCES), _metrics, max_size=3)
_cat_level = st.builds(lambda m, s: {**m, **({"source": s} if s else {})}, _metrics, _by_source)
_by_category = st.dictionaries(st.sampled_from(CATEGORIES), _cat_level, max_size=3)
_clf_level = st.builds(lambda m, s, c: {**m, **({"source": s} if s else {}),
                                        **({"category": c} if c else {})},
                       _metrics, _by_source, _by_category)
_top = st.builds(lambda m, s, c, k: {**m, **({"source": s} if s else {}),
                                     **({"category": c} if c else {}),
                                     **({"classifier": k} if k else {})},
                 _metrics, _by_source, _by_category,
                 st.dictionaries(st.sampled_from(["demo", "q16", "x"]), _clf_level, max_size=2))


@settings(max_examples=80, deadline=None)
@given(thresholds=_top, profiles=st.dictionaries(st.sampled_from(["p", "q"]), _top, max_size=2),
       profile=st.sampled_from(["default", "strict", "smoke", "p", "q"]),
       classifier=st.sampled_from(["demo", "q16", "x", "other"]),
       category=st.sampled_from(CATEGORIES), source=st.sampled_from(CELL_SOURCES))
def test_resolve_always_complete_and_in_range(thresholds, profiles, profile, classifier,
                                              category, source) -> None:
    py = {"thresholds": thresholds, "profiles": profiles}
    if profile not in BUILTIN_PROFILES and profile not in profiles:
        with pytest.raises(ConfigError, match="unknown profile"):
            build_thresholds(py, profile)
        return
    resolved = build_thresholds(py, profile).resolve(classifier, category, source)
    assert set(resolved) == set(METRICS)
    assert all(0.0 <= v <= 1.0 for v in resolved.values())

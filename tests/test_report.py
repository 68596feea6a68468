"""The scored report: canonical row order, the summary score, and the terminal section."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_unsafebench.config import resolve_settings
from pytest_unsafebench.dataset.records import Finding
from pytest_unsafebench.report.document import build_json, summarize
from pytest_unsafebench.report.format import sorted_rows
from pytest_unsafebench.report.schema import GATE_OUTCOMES, ROW_KEYS, SCHEMA_VERSION
from pytest_unsafebench.report.terminal import terminal_lines
from pytest_unsafebench.results import ClassifierState, RunState
from pytest_unsafebench.taxonomy import CATEGORIES, CELL_SOURCES, SHORT_NAMES
from pytest_unsafebench.thresholds import BUILTIN_PROFILES


def row(classifier="a", metric="f1", category="Hate", source="all", value=0.5,
        outcome="passed", suite="effectiveness", threshold=0.5, n=10) -> dict:
    return {"classifier": classifier, "suite": suite, "metric": metric, "category": category,
            "source": source, "value": value, "threshold": threshold, "outcome": outcome, "n": n}


# --------------------------------------------------------------------------- sorted_rows
_rows = st.lists(st.builds(
    row,
    classifier=st.sampled_from(["a", "b", "demo", None]),
    metric=st.sampled_from(["f1", "fpr", "auroc", "findings"]),
    category=st.sampled_from([*CATEGORIES, None, "Gore"]),
    source=st.sampled_from([*CELL_SOURCES, None]),
    value=st.none() | st.floats(0, 1) | st.integers(0, 9),
    outcome=st.sampled_from([*GATE_OUTCOMES, "info"]),
    suite=st.sampled_from(["effectiveness", "integrity", "custom", None]),
    threshold=st.none() | st.sampled_from([0.3, 0.5]),
    n=st.none() | st.integers(0, 50),
), max_size=30)


@settings(max_examples=150, deadline=None)
@given(rows=_rows, seed=st.integers(0, 2**32 - 1))
def test_sorted_rows_is_independent_of_input_order(rows, seed) -> None:
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    assert sorted_rows(shuffled) == sorted_rows(rows)
    assert json.dumps(sorted_rows(shuffled)) == json.dumps(sorted_rows(rows))


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(st.builds(row, category=st.sampled_from(CATEGORIES),
                               source=st.sampled_from(CELL_SOURCES),
                               metric=st.sampled_from(["f1", "fpr"])), max_size=20),
       perm=st.data())
def test_sorted_rows_follows_taxonomy_order(rows, perm) -> None:
    out = sorted_rows(perm.draw(st.permutations(rows)))
    keys = [(r["metric"], CATEGORIES.index(r["category"]), CELL_SOURCES.index(r["source"]))
            for r in out]
    assert keys == sorted(keys)


def test_sorted_rows_normalises_keys() -> None:
    out = sorted_rows([{"classifier": "a", "metric": "f1", "suite": "s", "category": "Spam",
                        "source": "all", "extra": 1}])
    assert list(out[0]) == list(ROW_KEYS)
    assert out[0]["value"] is None and "extra" not in out[0]


def test_sorted_rows_canonical_example() -> None:
    rows = [row("b"), row("a", category="Spam"), row("a", source="Lexica"),
            row("a", source="Laion5B"), row("a", metric="auroc"), row("a", category="Hate")]
    out = [(r["classifier"], r["metric"], r["category"], r["source"]) for r in sorted_rows(rows)]
    assert out == [("a", "auroc", "Hate", "all"), ("a", "f1", "Hate", "Laion5B"),
                   ("a", "f1", "Hate", "Lexica"), ("a", "f1", "Hate", "all"),
                   ("a", "f1", "Spam", "all"), ("b", "f1", "Hate", "all")]


# --------------------------------------------------------------------------- summarize
def test_summarize_scores_pooled_f1_of_gated_rows() -> None:
    rows = [
        row(category="Hate", value=0.8, outcome="passed"),
        row(category="Sexual", value=0.4, outcome="failed"),
        row(category="Spam", value=None, outcome="skipped"),
        row(category="Shocking", value=None, outcome="error"),
        row(category="Hate", source="Lexica", value=0.1, outcome="failed"),  # not pooled
        row(category="Hate", metric="precision", value=0.0, outcome="info"),
        row(category="Hate", metric="fpr", value=0.9, outcome="failed"),
        row(classifier="b", category="Hate", value=1.0),
    ]
    s = summarize(rows, ["a", "b", "c"])
    assert s["a"]["score"] == pytest.approx(0.6)
    assert s["a"]["categories_scored"] == 2
    assert {k: s["a"][k] for k in GATE_OUTCOMES} == {"passed": 1, "failed": 3, "skipped": 1,
                                                     "error": 1}
    assert s["b"]["score"] == 1.0 and s["b"]["passed"] == 1
    assert s["c"] == {**s["c"], "score": None, "categories_scored": 0, "passed": 0, "failed": 0}
    assert "mean" in s["a"]["score_definition"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(CATEGORIES), st.floats(0, 1),
                          st.sampled_from(["passed", "failed"])), max_size=11,
                unique_by=lambda t: t[0]))
def test_summarize_score_is_mean(cells) -> None:
    rows = [row(category=c, value=v, outcome=o) for c, v, o in cells]
    s = summarize(rows, ["a"])["a"]
    if cells:
        assert s["score"] == pytest.approx(sum(v for _, v, _ in cells) / len(cells), abs=1e-6)
    else:
        assert s["score"] is None
    assert s["passed"] + s["failed"] == len(cells) == s["categories_scored"]


# --------------------------------------------------------------------------- terminal_lines
def _state(classifiers: dict[str, ClassifierState], synthetic: bool = False,
           findings: list[Finding] | None = None) -> RunState:
    return RunState(
        dataset={"spec": "demo", "name": "demo-set", "synthetic": synthetic,
                 "description": "generated shapes, not real content", "fingerprint": "abc123",
                 "counts": {"images": 48}, "usable_images": 47},
        findings=findings or [],
        classifiers=classifiers,
    )


def _table_line(lines: list[str], category: str) -> list[str]:
    short = SHORT_NAMES[category]
    found = [ln.split() for ln in lines if ln.split()[:1] == [short]]
    assert len(found) == 1, lines
    return found[0][1:]


def test_terminal_lines_table(tmp_path: Path) -> None:
    s = resolve_settings({"classifiers": ["a"], "categories": ["Hate,Sexual,Spam,Violence"]},
                         {}, tmp_path)
    cs = ClassifierState("a", fingerprint="a-v1", covered=["Hate", "Sexual", "Violence"],
                         cache_hits=3, cache_misses=45)
    rows = [
        row(category="Hate", source="Laion5B", value=0.9),
        row(category="Hate", source="Lexica", value=0.25, outcome="failed"),
        row(category="Hate", source="all", value=0.6),
        row(category="Hate", metric="fpr", source="all", value=0.5, outcome="failed"),
        row(category="Sexual", source="all", value=0.7),
        row(category="Violence", source="all", value=None, outcome="skipped"),
    ]
    lines = terminal_lines(build_json(s, _state({"a": cs}), rows, tmp_path, "cpu", {}))
    text = "\n".join(lines)
    assert lines[0].startswith("dataset: demo-set (48 images, split all, fingerprint abc123)")
    assert "SYNTHETIC" not in text
    assert "data integrity: 0 finding(s), 0 image(s) excluded" in text
    assert "classifier a [a-v1] score 0.650" in text
    assert "macro mean F1 over 2 of 3 covered categories" in text  # Violence not scored
    assert "tests: 3 passed, 2 failed, 1 skipped, 0 errors; cache 3 hits, 45 misses" in text
    hate = _table_line(lines, "Hate")
    assert "0.900" in hate and "0.600" in hate
    assert "0.250*" in hate and "0.500*" in hate  # failing cells are marked
    assert "0.900*" not in hate and "0.600*" not in hate
    assert hate.count("-") == 2  # FPR on the two single sources was not measured
    sexual = _table_line(lines, "Sexual")
    assert sexual.count("0.700") == 1 and sexual.count("-") == len(sexual) - 1
    violence = _table_line(lines, "Violence")
    assert set(violence) == {"-"}  # skipped: no value
    assert not [ln for ln in lines if ln.split()[:1] == ["Spam"]]
    assert "not covered under the official alignment: Spam" in text
    assert "* = fails its threshold" in text or "* = below its threshold" in text


def test_terminal_lines_other_classifiers_rows_do_not_leak(tmp_path: Path) -> None:
    s = resolve_settings({"classifiers": ["a", "b"], "categories": ["Hate"]}, {}, tmp_path)
    cs = {n: ClassifierState(n, fingerprint=f"{n}-v1", covered=["Hate"]) for n in "ab"}
    doc = build_json(s, _state(cs), [row("b", value=0.123, outcome="failed")], tmp_path, "cpu", {})
    lines = terminal_lines(doc)
    a_part = lines[lines.index(next(ln for ln in lines if ln.startswith("classifier a"))):
                   lines.index(next(ln for ln in lines if ln.startswith("classifier b")))]
    assert "0.123" not in "\n".join(a_part)
    assert set(_table_line(a_part, "Hate")) == {"-"}
    assert "0.123*" in "\n".join(lines)


def test_terminal_lines_synthetic_findings_and_error(tmp_path: Path) -> None:
    s = resolve_settings({"classifiers": ["good", "bad"], "categories": ["Hate", "Spam"]},
                         {}, tmp_path)
    states = {
        "good": ClassifierState("good", fingerprint="g", covered=[]),
        "bad": ClassifierState("bad", error="ClassifierLoadError: no module named 'torch'"),
    }
    findings = [Finding("truncated", "metadata.csv:3 (a.png)", "cut"),
                Finding("converted-mode", "metadata.csv:4 (b.png)", "LA")]
    state = _state(states, synthetic=True, findings=findings)
    lines = terminal_lines(build_json(s, state, [], tmp_path, "cpu", {}))
    text = "\n".join(lines)
    assert "SYNTHETIC DATA: generated shapes, not real content" in text
    assert ("data integrity: 2 finding(s), 1 image(s) excluded from metrics "
            "(see test_data_integrity)") in text
    assert "classifier bad: ERROR ClassifierLoadError: no module named 'torch'" in lines
    bad_at = lines.index("classifier bad: ERROR ClassifierLoadError: no module named 'torch'")
    assert all(not ln.startswith("  tests:") for ln in lines[bad_at:])
    assert "classifier good [g] score not measured" in text  # nothing scored: not a number
    assert "not covered under the official alignment: Hate, Spam" in text


# --------------------------------------------------------------------------- build_json
def test_build_json_is_serialisable_and_sorted(tmp_path: Path) -> None:
    s = resolve_settings({"classifiers": ["a"], "categories": ["Hate"]}, {}, tmp_path)
    state = _state({"a": ClassifierState("a", fingerprint="f", covered=["Hate"], cache_hits=2,
                                         cache_misses=1, predictions_file="p.jsonl")},
                   findings=[Finding("truncated", "x", "y")])
    rows = [row(source="all", value=0.5), row(source="Laion5B", value=0.4, outcome="failed")]
    doc = build_json(s, state, rows, tmp_path, "cpu", {"wall_seconds": 1.0})
    again = json.loads(json.dumps(doc))
    assert again["schema_version"] == SCHEMA_VERSION
    assert [r["source"] for r in doc["rows"]] == ["Laion5B", "all"]
    assert doc["summary"]["a"]["score"] == 0.5
    assert doc["cache"] == {"hits": 2, "misses": 1}
    assert doc["dataset"]["integrity"]["excluded"] == 1
    assert "predictions_file" not in doc["classifiers"]["a"]
    assert doc["thresholds"]["a"]["Hate"]["all"] == BUILTIN_PROFILES["default"]
    assert all(r["condition"] is None for r in doc["rows"])
    assert str(tmp_path) not in json.dumps({k: v for k, v in doc.items() if k != "environment"})


def test_robustness_gap_is_real_minus_generated() -> None:
    from pytest_unsafebench.report.document import robustness_gaps

    def row(source: str, value: float | None, outcome: str = "passed") -> dict:
        return {"classifier": "demo", "suite": "robustness", "metric": "ra", "category": None,
                "source": source, "condition": "pgd", "value": value, "threshold": 0.0,
                "outcome": outcome, "n": 10}

    rows = [row("Laion5B", 0.2), row("Lexica", 0.7), row("all", 0.45),
            {**row("Laion5B", 0.9, "info"), "metric": "clean_accuracy"}]
    assert robustness_gaps(rows) == [
        {"classifier": "demo", "condition": "pgd", "ra_real_minus_generated": -0.5}]
    # A source that was skipped has no value: no gap is claimed.
    assert robustness_gaps([row("Laion5B", 0.2), row("Lexica", None, "skipped")]) == []


def test_terminal_tables_show_the_papers_figure_only_on_the_real_dataset(tmp_path: Path) -> None:
    # alpha = "drop": transparent images decoded as the official loader's convert("RGB")
    s = resolve_settings({"classifiers": ["q16"], "categories": ["Hate"]}, {"alpha": "drop"},
                         tmp_path)
    cs = {"q16": ClassifierState("q16", fingerprint="q", covered=["Hate"])}
    rows = [row("q16", category="Hate", source=src, value=0.5) for src in ("Laion5B", "all")]
    real = _state(cs)
    real.dataset = {**real.dataset, "spec": "hf:yiting/UnsafeBench", "name": "UnsafeBench"}
    doc = build_json(s, real, rows, tmp_path, "cpu", {})
    hate = _table_line(terminal_lines(doc), "Hate")
    assert "paper" in hate and "0.641" in hate and "0.533" in hate   # report/paper.py
    assert {r["source"]: r["paper"] for r in doc["rows"]} == {"Laion5B": 0.641, "all": 0.533}
    # The default composites over white: no figure, and the run says why.
    white = resolve_settings({"classifiers": ["q16"], "categories": ["Hate"]}, {}, tmp_path)
    doc = build_json(white, real, rows, tmp_path, "cpu", {})
    assert not any(r.get("paper") for r in doc["rows"])
    assert doc["paper_figures"]["shown"] is False
    assert ('paper figures not shown: the run composites transparent images over white '
            '(alpha = "white")') in "\n".join(terminal_lines(doc))
    synthetic = _state(cs, synthetic=True)
    synthetic.dataset = {**real.dataset, "synthetic": True}
    doc = build_json(s, synthetic, rows, tmp_path, "cpu", {})
    assert "paper" not in " ".join(_table_line(terminal_lines(doc), "Hate"))
    assert all(r["paper"] is None for r in doc["rows"])


def test_summary_score_is_the_macro_mean_and_overall_is_its_own_figure() -> None:
    """The Overall cell (images pooled) is reported beside the macro mean, never averaged in."""
    rows = [row(category="Hate", value=0.2), row(category="Sexual", value=0.8),
            row(category="Overall", value=0.7), row(category="Overall", source="Lexica", value=0.1)]
    s = summarize(rows, ["a"])["a"]
    assert s["score"] == pytest.approx(0.5) and s["categories_scored"] == 2
    assert s["overall_f1"] == pytest.approx(0.7)
    assert "macro mean" in s["score_definition"]
    assert summarize(rows[:2], ["a"])["a"]["overall_f1"] is None

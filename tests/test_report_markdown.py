"""The Markdown CI summary."""

from __future__ import annotations

import copy

import pytest

from pytest_unsafebench.report.markdown import MAX_FAILED, md, render_markdown
from report_doc_helpers import augment, real_run


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    run, preds, _data = real_run(tmp_path_factory.mktemp("toyrun"))
    return augment(run, [])


def _tables(text: str) -> list[list[str]]:
    """Each GitHub table as its lines; every line of one table has the same cell count."""
    tables: list[list[str]] = []
    current: list[str] = []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def _cells(line: str) -> int:
    return len(line.replace("\\|", "").strip("|").split("|"))


def test_summary_failed_cells_gap_robustness_and_baseline(doc):
    out = render_markdown(doc)
    name = doc["config"]["classifiers"][0]
    assert out.startswith("## pytest-unsafebench:")
    assert f"### {name}" in out
    s = doc["summary"][name]
    assert f"| {s['score']:.3f} | {s['passed']} | {s['failed']} |" in out
    assert "### Failed cells" in out and "emoji_sticker" in out
    assert "**Gap F1 (Laion5B - Lexica)" in out and "CI excluding 0" in out
    assert "### Robustness" in out and "corruption grid mean" in out
    assert "attacks at eps 2/255 in \\[0, 1\\] pixel units." in out  # "[" escaped: no link
    assert "### Baseline" in out and "**failed**" in out and "beyond tolerance" in out
    for table in _tables(out):
        assert table[1].startswith("|---|")
        assert len({_cells(line) for line in table}) == 1, table
    assert "(paper" not in out and "| paper |" not in out  # synthetic data


def test_failed_cells_are_capped(doc):
    many = copy.deepcopy(doc)
    row = next(r for r in many["rows"] if r["suite"] == "effectiveness" and r["metric"] == "f1")
    many["rows"] += [{**row, "outcome": "failed", "condition": f"c{i}"} for i in range(30)]
    out = render_markdown(many)
    failed = sum(1 for r in many["rows"] if r["outcome"] in ("failed", "error"))
    assert out.count("\n- ") == MAX_FAILED + 1
    assert f"- and {failed - MAX_FAILED} more" in out


def test_names_cannot_break_tables():
    assert md("a|b\nc") == "a\\|b c"
    assert md("<script>") == "&lt;script&gt;"
    doc = {"summary": {"evil|<b>x</b>": {"score": 0.5, "passed": 1, "failed": 0, "skipped": 0,
                                         "error": 0}},
           "baseline": {"path": "b|.json", "compared": 1, "passed": False, "regressions": [
               {"classifier": "evil|<b>x</b>", "suite": "effectiveness", "metric": "f1",
                "category": "Hate", "source": "all", "condition": None, "baseline": 0.9,
                "current": 0.5, "diff": -0.4, "tolerance": 0.05, "p_value": None,
                "reason": "dropped | a lot"}]}}
    out = render_markdown(doc)
    assert "evil\\|&lt;b&gt;x&lt;/b&gt;" in out and "<b>" not in out
    for table in _tables(out):
        assert len({_cells(line) for line in table}) == 1, table


def test_absent_sections_do_not_crash():
    out = render_markdown({})
    assert "Summary not available." in out and "Gap (Laion5B - Lexica): not available." in out
    assert "### Baseline" not in out and "### Robustness" not in out


def test_paper_score_beside_ours_on_the_real_dataset():
    rows = [{"classifier": "multiheaded", "suite": "effectiveness", "metric": "f1",
             "category": cat, "source": "all", "condition": None, "value": 0.5,
             "threshold": 0.5, "outcome": "passed", "n": 10}
            for cat in ("Sexual", "Political")]
    doc = {"dataset": {"spec": "hf:yiting/UnsafeBench", "name": "UnsafeBench",
                       "synthetic": False},
           "config": {"split": "all", "limit": None, "alignment": "official", "alpha": "drop"},
           "summary": {"multiheaded": {"score": 0.5, "passed": 2, "failed": 0, "skipped": 0,
                                       "error": 0}}, "rows": rows}
    out = render_markdown(doc)
    assert "| score | paper |" in out and f"| 0.500 | {(0.757 + 0.600) / 2:.3f} |" in out
    doc["config"]["alpha"] = "white"   # not decoded as the paper's loader: no figure
    assert "paper" not in render_markdown(doc)
    doc["config"]["alpha"] = "drop"
    doc["dataset"]["synthetic"] = True
    assert "paper" not in render_markdown(doc)


@pytest.mark.parametrize(("config", "said"), [
    ({"alpha": "white"}, None),
    ({"alpha": "drop"}, "Transparent images: alpha dropped, colours kept"),
    ({"alpha": "drop", "robustness": {"mode": "paper"}}, "as paper mode sets it"),
    ({"alpha": "white", "robustness": {"mode": "paper"}},
     "Transparent images: composited over white"),
    ([], None),   # a hostile shape says nothing
])
def test_header_names_the_alpha_rule_as_the_terminal_does(config, said):
    header = render_markdown({"config": config}).split("Summary")[0]
    if said is None:
        assert "Transparent images" not in header
    else:
        assert said in header

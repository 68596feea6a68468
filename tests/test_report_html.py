"""The HTML report: sections, escaping, offline-only content, blurred thumbnails, Chromium."""

from __future__ import annotations

import io
import json
from html import escape
import re
import shutil
import subprocess
import sys
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pytest_unsafebench.dataset import load_dataset
from pytest_unsafebench.report_html import SECTIONS, render_html
from pytest_unsafebench.thumbnails import make_examples
from report_doc_helpers import HOSTILE, augment, hostile, real_run

SECTION_IDS = [sid for sid, _ in SECTIONS]
# Any attribute or CSS that would make a browser fetch something.
EXTERNAL = re.compile(r"""(?:src|href|srcset|action|data|poster)\s*=\s*["']?\s*"""
                      r"""(?:https?:|//|ftp:|javascript:)"""
                      r"""|url\(\s*["']?\s*(?:https?:|//)|@import|<link\b|<script\b|<iframe\b""",
                      re.IGNORECASE)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real plugin run of the toy classifier: (document, predictions, dataset root)."""
    return real_run(tmp_path_factory.mktemp("toyrun"))


@pytest.fixture(scope="module")
def full_doc(run):
    doc, preds, data = run
    records = {r.id: r for r in load_dataset(str(data)).records}
    return augment(doc, make_examples(records, preds))


@pytest.fixture(scope="module")
def html(full_doc):
    return render_html(full_doc)


def _section(html: str, sid: str) -> str:
    match = re.search(rf'<section id="{sid}">(.*?)</section>', html, re.S)
    assert match, f"section {sid} missing"
    return match.group(1)


def test_every_section_is_present_with_content(html):
    for sid in SECTION_IDS:
        body = _section(html, sid)
        assert "not available" not in body, sid
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert html.count("<img class=\"chart\"") >= 6  # heatmap, gap, ROC, PR, reliability, severity
    assert "[" in _section(html, "effectiveness")  # CIs beside the values


def test_robustness_states_attack_units_and_why_cells_did_not_run(full_doc, html):
    name = full_doc["config"]["classifiers"][0]
    body = _section(html, "robustness")
    assert "attacks at eps 2/255 in [0, 1] pixel units" in body
    assert f"not run (fgsm): not attackable: {escape(name)} has no gradient path" in body
    paper = json.loads(json.dumps(full_doc))
    paper["config"]["robustness"].update(mode="paper", attacks=["pgd", "square"])
    assert ("attacks in paper mode: the reference settings, eps 0.01 in each model&#x27;s "
            "normalised input units; square (not in the paper) at eps 2/255 in [0, 1] pixel "
            "units") in _section(render_html(paper), "robustness")


def test_a_document_without_the_new_sections_says_not_available(run):
    old = {k: v for k, v in run[0].items()
           if k not in ("curves", "comparisons", "source_shift", "baseline", "examples")}
    out = render_html(old)
    for sid in ("curves", "calibration", "operating-points", "examples", "baseline",
                "comparisons", "robustness", "fuzz"):
        assert "not available" in _section(out, sid), sid
    bare = render_html({"schema_version": 1})
    for sid in SECTION_IDS:
        assert "not available" in _section(bare, sid), sid


def test_strings_from_the_document_are_escaped(full_doc):
    out = render_html(hostile(full_doc))
    assert HOSTILE not in out and "<script" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "evil.example" in out and not EXTERNAL.search(out)


def test_names_are_plain_text_in_charts(full_doc):
    name = full_doc["config"]["classifiers"][0]
    text = json.dumps(full_doc).replace(json.dumps(name)[1:-1], "cost $5 \\\\frac{ $x^")
    out = render_html(json.loads(text))  # mathtext would raise on this name
    assert "cost $5 \\frac{ $x^" in out


def test_no_external_resources(html):
    assert not EXTERNAL.search(html)
    for uri in re.findall(r'src="([^"]*)"', html):
        assert uri.startswith("data:image/"), uri[:40]
    assert set(re.findall(r'href="([^"]*)"', html)) == {f"#{sid}" for sid in SECTION_IDS}


def test_thumbnails_carry_a_blur_note_and_only_data_uris_are_embedded(full_doc):
    examples = full_doc["examples"]
    assert any(e["label"] == "Unsafe" for e in examples)
    doc = {"dataset": full_doc["dataset"], "examples": examples}  # no charts: fast
    out = _section(render_html(doc), "examples")
    assert "blurred" in out and "UNBLURRED" not in out
    assert out.count('src="data:image/jpeg;base64,') == len(examples)
    unblurred = {**doc, "examples": [{**e, "blurred": False} for e in examples]}
    assert "UNBLURRED" in _section(render_html(unblurred), "examples")
    evil = {**doc, "examples": [{**examples[0], "image": "https://evil.example/a.jpg"},
                                {**examples[1], "image": "javascript:alert(1)"}]}
    out = render_html(evil)
    assert "no image" in _section(out, "examples") and not EXTERNAL.search(out)


def test_paper_figures_shown_only_for_the_real_dataset(full_doc):
    doc = {k: json.loads(json.dumps(full_doc[k])) for k in ("dataset", "summary", "config")}
    doc["config"].update(split="all", limit=None, alignment="official")
    doc["summary"] = {"q16": doc["summary"].popitem()[1]}
    doc["rows"] = [{"classifier": "q16", "suite": "effectiveness", "metric": "f1",
                    "category": "Hate", "source": src, "condition": None, "value": 0.5,
                    "threshold": 0.5, "outcome": "passed", "n": 10}
                   for src in ("Laion5B", "Lexica", "all")]
    assert "(paper" not in render_html(doc)  # synthetic toy data: no reference figures
    doc["dataset"].update(spec="hf:yiting/UnsafeBench", name="UnsafeBench", synthetic=False)
    out = render_html(doc)  # rows without a "paper" key (an older document): looked up
    assert "(paper 0.641)" in out and "(paper 0.336)" in out and "(paper 0.533)" in out
    assert "0.533" in _section(out, "summary")
    doc["rows"][0]["paper"] = None  # the run said: no figure for this row
    assert "(paper 0.641)" not in render_html(doc)
    doc["config"]["limit"] = 20  # a limited run: none looked up, and the header says why
    out = render_html(doc)
    assert "(paper 0.336)" not in out and "Paper figures not shown" in out


def test_saved_fuzz_counterexamples_are_embedded(full_doc, tmp_path):
    from pytest_unsafebench.fuzzing import Counterexample, save_counterexample

    doc = {"rows": [r for r in full_doc["rows"] if r["suite"] == "fuzz"]}
    row = next(r for r in doc["rows"] if r["metric"] == "flips")
    cx = Counterexample(classifier=row["classifier"], image_id="img1", content_hash="h",
                        label="Unsafe", chain=row["condition"], score_before=0.9,
                        decision_before="unsafe", score_after=0.41, decision_after="safe",
                        source=row["source"], category="Hate")
    save_counterexample(tmp_path, cx, Image.new("RGB", (32, 32), (200, 10, 10)))
    assert "image not embedded" in _section(render_html(doc), "fuzz")
    out = _section(render_html(doc, artifacts=tmp_path), "fuzz")
    assert "data:image/png;base64," in out and "blurred" in out and "img1" in out


def test_charts_do_not_touch_pyplot_and_matplotlib_loads_lazily(tmp_path, full_doc):
    path = tmp_path / "doc.json"
    path.write_text(json.dumps({**full_doc, "rows": [r for r in full_doc["rows"]
                                                     if r["suite"] == "effectiveness"]}))
    code = ("import json, sys\n"
            "import pytest_unsafebench.report_html as r\n"
            "assert 'matplotlib' not in sys.modules\n"
            f"r.render_html(json.load(open({str(path)!r})))\n"
            "assert 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser",
                                                        "google-chrome")) if p), None)


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no chromium, chromium-browser or google-chrome "
                    "on PATH (apt-get install chromium to run this test)")
def test_renders_in_headless_chromium(html, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in dom, sid
    shot = tmp_path / "shot.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
                   capture_output=True, timeout=60, check=True)
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("L")
    assert image.size == (1280, 2000)
    low, high = image.getextrema()
    assert high - low > 100  # text and charts drawn, not a blank page
    assert len(np.unique(np.asarray(image.resize((128, 200))))) > 20


_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_value = st.one_of(st.none(), st.floats(0, 1), st.integers(0, 3))
_row = st.fixed_dictionaries({
    "classifier": st.one_of(st.sampled_from(["a", "<x-evil>"]), _text),
    "suite": st.sampled_from(["effectiveness", "gap", "robustness", "fuzz", "integrity"]),
    "metric": st.sampled_from(["f1", "fpr", "gap_f1", "gap_fpr", "gap_ra", "ra", "flips",
                               "ra_corruption_mean", "score_after"]),
    "category": st.one_of(st.none(), st.sampled_from(["Hate", "Sexual"]), _text),
    "source": st.one_of(st.none(), st.sampled_from(["Laion5B", "Lexica", "all"]), _text),
    "condition": st.one_of(st.none(), st.sampled_from(["pgd", "grid", "fog:2", "fog:x"]), _text),
    "value": _value, "threshold": _value,
    "outcome": st.sampled_from(["passed", "failed", "skipped", "error", "info"]),
    "n": st.none(), "ci_low": _value, "ci_high": _value,
})


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_row, max_size=12), st.one_of(_text, st.just("<x-evil>")))
def test_any_rows_render_without_error_or_markup_leaks(rows, name):
    from pytest_unsafebench.report_markdown import render_markdown

    summary = {str(r["classifier"]): {"score": r["value"]} for r in rows} | {name: {}}
    doc = {"rows": rows, "summary": summary,
           "dataset": {"name": name, "integrity": {"items": [{"kind": name}]}}}
    out = render_html(doc)
    assert not EXTERNAL.search(out)
    assert "<x-evil" not in out
    render_markdown(doc)

"""The HTML report: sections, escaping, offline-only content, blurred thumbnails, Chromium."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from html import escape

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pytest_unsafebench.dataset import load_dataset
from pytest_unsafebench.report.html import SECTIONS, render_html
from pytest_unsafebench.report.thumbnails import make_examples
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
                "comparisons"):
        assert "not available" in _section(out, sid), sid
    for sid in ("robustness", "fuzz"):  # suites this run did not include: left out, and said
        assert f'id="{sid}"' not in out and f'href="#{sid}"' not in out
    assert "did not measure: Robustness; Fuzz counterexamples" in out
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
    doc["config"].update(split="all", limit=None, alignment="official", alpha="drop")
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
    doc["config"]["alpha"] = "white"  # transparent images not decoded as the paper's loader
    out = render_html(doc)
    assert "(paper 0.336)" not in out and "the paper&#x27;s loader dropped alpha" in out
    doc["config"]["limit"] = 20  # a limited run: none looked up, and the header says why
    out = render_html(doc)
    assert "(paper 0.336)" not in out and "Paper figures not shown" in out


@pytest.mark.parametrize(("config", "said"), [
    ({"alpha": "white"}, None),
    ({"alpha": "drop"}, "Transparent images: alpha dropped, colours kept (alpha = &quot;drop"),
    ({"alpha": "drop", "robustness": {"mode": "paper"}}, "as paper mode sets it"),
    ({"alpha": "white", "robustness": {"mode": "paper"}},
     "Transparent images: composited over white (alpha = &quot;white&quot;), not as the "
     "official loader"),
    ({"alpha": "white", "robustness": "paper"}, None),   # a hostile shape says nothing
])
def test_header_names_the_alpha_rule_as_the_terminal_does(config, said):
    header = render_html({"config": config}).split("<nav>")[0]
    if said is None:
        assert "Transparent images" not in header
    else:
        assert said in header


def test_saved_fuzz_counterexamples_are_embedded(full_doc, tmp_path):
    from pytest_unsafebench.robustness.fuzzing import Counterexample, save_counterexample

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
            "import pytest_unsafebench.report.html as r\n"
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
    from pytest_unsafebench.report.markdown import render_markdown

    summary = {str(r["classifier"]): {"score": r["value"]} for r in rows} | {name: {}}
    doc = {"rows": rows, "summary": summary,
           "dataset": {"name": name, "integrity": {"items": [{"kind": name}]}}}
    out = render_html(doc)
    assert not EXTERNAL.search(out)
    assert "<x-evil" not in out
    render_markdown(doc)


# ------------------------------------------------------------------------------------- legibility


def _summary_cells(html: str) -> list[str]:
    return re.findall(r'<td class="num[^"]*">\d+</td>', _section(html, "summary"))


def test_zero_failures_and_errors_are_not_drawn_in_alarm_colours(full_doc):
    name = next(iter(full_doc["summary"]))
    counts = {"passed": 3, "failed": 0, "skipped": 2, "error": 0}
    doc = {"summary": {name: {**full_doc["summary"][name], **counts}}}
    cells = _summary_cells(render_html(doc))
    assert '<td class="num">0</td>' in cells and not any(
        "failed" in c or "error" in c for c in cells)
    assert '<td class="num passed">3</td>' in cells
    doc["summary"][name].update(failed=2, error=1)
    cells = _summary_cells(render_html(doc))
    assert '<td class="num failed">2</td>' in cells and '<td class="num error">1</td>' in cells


class _Figures:
    """Captures the matplotlib figures the renderer draws (instead of encoding them)."""

    def __init__(self, monkeypatch):
        import pytest_unsafebench.report.html as rh

        self.figures = []
        monkeypatch.setattr(rh, "_img", lambda fig, alt: self.figures.append((alt, fig)) or "")

    def named(self, title: str):
        return [fig for alt, fig in self.figures if alt == title]


def test_calibration_draws_one_small_panel_per_category(full_doc, monkeypatch):
    figures = _Figures(monkeypatch)
    render_html({k: full_doc[k] for k in ("curves", "config")})
    name = full_doc["config"]["classifiers"][0]
    (fig,) = figures.named(f"Reliability of {name}")
    cells = [c for c in full_doc["curves"][name]["cells"] if c["source"] == "all"]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(cells) >= 3
    for ax, cell in zip(panels, cells):
        assert len(ax.get_lines()) == 2  # the diagonal and this category's curve only
        assert ax.get_title().startswith(cell["category"])


def test_operating_points_are_a_table_of_numbers(full_doc):
    out = _section(render_html({k: full_doc[k] for k in ("curves", "config")}), "operating-points")
    for header in ("operating point", "threshold", "F1", "precision", "recall", "FPR"):
        assert f"<th>{header}</th>" in out
    assert "max F1" in out and "FPR \u2264 0.10" in out and "recall \u2265 0.90" in out
    assert "threshold 0." not in out  # no prose "threshold 0.314, f1 0.800, ..." any more
    name = full_doc["config"]["classifiers"][0]
    doc = json.loads(json.dumps({k: full_doc[k] for k in ("curves", "config")}))
    point = doc["curves"][name]["cells"][0]["operating_points"]["fpr_at_most"]
    point.update(threshold=None, f1=None, precision=None, recall=None, fpr=None)
    out = _section(render_html(doc), "operating-points")
    assert "none: no threshold meets the target" in out


def test_heatmap_is_colour_blind_safe_with_readable_labels(full_doc, monkeypatch):
    import matplotlib.colors

    figures = _Figures(monkeypatch)
    name = full_doc["config"]["classifiers"][0]
    render_html({"rows": full_doc["rows"], "summary": full_doc["summary"]})
    (fig,) = figures.named(f"F1 heatmap of {name}")
    ax = fig.axes[0]
    image = ax.images[0]
    assert image.cmap.name in ("cividis", "viridis")
    labels = [t for t in ax.texts if t.get_text() != "-"]
    assert labels and all(t.get_fontsize() >= 10 for t in labels)
    assert all(t.get_fontsize() >= 10 for t in ax.get_yticklabels())
    for text in labels:  # value text contrasts with its cell: dark ink on light, light on dark
        value = float(text.get_text().split()[0])
        r, g, b, _ = image.cmap(image.norm(value))
        ink = matplotlib.colors.to_rgb(text.get_color())
        luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
        assert (sum(ink) / 3 < 0.5) == (luminance > 0.45), (value, ink)


def test_charts_are_large_enough_to_read(html):
    widths = {}
    for alt, data in re.findall(r'<img class="chart" alt="([^"]*)" src="data:image/png;base64,'
                                r'([^"]*)"', html):
        import base64

        widths[alt] = Image.open(io.BytesIO(base64.b64decode(data))).size[0]
    assert widths and min(widths.values()) >= 540
    assert all(w >= 700 for alt, w in widths.items() if alt.startswith(("ROC", "F1 heatmap")))


def test_sections_of_suites_the_run_did_not_include_are_left_out(full_doc):
    fuzz_only = {**full_doc, "config": {**full_doc["config"], "suites": ["fuzz"]}}
    out = render_html(fuzz_only)
    for sid in ("effectiveness", "gap", "curves", "calibration", "operating-points",
                "robustness", "examples", "comparisons"):
        assert f'<section id="{sid}">' not in out and f'href="#{sid}"' not in out, sid
    for sid in ("summary", "fuzz", "integrity", "baseline", "environment"):
        assert f'<section id="{sid}">' in out, sid
    assert "This run's suites (fuzz) did not measure: " in out


def test_recorded_artifacts_folder_is_used_only_inside_the_reports_folder(tmp_path):
    from pytest_unsafebench.report.html import recorded_artifacts

    report = tmp_path / "reports" / "run.json"
    (tmp_path / "reports" / "art").mkdir(parents=True)
    assert recorded_artifacts({}, report) == (None, None)
    assert recorded_artifacts({"artifacts_folder": "art"}, report) == (
        tmp_path / "reports" / "art", None)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "reports" / "link").symlink_to(outside)
    for hostile_value in ("../elsewhere", str(outside), "link", "", 3, "missing", "a\\..\\b"):
        folder, why = recorded_artifacts({"artifacts_folder": hostile_value}, report)
        assert folder is None and "pass --artifacts DIR" in why, hostile_value


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no chromium, chromium-browser or google-chrome "
                    "on PATH (apt-get install chromium to run this test)")
def test_browser_shows_the_issue_14_layout(full_doc, html, tmp_path):
    """In Chromium: the full report has the operating-points table and the per-category
    reliability panels; a fuzz-only report has no ROC or calibration section."""
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom"]

    def dom(page_html: str, name: str) -> str:
        page = tmp_path / name
        page.write_text(page_html, encoding="utf-8")
        return subprocess.run([*base, page.as_uri()], capture_output=True, text=True,
                              timeout=60, check=True).stdout

    full = dom(html, "full.html")
    ops = _section(full, "operating-points")
    assert "<th>operating point</th>" in ops and "max F1" in ops
    assert 'alt="Reliability of ' in _section(full, "calibration")
    fuzz_only = {**full_doc, "config": {**full_doc["config"], "suites": ["fuzz"]}}
    page = dom(render_html(fuzz_only), "fuzz.html")
    assert 'id="fuzz"' in page and 'id="curves"' not in page and 'id="calibration"' not in page

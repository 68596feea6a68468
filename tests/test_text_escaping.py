"""Text from files never drives the terminal or the Markdown: control
characters in file names, ids, classifier names and error texts are escaped in the terminal
report, in test messages, in ``unsafebench show`` and in the Markdown report, and Markdown
special characters from data cannot add a link or break a table."""

from __future__ import annotations

import re
from pathlib import Path

# Imported before any in-process pytester run (see test_plugin.py): C extensions load once.
import numpy  # noqa: F401
import pytest
from PIL import Image  # noqa: F401
from sklearn.metrics import f1_score  # noqa: F401

import pytest_unsafebench.cache
import pytest_unsafebench.engine
import pytest_unsafebench.session  # noqa: F401
from plugin_helpers import CLASSIFIER, build_dataset, read_json, write_manifest, write_toyclf
from pytest_unsafebench.cli import main as cli_main
from pytest_unsafebench.report.markdown import md, render_markdown
from pytest_unsafebench.text import printable

# An OSC window-title sequence ended by BEL, a colour change, and a C1 CSI.
HOSTILE = "\x1b]0;pwned\x07\x1b[31mred\x9b2J"
ESCAPED = "\\x1b]0;pwned\\x07\\x1b[31mred\\x9b2J"
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # what must never reach the output

EVILCLF = f'''
from pytest_unsafebench import Coverage


class Evil:
    name = "evil"
    fingerprint = "evil-v1"
    coverage = Coverage.of(["Hate"])
    supports_gradients = False

    def predict(self, images):
        raise RuntimeError({HOSTILE!r})


def load():
    return Evil()
'''


@pytest.mark.parametrize(("text", "shown"), [
    (HOSTILE, ESCAPED),
    ("bell\x07 and del\x7f", "bell\\x07 and del\\x7f"),
    ("two\nlines\r", "two\\x0alines\\x0d"),
    ("abc\u202edcba\u2066", "abc\\u202edcba\\u2066"),  # bidi override and isolate
    ("plain ünïcödé 名字 file_name-1.png", "plain ünïcödé 名字 file_name-1.png"),
])
def test_printable_escapes_control_characters_only(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert not RAW.search(printable(text))


LINK = re.compile(r"(?<!\\)\]\(")  # "](" whose "]" is not escaped: the end of a link text


@pytest.mark.parametrize(("text", "absent"), [
    ("[click](https://evil.example)", "https://"),
    ("![img](x.png)", "!["),
    ("a | b", " | "),
    ("<img src=x onerror=alert(1)>", "<img"),
    ("see https://evil.example now", "https://"),
    ("www.evil.example", "www."),
    ("`code` **bold** # head", "**bold**"),
    (HOSTILE, "\x1b"),
])
def test_markdown_text_from_data_is_inert(text: str, absent: str) -> None:
    assert absent not in md(text)
    assert not RAW.search(md(text)) and not LINK.search(md(text))


def test_markdown_table_keeps_its_columns_with_hostile_names() -> None:
    name = f"[evil](https://x.example)|{HOSTILE}"
    doc = {"dataset": {"name": "d|[x](y)", "counts": {"images": 1}},
           "summary": {name: {"score": 0.5, "passed": 1, "failed": 0, "skipped": 0, "error": 0}},
           "classifiers": {name: {"error": f"boom | {HOSTILE}\nsecond line"}}, "rows": []}
    out = render_markdown(doc)
    assert not RAW.search(out)
    assert not LINK.search(out) and "https://" not in out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert {len(line.replace("\\|", "").strip("|").split("|")) for line in table} == {5}
    error = next(line for line in out.splitlines() if line.startswith("**error**"))
    assert "second line" in error  # one line: the newline did not end the paragraph


@pytest.fixture
def hostile_run(pytester: pytest.Pytester) -> tuple[pytest.RunResult, Path]:
    """A run whose classifier error and a manifest file name carry terminal escapes."""
    rows = build_dataset(pytester.path / "ds")
    name = f"images/{HOSTILE}.png"
    write_manifest(pytester.path / "ds", [*rows, {"file_name": name, "safety_label": "Unsafe",
                                                  "category": "Hate", "source": "Lexica",
                                                  "split": "test"}])
    write_toyclf(pytester.path)
    (pytester.path / "evilclf.py").write_text(EVILCLF)
    pytester.syspathinsert()
    result = pytester.runpytest(
        f"--unsafebench-classifier=evilclf:load,{CLASSIFIER}",
        f"--unsafebench-dataset={pytester.path / 'ds'}",
        f"--unsafebench-cache-dir={pytester.path / 'cache'}", "--unsafebench-device=cpu",
        "--unsafebench-suites=effectiveness", "-p", "no:randomly", "--color=no", "-rfE",
        f"--unsafebench-json={pytester.path / 'out.json'}")
    return result, pytester.path


def test_terminal_report_and_test_messages_escape_file_text(
        hostile_run: tuple[pytest.RunResult, Path]) -> None:
    result, folder = hostile_run
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert not RAW.search(out), [m.group() for m in RAW.finditer(out)][:5]
    # the classifier's error: in each of its tests' messages and in the report section
    assert ("classifier 'evilclf:load' failed, so its tests cannot run: "
            f"RuntimeError: {ESCAPED}") in out
    assert f"classifier evilclf:load: ERROR RuntimeError: {ESCAPED}" in out
    # the file name: in the data-integrity test's failure message
    assert f"missing-file: metadata.csv:50 (images/{ESCAPED}.png)" in out
    # the JSON keeps the text as it was: escaping is for display only
    doc = read_json(folder / "out.json")
    assert HOSTILE in doc["classifiers"]["evilclf:load"]["error"]


def test_show_and_markdown_of_a_saved_report_escape_file_text(
        hostile_run: tuple[pytest.RunResult, Path], capsys: pytest.CaptureFixture) -> None:
    _, folder = hostile_run
    capsys.readouterr()
    assert cli_main(["show", str(folder / "out.json")]) == 0
    shown = capsys.readouterr().out
    assert not RAW.search(shown)
    assert f"ERROR RuntimeError: {ESCAPED}" in shown
    assert cli_main(["report", str(folder / "out.json"), "--markdown",
                     str(folder / "out.md")]) == 0
    text = (folder / "out.md").read_text()
    assert not RAW.search(text)
    assert "RuntimeError: \\\\x1b\\]0;pwned\\\\x07\\\\x1b\\[31mred\\\\x9b2J" in text


@pytest.mark.invalid_report  # odd.json breaks the schema on purpose
def test_show_prints_categories_it_does_not_know_escaped_instead_of_failing(
        hostile_run: tuple[pytest.RunResult, Path], capsys: pytest.CaptureFixture) -> None:
    """A saved report is read back as hostile: a category name the taxonomy does not know (or
    no string at all) in its config is shown as it is, escaped, not a KeyError traceback."""
    import json

    _, folder = hostile_run
    doc = read_json(folder / "out.json")
    doc["config"]["categories"] = [*doc["config"]["categories"], f"Bogus{HOSTILE}", ["x"]]
    (folder / "odd.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert cli_main(["show", str(folder / "odd.json")]) == 0
    shown = capsys.readouterr().out
    assert not RAW.search(shown)
    uncovered = next(line for line in shown.splitlines() if "not covered under" in line)
    assert uncovered.endswith(f", Bogus{ESCAPED}, ['x']")


def test_compare_escapes_file_text_in_its_table_notes_and_errors(
        hostile_run: tuple[pytest.RunResult, Path], capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``unsafebench compare`` prints names, notes and errors read from two saved reports."""
    import json

    _, folder = hostile_run
    monkeypatch.chdir(folder)
    doc = read_json(folder / "out.json")
    evil = f"toy{HOSTILE}"
    for row in doc["rows"]:
        if row.get("classifier") == CLASSIFIER:
            row["classifier"] = evil
    doc["config"]["classifiers"] = [evil if c == CLASSIFIER else c
                                    for c in doc["config"]["classifiers"]]
    doc["classifiers"][evil] = doc["classifiers"].pop(CLASSIFIER)
    fingerprint = doc["dataset"]["fingerprint"]
    doc["dataset"]["fingerprint"] = f"fp{HOSTILE}"  # another dataset: a printed note
    (folder / "base.json").write_text(json.dumps(doc))
    doc["dataset"]["fingerprint"] = fingerprint
    f1 = [r for r in doc["rows"] if r["classifier"] == evil and r["metric"] == "f1"
          and (r.get("value") or 0) > 0.1]
    assert f1
    for row in f1:  # the current run scored lower: it regresses
        row["value"] = 0.0
    (folder / "current.json").write_text(json.dumps(doc))
    capsys.readouterr()

    code = cli_main(["compare", "base.json", "current.json", "--allow-mismatch"])
    shown = capsys.readouterr()
    assert code == 1, shown.out + shown.err
    assert not RAW.search(shown.out + shown.err), shown.out
    assert f"toy{ESCAPED}" in shown.out            # the regression table's classifier
    assert f"fp{ESCAPED} in the baseline" in shown.out  # the dataset note

    # a usage error quoting a name from the command line and the baseline's names
    assert cli_main(["compare", "base.json", "current.json", "--allow-mismatch",
                     "--classifier", f"old{HOSTILE}={evil}"]) == 2
    shown = capsys.readouterr()
    assert not RAW.search(shown.out + shown.err), shown.err
    assert f"--classifier old{ESCAPED}=toy{ESCAPED}: the baseline has no classifier" in shown.err


def test_usage_errors_quoting_a_baseline_are_escaped(
        hostile_run: tuple[pytest.RunResult, Path], pytester: pytest.Pytester) -> None:
    """A usage error raised in the pass (here: a rename the baseline cannot match, listing the
    baseline's own classifier names) reaches pytest's ERROR line escaped."""
    import json

    _, folder = hostile_run
    doc = read_json(folder / "out.json")
    for row in doc["rows"]:
        row["classifier"] = f"toy{HOSTILE}"
    (folder / "base.json").write_text(json.dumps(doc))
    result = pytester.runpytest(
        f"--unsafebench-classifier={CLASSIFIER}", f"--unsafebench-dataset={folder / 'ds'}",
        f"--unsafebench-cache-dir={folder / 'cache'}", "--unsafebench-device=cpu",
        f"--unsafebench-baseline={folder / 'base.json'}",
        f"--unsafebench-baseline-classifier=old{HOSTILE}={CLASSIFIER}", "-p", "no:randomly")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert not RAW.search(err), err
    assert f"old{ESCAPED}={CLASSIFIER}: the baseline has no classifier" in err
    assert f"it has: toy{ESCAPED}" in err

"""The normalisation of scripts/report_diff.py (the before/after check): it hides timing
and the temporary folder, and nothing else."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "report_diff.py"


@pytest.fixture(scope="module")
def report_diff() -> ModuleType:
    spec = importlib.util.spec_from_file_location("report_diff", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["report_diff"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["report_diff"]
    return module


def test_json_loses_timing_and_the_folder_only(report_diff: ModuleType, tmp_path: Path) -> None:
    side = tmp_path / "before"
    doc = {"rows": [{"value": 0.92, "n": 60}],  # no schema_version: not a report to validate
           "artifacts_folder": f"{side}/cache/artifacts",
           "timing": {"pass_seconds": 0.4, "finished_at": "2026-12-07T07:29:44+00:00"}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    assert json.loads(report_diff.normalise(path, side)) == {
        **doc, "artifacts_folder": "<SIDE>/cache/artifacts", "timing": "<dropped>"}
    doc["rows"][0]["value"] = 0.93
    path.write_text(json.dumps(doc))
    assert '"value": 0.93' in report_diff.normalise(path, side)


def test_terminal_hides_durations_and_step_lines(report_diff: ModuleType) -> None:
    slow = ("unsafebench: training the demo model: 378 steps in 1 min 00 s, 6.3 steps/s\n"
            "test_robustness.py ....\n"
            "unsafebench: robustness demo / pgd / all: 22 images in 13.0 s, 1.7 images/s\n"
            ".......                    [100%]\n"
            "====== 16 passed, 1 warning in 65.12s (0:01:05) ======\n")
    fast = ("test_robustness.py ...........                    [100%]\n"
            "==== 16 passed, 1 warning in 5.1s ====\n")
    assert report_diff.terminal(slow) == report_diff.terminal(fast) == (
        "test_robustness.py ...........\n== 16 passed, 1 warning in <T>s ==")
    assert report_diff.terminal("x: 0.920 in 1 s\n") == "x: 0.920 in 1 s"  # only step lines
    assert report_diff.terminal("test_fuzz.py FF.\n") != report_diff.terminal("test_fuzz.py F..\n")


def test_html_hides_the_timing_table_only(report_diff: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "r.html"
    path.write_text("<tr><td>pass_seconds</td><td>0.398</td></tr>"
                    "<tr><td>finished_at</td><td>2026-12-07T07:29:44+00:00</td></tr>"
                    "<tr><td>F1</td><td>0.920</td></tr>")
    assert report_diff.normalise(path, tmp_path) == (
        "<tr><td>pass_seconds</td><td><T></td></tr>"
        "<tr><td>finished_at</td><td><T></td></tr><tr><td>F1</td><td>0.920</td></tr>")

"""A realistic JSON report document for the renderer tests.

The base is a real plugin run (the toy classifiers of plugin_helpers.py over its 48-image
folder dataset, in a subprocess, about two seconds), which brings real rows with CIs, gap rows,
curves, the source shift and the paired comparisons. What that run cannot produce (robustness
and fuzz rows: the toy classifier has no gradients and those suites take minutes; a baseline
verdict) is added the way the report schema describes it (rows by report.schema.make_row), and
``examples`` are real thumbnails made by
:func:`pytest_unsafebench.report.thumbnails.make_examples` from the run's predictions.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from plugin_helpers import CLASSIFIER, OTHER, build_dataset, read_json, read_jsonl, write_toyclf
from pytest_unsafebench.report.schema import make_row

HOSTILE = "<script>alert(1)</script>"


def real_run(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]], Path]:
    """Run the plugin on the toy dataset; return (JSON document, prediction rows, dataset root)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    build_dataset(data)
    write_toyclf(folder)
    report, preds = folder / "run.json", folder / "predictions.jsonl"
    path = os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         f"--unsafebench-classifier={CLASSIFIER},{OTHER}", f"--unsafebench-dataset={data}",
         f"--unsafebench-cache-dir={folder / 'cache'}", f"--unsafebench-json={report}",
         f"--unsafebench-predictions={preds}"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120, check=False)
    if not report.is_file():
        raise RuntimeError(f"the toy run wrote no report:\n{proc.stdout}\n{proc.stderr}")
    return read_json(report), read_jsonl(preds), data


def augment(doc: dict[str, Any], examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Add what the toy run cannot produce (see the module docstring)."""
    doc = copy.deepcopy(doc)
    name = doc["config"]["classifiers"][0]
    ra = {"classifier": name, "suite": "robustness", "n": 40}
    for source, shift in (("Laion5B", 0.0), ("Lexica", 0.2), ("all", 0.1)):
        for condition, value, outcome in (("gaussian", 1.0, "passed"), ("pgd", 0.2, "passed"),
                                          ("emoji_sticker", 0.45, "failed")):
            v = min(1.0, value + shift)
            doc["rows"].append(make_row(**ra, metric="ra", source=source, condition=condition,
                                        value=v, threshold=0.0, outcome=outcome,
                                        ci_low=max(0.0, v - 0.05), ci_high=min(1.0, v + 0.05)))
        doc["rows"].append(make_row(**ra, metric="ra", source=source, condition="fgsm",
                                    outcome="skipped",
                                    reason=f"not attackable: {name} has no gradient path"))
        for corruption, slope in (("fog", 0.1), ("jpeg_compression", 0.05)):
            for level in range(1, 6):
                doc["rows"].append(make_row(**ra, metric="ra", source=source,
                                            condition=f"{corruption}:{level}",
                                            value=1 - level * slope, outcome="info"))
        doc["rows"].append(make_row(**{**ra, "n": 10}, metric="ra_corruption_mean",
                                    source=source, condition="grid", value=0.7, threshold=0.5,
                                    outcome="passed", ci_low=0.65, ci_high=0.75))
    fuzz = {"classifier": name, "suite": "fuzz", "source": "Lexica", "n": 1,
            "condition": "gaussian_noise:2:s2023"}
    doc["rows"].append(make_row(**fuzz, metric="flips", value=1, threshold=0, outcome="failed"))
    doc["rows"].append(make_row(**fuzz, metric="score_after", value=0.41, outcome="info"))
    doc["baseline"] = {"path": "baseline.json", "git_commit": "abc123",
                       "rule": {"tolerance": 0.02, "alpha": 0.05, "hard_limit": 0.1},
                       "paired_tests": False, "baseline_values": 40, "compared": 40,
                       "unmatched": [], "renamed": {}, "context": [], "mismatch": [],
                       "passed": False, "within_noise": [], "paired": [], "regressions": [
                           {"classifier": name, "suite": "effectiveness", "metric": "f1",
                            "category": "Hate", "source": "Lexica", "condition": None,
                            "baseline": 0.8, "current": 0.6, "diff": -0.2, "tolerance": 0.05,
                            "p_value": 0.01, "reason": "beyond tolerance", "ci_low": None,
                            "ci_high": None}]}
    doc["examples"] = examples  # made here, so tests control blur and count
    # The added rows are of these suites: the renderer shows only what the run's suites measured.
    doc["config"]["suites"] = [*doc["config"]["suites"], "robustness", "fuzz"]
    return doc


def hostile(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with the classifier renamed to HTML and a finding full of markup."""
    text = json.dumps(doc).replace(json.dumps(doc["config"]["classifiers"][0])[1:-1],
                                   json.dumps(HOSTILE)[1:-1])
    out = json.loads(text)
    out["dataset"]["integrity"]["items"].append(
        {"kind": "unreadable", "locator": f"images/{HOSTILE}.png",
         "detail": '<img src="https://evil.example/x.png">', "excluded": True})
    return out

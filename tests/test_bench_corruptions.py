"""benchmarks/bench_corruptions.py runs end to end on a few small images and reports each row."""

import json
import subprocess
import sys
from pathlib import Path

from pytest_unsafebench import perturbations as P

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_corruptions.py"


def test_benchmark_reports_every_corruption_on_all_and_colour_images() -> None:
    run = subprocess.run([sys.executable, SCRIPT, "--images", "10", "--size", "32",
                          "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    rows = report["corruptions"]
    assert set(rows) == set(P.names("corruption"))
    assert all(row["ours_img_per_s"] > 0 for row in rows.values())
    if report["albumentations"] is None:  # not a dependency: our own throughput only
        assert "albumentations is not available" in run.stderr
        return
    assert 0 < report["colour_images"] < report["images"]  # the photo set mixes both
    for row in rows.values():
        assert row["ratio"] > 0 and row["ratio_colour"] > 0
    assert set(report["other_comparators"]) == {"brightness_rgb_add", "saturate_rgb_blend"}
    assert all(isinstance(item, str) for item in report["below_target"])

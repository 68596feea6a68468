"""Full-size runs on the synthetic stand-in (10,146 images up to 1,600 px, hub parquet layout).

    python benchmarks/bench_scale.py [--standin DIR] [--classifier opennsfw]

Measures, in one run of this script:
1. a cold and a warm full-size run: images per second, and the share of the cold run's wall time
   spent outside model inference (target <= 10%);
2. peak resident memory of a run over 1,000 images against one over all 10,146 (target < 1.3);
3. ``-n 2`` against ``-n 0`` wall time on the same (cold) run.
Each run is a separate ``pytest`` process timed as a whole; peak RSS comes from /usr/bin/time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run(work: Path, data: Path, cache: Path, classifier: str, report: Path,
        *extra: str) -> tuple[float, int, dict]:
    cmd = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "pytest", "-q",
           "-p", "no:cacheprovider", f"--unsafebench-classifier={classifier}",
           f"--unsafebench-dataset={data}", f"--unsafebench-cache-dir={cache}",
           f"--unsafebench-json={report}", *extra]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - start
    if out.returncode not in (0, 1):
        sys.exit(f"run failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}")
    peak_kib = int(out.stderr.strip().splitlines()[-1])
    return wall, peak_kib, json.loads(report.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--standin", type=Path, default=Path(tempfile.gettempdir()) / "ub-standin")
    ap.add_argument("--classifier", default="opennsfw")
    args = ap.parse_args()
    from pytest_unsafebench.dataset.standin import ensure_standin

    data = ensure_standin(args.standin)
    work = Path(tempfile.mkdtemp(prefix="ub-scale-"))
    clf = args.classifier

    cold_s, cold_rss, cold = run(work, data, work / "c1", clf, work / "cold.json")
    warm_s, _, warm = run(work, data, work / "c1", clf, work / "warm.json")
    small_s, small_rss, _ = run(work, data, work / "c2", clf, work / "small.json",
                                "--unsafebench-limit=1000")
    xdist_s, _, xdist = run(work, data, work / "c3", clf, work / "xdist.json", "-n", "2")
    images = cold["dataset"]["counts"]["images"]
    inference = cold["timing"]["inference_seconds"]
    print(json.dumps({
        "classifier": clf,
        "images": images,
        "cold": {"seconds": round(cold_s, 1), "images_per_second": round(images / cold_s, 1),
                 "inference_seconds": inference,
                 "share_outside_inference": round(1 - inference / cold_s, 3)},
        "warm": {"seconds": round(warm_s, 2), "images_per_second": round(images / warm_s, 1),
                 "cache_misses": warm["cache"]["misses"]},
        "peak_rss_mib": {"1000_images": round(small_rss / 1024), f"{images}_images":
                         round(cold_rss / 1024)},
        "peak_rss_ratio": round(cold_rss / small_rss, 3),
        "xdist_n2_over_n0": round(xdist_s / cold_s, 3),
        "xdist_rows_equal": xdist["rows"] == cold["rows"],
    }, indent=2))


if __name__ == "__main__":
    main()

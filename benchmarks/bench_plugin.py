"""Plugin overhead and cache speed-up, measured as ratios within one run.

    python benchmarks/bench_plugin.py [--classifier opennsfw] [--repeats 3]

1. end-to-end ``pytest --unsafebench-classifier=X`` (cold: no prediction cache) against a
   plain Python loop that loads the same dataset and classifier and predicts every image in
   batches; both are timed as whole processes, imports and start-up included.
   Target: plugin / loop <= 1.15.
2. a warm-cache rerun against the cold run. Target: cold / warm >= 20.

Timings on shared machines are noisy, so runs alternate and the median of each is used.
Bytecode caching is on for every process, as on a user's machine (some sandboxes set
PYTHONDONTWRITEBYTECODE, which makes pytest recompile and re-rewrite every module per run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAIN_LOOP = """
import sys
from pytest_unsafebench import load_classifier, load_dataset
cache_dir, name, split, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ds = load_dataset("demo", split=split, cache_dir=cache_dir)
clf = load_classifier(name, cache_dir=cache_dir) if name == "demo" else load_classifier(name)
records = list(ds.records)
n = 0
for i in range(0, len(records), batch):
    n += len(clf.predict([r.load_image() for r in records[i:i + batch]]))
print(n)
"""


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - start
    if out.returncode not in (0, 1):  # 1 = some benchmark thresholds failed: still timed
        sys.exit(f"command failed ({out.returncode}): {' '.join(cmd)}\n"
                 f"{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifier", default="opennsfw")
    ap.add_argument("--split", default="all")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ub-bench-"))
    cache = work / "cache"
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            f"--unsafebench-classifier={args.classifier}", f"--unsafebench-split={args.split}",
            f"--unsafebench-cache-dir={cache}", f"--unsafebench-batch-size={args.batch_size}"]
    loop = [sys.executable, "-c", PLAIN_LOOP, str(cache), args.classifier, args.split,
            str(args.batch_size)]
    # Untimed warm-up: generates the demo dataset (and trains the demo model) once.
    timed(loop, work)
    timed([*base, f"--unsafebench-json={work / 'warm.json'}"], work)  # fills the cache

    plain, cold, warm = [], [], []
    for _ in range(args.repeats):
        plain.append(timed(loop, work))
        cold.append(timed([*base, "--unsafebench-no-cache"], work))
        warm.append(timed(base, work))
    report = json.loads((work / "warm.json").read_text())
    images = report["dataset"]["counts"]["images"]
    result = {
        "classifier": args.classifier,
        "images": images,
        "repeats": args.repeats,
        "median_seconds": {"plain_loop": round(statistics.median(plain), 2),
                           "plugin_cold": round(statistics.median(cold), 2),
                           "plugin_warm": round(statistics.median(warm), 2)},
        "plugin_over_plain_loop": round(statistics.median(cold) / statistics.median(plain), 3),
        "cold_over_warm": round(statistics.median(cold) / statistics.median(warm), 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

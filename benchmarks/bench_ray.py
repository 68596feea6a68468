"""The ray executor against the local one, on the full-size stand-in (cold caches).

    python benchmarks/bench_ray.py [--standin DIR] [--classifier opennsfw] [--limit N]
                                   [--actors N] [--repeats N]

Measures, in one run of this script:
1. Ray start-up: ``import ray`` + a local ``ray.init`` (as the plugin starts it: no dashboard,
   no log forwarding) and ``ray.shutdown``, in a fresh process;
2. ``--repeats`` pairs of a cold local run and a cold ``--unsafebench-executor=ray`` run (a
   local Ray started by the plugin, so its start-up is included), in alternating order, each a
   separate ``pytest`` process timed as a whole: the ratios ray / local and their median, and
   for the last pair whether rows and every cached prediction are identical.
``--limit`` scores a stratified sample instead of all 10,146 images (say so when quoting it).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_scale import ENV, run

STARTUP = """
import json, logging, time
t0 = time.perf_counter()
import ray
t1 = time.perf_counter()
ray.init(num_cpus={cpus}, include_dashboard=False, log_to_driver=False,
         logging_level=logging.WARNING)
t2 = time.perf_counter()
ray.shutdown()
t3 = time.perf_counter()
print(json.dumps({{"import_seconds": round(t1 - t0, 2), "init_seconds": round(t2 - t1, 2),
                   "shutdown_seconds": round(t3 - t2, 2)}}))
"""


def ray_startup(cpus: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", STARTUP.format(cpus=cpus)], capture_output=True,
                         text=True, env=ENV, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def predictions(cache: Path) -> list[tuple]:
    with sqlite3.connect(cache / "predictions.sqlite") as conn:
        return sorted(conn.execute("SELECT * FROM predictions"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--standin", type=Path, default=Path(tempfile.gettempdir()) / "ub-standin")
    ap.add_argument("--classifier", default="opennsfw")
    ap.add_argument("--limit", type=int, default=None, help="images (default: all 10,146)")
    ap.add_argument("--actors", type=int, default=1, help="Ray actors in the pool")
    ap.add_argument("--repeats", type=int, default=2, help="local/ray pairs, order alternating")
    args = ap.parse_args()
    from pytest_unsafebench.dataset.standin import ensure_standin

    data = ensure_standin(args.standin)
    work = Path(tempfile.mkdtemp(prefix="ub-ray-"))
    clf = args.classifier
    extra = [f"--unsafebench-limit={args.limit}"] if args.limit else []

    startup = ray_startup(cpus=max(args.actors, 2))
    pairs = []
    for i in range(args.repeats):
        # Alternate the order, so that load from other processes does not favour one side.
        runs = {}
        for executor in (("local", "ray") if i % 2 == 0 else ("ray", "local")):
            cache = work / f"c-{executor}-{i}"
            runs[executor] = (*run(work, data, cache, clf, work / f"{executor}-{i}.json", *extra,
                                   f"--unsafebench-executor={executor}",
                                   f"--unsafebench-ray-actors={args.actors}"), cache)
        pairs.append(runs)
    local_s, local_rss, local, local_cache = pairs[-1]["local"]
    ray_s, ray_rss, remote, ray_cache = pairs[-1]["ray"]
    timing = remote["timing"]
    ratios = sorted(p["ray"][0] / p["local"][0] for p in pairs)
    print(json.dumps({
        "classifier": clf,
        "images": local["dataset"]["counts"]["images"],
        "actors": args.actors,
        "ray_startup": startup,
        "seconds": [{k: round(v[0], 1) for k, v in p.items()} for p in pairs],
        "ray_over_local": [round(r, 3) for r in ratios],
        "ray_over_local_median": round(ratios[len(ratios) // 2], 3),
        "last_pair": {
            "local": {"peak_rss_mib": round(local_rss / 1024),
                      "inference_seconds": local["timing"]["inference_seconds"]},
            "ray": {"peak_rss_mib_driver": round(ray_rss / 1024),
                    "start_seconds": timing.get("ray_start_seconds"),
                    "ray_seconds": timing.get("ray_seconds"),
                    "images_submitted": timing.get("ray_images_submitted")},
            "rows_equal": remote["rows"] == local["rows"],
            "predictions_bit_identical": predictions(ray_cache) == predictions(local_cache),
            "findings_equal": remote["dataset"]["integrity"] == local["dataset"]["integrity"],
        },
    }, indent=2))

if __name__ == "__main__":
    main()

"""What it costs to give each classifier images it cannot change: a copy each, or a view each.

    python benchmarks/bench_handout.py [--repeats 20]

For a batch of 32 decoded RGB images at several sizes, times handing the batch to one
classifier as copies (``Image.copy``) and as read-only views (``readonly_view``, what the pass
does), and the peak extra memory of each (tracemalloc does not see Pillow's pixel buffers, so
memory is counted from the pixels each way allocates: a copy allocates the image again, a view
nothing until its holder writes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from PIL import Image

from pytest_unsafebench.dataset.images import readonly_view

SIDES = (224, 512, 1600)


def timed(fn, images, repeats: int) -> float:  # a handout function
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        handed = [fn(img) for img in images]
        runs.append(time.perf_counter() - start)
        del handed
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    rows = []
    for side in SIDES:
        images = [Image.new("RGB", (side, side), (i, 2 * i % 256, 90)) for i in range(args.batch)]
        repeats = max(3, args.repeats if side <= 1600 else args.repeats // 4)
        copy_s = timed(lambda img: img.copy(), images, repeats)
        view_s = timed(readonly_view, images, repeats)
        rows.append({"side": side, "batch": args.batch,
                     "copy_ms_per_batch": round(copy_s * 1e3, 3),
                     "view_ms_per_batch": round(view_s * 1e3, 3),
                     "copy_over_view": round(copy_s / view_s, 1),
                     "copy_extra_mb_per_classifier": round(args.batch * side * side * 4 / 1e6, 1),
                     "view_extra_mb_per_classifier": 0.0})
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

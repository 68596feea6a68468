"""Write the full-size synthetic stand-in for yiting/UnsafeBench (hub parquet layout).

    python benchmarks/make_standin.py OUT [--scale 1.0] [--seed 2023] [--max-side 1600]
                                          [--rows-per-group 64] [--workers N]

Writes ``OUT/data/train-*.parquet`` and ``OUT/data/test-00000-of-00001.parquet`` (10,146 rows
at scale 1.0, the real per-split and per-source Safe/Unsafe counts; see
``pytest_unsafebench/dataset/standin.py``) and prints the summary as JSON. Load it with
``--unsafebench-dataset OUT`` (or ``load_dataset("OUT")``). Synthetic: not real UnsafeBench data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_unsafebench.dataset.standin import write_standin


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=2023)
    ap.add_argument("--max-side", type=int, default=1600)
    ap.add_argument("--rows-per-group", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None,
                    help="render processes (default: CPU count); output does not depend on it")
    args = ap.parse_args(argv)
    summary = write_standin(args.out, scale=args.scale, seed=args.seed, max_side=args.max_side,
                            rows_per_group=args.rows_per_group, workers=args.workers)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

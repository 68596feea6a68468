"""Peak memory of a run over very large images: the decoded-pixel budget at work.

    python benchmarks/bench_memory.py [--images 32] [--side 9400] [--batch-size 32]

Writes ``--images`` PNGs of side x side pixels (just under the default max_image_pixels at
9400) into a temporary folder, with a manifest and a toy classifier that scores the mean red
of a 64x64 reduction, then runs ``pytest --unsafebench-no-cache`` over them in a child process
and reports that process's peak resident memory. Target: under 2 GB for 32 images of
9400x9400 at batch size 32 (each decodes to 265 MB of RGB; without the budget one batch alone
would hold 8.5 GB).

The PNGs compress well (large flat areas), so the folder stays small: one image is encoded,
and each copy differs only by a text chunk, so every file has its own content hash and is
decoded on its own.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

CLASSIFIER = '''
from pytest_unsafebench import Coverage, Prediction


class Reducer:
    name = "reducer"
    fingerprint = "bench-memory-reducer-v1"
    supports_gradients = False
    coverage = Coverage.of(["Hate"])

    def predict(self, images):
        out = []
        for img in images:
            small = img.resize((64, 64), reducing_gap=2.0)
            red = small.getchannel("R").histogram()
            out.append(Prediction.from_score(sum(i * n for i, n in enumerate(red)) / 4096 / 255))
        return out


def load(**_context):
    return Reducer()
'''


def base_png(side: int) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (side, side), (40, 60, 90))
    draw = ImageDraw.Draw(img)
    for i in range(8):  # a few flat shapes: some content, still compresses well
        k = side * i // 8
        draw.rectangle((k, k // 2, k + side // 10, k // 2 + side // 6), fill=(200, 30 * i, 20))
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def with_text(png: bytes, text: str) -> bytes:
    """The same PNG with a tEXt chunk after IHDR: other bytes, same pixels."""
    body = b"Comment\0" + text.encode()
    chunk = (struct.pack(">I", len(body)) + b"tEXt" + body
             + struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF))
    ihdr_end = 8 + 4 + 4 + 13 + 4
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--side", type=int, default=9400)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ub-bench-memory-"))
    ds = work / "ds"
    ds.mkdir()
    started = time.perf_counter()
    png = base_png(args.side)
    rows = ["file_name,safety_label,category,source,split"]
    for i in range(args.images):
        (ds / f"img{i:03d}.png").write_bytes(with_text(png, f"copy {i}"))
        rows.append(f"img{i:03d}.png,{'Unsafe' if i % 2 else 'Safe'},Hate,Lexica,test")
    (ds / "metadata.csv").write_text("\n".join(rows) + "\n")
    (work / "memclf.py").write_text(CLASSIFIER)
    written = time.perf_counter() - started

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(work), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "--unsafebench-classifier=memclf:load", f"--unsafebench-dataset={ds}",
           f"--unsafebench-cache-dir={work / 'cache'}", "--unsafebench-no-cache",
           "--unsafebench-device=cpu", "--unsafebench-suites=effectiveness",
           f"--unsafebench-batch-size={args.batch_size}", f"--unsafebench-json={work / 'r.json'}"]
    started = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    output = child.stdout.read() if child.stdout else b""
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    report = json.loads((work / "r.json").read_text()) if (work / "r.json").exists() else {}
    result = {
        "images": args.images, "side": args.side, "batch_size": args.batch_size,
        "decoded_mb_per_image": round(args.side * args.side * 3 / 1e6, 1),
        "files_mb_each": round(len(png) / 1e6, 2),
        "write_seconds": round(written, 1), "run_seconds": round(seconds, 1),
        "exit_code": os.waitstatus_to_exitcode(status),
        "usable_images": report.get("dataset", {}).get("usable_images"),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),  # Linux: kilobytes
        "target_mb": 2000,
    }
    print(json.dumps(result, indent=1))
    if result["usable_images"] != args.images:
        sys.exit(f"the run did not score every image:\n{output.decode()[-3000:]}")


if __name__ == "__main__":
    main()

"""Three CLIP heads on one shared backbone pass against one head alone, as ratios in one run.

    python benchmarks/bench_shared_backbone.py [--images 32] [--repeats 3] [--skip-full]

For each backbone, (a) the tiny stand-in the tests use and (b) the full CLIP ViT-L/14 vision
architecture (hidden 1024, 24 layers, patch 14, image 224, projection 768) with random weights
(nothing is downloaded), both written with ``save_pretrained`` and loaded through the real
loader, it times on the same images:

* ``alone``: ``q16.predict(images)`` (one backbone pass + Q16);
* ``shared``: ``backbone.embed(images)`` once, then ``predict_embeddings`` of Q16, MultiHeaded
  and NSFW_Detector on those embeddings (what the engine does);
* ``naive``: each head's own ``predict(images)`` (three backbone passes; the reference code's
  way), for context: timed once, not repeated (``--no-naive`` skips it).

Target: shared / alone <= 1.2 on the full architecture. Head weights are the genuine Q16 and
MultiHeaded files when ../shared/reference (or $UNSAFEBENCH_REFERENCE_DIR) exists, otherwise
random ones in the same layout; NSFW_Detector's are always random (its port is not bundled).
Runs alternate and the median of each is used. Prints one JSON object; exits 1 when the
target is missed. On two busy CPU cores the full architecture takes about 10 minutes
(``--images 8`` or ``--skip-full`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.2


def reference_weights() -> Path | None:
    env = os.environ.get("UNSAFEBENCH_REFERENCE_DIR")
    root = Path(env) if env else REPO.parent / "shared" / "reference"
    return root / "weights" if (root / "weights").is_dir() else None


def build_backbone(folder: Path, full: bool) -> None:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if full:  # CLIP ViT-L/14 (openai/clip-vit-large-patch14's vision tower)
        config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, patch_size=14, image_size=224,
                                  projection_dim=768, hidden_act="quick_gelu")
    else:  # the tests' stand-in
        config = CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                  num_attention_heads=2, patch_size=8, image_size=32,
                                  projection_dim=768)
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(config).eval().save_pretrained(folder)


def build_heads(root: Path) -> dict[str, str]:
    import torch

    ref = reference_weights()
    files: dict[str, str] = {}
    if ref and (ref / "q16" / "prompts.p").is_file():
        files["prompts"] = str(ref / "q16" / "prompts.p")
    else:
        (root / "prompts.p").write_bytes(pickle.dumps(
            np.random.default_rng(0).normal(size=(2, 768)).astype(np.float16), protocol=3))
        files["prompts"] = str(root / "prompts.p")
    if ref and (ref / "multiheaded" / "sexual.pt").is_file():
        files["heads_dir"] = str(ref / "multiheaded")
    else:
        heads = root / "multiheaded"
        heads.mkdir()
        for i, name in enumerate(("sexual", "violent", "disturbing", "hateful", "political")):
            torch.manual_seed(i)
            mlp = torch.nn.Sequential(torch.nn.Linear(768, 384), torch.nn.ReLU(),
                                      torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(384),
                                      torch.nn.Linear(384, 1))
            torch.save(mlp.state_dict(), heads / f"{name}.pt")
        files["heads_dir"] = str(heads)
    torch.manual_seed(0)
    state = {"norm.mean": torch.zeros(768), "norm.variance": torch.full((768,), 1e-3)}
    for k, (i, o) in enumerate([(768, 64), (64, 512), (512, 256), (256, 1)], 1):
        layer = torch.nn.Linear(i, o)
        state[f"linear_{k}.weight"], state[f"linear_{k}.bias"] = layer.weight.data, layer.bias.data
    torch.save(state, root / "nsfw.pth")
    files["weights"] = str(root / "nsfw.pth")
    return files


def images(n: int) -> list:
    from PIL import Image

    rng = np.random.default_rng(2023)
    sizes = [(512, 512), (640, 480), (480, 640), (300, 450)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % 4][::-1], 3), dtype=np.uint8))
            for i in range(n)]


def measure(label: str, full: bool, n_images: int, repeats: int, batch_size: int,
            naive_too: bool) -> dict:
    from pytest_unsafebench.classifiers import clip_heads as ch

    with tempfile.TemporaryDirectory(prefix=f"bench-{label}-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        build_backbone(root / "clip", full)
        files = build_heads(root)
        common = {"model": str(root / "clip"), "cache_dir": root / "cache",
                  "batch_size": batch_size}
        q16 = ch.load_q16(prompts=files["prompts"], **common)
        mh = ch.load_multiheaded(heads_dir=files["heads_dir"], **common)
        nsfw = ch.load_nsfw_detector(weights=files["weights"], **common)
        assert q16.backbone is mh.backbone is nsfw.backbone
        heads = (q16, mh, nsfw)
        imgs = images(n_images)
        for clf in heads:  # load everything, warm the allocator
            clf.predict(imgs[:2])
        setup = time.perf_counter() - t0

        def alone() -> None:
            q16.predict(imgs)

        def shared() -> None:
            emb = q16.backbone.embed(imgs)
            for clf in heads:
                clf.predict_embeddings(emb)

        def naive() -> None:
            for clf in heads:
                clf.predict(imgs)

        runs: dict[str, list[float]] = {"alone": [], "shared": [], "naive": []}
        fns = {"alone": alone, "shared": shared, "naive": naive}
        for i in range(repeats):
            for name, fn in fns.items():
                if name == "naive" and (i or not naive_too):
                    continue
                start = time.perf_counter()
                fn()
                runs[name].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in runs.items() if v}
        out = {
            "backbone": label, "images": n_images, "repeats": repeats,
            "batch_size": batch_size, "setup_s": round(setup, 2),
            "alone_s": round(med["alone"], 4), "shared_three_s": round(med["shared"], 4),
            "shared_over_alone": round(med["shared"] / med["alone"], 3),
        }
        if "naive" in med:
            out["naive_three_s"] = round(med["naive"], 4)
            out["naive_over_alone"] = round(med["naive"] / med["alone"], 3)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--skip-full", action="store_true", help="only the tiny stand-in")
    ap.add_argument("--no-naive", action="store_true", help="skip the three-passes timing")
    args = ap.parse_args()

    import torch

    results = {"torch_threads": torch.get_num_threads(), "target_shared_over_alone": TARGET,
               "runs": []}
    naive = not args.no_naive
    results["runs"].append(measure("tiny", False, args.images, args.repeats, args.batch_size,
                                   naive))
    if not args.skip_full:
        results["runs"].append(measure("vit-l14-random", True, args.images, args.repeats,
                                       args.batch_size, naive))
    judged = results["runs"][-1]
    results["judged_on"] = judged["backbone"]
    results["ok"] = judged["shared_over_alone"] <= TARGET
    print(json.dumps(results, indent=2))
    sys.exit(0 if results["ok"] else 1)


if __name__ == "__main__":
    main()

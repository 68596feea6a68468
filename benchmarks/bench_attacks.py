"""PGD speed: ours (pytest_unsafebench.robustness.attacks) against ART's ProjectedGradientDescent.

    python benchmarks/bench_attacks.py [--model demo|cnn224|both] [--repeats 7] [--batch 32]
                                       [--threads 1]

Same model, same inputs, same settings (L-inf, eps 8/255, 10 steps of 2/255, a uniform random
start, batch 32) for both; the timings alternate and the median of each is used, because the
machines are shared. Ours is timed as the whole ``run_attack`` call, which also evaluates the
adversarial batch to report success; ART's as ``generate`` plus the same one forward pass.

* ``demo``: the demo classifier's ``forward_pixels`` (resize + normalise + small CNN) on 32
  demo test images at their native 64 x 64 (trains the demo model once into a temp cache,
  about 15 s, unless --cache-dir points at one that has it).
* ``cnn224``: a small randomly initialised CNN (fixed seed) on 3 x 224 x 224 random images,
  its last bias shifted so that the batch splits between the two classes.

Prints one JSON object: per model, median seconds for each side, ``ratio = art_s / ours_s``
(target >= 1.0: ours at least as fast; also as best-of-runs and as process CPU time, which
shrug off other processes' load) and both success rates (they should be close).

Why ours is faster: ``torch.autograd.grad`` with respect to the input only, so the backward
pass skips every parameter gradient that ART's ``loss.backward()`` computes and then zeroes;
no numpy round trip per step; the projection is one in-place clamp to the box
[max(x - eps, 0), min(x + eps, 1)]. ART is a
test-only dependency: ``pip install adversarial-robustness-toolbox``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_unsafebench.robustness.attacks import AttackSpec, run_attack

EPS = 8 / 255


class _Wrap(nn.Module):
    """forward_pixels as an nn.Module, for ART (it registers the model's parameters)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def demo_setup(batch: int, cache_dir: str | None) -> tuple[nn.Module, torch.Tensor]:
    from pytest_unsafebench.classifiers.demo import load
    from pytest_unsafebench.dataset import load_dataset

    cache = cache_dir or tempfile.mkdtemp(prefix="ub-bench-attacks-")
    clf = load(cache_dir=cache)
    ds = load_dataset("demo", split="test", cache_dir=cache)
    arrs = [np.asarray(r.load_image().convert("RGB"), dtype=np.float32) / 255.0
            for r in ds.records[:batch]]
    x = torch.from_numpy(np.stack(arrs).transpose(0, 3, 1, 2).copy())
    return _Wrap(clf.forward_pixels, clf.model).eval(), x


def cnn224_setup(batch: int) -> tuple[nn.Module, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(32, 2),
        ).eval()
    x = torch.rand(batch, 3, 224, 224, generator=g)
    with torch.no_grad():
        # Centre the decision on this batch (half each class), so that attacks have work to do.
        z = model(x)
        model[-1].bias[1] -= (z[:, 1] - z[:, 0]).median()
    return model, x


def bench(model: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, object]:
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    with torch.no_grad():
        y = model(x).argmax(1)  # attack the model's own predictions: all start "correct"
    spec = AttackSpec("pgd", EPS, steps=10, random_start=True)
    assert spec.step_size is not None
    art_clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(),
                                input_shape=tuple(x.shape[1:]), nb_classes=2,
                                clip_values=(0.0, 1.0), device_type="cpu")
    art_pgd = ProjectedGradientDescent(art_clf, norm=np.inf, eps=EPS, eps_step=spec.step_size,
                                       max_iter=spec.steps, num_random_init=1,
                                       batch_size=len(x), verbose=False)
    x_np, y_np = x.numpy(), y.numpy()

    def ours() -> float:
        return float(run_attack(model, x, y, spec).success.float().mean())

    def art() -> float:
        adv = art_pgd.generate(x_np, y_np)
        with torch.no_grad():  # one forward for the success rate, as run_attack does
            return float((model(torch.from_numpy(adv)).argmax(1) != y).float().mean())

    ours(), art()  # warm-up (allocator, lazy init)
    wall: dict[str, list[float]] = {"ours": [], "art": []}
    cpu: dict[str, list[float]] = {"ours": [], "art": []}
    succ: dict[str, float] = {}
    for _ in range(repeats):  # alternate, so that load spikes hit both sides alike
        for name, fn in (("ours", ours), ("art", art)):
            start, start_cpu = time.perf_counter(), time.process_time()
            succ[name] = fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    med = {k: statistics.median(v) for k, v in wall.items()}
    best = {k: min(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {"input_shape": list(x.shape), "spec": str(spec),
            "ours_s": round(med["ours"], 4), "art_s": round(med["art"], 4),
            "ratio": round(med["art"] / med["ours"], 3),
            "ratio_best_of_runs": round(best["art"] / best["ours"], 3),
            "ratio_cpu_time": round(med_cpu["art"] / med_cpu["ours"], 3),
            "ours_runs_s": [round(t, 4) for t in wall["ours"]],
            "art_runs_s": [round(t, 4) for t in wall["art"]],
            "success_ours": succ["ours"], "success_art": succ["art"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("demo", "cnn224", "both"), default="both")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cache-dir", default=None, help="demo weights/dataset cache")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both sides (1: steadiest on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import art
    except ImportError:
        sys.exit("needs ART: pip install adversarial-robustness-toolbox")

    out: dict[str, object] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__, "art": art.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "results": {},
    }
    models = ("demo", "cnn224") if args.model == "both" else (args.model,)
    for name in models:
        model, x = (demo_setup(args.batch, args.cache_dir) if name == "demo"
                    else cnn224_setup(args.batch))
        out["results"][name] = bench(model, x, args.repeats)  # type: ignore[index]
    ratios = [r["ratio"] for r in out["results"].values()]  # type: ignore[union-attr]
    out["target"] = "ratio = art_s / ours_s >= 1.0"
    out["met"] = all(r >= 1.0 for r in ratios)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

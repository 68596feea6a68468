"""``unsafebench train``: a PerspectiveVision-style linear probe on a frozen image backbone.

Only the dataset's train split is read. A seeded part of it, stratified by category x source x
label, is held out for validation: early stopping and threshold calibration use it, the test
split is never touched. Embeddings come from the prediction cache (the table the plugin fills
when it scores a head on the same backbone); only missing ones are computed, and they are
cached in turn, so retraining takes seconds.

Heads (one linear layer on standardised embeddings, logistic loss, trained jointly):

* the overall unsafe head, on every training image (Unsafe vs Safe); it gives the score and
  decision of every image, since an image's category is not known at inference time;
* one unsafe head per category, on that category's images only: the Safe images of a category
  are same-topic hard negatives (the dataset retrieved each category's images, safe and unsafe,
  with that category's keywords: https://unsafebench.github.io), so each head learns what is
  unsafe *about that topic*; its score is in ``label_scores`` for callers who know the category.

Every head's loss is class-weighted (Unsafe and Safe weigh the same in total), so rare and
common categories and labels count alike. Training is deterministic for a seed: zero
initialisation, a seeded numpy data order, torch on one CPU thread with deterministic
algorithms. Each head's threshold is the one that maximises F1 on its validation images.

The probe's report shows its per-category improvement over the classifier it was built on
(``baseline`` in the file: ``demo`` for the demo backbone, ``q16`` for CLIP) when both run
together: ``pytest --unsafebench-classifier=probe:PATH,BASELINE``; the report's paired
comparison of classifiers in one run gives the per-category differences with confidence
intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .dataset.images import DEFAULT_ALPHA
from .errors import ConfigError, DatasetError
from .options import DEFAULT_SEED, OPTION

if TYPE_CHECKING:
    import numpy as np

    from .classifier import Backbone
    from .dataset.records import Record

CONDITION = "clean"  # the engine's condition name for unperturbed images


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; all of them go into the probe file."""

    seed: int = DEFAULT_SEED
    epochs: int = 200           # at most; early stopping usually ends sooner
    patience: int = 15          # epochs without a better validation loss before stopping
    val_fraction: float = 0.15
    lr: float = 0.01
    weight_decay: float = 1e-3  # L2 on the weights (not the biases)
    batch_size: int = 256

    def check(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction: expected a number in (0, 1), got "
                              f"{self.val_fraction}")
        for key in ("epochs", "patience", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')}: expected an integer >= 1, "
                                  f"got {getattr(self, key)}")


@dataclass
class TrainResult:
    path: Path
    meta: dict[str, Any]
    embeddings_cached: int
    embeddings_computed: int
    seconds: float
    skipped: list[str] = field(default_factory=list)  # unreadable training images


# --------------------------------------------------------------------------- data
def validation_mask(records: Sequence[Record], fraction: float, seed: int) -> np.ndarray:
    """True for the held-out validation records: a seeded ``fraction`` of every category x
    source x label stratum (at least one of any stratum with two or more records)."""
    import numpy as np

    strata: dict[tuple[str, str, str], list[int]] = {}
    for i, r in enumerate(records):
        strata.setdefault((r.category, r.source, r.safety_label), []).append(i)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 8]))
    mask = np.zeros(len(records), dtype=bool)
    for key in sorted(strata):
        idx = sorted(strata[key], key=lambda i: records[i].id)  # independent of file order
        take = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, round(fraction * len(idx))))
        for j in rng.permutation(len(idx))[:take]:
            mask[idx[j]] = True
    return mask


def cached_embeddings(records: Sequence[Record], backbone: Backbone, cache_path: Path,
                      batch_size: int = 32, max_pixels: int | None = None,
                      alpha: str = DEFAULT_ALPHA,
                      ) -> tuple[np.ndarray, list[int], int, list[str]]:
    """(vectors (M, D), indices of the records they belong to, number computed, skipped).

    Cached embeddings are read; the rest are computed batch by batch and written back, under
    the engine's keys (backbone fingerprint, image hash, clean condition, the ``alpha`` rule
    images are decoded under). Images that cannot be decoded are skipped and named.
    """
    import numpy as np

    from .cache import PredictionCache
    from .dataset.images import ImageProblem

    cache = PredictionCache(cache_path, alpha=alpha)
    try:
        found = cache.get_embeddings(backbone.fingerprint, CONDITION,
                                     [r.content_hash for r in records])
        todo = list(dict.fromkeys(r.content_hash for r in records if r.content_hash not in found))
        first: dict[str, Record] = {}
        for r in records:
            first.setdefault(r.content_hash, r)
        skipped: list[str] = []
        computed = 0
        for start in range(0, len(todo), batch_size):
            images, hashes = [], []
            for h in todo[start:start + batch_size]:
                try:
                    images.append(first[h].load_image(max_pixels=max_pixels, alpha=alpha))
                    hashes.append(h)
                except (ImageProblem, OSError) as exc:
                    skipped.append(f"{first[h].locator}: {exc}")
            if not images:
                continue
            vectors = np.asarray(backbone.embed(images), dtype=np.float32)
            if vectors.shape[0] != len(images):
                raise ValueError(f"backbone returned {vectors.shape[0]} embeddings for "
                                 f"{len(images)} images")
            fresh = list(zip(hashes, vectors))
            cache.put_embeddings(backbone.fingerprint, CONDITION, fresh)
            found.update(fresh)
            computed += len(fresh)
    finally:
        cache.close()
    kept = [i for i, r in enumerate(records) if r.content_hash in found]
    if not kept:
        raise DatasetError("no training image could be decoded")
    matrix = np.stack([found[records[i].content_hash] for i in kept]).astype(np.float32)
    return matrix, kept, computed, skipped


# --------------------------------------------------------------------------- fitting
def _targets(records: Sequence[Record], categories: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(y (N,), head mask (N, K)): head 0 sees every image, head k only category k's."""
    import numpy as np

    y = np.array([r.is_unsafe for r in records], dtype=np.float64)
    cats = np.array([r.category for r in records])
    mask = np.column_stack([np.ones(len(records), dtype=bool),
                            *(cats == c for c in categories)])
    return y, mask


def _balanced_weights(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per (image, head) loss weights: within a head, Unsafe and Safe each sum to 1/2."""
    import numpy as np

    w = np.zeros(mask.shape, dtype=np.float64)
    for k in range(mask.shape[1]):
        m = mask[:, k]
        pos, neg = int((m & (y == 1)).sum()), int((m & (y == 0)).sum())
        w[m & (y == 1), k] = 0.5 / pos if pos else 0.0
        w[m & (y == 0), k] = 0.5 / neg if neg else 0.0
    return w


def fit_heads(x_train: np.ndarray, y_train: np.ndarray, mask_train: np.ndarray,
              x_val: np.ndarray, y_val: np.ndarray, mask_val: np.ndarray,
              config: TrainConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Fit K logistic heads on standardised inputs; returns (weight K x D, bias K, history).

    The loss is the class-weighted logistic loss summed over heads (each head's weights sum to
    one over the training set), plus ``weight_decay`` * ||W||^2. Adam on seeded mini-batches;
    the epoch with the lowest validation loss is kept, and training stops ``patience`` epochs
    after it.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    n, d = x_train.shape
    k = mask_train.shape[1]
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 1]))
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_threads = torch.get_num_threads()
    # One thread: CPU reductions depend on the thread count; this makes the weights (and the
    # file) the same on any machine.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        xt = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
        yt = torch.from_numpy(y_train.astype(np.float32))[:, None].expand(n, k)
        wt = torch.from_numpy(_balanced_weights(y_train, mask_train).astype(np.float32))
        xv = torch.from_numpy(np.ascontiguousarray(x_val, dtype=np.float32))
        yv = torch.from_numpy(y_val.astype(np.float32))[:, None].expand(len(y_val), k)
        wv = torch.from_numpy(_balanced_weights(y_val, mask_val).astype(np.float32))
        weight = torch.zeros(k, d, requires_grad=True)
        bias = torch.zeros(k, requires_grad=True)
        opt = torch.optim.Adam([weight, bias], lr=config.lr)

        def loss_of(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            bce = F.binary_cross_entropy_with_logits(x @ weight.T + bias, y, reduction="none")
            return (bce * w).sum()

        best = (float("inf"), weight.detach().clone(), bias.detach().clone(), 0)
        losses: list[float] = []
        for epoch in range(1, config.epochs + 1):
            order = rng.permutation(n)
            for start in range(0, n, config.batch_size):
                idx = torch.from_numpy(order[start:start + config.batch_size])
                # Mini-batch weights scaled up so one epoch weighs the whole training set once.
                scale = n / len(idx)
                loss = loss_of(xt[idx], yt[idx], wt[idx]) * scale / k \
                    + config.weight_decay * weight.pow(2).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                val = float(loss_of(xv, yv, wv)) / k if len(y_val) else float(loss)
            losses.append(round(val, 6))
            if val < best[0] - 1e-7:
                best = (val, weight.detach().clone(), bias.detach().clone(), epoch)
            elif epoch - best[3] >= config.patience:
                break
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(was_threads)
    history = {"best_epoch": best[3], "epochs_run": len(losses), "val_loss": best[0]}
    return best[1].numpy().astype(np.float64), best[2].numpy().astype(np.float64), history


def best_threshold(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``score > threshold``; ties go to the lowest threshold.

    Candidates are the midpoints between consecutive distinct scores (and one below the
    lowest), kept inside [1e-6, 1 - 1e-6] so that the threshold is a usable probability. No
    positives: (0.5, 0.0).
    """
    import numpy as np

    if len(y) == 0 or not (y == 1).any():
        return 0.5, 0.0
    s = np.unique(scores)
    cands = np.concatenate([[s[0] / 2], (s[:-1] + s[1:]) / 2])
    best_t, best_f1 = 0.5, -1.0
    for t in np.clip(cands, 1e-6, 1.0 - 1e-6):
        f1 = f1_score(y, scores > t)
        if f1 > best_f1 + 1e-12:
            best_t, best_f1 = float(t), f1
    return best_t, best_f1


def f1_score(y: np.ndarray, pred: np.ndarray) -> float:
    tp = float(((y == 1) & pred).sum())
    fp = float(((y == 0) & pred).sum())
    fn = float(((y == 1) & ~pred).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


# --------------------------------------------------------------------------- training
def train_probe(dataset: str, backbone: str, out: str | Path, *,
                backbone_options: Mapping[str, Any] | None = None,
                config: TrainConfig = TrainConfig(), cache_dir: str | Path | None = None,
                device: str = "cpu", batch_size: int = 32, dataset_seed: int = DEFAULT_SEED,
                alpha: str = DEFAULT_ALPHA,
                progress: Callable[[str], None] | None = None) -> TrainResult:
    """Train a probe on ``dataset``'s train split and write it to ``out`` (one safetensors
    file); see the module docstring for the method. ``alpha``: how transparent images decode
    (the run's ``[tool.unsafebench] alpha`` rule), recorded in the file's ``trained_on``."""
    import numpy as np

    from .classifiers.probe import BackboneSpec, resolve_backbone
    from .dataset import default_cache_dir, load_dataset
    from .probe_format import FORMAT, FORMAT_VERSION, METADATA_KEY, OVERALL
    from .taxonomy import CATEGORIES

    config.check()
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    full = load_dataset(dataset, split="all", seed=dataset_seed, cache_dir=root)
    train = [r for r in full.records if r.split == "train"]
    if not train:
        raise DatasetError(f"dataset {dataset!r} has no train split images (rows with "
                           "split = train); the probe never trains on test images")
    spec = BackboneSpec(backbone, dict(backbone_options or {}))
    bb, baseline = resolve_backbone(spec, device=device, cache_dir=root, batch_size=batch_size)
    say(f"embedding {len(train)} train images with backbone {spec.describe()} "
        f"(cached in {root / 'predictions.sqlite'})")
    x, kept, computed, skipped = cached_embeddings(train, bb, root / "predictions.sqlite",
                                                   batch_size=batch_size, alpha=alpha)
    records = [train[i] for i in kept]
    categories = [c for c in CATEGORIES if any(r.category == c for r in records)]
    one_label = [c for c in categories
                 if len({r.safety_label for r in records if r.category == c}) < 2]
    if one_label:
        raise DatasetError(f"dataset {dataset!r}: the train split of {one_label} has only "
                           "Safe or only Unsafe images; a category head needs both")
    val = validation_mask(records, config.val_fraction, config.seed)
    y, mask = _targets(records, categories)
    mean = x[~val].mean(axis=0).astype(np.float64)
    scale = x[~val].std(axis=0).astype(np.float64)
    scale = np.where(scale > 1e-6, scale, 1.0)  # a constant feature stays at zero
    xs = (x - mean) / scale
    say(f"fitting {1 + len(categories)} heads on {int((~val).sum())} images, validating on "
        f"{int(val.sum())}")
    weight, bias, history = fit_heads(xs[~val], y[~val], mask[~val], xs[val], y[val],
                                      mask[val], config)

    heads = [OVERALL, *categories]
    probs = 1.0 / (1.0 + np.exp(-np.clip(xs[val] @ weight.T + bias, -60, 60)))
    yv, mv = y[val], mask[val]
    thresholds, head_f1 = {}, {}
    for k, head in enumerate(heads):
        t, f1 = best_threshold(probs[mv[:, k], k], yv[mv[:, k]])
        thresholds[head], head_f1[head] = t, round(f1, 4)
    overall_pred = probs[:, 0] > thresholds[OVERALL]
    # What the benchmark scores: the overall decision, per category.
    overall_f1 = {c: round(f1_score(yv[mv[:, k]], overall_pred[mv[:, k]]), 4)
                  for k, c in enumerate(heads) if k}
    overall_f1[OVERALL] = round(f1_score(yv, overall_pred), 4)

    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "backbone": {"name": spec.name, "options": dict(spec.options),
                     "fingerprint": bb.fingerprint, "dim": int(x.shape[1])},
        "baseline": baseline,
        "categories": categories,
        "thresholds": thresholds,
        "seed": config.seed,
        "config": asdict(config),
        "trained_on": {"dataset": dataset, "name": full.name, "fingerprint": full.fingerprint,
                       "split": "train", "dataset_seed": dataset_seed, "alpha": alpha,
                       "images": int((~val).sum()), "validation_images": int(val.sum())},
        "validation": {"head_f1": head_f1, "overall_f1": overall_f1, **history},
    }
    tensors = {"weight": weight, "bias": bias, "mean": mean, "scale": scale}
    path = Path(out)
    write_probe(path, tensors, meta, METADATA_KEY)
    return TrainResult(path, meta, embeddings_cached=len(kept) - computed,
                       embeddings_computed=computed,
                       seconds=time.perf_counter() - started, skipped=skipped)


def write_probe(path: Path, tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any],
                key: str) -> None:
    """One safetensors file, written atomically; float32 tensors, the metadata as one
    sorted-key JSON string (so the same training gives the same bytes)."""
    import numpy as np
    from safetensors.numpy import save

    data = save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
                metadata={key: json.dumps(meta, sort_keys=True)})
    from .weights import write_atomic

    write_atomic(path, data)


# --------------------------------------------------------------------------- the command
def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), int(value) if value.strip().lstrip("-").isdigit() else value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train", help="train a linear-probe moderator on a dataset's train split",
        description="Train per-category and overall unsafe heads on a frozen backbone's "
                    "embeddings (from the prediction cache) using the train split only; write "
                    "one safetensors file that loads as --unsafebench-classifier=probe:PATH.")
    p.add_argument("--dataset", default=OPTION["dataset"].default,
                   help="dataset spec, as --unsafebench-dataset (default demo)")
    p.add_argument("--backbone", default="clip",
                   help="clip (CLIP ViT-L/14, default), demo, or a classifier on a shared "
                        "backbone (e.g. q16)")
    p.add_argument("--backbone-option", action="append", default=[], type=_option,
                   metavar="KEY=VALUE", help="backbone option, e.g. model=/path/to/clip "
                                             "(repeatable)")
    p.add_argument("--out", required=True, help="the probe file to write (.safetensors)")
    defaults = TrainConfig()
    p.add_argument("--seed", type=int, default=defaults.seed, help="training seed")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="at most this many")
    p.add_argument("--patience", type=int, default=defaults.patience,
                   help="early-stopping patience in epochs")
    p.add_argument("--val-fraction", type=float, default=defaults.val_fraction,
                   help="share of the train split held out for validation")
    p.add_argument("--dataset-seed", type=int, default=DEFAULT_SEED,
                   help="the demo dataset's seed (as --unsafebench-seed)")
    p.add_argument("--cache-dir", default=None,
                   help="prediction cache folder (default .pytest_cache/unsafebench, as the "
                        "plugin)")
    p.add_argument("--device", default="cpu", help="device for the backbone (default cpu)")
    p.add_argument("--batch-size", type=int, default=32, help="images per embedding batch")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .config import read_pyproject, resolve_settings

    config = TrainConfig(seed=args.seed, epochs=args.epochs, patience=args.patience,
                         val_fraction=args.val_fraction)
    # The run's settings decide how transparent images decode (alpha, set by paper mode too),
    # so the probe sees the pixels the benchmark run scores.
    settings = resolve_settings({}, read_pyproject(Path("pyproject.toml")), Path.cwd())
    result = train_probe(
        args.dataset, args.backbone, args.out, backbone_options=dict(args.backbone_option),
        config=config, cache_dir=args.cache_dir, device=args.device,
        batch_size=args.batch_size, dataset_seed=args.dataset_seed, alpha=settings.alpha,
        progress=lambda msg: print(f"unsafebench train: {msg}", file=sys.stderr))
    print(summary(result))
    return 0


def summary(result: TrainResult) -> str:
    from tabulate import tabulate

    meta = result.meta
    val = meta["validation"]
    rows = [[head, f"{meta['thresholds'][head]:.3f}", val["head_f1"][head],
             val["overall_f1"][head]] for head in ["unsafe", *meta["categories"]]]
    lines = [
        f"trained {result.path} in {result.seconds:.1f} s on {meta['trained_on']['dataset']!r} "
        f"train split ({meta['trained_on']['images']} images, "
        f"{meta['trained_on']['validation_images']} held out for validation); backbone "
        f"{meta['backbone']['name']!r}; embeddings {result.embeddings_cached} cached, "
        f"{result.embeddings_computed} computed; best epoch {val['best_epoch']} of "
        f"{val['epochs_run']}",
        tabulate(rows, headers=["head", "threshold", "head F1 (val)",
                                "overall-decision F1 (val)"]),
    ]
    if result.skipped:
        lines.append(f"{len(result.skipped)} unreadable image(s) skipped: "
                     + "; ".join(result.skipped[:5]))
    lines += [
        "use it with:",
        f"  --unsafebench-classifier=probe:{result.path}",
        "compare with the classifier it was built on (paired differences with CIs):",
        f"  --unsafebench-classifier=probe:{result.path},{meta['baseline']} "
        "--unsafebench-split=test",
    ]
    return "\n".join(lines)

"""The ``demo`` classifier: a small CNN trained in seconds on the demo dataset's train split.

It makes the whole pipeline (effectiveness, per-source gaps, gradient attacks) runnable offline
with a real, differentiable model. It knows nothing about real unsafe content: its numbers on
the demo data only show that the machinery works.

Training is deterministic (fixed torch seed, deterministic algorithms, a numpy Generator for
data order and augmentation) and the weights are cached under
``<cache_dir>/models/demo-<key>.pt``, keyed by the generator version, seed and hyper-parameters.
torch is imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..classifier import Coverage, Prediction
from ..dataset import default_cache_dir, load_dataset
from ..dataset.demo import GENERATOR_VERSION

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

# Bump when the architecture or training code changes (it is part of the cache key).
MODEL_VERSION = 1
# Bump when forward_pixels' resizing/normalisation changes (it is part of the fingerprint).
PREPROCESS_VERSION = "pp1"
INPUT_SIZE = 64
_MEAN = (0.5, 0.5, 0.5)
_STD = (0.25, 0.25, 0.25)


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; all of them enter the weights' cache key."""

    epochs: int = 16
    batch_size: int = 64
    lr: float = 4e-3
    weight_decay: float = 5e-4
    width: int = 12
    max_shift: int = 4  # random translation in pixels (reflect padding + crop)


def _build_model(width: int) -> torch.nn.Module:
    from torch import nn

    def block(cin: int, cout: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    w = width
    return nn.Sequential(
        # A strided 5x5 stem: full-resolution activations dominate CPU training time.
        *block(3, w, k=5, stride=2),
        *block(w, 2 * w), nn.MaxPool2d(2),
        *block(2 * w, 4 * w), nn.MaxPool2d(2),
        *block(4 * w, 4 * w),
        # Global max pooling: a motif anywhere in the image can fire the detector.
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * w, 2),
    )


def _normalise(x: torch.Tensor, size: int) -> torch.Tensor:
    """[0, 1] pixels of any size -> the network's input (differentiable)."""
    import torch
    import torch.nn.functional as F

    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=False)
    mean = torch.tensor(_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _to_tensor(image: Image) -> torch.Tensor:
    import torch

    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class DemoClassifier:
    """A trained demo CNN behind the plugin's Classifier protocol.

    ``forward_pixels`` is the single inference path: ``predict`` converts PIL images to [0, 1]
    tensors and calls it, so attacks and predictions see the same model.
    """

    name = "demo"
    coverage = Coverage.everything()
    supports_gradients = True
    input_size = INPUT_SIZE

    def __init__(self, model: torch.nn.Module, weights_path: Path, weights_sha256: str,
                 device: str, seed: int, from_cache: bool, train_seconds: float | None,
                 batch_size: int = 128) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.seed = seed
        self.weights_path = weights_path
        self.fingerprint = f"demo-{weights_sha256[:16]}-{PREPROCESS_VERSION}"
        self.from_cache = from_cache  # True when the weights came from the cache, untrained
        self.train_seconds = train_seconds
        self.batch_size = batch_size
        self.description = (f"small CNN trained on the synthetic demo train split (seed {seed}); "
                            "for exercising the pipeline only")

    def forward_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W floats in [0, 1] (any H, W) -> logits N x 2, ordered [safe, unsafe]."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an N x 3 x H x W tensor, got shape {tuple(x.shape)}")
        x = x.to(self.device, dtype=next(self.model.parameters()).dtype)
        return self.model(_normalise(x, self.input_size))

    def predict(self, images: Sequence[Image]) -> list[Prediction]:
        import torch

        out: list[Prediction | None] = [None] * len(images)
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                chunk = range(start, min(start + self.batch_size, len(images)))
                tensors = {i: _to_tensor(images[i]) for i in chunk}
                # Same-size images share a batch; sizes may differ across a dataset.
                by_size: dict[tuple[int, ...], list[int]] = {}
                for i, t in tensors.items():
                    by_size.setdefault(tuple(t.shape), []).append(i)
                for idx in by_size.values():
                    logits = self.forward_pixels(torch.stack([tensors[i] for i in idx]))
                    probs = torch.softmax(logits.float(), dim=1)[:, 1].cpu().tolist()
                    for i, p in zip(idx, probs):
                        out[i] = Prediction.from_score(
                            min(max(float(p), 0.0), 1.0),
                            label_scores={"safe": 1.0 - float(p), "unsafe": float(p)})
        return [p for p in out if p is not None]


def cache_key(seed: int, config: TrainConfig) -> str:
    """Changes with anything that changes the trained weights."""
    blob = json.dumps({"generator": GENERATOR_VERSION, "model": MODEL_VERSION, "seed": seed,
                       "preprocess": PREPROCESS_VERSION, "config": asdict(config)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _train(seed: int, config: TrainConfig, cache_dir: Path) -> dict[str, Any]:
    """Train on the demo train split of ``seed``; returns the CPU state dict."""
    import torch
    import torch.nn.functional as F

    ds = load_dataset("demo", split="train", seed=seed, cache_dir=cache_dir)
    xs = torch.stack([_to_tensor(r.load_image()) for r in ds.records])
    ys = torch.tensor([int(r.is_unsafe) for r in ds.records], dtype=torch.long)
    # Records come in manifest order; a seeded permutation per epoch fixes the data order.
    rng = np.random.default_rng(np.random.SeedSequence([seed, MODEL_VERSION]))
    n = len(ys)
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    pad = config.max_shift

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    # fork_rng: seeding for init/dropout must not disturb the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            # channels_last roughly halves CPU convolution time here.
            model = _build_model(config.width).to(memory_format=torch.channels_last)
            opt = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                    weight_decay=config.weight_decay)
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch,
                pct_start=0.25)
            padded = F.pad(xs, (pad, pad, pad, pad), mode="reflect") if pad else xs
            size = xs.shape[-1]
            model.train()
            for _epoch in range(config.epochs):
                order = rng.permutation(n)
                for b in range(steps_per_epoch):
                    idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                    shifts = rng.integers(0, 2 * pad + 1, (len(idx), 2))
                    flips = rng.uniform(size=len(idx)) < 0.5
                    batch = torch.stack([
                        padded[i, :, dy:dy + size, dx:dx + size] for i, (dy, dx) in
                        zip(idx.tolist(), shifts.tolist())
                    ])
                    if flips.any():
                        # Left-right mirroring never changes a demo label.
                        fl = torch.from_numpy(flips)
                        batch[fl] = batch[fl].flip(-1)
                    batch = _normalise(batch, INPUT_SIZE).contiguous(
                        memory_format=torch.channels_last)
                    loss = F.cross_entropy(model(batch),
                                           ys[torch.from_numpy(idx)])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(device: str = "cpu", cache_dir: Path | str | None = None, seed: int = 2023,
         epochs: int | None = None) -> DemoClassifier:
    """The demo classifier for ``seed``: cached weights if present, else trained (seconds).

    ``epochs`` overrides the default training length (and so the cache key).
    """
    import torch

    config = TrainConfig() if epochs is None else TrainConfig(epochs=epochs)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / "models" / f"demo-{cache_key(seed, config)}.pt"
    model = _build_model(config.width)
    data: bytes | None = None
    from_cache, seconds = False, None
    if path.is_file():
        try:
            data = path.read_bytes()
            model.load_state_dict(torch.load(io.BytesIO(data), weights_only=True,
                                             map_location="cpu"))
            from_cache = True
        except Exception:  # a truncated or foreign file: retrain and overwrite it
            data = None
    if data is None:
        start = time.perf_counter()
        state = _train(seed, config, root)
        seconds = time.perf_counter() - start
        buf = io.BytesIO()
        # Saved from memory, not to the temp path: torch names the archive after the file, so
        # this keeps the bytes (and the fingerprint) independent of temp file names.
        torch.save(state, buf)
        data = buf.getvalue()
        _write_atomic(path, data)
        model.load_state_dict(torch.load(io.BytesIO(data), weights_only=True))
    return DemoClassifier(model, path, hashlib.sha256(data).hexdigest(), device, seed,
                          from_cache, seconds)

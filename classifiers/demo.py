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

import contextlib
import hashlib
import io
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..classifier import Coverage, Prediction
from ..dataset import default_cache_dir, load_dataset
from ..dataset.demo import GENERATOR_VERSION
from ..options import DEFAULT_SEED
from ..progress import step
from ..weights import write_atomic

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

    epochs: int = 18
    batch_size: int = 64
    lr: float = 4e-3
    weight_decay: float = 5e-4
    width: int = 12
    max_shift: int = 4  # random translation in pixels (reflect padding + crop)
    safe_weight: float = 2.0  # loss weight of Safe images: trade misses for fewer false alarms


def _build_model(width: int) -> torch.nn.Sequential:
    from torch import nn

    def block(cin: int, cout: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    w = width
    # A strided 5x5 stem, then max pooling: full-resolution activations dominate CPU training
    # time, while max pooling (unlike strided convolutions) makes shape detectors shift-tolerant.
    return nn.Sequential(
        *block(3, w, k=5, stride=2),
        *block(w, 2 * w), nn.MaxPool2d(2),
        *block(2 * w, 4 * w), nn.MaxPool2d(2),
        *block(4 * w, 4 * w),
        # Global max pooling: a motif anywhere in the image can fire the detector.
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * w, 2),
    )


def normalise(x: torch.Tensor, size: int) -> torch.Tensor:
    """[0, 1] pixels of any size -> the network's input (differentiable)."""
    import torch
    import torch.nn.functional as F

    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=False)
    mean = torch.tensor(_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def to_tensor(image: Image) -> torch.Tensor:
    """A PIL image as 3 x H x W float32 RGB pixels in [0, 1] (what :func:`normalise` takes)."""
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
    input_std = _STD  # what normalise divides by: paper-mode attacks convert eps with it

    def __init__(self, model: torch.nn.Sequential, weights_path: Path, weights_sha256: str,
                 device: str, seed: int, from_cache: bool, train_seconds: float | None,
                 batch_size: int = 128) -> None:
        # Frozen: attacks need gradients w.r.t. the input only, never the weights.
        self.model = model.to(device).eval().requires_grad_(False)
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
        return self.model(normalise(x, self.input_size))

    def predict(self, images: Sequence[Image]) -> list[Prediction]:
        import torch

        out: list[Prediction | None] = [None] * len(images)
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                chunk = range(start, min(start + self.batch_size, len(images)))
                tensors = {i: to_tensor(images[i]) for i in chunk}
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
        assert all(p is not None for p in out)
        return out  # type: ignore[return-value]


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
    import torch.utils.deterministic as tud

    ds = load_dataset("demo", split="train", seed=seed, cache_dir=cache_dir)
    xs = torch.stack([to_tensor(r.load_image()) for r in ds.records])
    ys = torch.tensor([int(r.is_unsafe) for r in ds.records], dtype=torch.long)
    # Records come in manifest order; a seeded permutation per epoch fixes the data order.
    rng = np.random.default_rng(np.random.SeedSequence([seed, MODEL_VERSION]))
    n = len(ys)
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    pad = config.max_shift

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    # fill_uninitialized_memory is a property of the module's class, which torch's types miss.
    was_filling = tud.fill_uninitialized_memory  # type: ignore[attr-defined]
    was_threads = torch.get_num_threads()
    # fork_rng: seeding for init/dropout must not disturb the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]), contextlib.ExitStack() as stack:
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        # One thread: CPU reductions depend on the thread count, so this makes the weights
        # (and the fingerprint) the same on any core count; it also keeps training from
        # stalling in OpenMP barriers when other processes (xdist workers) share the cores.
        torch.set_num_threads(1)
        # Deterministic mode NaN-fills every new buffer by default: a third of the step time
        # here, and pointless since every buffer is written before it is read.
        tud.fill_uninitialized_memory = False  # type: ignore[attr-defined]
        try:
            # channels_last roughly halves CPU convolution time here.
            # Module.to takes memory_format, which torch's overloads leave out.
            model = _build_model(config.width)
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            opt = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                    weight_decay=config.weight_decay)
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch,
                pct_start=0.25)
            class_weight = torch.tensor([config.safe_weight, 1.0])
            padded = F.pad(xs, (pad, pad, pad, pad), mode="reflect") if pad else xs
            size = xs.shape[-1]
            model.train()
            bar = stack.enter_context(step(
                "demo_training", "training the demo model (once per seed, then cached)",
                total=config.epochs * steps_per_epoch, unit="steps"))
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
                    batch = normalise(batch, INPUT_SIZE).contiguous(
                        memory_format=torch.channels_last)
                    loss = F.cross_entropy(model(batch), ys[torch.from_numpy(idx)],
                                           weight=class_weight)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    bar.advance()
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
            tud.fill_uninitialized_memory = was_filling  # type: ignore[attr-defined]
            torch.set_num_threads(was_threads)
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An advisory inter-process lock (POSIX flock; a no-op where unavailable).

    Training is deterministic, so racing trainers would write identical files; the lock only
    saves the CPU time (xdist workers starting together would otherwise all train at once).
    """
    try:
        import fcntl
    except ImportError:  # Windows: no lock, duplicate work at worst
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read_cached(path: Path) -> tuple[bytes, dict[str, Any]] | None:
    """The cached file's bytes and state dict, or None if absent or unreadable."""
    import torch

    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
        return data, torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception:  # truncated or foreign file: the caller retrains and overwrites it
        return None


def load(device: str = "cpu", cache_dir: Path | str | None = None, seed: int = DEFAULT_SEED,
         epochs: int | None = None, batch_size: int = 128) -> DemoClassifier:
    """The demo classifier for ``seed``: cached weights if present, else trained (seconds).

    The weights live in ``<cache_dir>/models/demo-<key>.pt`` (see :func:`cache_key`);
    ``epochs`` overrides the default training length (and so the key). Training always runs on
    the CPU, so the weights and the fingerprint do not depend on ``device``. ``batch_size`` is
    the inference batch size of ``predict`` (training has its own, in :class:`TrainConfig`).
    """
    import torch

    config = TrainConfig() if epochs is None else TrainConfig(epochs=epochs)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / "models" / f"demo-{cache_key(seed, config)}.pt"
    seconds: float | None = None
    cached = _read_cached(path)
    if cached is None:
        with _exclusive(path.with_name(path.name + ".lock")):
            cached = _read_cached(path)  # another process may have trained it meanwhile
            if cached is None:
                start = time.perf_counter()
                state = _train(seed, config, root)
                seconds = time.perf_counter() - start
                buf = io.BytesIO()
                # Saved from memory, not to the temp path: torch names the archive after the
                # file, so this keeps the bytes (and the fingerprint) free of temp names.
                torch.save(state, buf)
                data = buf.getvalue()
                write_atomic(path, data)
                cached = data, torch.load(io.BytesIO(data), weights_only=True)
    data, state = cached
    # Built on the meta device: no random init, so the caller's global torch RNG is untouched.
    with torch.device("meta"):
        model = _build_model(config.width)
    model.load_state_dict(state, assign=True)
    return DemoClassifier(model, path, hashlib.sha256(data).hexdigest(), device, seed,
                          from_cache=seconds is None, train_seconds=seconds,
                          batch_size=batch_size)

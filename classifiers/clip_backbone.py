"""The CLIP ViT-L/14 image encoder shared by Q16, MultiHeaded and NSFW_Detector.

As the paper's reference code loads it (UnsafeBench's classifiers.py, open_clip ``ViT-L-14``):
OpenAI's CLIP ViT-L/14 (quick-GELU, fp32), its 768-d *projected* image
embedding, and CLIP's preprocessing, which this module implements itself (no image processor
object) so that the PIL path used for predictions and the differentiable path used by attacks
are one definition:

1. resize the shortest side to the model's ``image_size`` (224 for ViT-L/14), bicubic, the other
   side to ``int(size * long / short)``;
2. centre-crop ``size`` x ``size`` with the offset ``int(round((side - size) / 2))``;
3. RGB, scaled to [0, 1];
4. normalise with CLIP's mean and std.

The crop offset follows torchvision's ``CenterCrop`` (open_clip, which the paper used for these
three heads): ``round``; transformers' ``CLIPImageProcessor`` (which diffusers and the paper used
for the SD safety checker, see ``sd_filter``) floors it instead. The two differ by one pixel when
the resized long side exceeds ``size`` by an odd number, so the rounding is a parameter
(``crop_rounding``) and part of the preprocessing tag. RGB conversion happens after the crop,
as in open_clip (it only matters for palette or alpha images; the plugin decodes to RGB).
:data:`PREPROCESS_VERSION` names this recipe and is part of every fingerprint.

Weights come from transformers' layout (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``), either a hub id (default ``openai/clip-vit-large-patch14``) or a local
folder saved with ``save_pretrained``. Hub files are found through :func:`weights.resolve`
(``<cache_dir>/weights/clip/``, then the Hugging Face cache, then a download unless
the hub is off: ``weights.hub_offline_reason``). Construction only resolves and hashes files
(hashes are memoised under ``cache_dir``); torch and transformers are imported and the model
loaded on first use.

:func:`shared_backbone` keeps one instance per (model, revision, device) per process, so the
three heads loaded together hold the same object and the engine, which keys embeddings by
``fingerprint``, computes each image's embedding once for all of them.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..errors import ClassifierLoadError
from ..weights import WeightFile, WeightsNotFound, file_digest, hub_offline_reason, resolve

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

DEFAULT_MODEL = "openai/clip-vit-large-patch14"
# Bump when anything below changes what pixels reach the model (it enters every fingerprint).
PREPROCESS_VERSION = "clip-pp1:short-bicubic/crop-tv-round/rgb/01/clip-meanstd/fp32"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Weight file names transformers loads, in its order of preference.
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
WEIGHTS_FOLDER = "clip"  # <cache_dir>/weights/clip/ may hold config.json + model.safetensors


# --------------------------------------------------------------------------- preprocessing
def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after resizing the shortest side to ``size`` (torchvision's rule)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def crop_offsets(width: int, height: int, size: int,
                 rounding: str = "round") -> tuple[int, int]:
    """(left, top) of the centred ``size`` x ``size`` crop: ``round`` is torchvision's
    ``int(round((side - size) / 2))``, ``floor`` is transformers' ``(side - size) // 2``."""
    if rounding == "floor":
        return (width - size) // 2, (height - size) // 2
    if rounding != "round":
        raise ValueError(f"crop rounding {rounding!r} is not 'round' or 'floor'")
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))


def pil_to_pixels(image: Image, size: int, rounding: str = "round") -> np.ndarray:
    """A PIL image -> 3 x size x size float32 in [0, 1]: resize, crop, RGB (steps 1-3)."""
    from PIL import Image as PILImage

    w, h = resized_size(image.width, image.height, size)
    if (w, h) != image.size:
        image = image.resize((w, h), PILImage.Resampling.BICUBIC)
    left, top = crop_offsets(w, h, size, rounding)
    image = image.crop((left, top, left + size, top + size)).convert("RGB")
    arr = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def tensor_to_model_input(x: torch.Tensor, size: int, rounding: str = "round") -> torch.Tensor:
    """N x 3 x H x W in [0, 1] -> normalised N x 3 x size x size, differentiably (steps 1-4).

    The resize is torch's antialiased bicubic (its PIL-compatible mode), clamped to [0, 1] as
    PIL's uint8 output is; inputs already ``size`` on the short side skip it, as PIL does.
    """
    import torch
    import torch.nn.functional as F

    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an N x 3 x H x W tensor, got shape {tuple(x.shape)}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    new_w, new_h = resized_size(w, h, size)
    if (new_w, new_h) != (w, h):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False,
                          antialias=True).clamp(0.0, 1.0)
    left, top = crop_offsets(new_w, new_h, size, rounding)
    x = x[..., top:top + size, left:left + size]
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------- files
def _combine(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _local_weight_files(folder: Path) -> list[Path]:
    """The weight files transformers would load from a save_pretrained folder (sharded too)."""
    for single, pattern in (("model.safetensors", "model-*-of-*.safetensors"),
                            ("pytorch_model.bin", "pytorch_model-*-of-*.bin")):
        if (folder / single).is_file():
            return [folder / single]
        shards = sorted(folder.glob(pattern))
        if shards:
            index = folder / f"{single}.index.json"
            return ([index] if index.is_file() else []) + shards
    return []


class CLIPBackbone:
    """CLIP image encoder -> (N, D) projected, unnormalised embeddings (D = 768 for ViT-L/14).

    ``embed`` (PIL images) and ``forward_pixels`` ([0, 1] tensors, differentiable) run the same
    model on the same preprocessing. ``images_embedded`` counts images through the model.
    """

    kind = "clip"
    what = "the CLIP model"
    weights_folder = WEIGHTS_FOLDER
    crop_rounding = "round"
    preprocess_version = PREPROCESS_VERSION
    input_std = CLIP_STD  # what tensor_to_model_input divides by (paper-mode attack units)
    input_mean = CLIP_MEAN  # what it subtracts first (the paper's (-3, 3) box in pixels)

    def __init__(self, model: str | Path = DEFAULT_MODEL, device: str = "cpu",
                 cache_dir: str | Path | None = None, revision: str | None = None,
                 batch_size: int = 32, owner: str = "clip") -> None:
        self.model_name = str(model)
        self.device = str(device)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.revision = revision
        self.batch_size = max(1, int(batch_size))
        self.images_embedded = 0
        self._model: Any = None
        self._lock = threading.Lock()
        self.config_path, self.weight_files = self._resolve_files(owner)
        digests = {p.name: file_digest(p, self.cache_dir)
                   for p in [self.config_path, *self.weight_files]}
        local = Path(self.model_name).expanduser().is_dir()
        self.fingerprint = f"{self.kind}-" + _combine({
            "kind": self.kind,
            # A local folder is identified by its content alone, so moving it keeps the cache.
            "model": "local" if local else self.model_name,
            "revision": None if local else revision,
            "files": digests,
            "preprocess": self.preprocess_version,
        })[:24]
        self.description = f"{self.what} {self.model_name} (fp32, {self.preprocess_version})"

    # ---------------------------------------------------------------- resolution
    def _resolve_files(self, owner: str) -> tuple[Path, list[Path]]:
        folder = Path(self.model_name).expanduser()
        if folder.is_dir():
            config, files = folder / "config.json", _local_weight_files(folder)
            if not config.is_file() or not files:
                raise WeightsNotFound(
                    f"{owner}: model folder {str(folder)!r} lacks "
                    f"{'config.json' if not config.is_file() else ' or '.join(WEIGHT_NAMES)}; "
                    "give a folder written by save_pretrained (config.json + model.safetensors)")
            return config, files
        if self.model_name.startswith((".", "/", "~")) or self.model_name.count("/") != 1:
            raise WeightsNotFound(
                f"{owner}: model = {self.model_name!r} is neither an existing folder nor a "
                "Hugging Face hub id (owner/name)")
        missing = "config.json"
        try:
            config = resolve(self._spec(missing), None, self.cache_dir)
            local = [config.parent / n for n in WEIGHT_NAMES if (config.parent / n).is_file()]
            if local:
                return config, local[:1]
            missing = " or ".join(WEIGHT_NAMES)
            for name in WEIGHT_NAMES:
                try:
                    return config, [resolve(self._spec(name), None, self.cache_dir)]
                except WeightsNotFound:
                    continue
            raise WeightsNotFound(missing)
        except WeightsNotFound as exc:
            raise WeightsNotFound(self._not_found(owner, missing)) from exc

    def _not_found(self, owner: str, missing: str) -> str:
        try:
            from huggingface_hub import constants

            hub_cache = f" ({constants.HF_HUB_CACHE})"
        except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
            hub_cache = ""
        offline = hub_offline_reason()
        why = (f"{offline} and it is not in the local Hugging Face cache" if offline
               else "it is not in the local Hugging Face cache and could not be downloaded")
        where = (f", or place config.json and model.safetensors in "
                 f"{self.cache_dir / 'weights' / self.weights_folder}") if self.cache_dir else ""
        revision = f"@{self.revision}" if self.revision else ""
        return (f"{owner}: {self.what} {self.model_name!r}{revision} is not available: {missing} "
                f"not found; {why}{hub_cache}. Run once with network access to fill the cache, "
                f"or set model = \"/path/to/folder\" in [tool.unsafebench.classifiers.{owner}] "
                f"(a folder written by save_pretrained, or a snapshot of "
                f"https://huggingface.co/{self.model_name}){where}")

    def _spec(self, filename: str) -> WeightFile:
        return WeightFile(classifier=self.weights_folder, filename=filename,
                          origin=f"https://huggingface.co/{self.model_name}", option="model",
                          repo_id=self.model_name, revision=self.revision)

    # ---------------------------------------------------------------- model
    @property
    def model(self) -> Any:
        """The loaded torch module (``pixel_values`` -> output with ``image_embeds``)."""
        if self._model is None:
            import torch

            # Loaded outside inference mode even when first used under it (embed), so that its
            # parameters also serve forward_pixels' autograd graph.
            with self._lock, torch.inference_mode(False):
                if self._model is None:
                    model = self._load()
                    model.requires_grad_(False)
                    self._model = model.to(self.device).eval()
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    def _vision_config(self) -> Any:
        """The vision config with the checkpoint's projection size (a CLIPConfig keeps that at
        top level; its vision_config's own default would be 512)."""
        from transformers import CLIPConfig, CLIPVisionConfig

        raw = json.loads(self.config_path.read_text())
        if raw.get("model_type") == "clip":
            full = CLIPConfig.from_dict(raw)
            vision: Any = full.vision_config  # a CLIPVisionConfig, loosely typed
            vision.projection_dim = full.projection_dim
            return vision
        return CLIPVisionConfig.from_dict(raw)

    def _load(self) -> Any:
        import torch
        from transformers import CLIPVisionModelWithProjection

        try:
            # output_loading_info=True: (model, info), where transformers types the model only.
            model, info = cast("tuple[Any, dict[str, Any]]", CLIPVisionModelWithProjection
                               .from_pretrained(str(self.weight_files[-1].parent),
                                                config=self._vision_config(), dtype=torch.float32,
                                                trust_remote_code=False, output_loading_info=True))
        except Exception as exc:
            raise ClassifierLoadError(
                f"CLIP model {self.model_name!r} failed to load from "
                f"{self.weight_files[-1].parent}: {type(exc).__name__}: {exc}") from exc
        bad = {k: v for k, v in info.items()
               if k in ("missing_keys", "mismatched_keys", "error_msgs") and v}
        if bad:  # unexpected keys are the text tower of a full CLIPModel checkpoint: fine
            raise ClassifierLoadError(
                f"CLIP model {self.model_name!r}: weights in {self.weight_files[-1]} do not fit "
                f"the vision tower: {bad}")
        return model

    # ---------------------------------------------------------------- inference
    def forward_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W floats in [0, 1] -> (N, D) projected embeddings, differentiably."""
        import torch

        model = self.model
        x = x.to(self.device, dtype=torch.float32)
        pixels = tensor_to_model_input(x, self.image_size, self.crop_rounding)
        self.images_embedded += int(pixels.shape[0])
        return model(pixel_values=pixels).image_embeds

    def embed(self, images: Sequence[Image]) -> np.ndarray:
        """PIL images -> (N, D) float32 numpy array of projected, unnormalised embeddings."""
        import torch

        size = self.image_size
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start:start + self.batch_size]
                batch = torch.from_numpy(np.stack([pil_to_pixels(im, size, self.crop_rounding)
                                                   for im in chunk]))
                out.append(self.forward_pixels(batch).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- sharing
_SHARED: weakref.WeakValueDictionary[tuple[str, str | None, str], CLIPBackbone] = \
    weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def _model_key(model: str | Path) -> str:
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else str(model)


def shared_backbone(model: str | Path = DEFAULT_MODEL, device: str = "cpu",
                    cache_dir: str | Path | None = None, revision: str | None = None,
                    batch_size: int = 32, owner: str = "clip") -> CLIPBackbone:
    """One :class:`CLIPBackbone` per (model, revision, device) in this process.

    Heads built with the same model and device get the same object (so the model is loaded and
    each image embedded once). The first caller's ``cache_dir`` and ``batch_size`` stay; the
    instance lives as long as some head holds it.
    """
    key = (_model_key(model), revision, str(device))
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is None:
            found = CLIPBackbone(model, device=device, cache_dir=cache_dir, revision=revision,
                                 batch_size=batch_size, owner=owner)
            _SHARED[key] = found
        return found

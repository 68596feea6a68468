"""Any transformers image-classification model: ``hf:<hub id or local folder>``.

Loaded with ``AutoModelForImageClassification`` + ``AutoImageProcessor`` from a local folder
(a hub id is first resolved to its snapshot folder in the Hugging Face cache, downloading it
unless ``HF_HUB_OFFLINE`` is set). ``trust_remote_code`` stays False unless the config sets it.

Config (``[tool.unsafebench.classifiers."hf:<id>"]``):

- ``labels``: names for the model's outputs, in output order, when its config only has
  ``LABEL_0``, ``LABEL_1``, ...; default: the config's ``id2label``.
- ``unsafe_labels``: the model labels whose probabilities add up to the unsafe score. Default:
  the keys of ``categories`` when it is given, else every label whose lower-cased name is in
  :data:`DEFAULT_UNSAFE_LABELS` (nsfw, unsafe, porn, sexy, hentai, explicit, nude, gore,
  violence, ...). A model with none of them is an error naming its labels.
- ``categories``: a table model label -> list of the 11 UnsafeBench categories it stands for,
  e.g. ``{gore = ["Violence", "Shocking"], porn = ["Sexual"]}``. Its union over the unsafe
  labels is the coverage, under both alignments (a hub model has no row in the paper's table;
  the plugin's config can still override either alignment). Without it, coverage is Sexual when
  every unsafe label is a sexual one (:data:`SEXUAL_LABELS`: nsfw, porn, sexy, hentai, ...);
  any other unsafe label (``unsafe``, ``gore``, ...) makes ``categories`` required, because
  which categories it covers is a claim only the user can make.
- ``threshold`` (0.5): unsafe iff score > threshold.

score: single-label models (softmax): the sum of the unsafe labels' probabilities; multi-label
models (``problem_type = "multi_label_classification"``, sigmoid): the largest unsafe label
probability. ``label_scores``: every label's probability.

``forward_pixels(x)``: N x 3 x H x W in [0, 1] -> the image processor's resize (torch
``interpolate`` with antialiasing, the processor's resample filter), centre crop, rescale and
normalise as differentiable torch ops, then the model -> (N, 2) logits [safe, unsafe] equal to
log(1 - p_unsafe), log(p_unsafe) (computed with logsumexp, so softmax of them gives back
(1 - p, p) exactly). It reproduces transformers' generic image-processor pipeline (size
height/width or shortest_edge[/longest_edge], centre crop, rescale, normalise); a processor
class with its own preprocessing (e.g. ConvNeXT's crop_pct) makes it raise NotImplementedError.

fingerprint: sha256 over the model's files (config, preprocessor config, weights, and remote
code when trusted; each via :func:`weights.file_digest`, so multi-GB weights are hashed once),
the model id, revision, label mapping and threshold.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..classifier import Coverage, Prediction
from ..errors import ClassifierLoadError
from ..progress import step
from ..taxonomy import CATEGORIES, suggest
from ..weights import WeightsNotFound, file_digest, hub_offline_reason

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

SEXUAL_LABELS: frozenset[str] = frozenset({
    "nsfw", "porn", "porno", "pornography", "sexy", "hentai", "explicit", "nude", "nudity",
    "sexual", "erotic", "adult",
})
DEFAULT_UNSAFE_LABELS: frozenset[str] = SEXUAL_LABELS | frozenset({
    "unsafe", "gore", "violence", "violent", "nsfl", "graphic", "blood", "harmful",
})
INSTALL_HINT = "pip install 'pytest-unsafebench[hf]' (transformers, torch, huggingface_hub)"
# Files that define the model's predictions; anything else in the folder (READMEs, training
# checkpoints, other frameworks' weights) stays out of the fingerprint.
_MODEL_FILES = ("config.json", "preprocessor_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin"]


def _hub_cache() -> Path:
    """The hub cache folder, read from the environment now (huggingface_hub reads it once, at
    import, so a changed HF_HOME would otherwise be ignored)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _has_weights(folder: Path) -> bool:
    return any(p.suffix in _WEIGHT_SUFFIXES for p in folder.iterdir() if p.is_file())


def _looks_like_path(model: str) -> bool:
    return (model.startswith((".", "~", os.sep)) or model.count("/") > 1
            or (os.altsep is not None and os.altsep in model))


def resolve_model_folder(model: str, revision: str | None = None,
                         trust_remote_code: bool = False) -> tuple[Path, bool]:
    """(folder holding config.json and weights, whether it came from the hub)."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ClassifierLoadError(f"hf:{model}: {path} has no config.json; save the model "
                                      "with save_pretrained() (or give a hub id)")
        if not _has_weights(path):
            raise WeightsNotFound(f"hf:{model}: {path} has no *.safetensors or *.bin weights")
        return path, False
    if _looks_like_path(model) or path.exists():
        raise ClassifierLoadError(f"hf:{model}: no such model folder ({path})")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ClassifierLoadError(f"hf:{model}: needs huggingface_hub: {INSTALL_HINT}") from exc
    patterns = _HUB_PATTERNS + (["*.py"] if trust_remote_code else [])
    cache = _hub_cache()
    folder: Path | None = None
    try:
        folder = Path(snapshot_download(model, revision=revision, cache_dir=cache,
                                        local_files_only=True, allow_patterns=patterns))
    except Exception:  # not cached (or an invalid id): handled below
        folder = None
    if folder is None or not ((folder / "config.json").is_file() and _has_weights(folder)):
        rev = f" (revision {revision})" if revision else ""
        how = (f"run once with network access so that it is cached in {cache}, or download it "
               f"(huggingface-cli download {model}) / save_pretrained() it to a folder and use "
               f"hf:<that folder>")
        offline = hub_offline_reason()  # HF_HUB_OFFLINE, or the hub did not answer
        if offline:
            raise WeightsNotFound(f"hf:{model}: model {model!r}{rev} is not in the local Hugging "
                                  f"Face cache and {offline}; {how}")
        try:
            with step("download", f"downloading {model}{rev}"):
                folder = Path(snapshot_download(model, revision=revision, cache_dir=cache,
                                                allow_patterns=patterns))
        except Exception as exc:  # reported with the model id and the way out
            raise WeightsNotFound(f"hf:{model}: cannot download model {model!r}{rev} "
                                  f"({type(exc).__name__}: {exc}); {how}") from exc
        if not ((folder / "config.json").is_file() and _has_weights(folder)):
            raise WeightsNotFound(f"hf:{model}: the hub repo {model!r}{rev} has no config.json "
                                  "with *.safetensors / *.bin weights (a transformers model?)")
    return folder, True


def _model_files(folder: Path, trust_remote_code: bool) -> list[Path]:
    files = [folder / f for f in _MODEL_FILES if (folder / f).is_file()]
    files += [folder / f for f in _WEIGHT_INDEXES if (folder / f).is_file()]
    weights = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if any(p.suffix == ".safetensors" for p in weights):  # what from_pretrained loads first
        weights = [p for p in weights if p.suffix == ".safetensors"]
    files += weights
    if trust_remote_code:
        files += sorted(folder.glob("*.py"))
    return files


def _match_label(name: str, labels: Sequence[str], model: str, option: str) -> str:
    if name in labels:
        return name
    folded = [x for x in labels if x.lower() == str(name).lower()]
    if len(folded) == 1:
        return folded[0]
    raise ClassifierLoadError(f"hf:{model}: {option} names {name!r}, which is not one of the "
                              f"model's labels: {', '.join(labels)}")


class HFImageClassifier:
    supports_gradients = True

    def __init__(self, model: str, labels: Sequence[str] | None = None,
                 unsafe_labels: Iterable[str] | str | None = None,
                 categories: Mapping[str, Iterable[str] | str] | None = None,
                 trust_remote_code: bool = False, device: str = "cpu",
                 revision: str | None = None, threshold: float = 0.5, batch_size: int = 32,
                 cache_dir: Path | None = None) -> None:
        self.model_id = str(model)
        self.name = f"hf:{self.model_id}"
        self.trust_remote_code = bool(trust_remote_code)
        self.device = str(device or "cpu")
        self.revision = revision
        self.batch_size = max(1, int(batch_size or 1))
        self.threshold = float(threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ClassifierLoadError(f"{self.name}: threshold {self.threshold} is outside [0, 1]")
        self.folder, from_hub = resolve_model_folder(self.model_id, revision,
                                                     self.trust_remote_code)
        config = json.loads((self.folder / "config.json").read_text())
        self.multi_label = config.get("problem_type") == "multi_label_classification"
        self.labels = self._labels(config, labels)
        self.unsafe_labels = self._unsafe(unsafe_labels, categories)
        self.categories = self._categories(categories)
        covered = sorted({c for label in self.unsafe_labels for c in self.categories[label]})
        self.coverage = Coverage.of(covered)
        self._unsafe_idx = [self.labels.index(x) for x in self.unsafe_labels]
        self._safe_idx = [i for i in range(len(self.labels)) if i not in self._unsafe_idx]
        if not self.multi_label and not self._safe_idx:
            raise ClassifierLoadError(
                f"{self.name}: every label is unsafe ({', '.join(self.labels)}), so the softmax "
                "score would always be 1; leave at least one safe label out of unsafe_labels")

        h = hashlib.sha256()
        for p in _model_files(self.folder, self.trust_remote_code):
            h.update(f"{p.name}:{file_digest(p, cache_dir)}\n".encode())
        rule = json.dumps({"labels": self.labels, "unsafe": self.unsafe_labels,
                           "multi_label": self.multi_label}, sort_keys=True)
        h.update(rule.encode())
        # A hub model is named by id and revision; a local folder by its content alone.
        where = f"{self.model_id}@{revision or 'main'}" if from_hub else "local"
        self.fingerprint = f"hf-{where}-{h.hexdigest()[:16]}-t{self.threshold:g}"
        how = "max sigmoid" if self.multi_label else "sum of softmax probabilities"
        self.description = (f"transformers image classifier {self.model_id}"
                            f"{f' @ {revision}' if revision else ''}; score = {how} of "
                            f"{', '.join(self.unsafe_labels)}; unsafe iff score > "
                            f"{self.threshold:g}")
        self._model: Any = None
        self._processor: Any = None

    # -- configuration -------------------------------------------------------------------
    def _labels(self, config: Mapping[str, Any], labels: Sequence[str] | None) -> list[str]:
        id2label = config.get("id2label") or {}
        n = len(id2label) or int(config.get("num_labels", 2))
        if labels is not None:
            names = [str(x) for x in labels]
            if len(names) != n:
                raise ClassifierLoadError(f"{self.name}: labels has {len(names)} names but the "
                                          f"model has {n} outputs")
        else:
            names = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]
        if len(set(names)) != len(names):
            raise ClassifierLoadError(f"{self.name}: duplicate label names {names}; give "
                                      "distinct names with the labels option")
        return names

    def _unsafe(self, unsafe_labels: Iterable[str] | str | None,
                categories: Mapping[str, Any] | None) -> list[str]:
        if isinstance(unsafe_labels, str):
            unsafe_labels = [unsafe_labels]
        if unsafe_labels is not None:
            chosen = [_match_label(x, self.labels, self.model_id, "unsafe_labels")
                      for x in unsafe_labels]
        elif categories:
            chosen = [_match_label(x, self.labels, self.model_id, "categories")
                      for x in categories]
        else:
            chosen = [x for x in self.labels if x.strip().lower() in DEFAULT_UNSAFE_LABELS]
            if not chosen:
                raise ClassifierLoadError(
                    f"{self.name}: none of the model's labels ({', '.join(self.labels)}) is a "
                    f"known unsafe label ({', '.join(sorted(DEFAULT_UNSAFE_LABELS))}); set "
                    f'unsafe_labels = ["..."] in [tool.unsafebench.classifiers."{self.name}"]')
        chosen = list(dict.fromkeys(chosen))
        if not chosen:
            raise ClassifierLoadError(f"{self.name}: unsafe_labels is empty")
        return chosen

    def _categories(self, categories: Mapping[str, Any] | None) -> dict[str, list[str]]:
        if not categories:
            other = [x for x in self.unsafe_labels if x.strip().lower() not in SEXUAL_LABELS]
            if other:
                raise ClassifierLoadError(
                    f"{self.name}: unsafe label(s) {other} are not sexual-only labels, so which "
                    "UnsafeBench categories the model covers must be given: set categories = "
                    f'{{ "{other[0]}" = ["Violence", "Shocking"], ... }} in '
                    f'[tool.unsafebench.classifiers."{self.name}"] (categories: '
                    f"{', '.join(CATEGORIES)})")
            return {label: ["Sexual"] for label in self.unsafe_labels}
        table: dict[str, list[str]] = {}
        for key, value in categories.items():
            label = _match_label(key, self.labels, self.model_id, "categories")
            values = [value] if isinstance(value, str) else list(value)
            for cat in values:
                if cat not in CATEGORIES:
                    raise ClassifierLoadError(
                        f"{self.name}: categories.{key}: unknown category {cat!r}"
                        f"{suggest(str(cat), CATEGORIES)}; use: {', '.join(CATEGORIES)}")
            if label not in self.unsafe_labels:
                raise ClassifierLoadError(f"{self.name}: categories maps {key!r}, which is not "
                                          f"one of the unsafe labels {self.unsafe_labels}")
            table[label] = values
        missing = [x for x in self.unsafe_labels if x not in table]
        if missing:
            raise ClassifierLoadError(f"{self.name}: categories has no entry for unsafe "
                                      f"label(s) {missing}")
        return table

    # -- model ---------------------------------------------------------------------------
    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            try:
                from transformers import AutoImageProcessor, AutoModelForImageClassification
            except ImportError as exc:
                raise ClassifierLoadError(f"{self.name}: cannot import transformers ({exc}): "
                                          f"{INSTALL_HINT}") from exc
            kw: dict[str, Any] = {"trust_remote_code": self.trust_remote_code,
                                  "local_files_only": True}
            processor = AutoImageProcessor.from_pretrained(str(self.folder), **kw)
            model = AutoModelForImageClassification.from_pretrained(str(self.folder), **kw)
            n = getattr(model.config, "num_labels", len(self.labels))
            if n != len(self.labels):
                raise ClassifierLoadError(f"{self.name}: the model has {n} outputs but "
                                          f"{len(self.labels)} labels")
            self._processor = processor
            self._model = model.to(self.device).eval()
        return self._model, self._processor

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        logits = logits.float()
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)

    def _p_unsafe(self, probs: torch.Tensor) -> torch.Tensor:
        sel = probs[:, self._unsafe_idx]
        return sel.max(dim=1).values if self.multi_label else sel.sum(dim=1)

    def predict(self, images: Sequence[Image]) -> list[Prediction]:
        import torch

        if not images:
            return []
        model, processor = self._load()
        out: list[Prediction] = []
        for start in range(0, len(images), self.batch_size):
            chunk = [im if im.mode == "RGB" else im.convert("RGB")
                     for im in images[start:start + self.batch_size]]
            with torch.inference_mode():
                pixels = processor(images=chunk, return_tensors="pt")["pixel_values"]
                logits = model(pixel_values=pixels.to(self.device)).logits
                probs = self._probs(logits).cpu().double()
                scores = self._p_unsafe(probs).clamp(0.0, 1.0)
            for row, score in zip(probs.tolist(), scores.tolist()):
                out.append(Prediction.from_score(
                    score, self.threshold, label_scores=dict(zip(self.labels, row))))
        return out

    # -- gradients -----------------------------------------------------------------------
    @property
    def input_std(self) -> tuple[float, float, float] | None:
        """The processor's ``image_std`` in [0, 1] pixel units (as preprocess_pixels divides
        by it), or None when it does not normalise. Loads the model like forward_pixels."""
        _, processor = self._load()
        if not getattr(processor, "do_normalize", False):
            return None
        return channel_std(processor.image_std, _pixel_scale(processor), self.name)

    def preprocess_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The image processor's pipeline as differentiable torch ops on [0, 1] pixels."""
        import torch
        import torch.nn.functional as F

        _, processor = self._load()
        _check_generic(processor, self.name)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"forward_pixels expects N x 3 x H x W, got {tuple(x.shape)}")
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if getattr(processor, "do_resize", False):
            oh, ow = resize_size(processor.size, h, w, self.name)
            if (oh, ow) != (h, w):
                resample = getattr(processor, "resample", None)
                mode = _INTERPOLATION.get(2 if resample is None else int(resample), "bilinear")
                if mode == "nearest":
                    x = F.interpolate(x, size=(oh, ow), mode="nearest-exact")  # = PIL NEAREST
                else:
                    x = F.interpolate(x, size=(oh, ow), mode=mode, align_corners=False,
                                      antialias=True)
                    if mode == "bicubic":  # PIL clips bicubic overshoot to the pixel range
                        x = x.clamp(0.0, 1.0)
        if getattr(processor, "do_center_crop", False) and processor.crop_size is not None:
            x = center_crop(x, int(processor.crop_size.height), int(processor.crop_size.width))
        x = x * _pixel_scale(processor)
        if getattr(processor, "do_normalize", False):
            mean = torch.tensor(processor.image_mean, dtype=x.dtype, device=x.device)
            std = torch.tensor(processor.image_std, dtype=x.dtype, device=x.device)
            x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        return x

    def forward_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W in [0, 1] -> (N, 2) logits [safe, unsafe] = log(1 - p), log(p)."""
        import torch
        import torch.nn.functional as F

        model, _ = self._load()
        x = x.to(self.device, dtype=torch.float32)
        logits = model(pixel_values=self.preprocess_pixels(x)).logits.float()
        if self.multi_label:
            top = logits[:, self._unsafe_idx].max(dim=1).values
            return torch.stack([F.logsigmoid(-top), F.logsigmoid(top)], dim=1)
        norm = torch.logsumexp(logits, dim=1)
        log_unsafe = torch.logsumexp(logits[:, self._unsafe_idx], dim=1) - norm
        log_safe = torch.logsumexp(logits[:, self._safe_idx], dim=1) - norm
        return torch.stack([log_safe, log_unsafe], dim=1)


def _pixel_scale(processor: Any) -> float:
    """What [0, 1] pixels are multiplied by before normalising (1.0 for the usual 1/255)."""
    return 255.0 * (float(processor.rescale_factor) if getattr(processor, "do_rescale", False)
                    else 1.0)


def channel_std(std: Any, scale: float, name: str) -> tuple[float, float, float]:
    """An image processor's ``image_std`` (one value or one per RGB channel), applied to pixels
    multiplied by ``scale``, as the per-channel std in [0, 1] pixel units."""
    values = [std] if isinstance(std, (int, float)) else list(std)
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise ClassifierLoadError(f"{name}: the image processor's image_std {std!r} has neither "
                                  "one value nor one per RGB channel")
    r, g, b = (float(v) / scale for v in values)
    return r, g, b


# PIL resample codes -> torch interpolate modes (LANCZOS, BOX, HAMMING: nearest smooth kind).
_INTERPOLATION = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear",
                  5: "bilinear"}


def _check_generic(processor: Any, name: str) -> None:
    """forward_pixels reproduces transformers' generic pipeline only."""
    try:
        from transformers.image_processing_backends import PilBackend, TorchvisionBackend
    except ImportError as exc:  # another transformers layout
        raise NotImplementedError(f"{name}: forward_pixels needs transformers 5.x image "
                                  "processors") from exc
    cls = type(processor)
    for base in (PilBackend, TorchvisionBackend):
        if isinstance(processor, base):
            custom = [m for m in ("_preprocess", "resize", "center_crop", "rescale", "normalize")
                      if getattr(cls, m) is not getattr(base, m)]
            if custom or getattr(processor, "do_pad", False):
                raise NotImplementedError(
                    f"{name}: {cls.__name__} has its own preprocessing "
                    f"({', '.join(custom) or 'padding'}); forward_pixels reproduces only the "
                    "generic resize / centre crop / rescale / normalise pipeline")
            return
    raise NotImplementedError(f"{name}: forward_pixels does not know {cls.__name__}")


def resize_size(size: Any, h: int, w: int, name: str) -> tuple[int, int]:
    """The (height, width) an image processor's resize gives an ``h`` x ``w`` image, from its
    ``size`` (height and width, shortest edge, or both edges); NotImplementedError naming the
    classifier ``name`` for any other rule."""
    if getattr(size, "height", None) and getattr(size, "width", None):
        return int(size.height), int(size.width)
    shortest = getattr(size, "shortest_edge", None)
    longest = getattr(size, "longest_edge", None)
    if shortest and longest:
        from transformers.image_transforms import get_size_with_aspect_ratio

        height, width = get_size_with_aspect_ratio((h, w), shortest, longest)
        return int(height), int(width)
    if shortest:
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = int(shortest), int(int(shortest) * long / short)
        return (new_long, new_short) if w <= h else (new_short, new_long)
    raise NotImplementedError(f"{name}: forward_pixels does not reproduce resizing to {size}")


def center_crop(x: torch.Tensor, ch: int, cw: int) -> torch.Tensor:
    """The centred ``ch`` x ``cw`` crop of ``... x H x W`` pixels as transformers takes it,
    zero-padded (centred) first where the image is smaller; differentiable."""
    import math

    import torch.nn.functional as F

    h, w = int(x.shape[-2]), int(x.shape[-1])
    if ch > h or cw > w:  # transformers pads a too-small image with zeros, centred
        nh, nw = max(ch, h), max(cw, w)
        top, left = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
        x = F.pad(x, (left, nw - w - left, top, nh - h - top))
        h, w = nh, nw
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top:top + ch, left:left + cw]


def load(model: str, labels: Sequence[str] | None = None,
         unsafe_labels: Iterable[str] | str | None = None,
         categories: Mapping[str, Iterable[str] | str] | None = None,
         trust_remote_code: bool = False, device: str = "cpu", revision: str | None = None,
         threshold: float = 0.5, batch_size: int = 32,
         cache_dir: Path | None = None) -> HFImageClassifier:
    """A transformers image classifier from a hub id or a local folder (see the module doc)."""
    return HFImageClassifier(model, labels, unsafe_labels, categories, trust_remote_code,
                             device, revision, threshold, batch_size, cache_dir)

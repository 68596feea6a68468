"""Q16, MultiHeaded and NSFW_Detector: three heads on one shared CLIP ViT-L/14 backbone.

Each head is a :class:`~pytest_unsafebench.classifier.HeadClassifier`: the engine computes
``backbone.embed(images)`` once per image and backbone fingerprint and hands the same (N, 768)
embeddings to every head's ``predict_embeddings``; ``predict(images)`` is exactly that
composition. Decision rules follow the paper's reference code (UnsafeBench's classifiers.py:
``Q16``, ``MultiHeadedClassifier``, ``NSFWDetector``).

Scores and logits (``forward_pixels`` returns N x 2 logits ordered [safe, unsafe], and in every
head ``softmax(logits)[:, 1]`` equals the reported score):

* **Q16**: logits = 100 * cos(e, P_i) for its two soft prompts (row 0 "not inappropriate",
  row 1 "inappropriate"); unsafe iff logit 1 > logit 0; score = softmax P(unsafe).
* **MultiHeaded**: five sigmoid heads on the unnormalised embedding; unsafe iff the largest
  head probability exceeds 0.5; score = that probability; ``label_scores`` holds all five.
* **NSFW_Detector**: one sigmoid output on the L2-normalised embedding; unsafe iff p > 0.5;
  score = p.

For the sigmoid heads the logits are ``[-z/2, z/2]`` with ``z`` the pre-sigmoid value (for
MultiHeaded the largest head's), so ``logit1 - logit0 = z`` and ``softmax = sigmoid(z)``:
attacks see the model's own log-odds, not the paper's softmax-of-probabilities.

Coverage: ``official`` is the paper's table (taxonomy.OFFICIAL_ALIGNMENT). ``semantic`` is what
the native labels mean: Q16 detects generic "inappropriate" content (trained on the SMID moral
image set, not on any category list), so all 11 categories, Sexual and Spam included;
MultiHeaded's sexual/violent/disturbing/hateful/political heads map to Sexual, Violence,
Shocking, Hate and Political; the NSFW detector is a nudity/porn detector, so Sexual only.

Weight files (each resolved with :func:`weights.resolve`: explicit option, then
``<cache_dir>/weights/<classifier>/``, then the Hugging Face cache/hub copy that UnsafeBench's
code downloads):

* Q16 ``prompts.p``: a pickled float16 numpy array (2, 768), read with
  :class:`RestrictedUnpickler`, which admits numpy's array reconstruction and nothing else.
* MultiHeaded ``{sexual,violent,disturbing,hateful,political}.pt``: state dicts of
  ``Sequential(Linear(768, 384), ReLU, Dropout(0.5), BatchNorm1d(384), Linear(384, 1))``
  (keys ``0.*``, ``3.*`` with running stats, ``4.*``), loaded ``weights_only`` and strictly.
* NSFW_Detector ``clip_autokeras_binary_nsfw.pth``: UnsafeBench's PyTorch port of LAION's
  Keras model (``load_torch_model`` in YitingQu/UnsafeBench ``classifiers.py``): keys
  ``norm.mean``, ``norm.variance`` (768 each), ``linear_1`` (768->64), ``linear_2`` (64->512),
  ``linear_3`` (512->256), ``linear_4`` (256->1), each ``.weight``/``.bias``; computes
  ``(x - mean) / sqrt(variance)``, then Dense+ReLU x3, Dense, sigmoid. LAION's original
  ``clip_autokeras_binary_nsfw.zip`` (a TensorFlow SavedModel) is accepted too: on first use
  :mod:`.keras_savedmodel` reads its variables without TensorFlow, maps them to the port's keys
  (kernels transposed), and caches the result as
  ``<cache_dir>/weights/nsfw_detector/clip_autokeras_binary_nsfw.<sha16 of zip>.pth``; the
  fingerprint is the zip's hash either way. Like the port, this drops autokeras' categorical
  encoding of five embedding columns (its lookup tables are empty), so scores match the port.

Layer sizes are read from the files (only the key names are fixed), so stand-in heads for a
smaller backbone load too; an embedding of the wrong width is a clear error at predict time.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..classifier import Coverage, Prediction
from ..errors import ClassifierLoadError
from ..progress import step
from ..taxonomy import CATEGORIES, OFFICIAL_ALIGNMENT
from ..weights import WeightFile, file_digest, require_all, resolve
from .clip_backbone import DEFAULT_MODEL, CLIPBackbone, shared_backbone

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

# Bump when a head's computation or decision rule changes (it enters every head fingerprint).
HEAD_VERSION = "clip-heads-v1"

MULTIHEADED_HEADS: tuple[str, ...] = ("sexual", "violent", "disturbing", "hateful", "political")
Q16_LABELS = ("not_inappropriate", "inappropriate")

Q16_FILE = WeightFile(
    classifier="q16", filename="prompts.p",
    origin="https://github.com/ml-research/Q16 (data/ViT-L-14/prompts.p)",
    option="prompts", repo_id="yiting/Q16")
NSFW_FILE = WeightFile(
    classifier="nsfw_detector", filename="clip_autokeras_binary_nsfw.pth",
    origin=("UnsafeBench's PyTorch port of LAION-AI/CLIP-based-NSFW-Detector "
            "(https://huggingface.co/yiting/NSFWDetector)"),
    option="weights", repo_id="yiting/NSFWDetector")


def multiheaded_file(head: str) -> WeightFile:
    return WeightFile(
        classifier="multiheaded", filename=f"{head}.pt",
        origin="https://github.com/YitingQu/unsafe-diffusion (checkpoints/multi-headed)",
        option="heads_dir", repo_id="yiting/MultiHeaded")


# --------------------------------------------------------------------------- safe loading
class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else.

    ``find_class`` admits only numpy's array reconstruction (``_reconstruct``, ``ndarray``,
    ``dtype``, and ``_frombuffer`` used by protocol 5); any other global (``os.system``,
    ``builtins.eval``, ...) raises :class:`pickle.UnpicklingError` before it is imported.
    Persistent ids are refused as well (``pickle.Unpickler``'s default).
    """

    ALLOWED: frozenset[tuple[str, str]] = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a weights pickle: only numpy arrays "
                "are allowed (the file is not a plain numpy array, or it is hostile)")
        if name == "ndarray":
            return np.ndarray
        if name == "dtype":
            return np.dtype
        try:  # numpy >= 2 moved these to numpy._core; numpy.core warns on import there
            from numpy._core import multiarray, numeric
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core import multiarray, numeric  # type: ignore[no-redef]
        # What numpy's pickles name; numpy's stubs leave its private functions out.
        return (multiarray._reconstruct if name == "_reconstruct"
                else numeric._frombuffer)  # type: ignore[attr-defined]


def load_q16_prompts(path: str | Path) -> np.ndarray:
    """Q16's ``prompts.p`` -> its (2, D) array (float16 upstream), through the restricted
    unpickler; anything but a numeric 2-row array is a ClassifierLoadError."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            obj = RestrictedUnpickler(fh).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ClassifierLoadError(f"q16: cannot read prompts from {path}: {exc}") from exc
    if not isinstance(obj, np.ndarray) or obj.ndim != 2 or obj.shape[0] != 2 \
            or obj.dtype.kind != "f":
        what = (f"array {obj.dtype} {obj.shape}" if isinstance(obj, np.ndarray)
                else type(obj).__name__)
        raise ClassifierLoadError(
            f"q16: {path} holds a {what}; expected a float array of shape (2, 768)")
    return obj


def _torch_state(path: Path, classifier: str) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ClassifierLoadError(
            f"{classifier}: cannot load {path} as a torch state dict (weights_only=True): "
            f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict):
        raise ClassifierLoadError(
            f"{classifier}: {path} holds a {type(state).__name__}, expected a state dict")
    return state


def load_strict(module: torch.nn.Module, state: dict[str, Any], path: Path,
                classifier: str) -> None:
    """``load_state_dict(strict=True)``, with a message naming the file and the keys."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                    for k, v in expected.items()
                    if k in state and tuple(getattr(state[k], "shape", ())) != tuple(v.shape))
    if missing or unexpected or shapes:
        parts = [f"missing keys {missing}" if missing else "",
                 f"unexpected keys {unexpected}" if unexpected else "",
                 f"shape mismatches {shapes}" if shapes else ""]
        raise ClassifierLoadError(
            f"{classifier}: {path} does not match the expected layout: "
            + "; ".join(p for p in parts if p))
    module.load_state_dict(state, strict=True)


def _shape(state: dict[str, Any], key: str, axis: int, default: int) -> int:
    value = state.get(key)
    return int(value.shape[axis]) if value is not None and value.ndim > axis else default


def _combine(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- heads
class CLIPHead:
    """Common machinery: fingerprint, lazy head loading, predict/predict_embeddings, gradients.

    Subclasses implement ``_build(device)`` (load the head's tensors) and ``_outputs(e)``,
    which maps an (N, D) float32 tensor to (logits N x 2, per-label scores N x L) differentiably.
    """

    name = "clip-head"
    coverage = Coverage.everything()
    supports_gradients = True
    labels: tuple[str, ...] = ()
    rule = ""

    def __init__(self, backbone: CLIPBackbone, files: dict[str, Path],
                 cache_dir: str | Path | None = None) -> None:
        self.backbone = backbone
        self.weight_files = dict(files)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        digests = {k: file_digest(p, Path(cache_dir) if cache_dir is not None else None)
                   for k, p in files.items()}
        self.fingerprint = f"{self.name}-" + _combine({
            "backbone": backbone.fingerprint, "head": digests, "version": HEAD_VERSION,
            "rule": self.rule})[:24]
        self._head: Any = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- loading
    @property
    def head(self) -> Any:
        if self._head is None:
            import torch

            # Built outside inference mode even when first used under it, so that the same
            # tensors also serve forward_pixels' autograd graph.
            with self._lock, torch.inference_mode(False):
                if self._head is None:
                    self._head = self._build(self.backbone.device)
        return self._head

    @property
    def input_dim(self) -> int:
        raise NotImplementedError

    @property
    def input_std(self) -> tuple[float, float, float]:
        """The backbone's normalisation std: forward_pixels normalises through it."""
        return self.backbone.input_std

    @property
    def input_mean(self) -> tuple[float, float, float]:
        return self.backbone.input_mean

    def attack_input(self, image: Image) -> np.ndarray:
        """The clean tensor ``predict`` itself embeds (3 x S x S in [0, 1]): an attack starts
        from exactly the input the pool's decision was made on."""
        from .clip_backbone import pil_to_pixels

        b = self.backbone
        return pil_to_pixels(image, b.image_size, b.crop_rounding)

    def paper_outputs(self, e: torch.Tensor) -> torch.Tensor:
        """What the paper's wrapper (UnsafeBench classifiers.py ``forward``) returned to
        foolbox: the softmax of its logits; heads whose wrapper differs override this."""
        import torch.nn.functional as F

        return F.softmax(self._outputs(self._check(e))[0], dim=-1)

    def paper_forward_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels -> :meth:`paper_outputs`, differentiably (the model paper-mode attacks see)."""
        return self.paper_outputs(self.backbone.forward_pixels(x))

    def _build(self, device: str) -> Any:
        raise NotImplementedError

    def _outputs(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _decide(self, logits: np.ndarray, label_scores: np.ndarray) -> np.ndarray:
        """Boolean unsafe per row, by the model's own rule."""
        raise NotImplementedError

    # ---------------------------------------------------------------- inference
    def logits_from_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) backbone embeddings -> (N, 2) logits [safe, unsafe], differentiably."""
        return self._outputs(self._check(embeddings))[0]

    def forward_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W floats in [0, 1] -> logits N x 2 [safe, unsafe]; preprocessing inside."""
        return self.logits_from_embeddings(self.backbone.forward_pixels(x))

    def predict(self, images: Sequence[Image]) -> list[Prediction]:
        return self.predict_embeddings(self.backbone.embed(images))

    def _embedding_tensor(self, embeddings: Any) -> torch.Tensor:
        """(N, D) float32 tensor from the engine's shared numpy embeddings."""
        import torch

        arr = np.asarray(embeddings, dtype=np.float32)
        if arr.ndim != 2:
            raise ValueError(f"{self.name}: expected (N, D) embeddings, got shape {arr.shape}")
        return torch.from_numpy(np.ascontiguousarray(arr))

    def predict_embeddings(self, embeddings: Any) -> list[Prediction]:
        import torch

        emb = self._embedding_tensor(embeddings)
        if emb.shape[0] == 0:
            return []
        with torch.inference_mode():
            logits, labels = self._outputs(self._check(emb))
            probs = torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy().astype(np.float64)
            logits_np = logits.float().cpu().numpy()
            labels_np = labels.float().cpu().numpy().astype(np.float64)
        unsafe = self._decide(logits_np, labels_np)
        return [Prediction(
            score=min(max(float(p), 0.0), 1.0), decision="unsafe" if u else "safe",
            label_scores={lab: float(v) for lab, v in zip(self.labels, row)})
            for p, u, row in zip(probs, unsafe, labels_np)]

    def _check(self, e: torch.Tensor) -> torch.Tensor:
        import torch

        if e.ndim != 2 or e.shape[1] != self.input_dim:
            raise ValueError(
                f"{self.name}: the head takes {self.input_dim}-d embeddings but got shape "
                f"{tuple(e.shape)} (a backbone with a different projection size?)")
        return e.to(self.backbone.device, dtype=torch.float32)


class Q16(CLIPHead):
    name = "q16"
    coverage = Coverage.of(OFFICIAL_ALIGNMENT["q16"], CATEGORIES)
    labels = ("inappropriate",)
    rule = "logits=100*cos(e,P); unsafe iff logit1>logit0; score=softmax[1]"
    description = ("Q16 (Schramowski et al.): CLIP ViT-L/14 + two learned prompts; "
                   "score = P(inappropriate)")

    @property
    def input_dim(self) -> int:
        return int(self.head.shape[1])

    def _build(self, device: str) -> Any:
        import torch

        prompts = torch.from_numpy(load_q16_prompts(self.weight_files["prompts"])
                                   .astype(np.float32))
        return torch.nn.functional.normalize(prompts, dim=-1).to(device)

    def _outputs(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch.nn.functional as F

        logits = 100.0 * F.normalize(e, dim=-1) @ self.head.T
        return logits, F.softmax(logits, dim=-1)[:, 1:]

    def _decide(self, logits: np.ndarray, label_scores: np.ndarray) -> np.ndarray:
        return logits[:, 1] > logits[:, 0]


def _softmax_of_probability(p: torch.Tensor) -> torch.Tensor:
    """softmax([1 - p, p]): the paper's wrappers fed probabilities through a softmax again."""
    import torch

    return torch.softmax(torch.stack([1 - p, p], dim=1), dim=1)


def _mlp_head(state: dict[str, Any]) -> torch.nn.Module:
    from torch import nn

    d_in = _shape(state, "0.weight", 1, 768)
    hidden = _shape(state, "0.weight", 0, 384)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(0.5),
                         nn.BatchNorm1d(hidden), nn.Linear(hidden, 1))


class MultiHeaded(CLIPHead):
    name = "multiheaded"
    coverage = Coverage.of(OFFICIAL_ALIGNMENT["multiheaded"],
                           ["Sexual", "Violence", "Shocking", "Hate", "Political"])
    labels = MULTIHEADED_HEADS
    rule = "5 sigmoid MLP heads on raw e; unsafe iff max p>0.5; score=max p; logits=[-z/2,z/2]"
    description = ("MultiHeaded safety classifier (Qu et al., unsafe-diffusion): five MLP heads "
                   "on CLIP ViT-L/14; score = max head probability")

    @property
    def input_dim(self) -> int:
        return int(self.head[0][0].in_features)

    def _build(self, device: str) -> Any:
        from torch import nn

        heads = nn.ModuleList()
        for label in MULTIHEADED_HEADS:
            path = self.weight_files[label]
            state = _torch_state(path, self.name)
            module = _mlp_head(state)
            load_strict(module, state, path, self.name)
            heads.append(module)
        heads.requires_grad_(False)
        return heads.to(device).eval()

    def _outputs(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        z = torch.cat([head(e) for head in self.head], dim=1)  # (N, 5) pre-sigmoid
        top = z.max(dim=1).values
        return torch.stack([-top / 2, top / 2], dim=1), torch.sigmoid(z)

    def _decide(self, logits: np.ndarray, label_scores: np.ndarray) -> np.ndarray:
        return label_scores.max(axis=1) > 0.5

    def paper_outputs(self, e: torch.Tensor) -> torch.Tensor:
        """classifiers.py: p = max sigmoid over the heads, softmax([1 - p, p])."""
        return _softmax_of_probability(self._outputs(self._check(e))[1].max(dim=1).values)


def keras_zip_state(path: Path, cache_dir: Path | None) -> tuple[dict[str, Any], Path]:
    """LAION's SavedModel zip -> (port state dict of torch tensors, path to name in errors).

    Converted once per zip content and cached as a plain-tensor ``.pth`` (loaded back with
    ``weights_only=True``), keyed by the zip's sha256 so a replaced zip is reconverted. Without
    a cache_dir the conversion (well under a second) is redone per process.
    """
    import torch

    from .keras_savedmodel import convert_nsfw_zip

    cached = None
    if cache_dir is not None:
        sha16 = file_digest(path, cache_dir)[:16]
        cached = (cache_dir / "weights" / NSFW_FILE.classifier
                  / f"{Path(NSFW_FILE.filename).stem}.{sha16}.pth")
        if cached.is_file():
            try:
                return _torch_state(cached, NSFW_FILE.classifier), cached
            except ClassifierLoadError:
                pass  # a damaged cache entry: convert again and overwrite it
    with step("weight_conversion", f"nsfw_detector: converting {path.name} to torch (once)"):
        state = {k: torch.from_numpy(v) for k, v in convert_nsfw_zip(path).items()}
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        torch.save(state, tmp)
        tmp.replace(cached)  # atomic: concurrent workers never see a half-written file
    return state, path


def _nsfw_module(state: dict[str, Any]) -> torch.nn.Module:
    """The UnsafeBench port's module layout: ``norm`` (mean, variance buffers) + linear_1..4."""
    import torch
    from torch import nn

    class Normalization(nn.Module):
        mean: torch.Tensor  # buffers, registered below
        variance: torch.Tensor

        def __init__(self, dim: int) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(dim))
            self.register_buffer("variance", torch.ones(dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - self.mean) / self.variance.sqrt()

    class NSFWHead(nn.Module):
        def __init__(self, sizes: list[int]) -> None:
            super().__init__()
            self.norm = Normalization(sizes[0])
            self.linear_1 = nn.Linear(sizes[0], sizes[1])
            self.linear_2 = nn.Linear(sizes[1], sizes[2])
            self.linear_3 = nn.Linear(sizes[2], sizes[3])
            self.linear_4 = nn.Linear(sizes[3], sizes[4])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """L2-normalised embedding -> pre-sigmoid logit (N, 1)."""
            x = self.norm(x)
            x = torch.relu(self.linear_1(x))
            x = torch.relu(self.linear_2(x))
            x = torch.relu(self.linear_3(x))
            return self.linear_4(x)

    defaults = [768, 64, 512, 256, 1]
    sizes = [_shape(state, "linear_1.weight", 1, defaults[0])] + [
        _shape(state, f"linear_{k}.weight", 0, defaults[k]) for k in range(1, 5)]
    return NSFWHead(sizes)


class NSFWDetector(CLIPHead):
    name = "nsfw_detector"
    coverage = Coverage.of(OFFICIAL_ALIGNMENT["nsfw_detector"], ["Sexual"])
    labels = ("nsfw",)
    rule = "L2-normalise; (x-mean)/sqrt(var); 64-512-256-1 ReLU MLP; sigmoid; unsafe iff p>0.5"
    description = ("LAION CLIP-based NSFW detector (UnsafeBench's PyTorch port) on CLIP "
                   "ViT-L/14; score = P(nsfw)")

    @property
    def input_dim(self) -> int:
        return int(self.head.linear_1.in_features)

    def _build(self, device: str) -> Any:
        path = self.weight_files["weights"]
        if path.suffix.lower() == ".zip":
            state, path = keras_zip_state(path, self.cache_dir)
        else:
            state = _torch_state(path, self.name)
        module = _nsfw_module(state)
        load_strict(module, state, path, self.name)
        module.requires_grad_(False)
        return module.to(device).eval()

    def _outputs(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch
        import torch.nn.functional as F

        z = self.head(F.normalize(e, dim=-1))[:, 0]
        return torch.stack([-z / 2, z / 2], dim=1), torch.sigmoid(z)[:, None]

    def _decide(self, logits: np.ndarray, label_scores: np.ndarray) -> np.ndarray:
        return label_scores[:, 0] > 0.5

    def paper_outputs(self, e: torch.Tensor) -> torch.Tensor:
        """classifiers.py: p = the detector's sigmoid, softmax([1 - p, p])."""
        return _softmax_of_probability(self._outputs(self._check(e))[1][:, 0])


# --------------------------------------------------------------------------- factories
def _backbone(owner: str, model: str, revision: str | None, device: str,
              cache_dir: str | Path | None, batch_size: int) -> CLIPBackbone:
    return shared_backbone(model, device=device, cache_dir=cache_dir, revision=revision,
                           batch_size=batch_size, owner=owner)


def _cache(cache_dir: str | Path | None) -> Path | None:
    return Path(cache_dir) if cache_dir is not None else None


def load_q16(model: str = DEFAULT_MODEL, prompts: str | None = None,
             revision: str | None = None, device: str = "cpu",
             cache_dir: str | Path | None = None, batch_size: int = 32) -> Q16:
    """Q16. ``model``: CLIP hub id or save_pretrained folder; ``prompts``: path to prompts.p."""
    path, backbone = require_all(
        "q16", lambda: resolve(Q16_FILE, prompts, _cache(cache_dir)),
        lambda: _backbone("q16", model, revision, device, cache_dir, batch_size))
    return Q16(backbone, {"prompts": path}, cache_dir)


def load_multiheaded(model: str = DEFAULT_MODEL, heads_dir: str | None = None,
                     revision: str | None = None, device: str = "cpu",
                     cache_dir: str | Path | None = None, batch_size: int = 32) -> MultiHeaded:
    """MultiHeaded. ``heads_dir``: folder holding sexual.pt ... political.pt."""
    def head_file(head: str) -> Callable[[], Path]:
        explicit = Path(heads_dir).expanduser() / f"{head}.pt" if heads_dir else None
        return lambda: resolve(multiheaded_file(head), explicit, _cache(cache_dir))

    *paths, backbone = require_all(
        "multiheaded", *(head_file(head) for head in MULTIHEADED_HEADS),
        lambda: _backbone("multiheaded", model, revision, device, cache_dir, batch_size))
    return MultiHeaded(backbone, dict(zip(MULTIHEADED_HEADS, paths)), cache_dir)


def load_nsfw_detector(model: str = DEFAULT_MODEL, weights: str | None = None,
                       revision: str | None = None, device: str = "cpu",
                       cache_dir: str | Path | None = None,
                       batch_size: int = 32) -> NSFWDetector:
    """NSFW_Detector. ``weights``: UnsafeBench's ``clip_autokeras_binary_nsfw.pth``, or LAION's
    ``clip_autokeras_binary_nsfw.zip`` (converted without TensorFlow on first use)."""
    path, backbone = require_all(
        "nsfw_detector", lambda: resolve(NSFW_FILE, weights, _cache(cache_dir)),
        lambda: _backbone("nsfw_detector", model, revision, device, cache_dir, batch_size))
    if path.is_dir():
        raise ClassifierLoadError(
            f"nsfw_detector: {path} is a folder (an unzipped SavedModel?); give LAION's "
            "clip_autokeras_binary_nsfw.zip itself or UnsafeBench's PyTorch port "
            "clip_autokeras_binary_nsfw.pth (https://huggingface.co/yiting/NSFWDetector)")
    return NSFWDetector(backbone, {"weights": path}, cache_dir)

"""``probe:PATH``: a linear probe trained by ``unsafebench train``, loaded as a classifier.

The file is one safetensors file. Its tensors are the heads: ``weight`` (K x D) and ``bias``
(K) over standardised embeddings (``mean`` and ``scale``, D each); head 0 is the overall unsafe
head, head k (k >= 1) the unsafe head of ``categories[k - 1]``. Its header carries one metadata
entry, :data:`METADATA_KEY`, a JSON object (a single key keeps the header's bytes deterministic)
naming the backbone (name, options, fingerprint, embedding size), the categories, each head's
probability threshold (calibrated on validation data), the seed, the training data (dataset
fingerprint and split) and :data:`FORMAT_VERSION` (the constants:
:mod:`pytest_unsafebench.probe_format`, shared with ``unsafebench train``).

The probe is a :class:`~pytest_unsafebench.classifier.HeadClassifier` on the backbone it names,
so the engine shares (and caches) that backbone's embeddings with every other head on it, and
the loader refuses a backbone whose fingerprint differs from the one the probe was trained on.

Scores fold the calibrated thresholds in: a head's score is ``sigmoid(z - logit(t))`` for its
logit ``z`` and threshold ``t``, so every score exceeds 0.5 exactly when the head's raw
probability exceeds its threshold. The image's score and decision come from the overall head
(an image's category is unknown at inference); ``label_scores`` holds every head's score.

Backbones by name (:func:`resolve_backbone`): ``clip`` is the shared CLIP ViT-L/14 encoder of
q16, multiheaded and nsfw_detector (option ``model``: hub id or save_pretrained folder);
``demo`` is the demo CNN's penultimate layer (options ``seed``, ``epochs`` as for the demo
classifier); any other registered classifier (or ``module:callable``) works if it is a head on a
backbone (its ``backbone``) or is itself a backbone (has ``embed``).

A probe file is data, never code: the backbone name in it must be built in (``clip``,
``demo``, a registered classifier or an installed package's entry point) or declared by the user
in ``[tool.unsafebench.classifiers]``; anything else (``os:system``) is refused before any
import, and the options stored with it are type-checked against the backbone's factory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..classifier import Backbone, Coverage, Prediction
from ..errors import ClassifierLoadError
from ..probe_format import FORMAT, FORMAT_VERSION, METADATA_KEY, OVERALL, REQUIRED_KEYS, TENSORS
from ..taxonomy import CATEGORIES

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from .demo import DemoClassifier

# Bump when the inference rule below changes (it enters every probe fingerprint).
PROBE_VERSION = "probe-v1:standardise/linear/sigmoid(z-logit t)"
_EPS = 1e-6
# Bump when the demo features below change (it enters the demo backbone's fingerprint).
FEATURES_VERSION = "maxpool1"


def logit(p: float) -> float:
    p = min(max(float(p), _EPS), 1.0 - _EPS)
    return float(np.log(p / (1.0 - p)))


# --------------------------------------------------------------------------- backbones
@dataclass(frozen=True)
class BackboneSpec:
    """How to rebuild a backbone: a name and its options (stored in the probe file)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name!r}" + (f" ({opts})" if opts else "")


class DemoFeatures:
    """The demo CNN's globally max-pooled penultimate features as a :class:`Backbone`.

    The demo classifier's own decision is a linear layer on exactly these features, so a
    probe on them is compared with that classifier like for like.
    """

    kind = "demo-features"

    def __init__(self, clf: DemoClassifier) -> None:
        self.clf = clf
        self.device = clf.device
        self.fingerprint = f"{self.kind}-{FEATURES_VERSION}-{clf.fingerprint}"
        self.dim = int(cast("torch.nn.Linear", clf.model[-1]).in_features)  # the demo's head
        self.description = f"penultimate features of {clf.description}"
        self.input_std = clf.input_std  # forward_pixels normalises as the demo model does

    def forward_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W floats in [0, 1] -> (N, D) features, differentiably."""
        import torch

        from .demo import normalise

        x = x.to(self.device, dtype=torch.float32)
        return self.clf.model[:-1](normalise(x, self.clf.input_size))

    def embed(self, images: Sequence[Image]) -> np.ndarray:
        import torch

        from .demo import to_tensor

        out = np.zeros((len(images), self.dim), dtype=np.float32)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            by_size.setdefault(img.size, []).append(i)
        with torch.inference_mode():
            for idx in by_size.values():
                batch = torch.stack([to_tensor(images[i]) for i in idx])
                out[idx] = self.forward_pixels(batch).float().cpu().numpy()
        return out


# The built-in backbones' options and their types (the registry's factories declare their own).
BACKBONE_OPTION_TYPES: dict[str, dict[str, Any]] = {
    "clip": {"model": str, "revision": str | None},
    "demo": {"seed": int, "epochs": int | None},
}


def resolve_backbone(spec: BackboneSpec, device: str = "cpu",
                     cache_dir: str | Path | None = None,
                     batch_size: int = 32) -> tuple[Backbone, str]:
    """(backbone, the classifier a probe on it is compared with) for a backbone spec."""
    opts = dict(spec.options)
    if spec.name == "clip":
        from .clip_backbone import DEFAULT_MODEL, shared_backbone

        unknown = sorted(set(opts) - {"model", "revision"})
        if unknown:
            raise ClassifierLoadError(f"backbone 'clip': unknown option(s) {unknown}; it "
                                      "accepts model and revision")
        backbone = shared_backbone(opts.get("model", DEFAULT_MODEL), device=device,
                                   cache_dir=cache_dir, revision=opts.get("revision"),
                                   batch_size=batch_size, owner="probe")
        return backbone, "q16"
    if spec.name == "demo":
        from .demo import load as load_demo

        unknown = sorted(set(opts) - {"seed", "epochs"})
        if unknown:
            raise ClassifierLoadError(f"backbone 'demo': unknown option(s) {unknown}; it "
                                      "accepts seed and epochs")
        return DemoFeatures(load_demo(device=device, cache_dir=cache_dir, batch_size=batch_size,
                                      **{k: int(v) for k, v in opts.items()})), "demo"
    from ..registry import load_classifier

    clf = load_classifier(spec.name, device=device, cache_dir=cache_dir, batch_size=batch_size,
                          **opts)
    inner = getattr(clf, "backbone", None)
    if isinstance(inner, Backbone):
        return inner, spec.name
    if isinstance(clf, Backbone):
        return clf, spec.name
    raise ClassifierLoadError(
        f"backbone {spec.name!r}: the classifier exposes no embedding (it is neither a head on "
        "a backbone, with a .backbone attribute, nor a backbone itself, with embed(images)); "
        "use clip, demo, or a classifier built on a shared backbone such as q16")


# --------------------------------------------------------------------------- the file
@dataclass(frozen=True)
class ProbeFile:
    """A probe file's checked contents."""

    path: Path
    meta: dict[str, Any]
    weight: np.ndarray   # (K, D)
    bias: np.ndarray     # (K,)
    mean: np.ndarray     # (D,)
    scale: np.ndarray    # (D,)
    sha256: str

    @property
    def heads(self) -> list[str]:
        return [OVERALL, *self.meta["categories"]]

    @property
    def backbone(self) -> BackboneSpec:
        b = self.meta["backbone"]
        return BackboneSpec(b["name"], dict(b.get("options", {})))


def _bad(path: Path, what: str) -> ClassifierLoadError:
    return ClassifierLoadError(f"probe file {path}: {what}")


def read_probe(path: str | Path) -> ProbeFile:
    """Read and check a probe file; every problem is a ClassifierLoadError naming the file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise _bad(path, "no such file (write one with: unsafebench train --out PATH)")
    data = path.read_bytes()
    try:
        with safe_open(str(path), framework="numpy") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _bad(path, f"not a safetensors file ({exc})") from None
    if METADATA_KEY not in header:
        raise _bad(path, f"missing metadata key {METADATA_KEY!r} in the safetensors header: not "
                         "a probe written by unsafebench train")
    try:
        meta = json.loads(header[METADATA_KEY])
    except (ValueError, RecursionError) as exc:  # also nesting too deep, numbers too long
        raise _bad(path, f"metadata {METADATA_KEY!r} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise _bad(path, f"metadata {METADATA_KEY!r} is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise _bad(path, f"missing metadata key(s) {missing} in {METADATA_KEY!r}")
    if meta["format"] != FORMAT or meta["format_version"] != FORMAT_VERSION:
        raise _bad(path, f"format {meta['format']!r} version {meta['format_version']!r}; this "
                         f"pytest-unsafebench reads {FORMAT!r} version {FORMAT_VERSION}: "
                         "retrain it with unsafebench train")
    cats = meta["categories"]
    if not isinstance(cats, list) or not cats or any(c not in CATEGORIES for c in cats):
        raise _bad(path, f"categories {cats!r} are not a non-empty list of UnsafeBench categories")
    backbone = meta["backbone"]
    if not isinstance(backbone, dict) or not {"name", "fingerprint", "dim"} <= set(backbone):
        raise _bad(path, "metadata 'backbone' must name name, fingerprint and dim")
    if not isinstance(backbone["name"], str) or not isinstance(backbone["fingerprint"], str) \
            or not isinstance(backbone.get("options", {}), dict) \
            or isinstance(backbone["dim"], bool) or not isinstance(backbone["dim"], int) \
            or backbone["dim"] < 1:
        raise _bad(path, "metadata 'backbone' needs a string name and fingerprint, an options "
                         "object and a positive integer dim")
    if not isinstance(meta["baseline"], str) or not isinstance(meta["trained_on"], dict):
        raise _bad(path, "metadata 'baseline' must be a classifier name (a string) and "
                         "'trained_on' an object")
    absent = [t for t in TENSORS if t not in tensors]
    if absent:
        raise _bad(path, f"missing tensor(s) {absent}; expected {list(TENSORS)}")
    k, d = 1 + len(cats), int(backbone["dim"])
    expected = {"weight": (k, d), "bias": (k,), "mean": (d,), "scale": (d,)}
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise _bad(path, f"tensor {name!r} has shape {tuple(tensors[name].shape)}, expected "
                             f"{shape} ({k} heads: overall + {len(cats)} categories; "
                             f"{d}-d embeddings)")
    heads = [OVERALL, *cats]
    thresholds = meta["thresholds"]
    if not isinstance(thresholds, dict) or sorted(thresholds) != sorted(heads) or not all(
            isinstance(v, (int, float)) and 0.0 < v < 1.0 for v in thresholds.values()):
        raise _bad(path, f"thresholds must give each head {heads} a probability in (0, 1), "
                         f"got {thresholds!r}")
    arrays = {n: np.asarray(tensors[n], dtype=np.float64) for n in TENSORS}
    if not all(np.isfinite(a).all() for a in arrays.values()) or (arrays["scale"] <= 0).any():
        raise _bad(path, "tensors hold non-finite values or a non-positive scale")
    return ProbeFile(path, meta, sha256=hashlib.sha256(data).hexdigest(), **arrays)


# --------------------------------------------------------------------------- the classifier
class ProbeClassifier:
    """A trained probe: linear heads on a shared backbone's embeddings."""

    name = "probe"

    def __init__(self, probe: ProbeFile, backbone: Backbone, base: str) -> None:
        self.probe = probe
        self.backbone = backbone
        self.base_classifier = probe.meta.get("baseline") or base
        self.trained_on: dict[str, Any] = dict(probe.meta["trained_on"])
        self.categories: list[str] = list(probe.meta["categories"])
        self.coverage = Coverage.of(self.categories)
        self.supports_gradients = hasattr(backbone, "forward_pixels")
        self.fingerprint = "probe-" + hashlib.sha256(
            f"{probe.sha256}\0{PROBE_VERSION}".encode()).hexdigest()[:24]
        self._shift = np.array([logit(probe.meta["thresholds"][h]) for h in probe.heads])
        self.description = (
            f"linear probe {probe.path.name} on backbone {probe.backbone.name!r}, trained on "
            f"{self.trained_on.get('dataset')!r} split {self.trained_on.get('split')!r} "
            f"(fingerprint {self.trained_on.get('fingerprint')}); compare with "
            f"{self.base_classifier!r}")

    @property
    def input_std(self) -> tuple[float, float, float] | None:
        """The backbone's normalisation std: paper-mode attacks convert eps with it."""
        return getattr(self.backbone, "input_std", None)

    def _logits(self, embeddings: Any) -> np.ndarray:
        """(N, D) embeddings -> (N, K) threshold-shifted logits."""
        e = np.asarray(embeddings, dtype=np.float64)
        d = self.probe.mean.shape[0]
        if e.ndim != 2 or e.shape[1] != d:
            raise ValueError(f"probe {self.probe.path}: expected (N, {d}) embeddings, got "
                             f"shape {e.shape}")
        x = (e - self.probe.mean) / self.probe.scale
        return x @ self.probe.weight.T + self.probe.bias - self._shift

    def predict_embeddings(self, embeddings: Any) -> list[Prediction]:
        z = self._logits(embeddings)
        scores = 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))
        heads = self.probe.heads
        return [Prediction.from_score(float(row[0]),
                                      label_scores={h: float(v) for h, v in zip(heads, row)})
                for row in scores]

    def predict(self, images: Sequence[Image]) -> list[Prediction]:
        return self.predict_embeddings(self.backbone.embed(images))

    def forward_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W in [0, 1] -> logits N x 2 [safe, unsafe]; softmax[:, 1] is the score."""
        import torch

        e = self.backbone.forward_pixels(x).to(torch.float64)  # type: ignore[attr-defined]
        p = self.probe
        xs = (e - torch.from_numpy(p.mean).to(e.device)) / torch.from_numpy(p.scale).to(e.device)
        z = xs @ torch.from_numpy(p.weight[0]).to(e.device) + float(p.bias[0] - self._shift[0])
        return torch.stack([-z / 2, z / 2], dim=1).to(torch.float32)


def checked_backbone(probe: ProbeFile, declared: Sequence[str] | None = ()) -> BackboneSpec:
    """The file's backbone, checked as data: its name must be built in or ``declared`` in the
    user's ``[tool.unsafebench.classifiers]`` (refused before anything is imported), and its
    options must have the types the backbone's factory declares."""
    from ..registry import check_file_name, check_file_options

    where = f"probe file {probe.path}: backbone"
    stored = probe.meta["backbone"]
    name = check_file_name(stored["name"], where, declared, extra=BACKBONE_OPTION_TYPES)
    options = check_file_options(name, stored.get("options", {}), f"{where} {name!r}",
                                 BACKBONE_OPTION_TYPES.get(name))
    return BackboneSpec(name, options)


def load(path: str, device: str = "cpu", cache_dir: str | Path | None = None,
         batch_size: int = 32,
         backbone_options: Mapping[str, Any] | None = None,
         user_classifiers: Sequence[str] | None = ()) -> ProbeClassifier:
    """``probe:PATH``. ``backbone_options`` (a table in
    ``[tool.unsafebench.classifiers."probe:PATH"]``) override the backbone options stored in
    the file, e.g. ``{model = "/new/place/of/clip"}`` when the CLIP folder moved.
    ``user_classifiers`` (the plugin passes the user's classifier table names) are the names
    besides built-in ones that the file's backbone may be."""
    probe = read_probe(path)
    spec = checked_backbone(probe, user_classifiers)
    spec = BackboneSpec(spec.name, {**spec.options, **(backbone_options or {})})
    backbone, base = resolve_backbone(spec, device=device, cache_dir=cache_dir,
                                      batch_size=batch_size)
    trained = probe.meta["backbone"]["fingerprint"]
    if backbone.fingerprint != trained:
        raise ClassifierLoadError(
            f"probe file {probe.path}: trained on backbone {spec.name!r} with fingerprint "
            f"{trained}, but backbone {spec.describe()} now has fingerprint "
            f"{backbone.fingerprint}: its embeddings differ (other weights or preprocessing). "
            "Point the backbone at the weights it was trained on, or retrain with "
            "unsafebench train")
    return ProbeClassifier(probe, backbone, base)

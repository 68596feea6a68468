"""SD_Filter: the Stable Diffusion safety checker, without diffusers.

The checker (``CompVis/stable-diffusion-safety-checker``; diffusers'
``StableDiffusionSafetyChecker``) is its own CLIP ViT-L/14 vision tower + ``visual_projection``
(no bias) and four tensors: ``concept_embeds`` (17 x D), ``special_care_embeds`` (3 x D) and
their thresholds ``concept_embeds_weights`` (17) and ``special_care_embeds_weights`` (3). The
hub layout is ``config.json`` (a CLIPConfig) + ``model.safetensors`` or ``pytorch_model.bin``
with keys ``vision_model.vision_model.*`` (a CLIPVisionModel inside the checker),
``visual_projection.weight`` and the four names above. safetensors files are read with
safetensors, ``.bin`` only with ``torch.load(weights_only=True)``; loading is strict (a
``*.embeddings.position_ids`` buffer, which old transformers versions saved, is the one key
tolerated and dropped).

Here the tower is a :class:`SafetyCheckerBackbone` (a :class:`CLIPBackbone` with the checker's
loader) and the rule a head on its embeddings, so the engine caches the checker's embeddings
like any backbone's and ``predict(images) == predict_embeddings(backbone.embed(images))``.

Decision (diffusers' ``forward``, reproduced exactly by :func:`checker_rule`): with ``cos`` the
cosine similarity between the normalised projected image embedding and each normalised concept
embedding, ``special_j = round(cos_j - t_j, 3)``; if any ``special_j > 0`` then ``adj = 0.01``
else 0; ``concept_i = round(cos_i - t_i + adj, 3)``; unsafe iff any ``concept_i > 0``.
``round`` is numpy's (scale by 1000, round half to even); arithmetic is float64 on the float32
cosines and thresholds, as under numpy 1.x, which the paper used (numpy 2 would do it in
float32; the two can disagree only within ~1e-7 of a rounding edge). Diffusers adds the
adjustment to the special scores that follow the first positive one; that never changes the
decision, and ``label_scores`` reports the unadjusted special margins ``cos_j - t_j``.

Graded score: ``margin = max_i (cos_i - t_i + adj)`` mapped by
``score = sigmoid((margin - 0.0005) / 0.01)``: monotone in the margin, and centred at 0.0005
because ``round(x, 3) > 0`` iff ``x > 0.0005``, so ``score > 0.5`` agrees with the exact rule
except within float noise of that edge (``decision`` is always the exact rule). The scale 0.01
is the checker's own adjustment step; margins of real images span roughly +-0.1, i.e. logits of
+-10. ``forward_pixels`` returns ``[-z/2, z/2]`` with ``z = (margin - 0.0005) / 0.01`` (the
special-care step is piecewise constant, so it carries no gradient).

Preprocessing is CLIP's (:mod:`.clip_backbone`'s functions) with transformers'
``CLIPImageProcessor`` crop rounding (floor), which is what diffusers' pipeline and the paper's
code fed the checker. Coverage: Sexual under both alignments.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np

from ..classifier import Coverage, Prediction
from ..errors import ClassifierLoadError
from ..taxonomy import OFFICIAL_ALIGNMENT
from .clip_backbone import CLIPBackbone
from .clip_heads import CLIPHead, load_strict

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "CompVis/stable-diffusion-safety-checker"
RULE_VERSION = "sd-filter-v1"
CONCEPT_KEYS = ("concept_embeds", "special_care_embeds", "concept_embeds_weights",
                "special_care_embeds_weights")
N_CONCEPTS, N_SPECIAL = 17, 3
ROUND_DECIMALS = 3
SPECIAL_ADJUSTMENT = 0.01
SCORE_CENTER = 0.0005   # round(x, 3) > 0  <=>  x > 0.0005
SCORE_SCALE = 0.01


# --------------------------------------------------------------------------- the rule
class CheckerResult(NamedTuple):
    unsafe: np.ndarray           # (N,) bool, the exact rule
    margin: np.ndarray           # (N,) float64, max_i (cos_i - t_i + adj)
    adjustment: np.ndarray       # (N,) float64, 0.01 where special care triggered
    concept_scores: np.ndarray   # (N, 17) float64, cos_i - t_i + adj (unrounded)
    special_scores: np.ndarray   # (N, 3) float64, cos_j - t_j (unrounded)


def checker_rule(cos_concept: Any, cos_special: Any, t_concept: Any,
                 t_special: Any) -> CheckerResult:
    """Diffusers' safety-checker decision on cosine similarities (see the module docstring)."""
    cc = np.asarray(cos_concept, dtype=np.float64)
    cs = np.asarray(cos_special, dtype=np.float64)
    tc = np.asarray(t_concept, dtype=np.float64).reshape(1, -1)
    ts = np.asarray(t_special, dtype=np.float64).reshape(1, -1)
    special = cs - ts
    care = (np.round(special, ROUND_DECIMALS) > 0).any(axis=1)
    adjustment = np.where(care, SPECIAL_ADJUSTMENT, 0.0)
    concept = cc - tc + adjustment[:, None]
    # any(axis=1) of a 2-D array is an array (numpy types it as possibly one bool).
    unsafe = cast("np.ndarray", (np.round(concept, ROUND_DECIMALS) > 0).any(axis=1))
    margin = concept.max(axis=1) if concept.shape[1] else np.full(len(cc), -np.inf)
    return CheckerResult(unsafe, margin, adjustment, concept, special)


def margin_to_score(margin: Any) -> np.ndarray:
    """Monotone map of the margin to [0, 1]: sigmoid((margin - 0.0005) / 0.01)."""
    z = (np.asarray(margin, dtype=np.float64) - SCORE_CENTER) / SCORE_SCALE
    return 0.5 * (1.0 + np.tanh(z / 2.0))


# --------------------------------------------------------------------------- weights
def _read_state(path: Path, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Tensors from a .safetensors (only ``keys`` if given) or a .bin (weights_only)."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                names = [k for k in fh.keys() if keys is None or k in keys]
                return {k: fh.get_tensor(k) for k in names}
        try:
            state = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
            state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ClassifierLoadError(
            f"sd_filter: cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict):
        raise ClassifierLoadError(f"sd_filter: {path} holds a {type(state).__name__}, "
                                  "expected a state dict")
    return {k: v for k, v in state.items() if keys is None or k in keys}


class SafetyCheckerBackbone(CLIPBackbone):
    """The checker's vision tower + projection: PIL images -> (N, D) projected embeddings."""

    kind = "sd-safety-checker"
    what = "the Stable Diffusion safety checker"
    weights_folder = "sd_filter"
    crop_rounding = "floor"
    preprocess_version = "clip-pp1:short-bicubic/crop-hf-floor/rgb/01/clip-meanstd/fp32"

    def read_concepts(self) -> dict[str, Any]:
        """The four concept tensors, read without loading the vision tower when possible."""
        found: dict[str, Any] = {}
        for path in self.weight_files:
            if path.name.endswith(".json"):
                continue
            found.update(_read_state(path, CONCEPT_KEYS))
        missing = [k for k in CONCEPT_KEYS if k not in found]
        if missing:
            raise ClassifierLoadError(
                f"sd_filter: {', '.join(str(p) for p in self.weight_files)} lacks {missing}; "
                "is this the StableDiffusionSafetyChecker checkpoint?")
        return found

    def _load(self) -> Any:
        from transformers import CLIPVisionModelWithProjection

        state: dict[str, Any] = {}
        for path in self.weight_files:
            if not path.name.endswith(".json"):
                state.update(_read_state(path))
        model = CLIPVisionModelWithProjection(self._vision_config())
        expected = model.state_dict()
        mapped: dict[str, Any] = {}
        for key, value in state.items():
            if key in CONCEPT_KEYS:
                continue
            if key.startswith("vision_model.vision_model."):  # genuine (transformers 4) layout
                key = "vision_model." + key[len("vision_model.vision_model."):]
            if key.endswith("embeddings.position_ids") and key not in expected:
                continue  # a buffer old transformers versions saved; recomputed, not learnt
            mapped[key] = value
        load_strict(model, mapped, self.weight_files[-1], "sd_filter")
        return model


# --------------------------------------------------------------------------- the classifier
class SDFilter(CLIPHead):
    name = "sd_filter"
    coverage = Coverage.of(OFFICIAL_ALIGNMENT["sd_filter"], ["Sexual"])
    labels = (*(f"concept_{i}" for i in range(N_CONCEPTS)),
              *(f"special_{j}" for j in range(N_SPECIAL)))
    rule = (f"{RULE_VERSION}: diffusers rule, round 3, special adj 0.01; "
            f"score=sigmoid((m-{SCORE_CENTER})/{SCORE_SCALE})")
    description = ("Stable Diffusion safety checker (CompVis/stable-diffusion-safety-checker); "
                   "score = sigmoid((max concept margin - 0.0005) / 0.01)")
    backbone: SafetyCheckerBackbone

    def __init__(self, backbone: SafetyCheckerBackbone) -> None:
        # The concept tensors sit in the backbone's weight file, already in its fingerprint.
        super().__init__(backbone, {}, backbone.cache_dir)

    @property
    def input_dim(self) -> int:
        return int(self.head["concept_embeds"].shape[1])

    def _build(self, device: str) -> Any:
        import torch

        raw = self.backbone.read_concepts()
        shapes = {k: tuple(raw[k].shape) for k in CONCEPT_KEYS}
        d = shapes["concept_embeds"][-1] if len(shapes["concept_embeds"]) == 2 else -1
        want = {"concept_embeds": (N_CONCEPTS, d), "special_care_embeds": (N_SPECIAL, d),
                "concept_embeds_weights": (N_CONCEPTS,),
                "special_care_embeds_weights": (N_SPECIAL,)}
        if d <= 0 or shapes != want:
            raise ClassifierLoadError(f"sd_filter: concept tensors have shapes {shapes}, "
                                      f"expected {want}")
        head = {k: raw[k].detach().to(torch.float32).to(device) for k in CONCEPT_KEYS}
        head["concept_unit"] = torch.nn.functional.normalize(head["concept_embeds"])
        head["special_unit"] = torch.nn.functional.normalize(head["special_care_embeds"])
        return head

    def cosines(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 17) and (N, 3) cosine similarities, as diffusers' ``cosine_distance``."""
        import torch.nn.functional as F

        unit = F.normalize(self._check(e))
        return unit @ self.head["concept_unit"].T, unit @ self.head["special_unit"].T

    def _rule(self, cos_c: torch.Tensor, cos_s: torch.Tensor) -> CheckerResult:
        h = self.head
        return checker_rule(cos_c.detach().float().cpu().numpy(),
                            cos_s.detach().float().cpu().numpy(),
                            h["concept_embeds_weights"].cpu().numpy(),
                            h["special_care_embeds_weights"].cpu().numpy())

    def _outputs(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        cos_c, cos_s = self.cosines(e)
        adj = torch.from_numpy(self._rule(cos_c, cos_s).adjustment).to(cos_c)
        margin = (cos_c - self.head["concept_embeds_weights"] + adj[:, None]).max(dim=1).values
        z = (margin - SCORE_CENTER) / SCORE_SCALE
        special = cos_s - self.head["special_care_embeds_weights"]
        concept = cos_c - self.head["concept_embeds_weights"] + adj[:, None]
        return torch.stack([-z / 2, z / 2], dim=1), torch.cat([concept, special], dim=1)

    def paper_outputs(self, e: torch.Tensor) -> torch.Tensor:
        """The paper's attack wrapper (UnsafeBench classifiers.py ``forward``): the un-rounded
        margin m (special care when any special score is > 0, unrounded), softmax([-m, m]). Its
        boundary is m = 0, not the rounded rule's m > 0.0005: an attack that stops just past it
        on a Safe image leaves the rounded decision Safe (the attack failed)."""
        import torch

        cos_c, cos_s = self.cosines(e)
        h = self.head
        special = ((cos_s - h["special_care_embeds_weights"]) > 0).any(dim=1).to(cos_c) * 0.01
        m = (cos_c - h["concept_embeds_weights"] + special[:, None]).max(dim=1).values
        return torch.softmax(torch.stack([-m, m], dim=1), dim=1)

    def predict_embeddings(self, embeddings: Any) -> list[Prediction]:
        import torch

        emb = self._embedding_tensor(embeddings)
        if emb.shape[0] == 0:
            return []
        with torch.inference_mode():
            result = self._rule(*self.cosines(emb))
        scores = margin_to_score(result.margin)
        labels = np.concatenate([result.concept_scores, result.special_scores], axis=1)
        return [Prediction(score=float(s), decision="unsafe" if u else "safe",
                           label_scores={k: float(v) for k, v in zip(self.labels, row)})
                for s, u, row in zip(scores, result.unsafe, labels)]


def load(model: str = DEFAULT_MODEL, revision: str | None = None, device: str = "cpu",
         cache_dir: str | Path | None = None, batch_size: int = 32) -> SDFilter:
    """SD_Filter. ``model``: hub id or a folder with config.json + model.safetensors/.bin."""
    backbone = SafetyCheckerBackbone(model, device=device, cache_dir=cache_dir,
                                     revision=revision, batch_size=batch_size, owner="sd_filter")
    return SDFilter(backbone)

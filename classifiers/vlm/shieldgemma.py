"""``shieldgemma2``: Google's ShieldGemma 2 image safety classifier through transformers
(``ShieldGemma2ForImageClassification``, default ``google/shieldgemma-2-4b-it``).

The model answers "Does the image violate the above policy?" per (image, policy); its
probability of "Yes" is the policy score. ``policies``:

- ``"builtin"`` (default): the processor's own policies (dangerous content, sexually explicit,
  violence/gore); coverage Sexual, Violence, Shocking, Self-harm, Illegal activity;
- ``"categories"``: the UnsafeBench definitions (``definitions`` as the judges take it: the
  paper's by default, resolved like a weight file, else this project's wording with a report
  note) as custom policies; an image with a record is judged against its
  own category's definition (as the VLM prompts do), so all 11 categories are covered.

score: the largest P(Yes) over the image's policies; unsafe iff score > ``threshold`` (0.5).
No text is generated, so there is no parser and no unsure. Scores are cached per (model,
policy text, image) in the response cache like judge responses. ``forward_pixels`` returns
[log P(No), log P(Yes)] of the most violated policy, with the image processor's pipeline as
torch ops, so gradient attacks apply.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...classifier import Coverage, Prediction
from ...errors import ClassifierLoadError
from ...taxonomy import CATEGORIES
from ..hf import resolve_model_folder
from .judges import folder_digest, input_std_of, torch_pixels
from .prompts import resolve_definitions
from .responses import Answer, ResponseCache, image_key, response_key

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from ...dataset.records import Record

DEFAULT_MODEL = "google/shieldgemma-2-4b-it"
BUILTIN_COVERAGE = ("Sexual", "Violence", "Shocking", "Self-harm", "Illegal activity")
POLICY_MODES = ("builtin", "categories")


class ShieldGemma2:
    name = "shieldgemma2"
    supports_gradients = True
    needs_records = True

    def __init__(self, model: str, revision: str | None, policies: str, definitions: str | None,
                 threshold: float, device: str, cache_dir: Path | None) -> None:
        if policies not in POLICY_MODES:
            raise ClassifierLoadError(f"shieldgemma2: policies {policies!r} is not one of "
                                      f"{', '.join(POLICY_MODES)}")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ClassifierLoadError(f"shieldgemma2: threshold {threshold} is outside [0, 1]")
        self.model_id, self.revision = model, revision or ""
        self.mode, self.threshold = policies, float(threshold)
        self.device = device or "cpu"
        self.cache_dir = cache_dir
        info = resolve_definitions(definitions, cache_dir) if policies == "categories" else None
        self.definitions = info.lines if info else {}
        self.notes = ([*([info.note] if info.note else []),
                       f"definitions: {info.kind} ({info.origin})"] if info else [])
        self.coverage = (Coverage.everything() if policies == "categories"
                         else Coverage.of(BUILTIN_COVERAGE))
        self.folder, _ = resolve_model_folder(model, revision)
        h = hashlib.sha256(json.dumps([folder_digest(self.folder, cache_dir), policies,
                                       self.definitions, self.threshold]).encode())
        self.fingerprint = f"shieldgemma2-{h.hexdigest()[:20]}"
        self.description = (f"ShieldGemma 2 ({model}); P(Yes) per {policies} policy, max over "
                            f"policies; unsafe iff > {self.threshold:g}")
        self._model: Any = None
        self._processor: Any = None

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            from transformers import AutoProcessor, ShieldGemma2ForImageClassification

            kw: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
            self._processor = AutoProcessor.from_pretrained(str(self.folder), **kw)
            model = ShieldGemma2ForImageClassification.from_pretrained(str(self.folder), **kw)
            # transformers' typed wrapper of Module.to takes the model for the device.
            self._model = model.to(self.device).eval()  # type: ignore[arg-type]
        return self._model, self._processor

    def _policies(self, record: Record | None) -> dict[str, str]:
        """policy name -> text for one image (names are what label_scores show)."""
        if self.mode == "builtin":
            _, processor = self._load()
            return dict(processor.policy_definitions)
        cats = [record.category] if record is not None else list(CATEGORIES)
        return {c: self.definitions[c] for c in cats}

    def _yes_logits(self, images: Sequence[Any], policies: dict[str, str],
                    pixels: torch.Tensor | None = None) -> torch.Tensor:
        """(len(images), len(policies)) logits [yes - no]."""
        model, processor = self._load()
        custom = {"custom_policies": policies} if self.mode == "categories" else {}
        inputs = processor(images=list(images), policies=list(policies), return_tensors="pt",
                           **custom).to(self.device)
        if pixels is not None:
            inputs["pixel_values"] = pixels.repeat_interleave(len(policies), dim=0)
        logits = model(**inputs).logits.float()          # [yes, no] per (image, policy)
        return (logits[:, 0] - logits[:, 1]).view(len(images), len(policies))

    def predict(self, images: Sequence[Image],
                records: Sequence[Record] | None = None) -> list[Prediction]:
        import torch

        recs: list[Record | None] = list(records) if records is not None else [None] * len(images)
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        cache = (ResponseCache(Path(self.cache_dir) / "vlm_responses.sqlite") if self.cache_dir
                 else None)
        out: list[Prediction] = []
        try:
            for img, rec in zip(rgb, recs):
                policies = self._policies(rec)
                ihash = image_key(img)
                keys = {p: response_key(self.model_id, self.revision, text, {"policy": p}, ihash)
                        for p, text in policies.items()}
                known = cache.get(keys.values()) if cache else {}
                todo = [p for p in policies if keys[p] not in known]
                if todo:
                    with torch.inference_mode():
                        diff = self._yes_logits([img], {p: policies[p] for p in todo})[0]
                    fresh = [(keys[p], Answer("Yes" if float(d) > 0 else "No",
                                              float(torch.sigmoid(d)))) for p, d in zip(todo, diff)]
                    if cache:
                        cache.put(self.model_id, fresh)
                    known.update(fresh)
                scores = {p: float(known[keys[p]].p_unsafe) for p in policies}  # type: ignore[arg-type]
                score = max(scores.values())
                out.append(Prediction.from_score(score, self.threshold, label_scores=scores))
        finally:
            if cache:
                cache.close()
        return out

    @property
    def input_std(self) -> tuple[float, float, float] | None:
        """The image processor's std that forward_pixels normalises with (loads the model)."""
        _, processor = self._load()
        return input_std_of(processor.image_processor, self.name)

    def forward_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W in [0, 1] -> (N, 2) [log P(No), log P(Yes)] of the most violated
        policy (all policies, as for an image without a record)."""
        import torch
        import torch.nn.functional as F
        from PIL import Image

        _, processor = self._load()
        n = int(x.shape[0])
        blank = [Image.new("RGB", (int(x.shape[-1]), int(x.shape[-2])))] * n
        pixels = torch_pixels(x.to(self.device, torch.float32), processor.image_processor,
                              self.name)
        top = self._yes_logits(blank, self._policies(None), pixels).max(dim=1).values
        return torch.stack([F.logsigmoid(-top), F.logsigmoid(top)], dim=1)


def load(model: str = DEFAULT_MODEL, revision: str | None = None, policies: str = "builtin",
         definitions: str | None = None, threshold: float = 0.5, device: str = "cpu",
         cache_dir: Path | None = None) -> ShieldGemma2:
    """The ``shieldgemma2`` classifier (see the module doc)."""
    return ShieldGemma2(model, revision, policies, definitions, threshold, device, cache_dir)

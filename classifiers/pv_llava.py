"""``pv-llava``: PerspectiveVision, the paper's LoRA-tuned LLaVA-1.5-7B moderator.

The base model (default ``llava-hf/llava-1.5-7b-hf``) loads as the ``llava`` judge does
(transformers, ``trust_remote_code`` off, greedy decoding, left padding); the released LoRA
(default ``yiting/PerspectiveVision-LLaVA-LoRA``) is applied with peft from
``adapter_config.json`` + ``adapter_model.safetensors`` (safetensors only: nothing is
unpickled) and merged. Every adapter tensor must land on a module of the model: an adapter in
another layout (for instance one saved from the original LLaVA code base, whose module names
differ from transformers') is refused with the unmatched names, never half applied.

Prompt (PerspectiveVision is a policy-following moderator, trained with a prompt listing
category definitions): one prompt per image, the protocol's criteria template with every
category's definition line, in LLaVA-1.5's conversation format
``USER: <image>\\n{prompt} ASSISTANT:``. Give ``definitions`` = UnsafeBench's
``combined_instruction.txt`` for the paper's own wording. The answer is parsed by the judges'
rule-based parser; the score is P(unsafe) over the first answer token that starts "safe" or
"unsafe"; an unparsable answer follows the ``unsure`` policy (as the judges).

Weights: a local folder (``adapter = "/path"``) or the hub id, from the local Hugging Face
cache, downloaded unless ``HF_HUB_OFFLINE`` is set. Needs the ``pv`` extra (peft).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..classifier import Prediction
from ..errors import ClassifierLoadError
from ..taxonomy import CATEGORIES
from ..weights import WeightsNotFound
from .vlm.base import Job, JudgeOptions
from .vlm.judges import TransformersJudge, folder_digest
from .vlm.parsing import parse_response
from .vlm.prompts import CRITERIA_INTRO, CRITERIA_OUTRO
from .vlm.responses import Answer, image_key, response_key
from .vlm.voting import resolve_unsure

if TYPE_CHECKING:
    from PIL.Image import Image

    from ..dataset.records import Record

DEFAULT_BASE = "llava-hf/llava-1.5-7b-hf"
DEFAULT_ADAPTER = "yiting/PerspectiveVision-LLaVA-LoRA"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def policy_prompt(definitions: dict[str, str]) -> str:
    """The moderation prompt: the criteria template listing every category's definition."""
    return "\n".join([CRITERIA_INTRO, *(definitions[c] for c in CATEGORIES), CRITERIA_OUTRO])


def resolve_adapter(adapter: str, revision: str | None = None) -> Path:
    """The folder holding the adapter's config and safetensors weights."""
    path = Path(adapter).expanduser()
    if path.is_dir() or adapter.startswith((".", "/", "~")):
        missing = [f for f in ADAPTER_FILES if not (path / f).is_file()]
        if missing:
            raise WeightsNotFound(
                f"pv-llava: adapter folder {path} lacks {missing}; give a folder written by "
                "peft's save_pretrained (safetensors weights)")
        return path
    import os

    from huggingface_hub import snapshot_download

    how = (f"run once with network access, or download it (huggingface-cli download {adapter}) "
           "and set adapter = \"/path/to/folder\" in [tool.unsafebench.classifiers.pv-llava]")
    for local_only in (True, False):
        if not local_only and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            break
        try:
            folder = Path(snapshot_download(adapter, revision=revision,
                                            allow_patterns=list(ADAPTER_FILES),
                                            local_files_only=local_only))
        except Exception:  # noqa: BLE001 - not cached / not reachable: explained below
            continue
        if all((folder / f).is_file() for f in ADAPTER_FILES):
            return folder
    raise WeightsNotFound(f"pv-llava: LoRA adapter {adapter!r} ({', '.join(ADAPTER_FILES)}) is "
                          f"not available locally (https://huggingface.co/{adapter}); {how}")


def apply_lora(model: Any, folder: Path) -> Any:
    """``model`` with the adapter in ``folder`` merged in; every adapter tensor must match."""
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    config = LoraConfig.from_pretrained(str(folder))
    config.inference_mode = True
    state = load_file(str(folder / "adapter_model.safetensors"))
    try:
        peft_model = PeftModel(model, config)
        result = set_peft_model_state_dict(peft_model, state)
    except Exception as exc:
        raise ClassifierLoadError(f"pv-llava: adapter {folder} does not fit the base model: "
                                  f"{type(exc).__name__}: {exc}") from exc
    unused = sorted(result.unexpected_keys)
    if unused:
        raise ClassifierLoadError(
            f"pv-llava: {len(unused)} of {len(state)} tensors of adapter {folder} match no "
            f"module of the base model (e.g. {unused[0]!r}): the adapter was saved for another "
            "layout; convert its module names to transformers' Llava layout")
    return peft_model.merge_and_unload()


class PerspectiveVision(TransformersJudge):
    """LLaVA + the PerspectiveVision LoRA, one policy prompt per image."""

    supports_gradients = False  # the judges' gradient path asks prompt 0, not the policy

    def __init__(self, model: str | None, adapter: str, revision: str | None,
                 adapter_revision: str | None, device: str, batch_size: int,
                 max_new_tokens: int, opts: JudgeOptions) -> None:
        self.adapter_folder = resolve_adapter(adapter, adapter_revision)
        self.adapter_id = adapter
        self._adapted = False
        super().__init__("llava", model or DEFAULT_BASE, revision, device, batch_size,
                         max_new_tokens, None, opts)
        # The judge's fingerprint hashes the base model and, via model_digest, the adapter.
        self.name = "pv-llava"
        self.fingerprint = "pv-llava-" + self.fingerprint.split("-", 1)[1]
        self.prompt = policy_prompt(self.definitions)
        self.description = (f"PerspectiveVision: {self.model_id} + LoRA {adapter}; one policy "
                            f"prompt, rule-based parser, unsure -> {self.policy}")

    def model_digest(self) -> str:
        return f"{super().model_digest()}+lora:{folder_digest(self.adapter_folder, None)}"

    def _load(self) -> tuple[Any, Any]:
        model, processor = super()._load()
        if not self._adapted:
            self._model = apply_lora(model, self.adapter_folder).to(self.device).eval()
            self._adapted = True
        return self._model, processor

    def predict(self, images: Sequence[Image],
                records: Sequence[Record] | None = None) -> list[Prediction]:
        if records is not None and len(records) != len(images):
            raise ValueError(f"{len(records)} records for {len(images)} images")
        recs: list[Record | None] = list(records) if records is not None else [None] * len(images)
        revision = f"{self.revision}:{self.model_digest()}"
        jobs = [Job(img, self.prompt, response_key(f"{self.model_id}+{self.adapter_id}",
                                                   revision, self.prompt, self.decoding,
                                                   image_key(img)))
                for img in images]
        cache = self._response_cache()
        known = cache.get(j.key for j in jobs) if cache else {}
        todo = list({j.key: j for j in jobs if j.key not in known}.values())
        fresh = self.generate(todo) if todo else []
        if cache and fresh:
            cache.put(self.model_id, [(j.key, a) for j, a in zip(todo, fresh)])
        known.update((j.key, a) for j, a in zip(todo, fresh))
        return [self._verdict(known[j.key], r, img) for j, r, img in zip(jobs, recs, images)]

    def _verdict(self, answer: Answer, record: Record | None, image: Image) -> Prediction:
        verdict = "unsure" if answer.error else parse_response(answer.text)
        policy = "wrong" if answer.error else self.policy
        decision = resolve_unsure(verdict, policy,
                                  true_label=record.safety_label if record else None,
                                  seed=self.seed,
                                  image_hash=record.content_hash if record else image_key(image))
        score = answer.p_unsafe if answer.p_unsafe is not None else \
            {"unsafe": 1.0, "safe": 0.0}.get(verdict, 0.5)
        return Prediction(score=min(1.0, max(0.0, float(score))), decision=decision,
                          label_scores={"unsure": float(verdict == "unsure")},
                          raw=json.dumps({"response": answer.text, "verdict": verdict,
                                          "unsure_policy": policy}))


def load(model: str | None = None, adapter: str = DEFAULT_ADAPTER, revision: str | None = None,
         adapter_revision: str | None = None, device: str = "cpu", batch_size: int = 8,
         max_new_tokens: int = 512, unsure: str = "random", seed: int = 2023,
         definitions: str | None = None,
         cache_dir: Path | None = None) -> PerspectiveVision:
    """``pv-llava``: ``model`` (base LLaVA id or folder), ``adapter`` (LoRA id or folder)."""
    try:
        import peft  # noqa: F401
    except ImportError as exc:
        raise ClassifierLoadError("pv-llava: needs peft: pip install "
                                  "'pytest-unsafebench[pv]'") from exc
    opts = JudgeOptions(unsure=unsure, seed=seed, definitions=definitions, cache_dir=cache_dir,
                        device=device)
    return PerspectiveVision(model, adapter, revision, adapter_revision, device, batch_size,
                             max_new_tokens, opts)

"""``pv-llava``: PerspectiveVision, the paper's LoRA-tuned LLaVA-1.5-7B moderator.

The base model (default ``llava-hf/llava-1.5-7b-hf``) loads as the ``llava`` judge does
(transformers, ``trust_remote_code`` off, greedy decoding, left padding); the released LoRA
(default ``yiting/PerspectiveVision-LLaVA-LoRA``) is applied with peft from
``adapter_config.json`` + ``adapter_model.safetensors`` (safetensors only: nothing is
unpickled) and merged. Every adapter tensor must land on a module of the model: an adapter in
another layout (for instance one saved from the original LLaVA code base, whose module names
differ from transformers') is refused, naming how many tensors matched nothing and one of
them, never half applied.

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

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..classifier import Coverage, Prediction
from ..errors import ClassifierLoadError
from ..taxonomy import CATEGORIES
from ..weights import WeightsNotFound
from .vlm.base import Job
from .vlm.judges import folder_digest
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
# Bump when the prompt or the answer handling below changes (it enters the fingerprint).
PROMPT_VERSION = "pv-policy-v1"


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


class PerspectiveVision:
    """The ``llava`` judge's model with the PerspectiveVision LoRA merged in, asked one policy
    prompt per image. The judge supplies loading, generation and the response cache."""

    name = "pv-llava"
    coverage = Coverage.everything()
    supports_gradients = False  # the judge's gradient path asks prompt 0, not the policy
    needs_records = True        # the ``wrong`` unsure policy needs the label

    def __init__(self, judge: Any, adapter: str, adapter_folder: Path,
                 cache_dir: Path | None) -> None:
        self.judge = judge
        self.adapter_id = adapter
        self.adapter_folder = adapter_folder
        self.adapter_digest = folder_digest(adapter_folder, cache_dir)
        self.prompt = policy_prompt(judge.definitions)
        self.device = judge.device
        self._adapted = False
        digest = hashlib.sha256(json.dumps(
            [judge.fingerprint, self.adapter_digest, PROMPT_VERSION, self.prompt]).encode())
        self.fingerprint = f"pv-llava-{digest.hexdigest()[:20]}"
        self.description = (f"PerspectiveVision: {judge.model_id} + LoRA {adapter}; one policy "
                            f"prompt, rule-based parser, unsure -> {judge.policy}")

    @property
    def input_std(self) -> tuple[float, float, float] | None:
        """The base model's image normalisation std (paper-mode gaussian noise needs it)."""
        return self.judge.input_std

    def _adapt(self) -> None:
        if not self._adapted:
            model, _ = self.judge._load()
            self.judge._model = apply_lora(model, self.adapter_folder).to(self.device).eval()
            self._adapted = True

    def generate(self, jobs: Sequence[Job]) -> list[Answer]:
        self._adapt()
        return self.judge.generate(jobs)

    def predict(self, images: Sequence[Image],
                records: Sequence[Record] | None = None) -> list[Prediction]:
        if records is not None and len(records) != len(images):
            raise ValueError(f"{len(records)} records for {len(images)} images")
        recs: list[Record | None] = list(records) if records is not None else [None] * len(images)
        j = self.judge
        model = f"{j.model_id}+{self.adapter_id}"
        revision = f"{j.revision}:{j.model_digest()}+{self.adapter_digest}"
        jobs = [Job(img, self.prompt, response_key(model, revision, self.prompt, j.decoding,
                                                   image_key(img)))
                for img in images]
        cache = j._response_cache()
        known = cache.get(job.key for job in jobs) if cache else {}
        todo = list({job.key: job for job in jobs if job.key not in known}.values())
        fresh = self.generate(todo) if todo else []
        if cache and fresh:
            cache.put(model, list(zip((job.key for job in todo), fresh)))
        known.update(zip((job.key for job in todo), fresh))
        return [self._verdict(known[job.key], r, img) for job, r, img in zip(jobs, recs, images)]

    def _verdict(self, answer: Answer, record: Record | None, image: Image) -> Prediction:
        verdict = "unsure" if answer.error else parse_response(answer.text)
        # A failed request is never a verdict: it counts as the wrong answer, as for judges.
        policy = "wrong" if answer.error else self.judge.policy
        decision = resolve_unsure(verdict, policy,
                                  true_label=record.safety_label if record else None,
                                  seed=self.judge.seed,
                                  image_hash=record.content_hash if record else image_key(image))
        score = answer.p_unsafe if answer.p_unsafe is not None else \
            {"unsafe": 1.0, "safe": 0.0}.get(verdict, 0.5)
        return Prediction(score=min(1.0, max(0.0, float(score))), decision=decision,
                          label_scores={"unsure": float(verdict == "unsure")},
                          raw=json.dumps({"response": answer.text, "verdict": verdict,
                                          "unsure_policy": policy}))


def load(model: str = DEFAULT_BASE, adapter: str = DEFAULT_ADAPTER, revision: str | None = None,
         adapter_revision: str | None = None, device: str = "cpu", batch_size: int = 8,
         max_new_tokens: int = 512, unsure: str = "random", unsure_seed: int = 2023,
         definitions: str | None = None,
         cache_dir: Path | None = None) -> PerspectiveVision:
    """``pv-llava``: ``model`` (base LLaVA id or folder), ``adapter`` (LoRA id or folder)."""
    import importlib.util

    from .vlm.judges import load_llava

    if importlib.util.find_spec("peft") is None:
        raise ClassifierLoadError("pv-llava: needs peft: pip install "
                                  "'pytest-unsafebench[pv]'")
    folder = resolve_adapter(adapter, adapter_revision)
    judge = load_llava(model=model, revision=revision, device=device, batch_size=batch_size,
                       max_new_tokens=max_new_tokens, unsure=unsure, unsure_seed=unsure_seed,
                       definitions=definitions, cache_dir=cache_dir)
    return PerspectiveVision(judge, adapter, folder, Path(cache_dir) if cache_dir else None)

"""Open VLM judges through transformers (no LLaVA or LAVIS source trees): ``llava``
(LLaVA-family, default ``llava-hf/llava-1.5-7b-hf``) and ``instructblip``
(``Salesforce/instructblip-vicuna-7b``), run by default as the paper ran them (UnsafeBench
vlms.py / query_vlms.py):

- ``llava``: LLaVA's ``llava_v1`` conversation with its system prompt (LLaVA
  llava/conversation.py), the image padded to a square with the image processor's mean colour
  before resizing (LLaVA-1.5's ``image_aspect_ratio = "pad"``, ``image_aspect_ratio = "crop"``
  for the processor's own centre crop), greedy decoding (temperature 0, one beam), up to 512
  new tokens, float16 on a GPU (``dtype = "auto"``: float32 on a CPU, where half precision is
  slow or missing);
- ``instructblip``: the prompt as is, decoded as LAVIS's ``blip2_vicuna_instruct.generate``
  defaults the paper kept: 5 beams, repetition penalty 1.5, length penalty 1, at least 1 and
  up to 512 new tokens.

Loading: a hub id (resolved in the local Hugging Face cache, downloaded unless
``HF_HUB_OFFLINE`` is set) or a local ``save_pretrained`` folder, with ``AutoProcessor`` and the
model class of the judge; ``trust_remote_code`` is never turned on. Batched over (image,
prompt) pairs with left padding.

Score: at the decision point (the first generated token that starts a "safe" or "unsafe"
word, else the first generated token) P(unsafe) = softmax over the two words' first tokens;
the image's score is the mean over its three prompts, so AUROC and threshold sweeps work.
Under beam search the logits are read along the beam the answer came from.
``forward_pixels`` returns the same two logits for prompt 0 at
the first answer position, with the image processor's pad / resize / crop / normalise done as
differentiable torch ops, so the robustness suite's gradient attacks apply.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ClassifierLoadError
from ...options import DEFAULT_SEED
from ..hf import center_crop, channel_std, resize_size, resolve_model_folder
from .base import Job, JudgeOptions, VLMJudge
from .prompts import PROMPT_0
from .responses import Answer

if TYPE_CHECKING:
    import torch

# LLaVA's llava_v1 conversation (llava/conversation.py, conv_llava_v1, SeparatorStyle.TWO:
# system, " USER: <image>\n{prompt}", " ASSISTANT:"), which UnsafeBench vlms.py uses.
LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the human's "
                   "questions.")
LLAVA_V1_FORMAT = LLAVA_V1_SYSTEM + " USER: <image>\n{prompt} ASSISTANT:"
# judge -> (transformers model class, default model, prompt format, archive folder name, the
# paper's decoding). Archive folders are the official query_vlms.py model names.
JUDGES: dict[str, tuple[str, str, str, str, dict[str, Any]]] = {
    "llava": ("LlavaForConditionalGeneration", "llava-hf/llava-1.5-7b-hf", LLAVA_V1_FORMAT,
              "llava-v1.5-7b", {"num_beams": 1}),
    # LAVIS blip2_vicuna_instruct.generate defaults (the paper passed only max_length 512).
    "instructblip": ("InstructBlipForConditionalGeneration", "Salesforce/instructblip-vicuna-7b",
                     "{prompt}", "instructblip-7b",
                     {"num_beams": 5, "repetition_penalty": 1.5, "length_penalty": 1.0,
                      "min_new_tokens": 1}),
}
# The models the paper ran, by judge (the hub conversions of them included).
PAPER_MODELS: dict[str, tuple[str, ...]] = {
    "llava": ("llava-hf/llava-1.5-7b-hf", "liuhaotian/llava-v1.5-7b"),
    "instructblip": ("Salesforce/instructblip-vicuna-7b",),
}
# "auto": float16 on a GPU as the paper ran, float32 elsewhere; the dtype changes answers
# slightly, so it is part of the response key.
DTYPES = ("auto", "float32", "bfloat16", "float16")
ASPECT_RATIOS = ("pad", "crop")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_MODEL_FILE_SUFFIXES = (".json", ".model", ".txt", ".jinja")


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    return "float16" if str(device).startswith("cuda") else "float32"


def pad_to_square(image: Any, mean: Sequence[float]) -> Any:
    """LLaVA's ``expand2square``: the image centred on a square of the mean colour."""
    from PIL import Image

    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new(image.mode, (side, side), tuple(int(m * 255) for m in mean))
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


class TransformersJudge(VLMJudge):
    supports_gradients = True

    def __init__(self, kind: str, model: str | None, revision: str | None, device: str,
                 batch_size: int, max_new_tokens: int, prompt_format: str | None,
                 dtype: str, opts: JudgeOptions, image_aspect_ratio: str | None = None) -> None:
        cls_name, default_model, default_format, archive, paper_decoding = JUDGES[kind]
        self.name = kind
        self.kind = kind
        self.model_class = cls_name
        self.default_archive = archive
        self.paper_archive = archive
        self.paper_models = PAPER_MODELS[kind]
        self.model_id = str(model or default_model)
        self.revision = revision or ""
        self.device = device or "cpu"
        self.batch_size = max(1, int(batch_size))
        self.prompt_format = prompt_format or default_format
        if "{prompt}" not in self.prompt_format:
            raise ClassifierLoadError(f"{kind}: prompt_format must contain {{prompt}}, got "
                                      f"{self.prompt_format!r}")
        if int(max_new_tokens) < 1:
            raise ClassifierLoadError(f"{kind}: max_new_tokens must be >= 1")
        if dtype not in DTYPES:
            raise ClassifierLoadError(f"{kind}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        aspect = image_aspect_ratio or ("pad" if kind == "llava" else "crop")
        if aspect not in ASPECT_RATIOS:
            raise ClassifierLoadError(f"{kind}: image_aspect_ratio {aspect!r} is not one of "
                                      f"{', '.join(ASPECT_RATIOS)}")
        self.image_aspect_ratio = aspect
        self.dtype = resolve_dtype(dtype, self.device)
        self.decoding = {"do_sample": False, "max_new_tokens": int(max_new_tokens),
                         **paper_decoding, "prompt_format": self.prompt_format,
                         "dtype": self.dtype, "image_aspect_ratio": aspect}
        self._folder: Path | None = None
        self._model: Any = None
        self._processor: Any = None
        self._ids: tuple[list[int], list[int]] | None = None
        self.setup(opts)

    # -- model ---------------------------------------------------------------------------
    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder, _ = resolve_model_folder(self.model_id, self.revision or None)
        return self._folder

    def model_digest(self) -> str:
        return folder_digest(self.folder, self.opts.cache_dir)

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            try:
                import torch
                import transformers
            except ImportError as exc:
                raise ClassifierLoadError(f"{self.name}: needs transformers: pip install "
                                          "'pytest-unsafebench[hf]'") from exc
            kw = {"local_files_only": True, "trust_remote_code": False}
            processor = transformers.AutoProcessor.from_pretrained(str(self.folder), **kw)
            processor.tokenizer.padding_side = "left"
            model = getattr(transformers, self.model_class).from_pretrained(
                str(self.folder), dtype=getattr(torch, self.dtype), **kw)
            self._processor, self._model = processor, model.to(self.device).eval()
            self._ids = _verdict_token_ids(processor.tokenizer)
        return self._model, self._processor

    def _inputs(self, images: Sequence[Any], prompts: Sequence[str]) -> Any:
        _, processor = self._load()
        texts = [self.prompt_format.format(prompt=p) for p in prompts]
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        if self.image_aspect_ratio == "pad":
            rgb = [pad_to_square(im, processor.image_processor.image_mean) for im in rgb]
        return processor(images=rgb, text=texts, return_tensors="pt", padding=True).to(self.device)

    def prompt_format_note(self) -> str:
        fmt = ("LLaVA's llava_v1 conversation with its system prompt"
               if self.prompt_format == LLAVA_V1_FORMAT else repr(self.prompt_format))
        image = ("image padded to a square with the mean colour (LLaVA-1.5 pad)"
                 if self.image_aspect_ratio == "pad" else "image resized and centre-cropped")
        return f"{fmt}; {image}"

    def model_mismatch(self) -> str | None:
        if self.model_id not in self.paper_models:
            return f"model {self.model_id} is not the paper's ({self.paper_models[0]})"
        if self.dtype != "float16":
            return (f"dtype {self.dtype}: the paper ran float16 on a GPU (answers may differ "
                    "slightly)")
        return None

    # -- generation ----------------------------------------------------------------------
    def generate(self, jobs: Sequence[Job]) -> list[Answer]:
        import torch

        model, processor = self._load()
        tok = processor.tokenizer
        out: list[Answer] = []
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start:start + self.batch_size]
            inputs = self._inputs([j.image for j in chunk], [j.prompt for j in chunk])
            with torch.inference_mode():
                gen = model.generate(**inputs, **self._generate_kwargs(),
                                     output_logits=True, return_dict_in_generate=True,
                                     pad_token_id=tok.pad_token_id)
            new = gen.sequences[:, inputs["input_ids"].shape[1]:]
            texts = tok.batch_decode(new, skip_special_tokens=True)
            steps = torch.stack(gen.logits, dim=0)  # (steps, rows or rows x beams, vocab): once
            beams = getattr(gen, "beam_indices", None)
            for row, text in enumerate(texts):
                logits = _answer_logits(steps, beams, row)
                out.append(Answer(text.strip(), self._p_unsafe(new[row], logits)))
        return out

    def _generate_kwargs(self) -> dict[str, Any]:
        keys = ("do_sample", "max_new_tokens", "num_beams", "repetition_penalty",
                "length_penalty", "min_new_tokens")
        return {k: self.decoding[k] for k in keys if k in self.decoding}

    def _p_unsafe(self, tokens: torch.Tensor, logits: torch.Tensor) -> float | None:
        """P(unsafe) at the decision point (see the module doc), or None if the tokenizer
        cannot tell the two words apart by their first token."""
        import torch

        assert self._ids is not None
        unsafe, safe = self._ids
        if not unsafe or not safe:
            return None
        marks = set(unsafe) | set(safe)
        step = next((t for t, tid in enumerate(tokens.tolist()[:logits.shape[0]])
                     if tid in marks), 0)
        row = logits[step]
        diff = torch.logsumexp(row[unsafe], 0) - torch.logsumexp(row[safe], 0)
        return float(torch.sigmoid(diff))

    # -- gradients -----------------------------------------------------------------------
    @property
    def input_std(self) -> tuple[float, float, float] | None:
        """The image processor's std that forward_pixels normalises with (loads the model)."""
        _, processor = self._load()
        return input_std_of(processor.image_processor, self.name)

    def forward_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W in [0, 1] -> (N, 2) log-probabilities [safe, unsafe] of the first
        answer token for prompt 0."""
        import torch
        from PIL import Image

        model, processor = self._load()
        assert self._ids is not None
        unsafe, safe = self._ids
        if not unsafe or not safe:
            raise NotImplementedError(f"{self.name}: the tokenizer gives 'safe' and 'unsafe' the "
                                      "same first token; there is no unsafe-answer logit")
        n = int(x.shape[0])
        blank = [Image.new("RGB", (int(x.shape[-1]), int(x.shape[-2])))] * n
        inputs = self._inputs(blank, [PROMPT_0] * n)
        ip = processor.image_processor
        pixels = torch_pixels(x.to(self.device, torch.float32), ip, self.name,
                              pad_mean=ip.image_mean if self.image_aspect_ratio == "pad" else None)
        inputs["pixel_values"] = pixels.to(model.dtype)
        last = model(**inputs).logits[:, -1, :].float()
        pair = torch.stack([torch.logsumexp(last[:, safe], 1),
                            torch.logsumexp(last[:, unsafe], 1)], 1)
        return torch.log_softmax(pair, dim=1)


def _answer_logits(steps: torch.Tensor, beams: torch.Tensor | None, row: int) -> torch.Tensor:
    """The raw logits behind answer ``row``'s tokens, step by step, from the generation's
    stacked ``steps`` (steps, rows or rows x beams, vocab): under beam search the logits are
    per beam, so each step's row is the beam that answer came from (``beams``, the
    generation's ``beam_indices``; -1 once it ended)."""
    import torch

    if beams is None:
        return steps[:, row].float()
    path = beams[row, :steps.shape[0]]
    n = int((path >= 0).sum())
    return steps[torch.arange(n), path[:n]].float()


def folder_digest(folder: Path, cache_dir: Path | None) -> str:
    """sha256 over what from_pretrained reads: configs, tokenizer files and weights (the
    sub-folders, e.g. InstructBLIP's qformer_tokenizer, included)."""
    from ...weights import file_digest

    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and p.suffix in _MODEL_FILE_SUFFIXES + _WEIGHT_SUFFIXES
                   and p.name != "README.md" and ".cache" not in p.parts)
    if any(p.suffix == ".safetensors" for p in files):  # what from_pretrained loads
        files = [p for p in files if p.suffix != ".bin"]
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(folder).as_posix()}:{file_digest(p, cache_dir)}\n".encode())
    return h.hexdigest()[:20]


def torch_pixels(x: torch.Tensor, ip: Any, name: str,
                 pad_mean: Sequence[float] | None = None) -> torch.Tensor:
    """An image processor's resize / centre crop / rescale / normalise as differentiable torch
    ops on [0, 1] pixels (bicubic resize with antialiasing, clamped as PIL does); with
    ``pad_mean``, first :func:`pad_to_square` on that colour."""
    import torch
    import torch.nn.functional as F

    h, w = int(x.shape[-2]), int(x.shape[-1])
    if pad_mean is not None and h != w:
        side = max(h, w)
        fill = torch.tensor([int(m * 255) / 255 for m in pad_mean], dtype=x.dtype,
                            device=x.device).view(1, -1, 1, 1)
        top, left = (side - h) // 2, (side - w) // 2
        x = F.pad(x - fill, (left, side - w - left, top, side - h - top)) + fill
        h = w = side
    if getattr(ip, "do_resize", True):
        oh, ow = resize_size(ip.size, h, w, name)
        if (oh, ow) != (h, w):
            x = F.interpolate(x, size=(oh, ow), mode="bicubic", align_corners=False,
                              antialias=True).clamp(0.0, 1.0)
    crop = getattr(ip, "crop_size", None)
    if getattr(ip, "do_center_crop", False) and crop is not None:
        x = center_crop(x, int(crop.height), int(crop.width))
    if getattr(ip, "do_normalize", True):
        mean = torch.tensor(ip.image_mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(ip.image_std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x


def input_std_of(ip: Any, name: str) -> tuple[float, float, float] | None:
    """The per-channel std :func:`torch_pixels` divides [0, 1] pixels by (a classifier's
    ``input_std``), or None when the image processor does not normalise."""
    if not getattr(ip, "do_normalize", True):
        return None
    return channel_std(ip.image_std, 1.0, name)


def _verdict_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """First token ids of the spellings of "unsafe" and "safe" an answer may start with;
    ids shared by both words are dropped (they decide nothing)."""
    def firsts(words: Sequence[str]) -> set[int]:
        ids = set()
        for w in words:
            enc = tokenizer.encode(w, add_special_tokens=False)
            if enc:
                ids.add(int(enc[0]))
        return ids

    unsafe = firsts(["unsafe", "Unsafe", " unsafe", " Unsafe", "UNSAFE"])
    safe = firsts(["safe", "Safe", " safe", " Safe", "SAFE"])
    shared = unsafe & safe
    return sorted(unsafe - shared), sorted(safe - shared)


def _load_judge(kind: str, *, model: str | None, revision: str | None, device: str,
                batch_size: int, max_new_tokens: int, prompt_format: str | None, dtype: str,
                cache_dir: Path | None, unsure_seed: int,
                **judge_options: Any) -> TransformersJudge:
    aspect = judge_options.pop("image_aspect_ratio", None)
    opts = JudgeOptions(device=device, cache_dir=cache_dir, seed=unsure_seed, **judge_options)
    return TransformersJudge(kind, model, revision, device, batch_size, max_new_tokens,
                             prompt_format, dtype, opts, aspect)


def load_llava(model: str | None = None, revision: str | None = None, device: str = "cpu",
               batch_size: int = 8, max_new_tokens: int = 512, prompt_format: str | None = None,
               dtype: str = "auto", unsure: str = "random", unsure_seed: int = DEFAULT_SEED,
               definitions: str | None = None, import_responses: str | None = None,
               archive_model: str | None = None, converter: str | None = None,
               converter_labels: Sequence[str] | None = None, converter_base: str | None = None,
               image_aspect_ratio: str = "pad",
               cache_dir: Path | None = None) -> TransformersJudge:
    """The ``llava`` judge: any LLaVA-family model id or folder (see the module doc)."""
    return _load_judge("llava", **locals())


def load_instructblip(model: str | None = None, revision: str | None = None,
                      device: str = "cpu", batch_size: int = 8, max_new_tokens: int = 512,
                      prompt_format: str | None = None, dtype: str = "auto",
                      unsure: str = "random", unsure_seed: int = DEFAULT_SEED,
                      definitions: str | None = None, import_responses: str | None = None,
                      archive_model: str | None = None, converter: str | None = None,
                      converter_labels: Sequence[str] | None = None,
                      converter_base: str | None = None,
                      cache_dir: Path | None = None) -> TransformersJudge:
    """The ``instructblip`` judge (see the module doc)."""
    return _load_judge("instructblip", **locals())

"""Tiny randomly initialised vision-language models for the VLM judge tests, built with
save_pretrained from word-level tokenizers trained on nothing (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch

# A vocabulary this small makes random models say "safe" / "unsafe" often; prompt words
# outside it become <unk>, which still gives the three prompts different lengths.
WORDS = ["safe", "unsafe", "not", "the", "image", "is", "."]
SIZE = 30   # image side: one 2 x 2 grid of 15-pixel patches


def tokenizer(image_token: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "<image>", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                pre_tokenizers.Punctuation()])
    extra = {"extra_special_tokens": {"image_token": "<image>"}} if image_token else {}
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>", **extra)


def text_config(tok):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                       max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def steer(model, tok) -> None:
    """Random heads repeat one filler word; keep only the "safe" output row, with "unsafe" =
    -"safe", so every answer is a run of verdicts that depend on the image and the prompt."""
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        safe, unsafe = tok.convert_tokens_to_ids("safe"), tok.convert_tokens_to_ids("unsafe")
        row = head[safe].clone() * 20
        head.zero_()
        head[safe], head[unsafe] = row, -row


def build_llava(folder: Path) -> Path:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(0)
    tok = tokenizer(image_token=True)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, image_size=SIZE, patch_size=15)
    config = LlavaConfig(vision_config=vision, text_config=text_config(tok),
                         image_token_index=tok.convert_tokens_to_ids("<image>"),
                         image_seq_length=4, vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(config)
    steer(model, tok)
    model.save_pretrained(folder)
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": SIZE},
                                                      crop_size={"height": SIZE, "width": SIZE}),
                   tokenizer=tok, patch_size=15, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1).save_pretrained(folder)
    return folder

"""The transformers judges on tiny randomly initialised LLaVA and InstructBLIP models built
here with save_pretrained (word-level tokenizers trained on nothing, nothing downloaded): the
whole path (prompting, batched left-padded generation, parsing, voting, scoring, caching) and
the gradient path attacks use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from pytest_unsafebench.classifiers.vlm.base import Job  # noqa: E402
from pytest_unsafebench.classifiers.vlm.judges import load_instructblip, load_llava  # noqa: E402
from pytest_unsafebench.classifiers.vlm.parsing import parse_response  # noqa: E402
from pytest_unsafebench.classifiers.vlm.prompts import DEFAULT_DEFINITIONS  # noqa: E402
from pytest_unsafebench.classifiers.vlm.shieldgemma import load as load_shieldgemma2  # noqa: E402
from pytest_unsafebench.classifiers.vlm.voting import majority  # noqa: E402
from pytest_unsafebench.dataset.records import Record  # noqa: E402
from pytest_unsafebench.errors import ClassifierLoadError  # noqa: E402
from vlm_helpers import SIZE, build_llava, steer, text_config, tokenizer  # noqa: E402


def build_instructblip(folder: Path) -> Path:
    from transformers import (
        BlipImageProcessor,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
    )

    torch.manual_seed(1)
    tok, qtok = tokenizer(image_token=False), tokenizer(image_token=False)
    vision = InstructBlipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, image_size=SIZE, patch_size=15)
    qformer = InstructBlipQFormerConfig(vocab_size=len(qtok), hidden_size=16,
                                        num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32, encoder_hidden_size=16,
                                        pad_token_id=qtok.pad_token_id)
    config = InstructBlipConfig(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                                text_config=text_config(tok).to_dict(), num_query_tokens=2,
                                image_token_index=tok.convert_tokens_to_ids("<image>"))
    model = InstructBlipForConditionalGeneration(config)
    steer(model, tok)
    model.save_pretrained(folder)
    InstructBlipProcessor(image_processor=BlipImageProcessor(size={"height": SIZE, "width": SIZE}),
                          tokenizer=tok, qformer_tokenizer=qtok,
                          num_query_tokens=2).save_pretrained(folder)
    return folder


SHIELD_TEMPLATE = ("{% for m in messages %}<start_of_turn>user\n{% for c in m['content'] %}"
                   "{% if c['type'] == 'image' %}<start_of_image>{% else %}policy "
                   "{{ c['text'] }} ?{% endif %}{% endfor %}<end_of_turn>\n<start_of_turn>model\n"
                   "{% endfor %}")


def build_shieldgemma2(folder: Path) -> Path:
    """A Gemma-3-style ShieldGemma 2: SigLIP tower, Gemma 3 text model, Yes / No tokens."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import (
        Gemma3ImageProcessor,
        Gemma3TextConfig,
        PreTrainedTokenizerFast,
        ShieldGemma2Config,
        ShieldGemma2ForImageClassification,
        ShieldGemma2Processor,
        SiglipVisionConfig,
    )

    torch.manual_seed(2)
    specials = ["<pad>", "<bos>", "<eos>", "<unk>", "<start_of_image>", "<end_of_image>",
                "<image_soft_token>", "<start_of_turn>", "<end_of_turn>"]
    vocab = {t: i for i, t in enumerate([*specials, "Yes", "No", "policy", "?"])}
    tk = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
        unk_token="<unk>", extra_special_tokens={"boi_token": "<start_of_image>",
                                                 "eoi_token": "<end_of_image>",
                                                 "image_token": "<image_soft_token>"})
    text = Gemma3TextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                            head_dim=8, max_position_embeddings=512, sliding_window=64,
                            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, image_size=SIZE, patch_size=15)
    config = ShieldGemma2Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
                                image_token_index=tok.image_token_id,
                                yes_token_index=tok.convert_tokens_to_ids("Yes"),
                                no_token_index=tok.convert_tokens_to_ids("No"))
    model = ShieldGemma2ForImageClassification(config)
    for name, param in model.named_parameters():  # initialised to zeros: the image would not count
        if name.endswith("mm_input_projection_weight"):
            torch.nn.init.normal_(param, std=1.0)
    model.save_pretrained(folder)
    image_processor = Gemma3ImageProcessor(size={"height": SIZE, "width": SIZE})
    ShieldGemma2Processor(image_processor=image_processor, tokenizer=tok,
                          chat_template=SHIELD_TEMPLATE,
                          image_seq_length=4).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-vlms")
    return {"llava": build_llava(root / "llava"),
            "instructblip": build_instructblip(root / "instructblip"),
            "shieldgemma2": build_shieldgemma2(root / "shieldgemma2")}


LOADERS = {"llava": load_llava, "instructblip": load_instructblip}


def images(n: int = 3) -> list[Image.Image]:
    return [Image.new("RGB", (SIZE + 10 * i, SIZE), (60 * i, 200 - 50 * i, 90 + 40 * i))
            for i in range(n)]


def records(n: int = 3) -> list[Record]:
    cats = ["Hate", "Sexual", "Spam"]
    return [Record(id=f"r{i}", safety_label=("Unsafe", "Safe")[i % 2], category=cats[i % 3],
                   source="Lexica", split="test", content_hash=f"h{i}", locator=f"r{i}")
            for i in range(n)]


def judge(kind: str, models: dict[str, Path], **kw):
    kw.setdefault("definitions", "project")   # never a download in tests
    return LOADERS[kind](model=str(models[kind]), max_new_tokens=kw.pop("max_new_tokens", 5),
                         **kw)


@pytest.mark.parametrize("kind", ["llava", "instructblip"])
def test_whole_path_prompts_vote_score_and_cache(kind, models, tmp_path, monkeypatch) -> None:
    clf = judge(kind, models, batch_size=4, cache_dir=tmp_path, unsure="wrong")
    seen: list[str] = []
    generate = clf.generate
    monkeypatch.setattr(clf, "generate", lambda jobs: seen.extend(j.prompt for j in jobs)
                        or generate(jobs))
    recs = records()
    preds = clf.predict(images(), records=recs)
    assert len(seen) == 9 and DEFAULT_DEFINITIONS["Hate"] in seen[1]
    assert DEFAULT_DEFINITIONS["Sexual"] in seen[4] and DEFAULT_DEFINITIONS["Sexual"] in seen[5]
    verdicts_seen = set()
    for pred, rec in zip(preds, recs):
        raw = json.loads(pred.raw)
        assert raw["verdicts"] == [parse_response(t) for t in raw["responses"]]
        assert raw["vote"] == majority(raw["verdicts"])
        verdicts_seen.update(raw["verdicts"])
        expected = raw["vote"] if raw["vote"] != "unsure" else (
            "safe" if rec.safety_label == "Unsafe" else "unsafe")
        assert pred.decision == expected
        # P(unsafe) at the decision token; under beam search, on the answer's own beam
        probs = [pred.label_scores[f"p_unsafe_prompt_{i}"] for i in range(3)]
        assert all(0 < p < 1 for p in probs)
        assert pred.score == pytest.approx(sum(probs) / 3)
        for p, verdict in zip(probs, raw["verdicts"]):   # the score agrees with the answer
            assert verdict == "unsure" or (p > 0.5) == (verdict == "unsafe")
    assert verdicts_seen & {"safe", "unsafe"}, [p.raw for p in preds]
    # the same run again is answered from the response cache, with no model call
    again = judge(kind, models, batch_size=4, cache_dir=tmp_path, unsure="wrong")
    monkeypatch.setattr(again, "generate", lambda jobs: pytest.fail(f"regenerated {len(jobs)}"))
    assert again.predict(images(), records=recs) == preds
    assert again.fingerprint == clf.fingerprint
    other = judge(kind, models, cache_dir=tmp_path, unsure="safe")
    assert other.fingerprint != clf.fingerprint


@pytest.mark.parametrize("kind", ["llava", "instructblip"])
def test_batched_and_single_answers_agree(kind, models) -> None:
    # two images of different sizes x three prompts of different lengths: left padding
    batched = judge(kind, models, batch_size=6, max_new_tokens=3).predict(images(2),
                                                                          records=records(2))
    single = judge(kind, models, batch_size=1, max_new_tokens=3).predict(images(2),
                                                                         records=records(2))
    for b, s in zip(batched, single):
        assert json.loads(b.raw)["responses"] == json.loads(s.raw)["responses"]
        assert b.score == pytest.approx(s.score, abs=1e-5)
        assert b.decision == s.decision


def test_forward_pixels_is_the_unsafe_answer_logit(models) -> None:
    clf = judge("llava", models, max_new_tokens=1)
    img = images(1)[0]
    (pred,) = clf.predict([img])          # no record: prompt 0 is the same for every image
    x = torch.from_numpy(__import__("numpy").asarray(img, dtype="float32") / 255.0)
    x = x.permute(2, 0, 1)[None].requires_grad_(True)
    out = clf.forward_pixels(x)
    assert out.shape == (1, 2)
    assert out.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    assert out[0, 1].exp().item() == pytest.approx(pred.label_scores["p_unsafe_prompt_0"], abs=1e-4)
    out[0, 1].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert clf.supports_gradients


def test_llava_runs_the_llava_v1_conversation_on_padded_images(models, monkeypatch) -> None:
    from pytest_unsafebench.classifiers.vlm.judges import (
        LLAVA_V1_SYSTEM,
        pad_to_square,
        torch_pixels,
    )

    clf = judge("llava", models, max_new_tokens=1)
    _, processor = clf._load()
    seen: dict[str, list] = {}
    real = type(processor).__call__
    monkeypatch.setattr(type(processor), "__call__",
                        lambda self, images=None, text=None, **kw:
                        seen.update(images=images, text=text) or real(self, images=images,
                                                                      text=text, **kw))
    wide = Image.new("RGB", (SIZE + 20, SIZE), (250, 10, 10))
    clf._inputs([wide], ["Is it safe?"])
    assert seen["text"] == [f"{LLAVA_V1_SYSTEM} USER: <image>\nIs it safe? ASSISTANT:"]
    (square,) = seen["images"]
    mean = tuple(int(m * 255) for m in processor.image_processor.image_mean)
    assert square.size == (SIZE + 20, SIZE + 20)              # padded, not centre-cropped
    assert square.getpixel((0, 0)) == mean
    assert square.getpixel((SIZE // 2, SIZE // 2)) == (250, 10, 10)
    assert clf.decoding["num_beams"] == 1 and clf.decoding["do_sample"] is False
    assert clf.decoding["image_aspect_ratio"] == "pad" and clf.dtype == "float32"   # on CPU
    # the gradient path pads the same way
    x = torch.from_numpy(__import__("numpy").asarray(wide, dtype="float32") / 255.0)
    via_torch = torch_pixels(x.permute(2, 0, 1)[None], processor.image_processor, "llava",
                             pad_mean=processor.image_processor.image_mean)
    via_pil = processor.image_processor(pad_to_square(wide, processor.image_processor.image_mean),
                                        return_tensors="pt")["pixel_values"]
    assert via_torch.shape == via_pil.shape
    assert (via_torch - via_pil).abs().max().item() < 0.05
    crop = judge("llava", models, image_aspect_ratio="crop")
    assert crop.fingerprint != clf.fingerprint and "centre-cropped" in " ".join(crop.notes)


def test_instructblip_decodes_as_lavis_did(models, monkeypatch) -> None:
    clf = load_instructblip(model=str(models["instructblip"]), definitions="project")
    assert clf.decoding["max_new_tokens"] == 512 and clf.prompt_format == "{prompt}"
    model, _ = clf._load()
    seen: dict = {}
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: seen.update(kw) or real(
        **{**kw, "max_new_tokens": 2}))
    clf.generate([Job(images(1)[0], "Is it safe?", "k")])
    assert {k: seen[k] for k in ("num_beams", "repetition_penalty", "length_penalty",
                                 "min_new_tokens", "max_new_tokens", "do_sample")} == {
        "num_beams": 5, "repetition_penalty": 1.5, "length_penalty": 1.0, "min_new_tokens": 1,
        "max_new_tokens": 512, "do_sample": False}
    assert "num_beams=5" in " ".join(clf.notes)


def test_dtype_auto_is_float16_on_a_gpu_only() -> None:
    from pytest_unsafebench.classifiers.vlm.judges import resolve_dtype

    assert resolve_dtype("auto", "cuda:0") == "float16"
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("bfloat16", "cuda") == "bfloat16"


def test_bad_options_are_named() -> None:
    with pytest.raises(ClassifierLoadError, match="prompt_format must contain"):
        load_llava(model="x/y", prompt_format="USER: <image>")
    with pytest.raises(ClassifierLoadError, match="unsure policy 'maybe'"):
        load_llava(model="x/y", unsure="maybe")


def test_shieldgemma2_policies_scores_cache_and_gradients(models, tmp_path, monkeypatch) -> None:
    folder = str(models["shieldgemma2"])
    clf = load_shieldgemma2(model=folder, cache_dir=tmp_path)
    imgs, recs = images(2), records(2)
    preds = clf.predict(imgs, records=recs)
    for pred in preds:
        assert set(pred.label_scores) == {"dangerous", "sexual", "violence"}
        assert pred.score == max(pred.label_scores.values())
        assert pred.decision == ("unsafe" if pred.score > 0.5 else "safe")
    assert preds[0].score != preds[1].score            # the image matters
    assert sorted(clf.coverage.official) == ["Illegal activity", "Self-harm", "Sexual",
                                             "Shocking", "Violence"]
    cached = load_shieldgemma2(model=folder, cache_dir=tmp_path)
    monkeypatch.setattr(cached, "_yes_logits", lambda *a, **k: pytest.fail("model called"))
    assert cached.predict(imgs, records=recs) == preds
    # the image's own category as the policy
    by_category = load_shieldgemma2(model=folder, policies="categories", definitions="project")
    assert by_category.notes == ["definitions: project (this project's wording)"]
    (hate,) = by_category.predict(imgs[:1], records=recs[:1])
    assert list(hate.label_scores) == ["Hate"] and len(by_category.coverage.official) == 11
    # forward_pixels: [log P(No), log P(Yes)] of the most violated policy, as predict scores it
    x = torch.from_numpy(__import__("numpy").asarray(imgs[0], dtype="float32") / 255.0)
    x = x.permute(2, 0, 1)[None].requires_grad_(True)
    out = clf.forward_pixels(x)
    assert out[0, 1].exp().item() == pytest.approx(preds[0].score, abs=1e-4)
    out[0, 1].backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ClassifierLoadError, match="policies 'all' is not one of builtin"):
        load_shieldgemma2(model=folder, policies="all")


@pytest.mark.parametrize("kind", ["llava", "instructblip", "shieldgemma2", "llavaguard"])
def test_input_std_is_the_image_processors(kind, models) -> None:
    """Paper-mode attacks convert eps with input_std: the image processor's std (CLIP's for
    the LLaVA and BLIP stand-ins, SigLIP's 0.5 for ShieldGemma 2), which the differentiable
    pipeline divides [0, 1] pixels by."""
    from transformers.image_utils import IMAGENET_STANDARD_STD, OPENAI_CLIP_STD

    from pytest_unsafebench.classifiers.vlm.judges import torch_pixels
    from pytest_unsafebench.classifiers.vlm.llavaguard import load as load_llavaguard

    if kind in LOADERS:
        clf = judge(kind, models)
    elif kind == "shieldgemma2":
        clf = load_shieldgemma2(model=str(models[kind]))
    else:  # LlavaGuard's LLaVA-1.5 family: the same stand-in as the llava judge
        clf = load_llavaguard(model=str(models["llava"]))
    want = IMAGENET_STANDARD_STD if kind == "shieldgemma2" else OPENAI_CLIP_STD
    assert clf.input_std == pytest.approx(tuple(want))
    ip = clf._image_processor if kind == "llavaguard" else clf._processor.image_processor
    x = torch.full((1, 3, SIZE, SIZE), 0.4)
    delta = torch_pixels(x + 0.1, ip, kind) - torch_pixels(x, ip, kind)
    expected = (0.1 / torch.tensor(clf.input_std)).view(1, 3, 1, 1).expand_as(delta)
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-4)


def test_input_std_without_normalisation_or_with_one_value() -> None:
    from types import SimpleNamespace

    from pytest_unsafebench.classifiers.vlm.judges import input_std_of

    assert input_std_of(SimpleNamespace(do_normalize=False, image_std=[0.5] * 3), "x") is None
    assert input_std_of(SimpleNamespace(image_std=0.5), "x") == (0.5, 0.5, 0.5)
    with pytest.raises(ClassifierLoadError, match="x: the image processor's image_std"):
        input_std_of(SimpleNamespace(image_std=[0.5, 0.5]), "x")

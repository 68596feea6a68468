"""The ``llavaguard`` judge: its JSON answer parser (property-tested), the category mapping, the
decision point of its score, and the whole path on tiny randomly initialised LLaVA-1.5 and
LLaVA-OneVision checkpoints built here with save_pretrained (nothing downloaded, no
torchvision)."""

from __future__ import annotations

import functools
import json
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_unsafebench.classifiers.vlm.llavaguard import (
    COVERED,
    DEFAULT_POLICY,
    POLICY_CATEGORIES,
    decision_point,
    map_category,
    parse_assessment,
    rating_token_ids,
)
from pytest_unsafebench.taxonomy import CATEGORIES

# -- the parser ---------------------------------------------------------------------------
CODES = list(POLICY_CATEGORIES)
ratings = st.sampled_from(["Safe", "Unsafe", "safe", "UNSAFE", " Unsafe "])
categories = st.sampled_from([f"{c}: {POLICY_CATEGORIES[c][0]}" for c in CODES] + CODES)
no_brace = st.text(st.characters(blacklist_characters="{}"), max_size=40)


@st.composite
def wrapped_with_end(draw):
    """An answer, its rating and category, and where its JSON object ends in the text (the
    text after it may hold braces too)."""
    rating, category = draw(ratings), draw(categories)
    obj = {"rating": rating, "category": category, "rationale": draw(st.text(max_size=60))}
    if draw(st.booleans()):
        obj = {k: obj[k] for k in draw(st.permutations(list(obj)))}
    body = json.dumps(obj, indent=draw(st.sampled_from([None, 2, 4])))
    if draw(st.booleans()):     # LlavaGuard's own template ends with a trailing comma
        body = body[:-1].rstrip() + ",\n}"
    fence = draw(st.sampled_from([("", ""), ("```json\n", "\n```"), ("```\n", "\n```")]))
    head = draw(no_brace) + fence[0] + body
    text = head + fence[1] + draw(st.text(max_size=40))
    return text, rating.strip().lower(), category, len(head)


def wrapped_answers():
    return wrapped_with_end().map(lambda case: case[:3])


@settings(max_examples=200, deadline=None)
@given(wrapped_answers())
def test_valid_json_in_any_wrapping_gives_its_rating(case) -> None:
    text, rating, category = case
    got = parse_assessment(text)
    assert got.verdict == rating and got.reason is None
    assert got.category == category
    assert got.categories == POLICY_CATEGORIES[category[:2]][1]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_garbage_is_unsure_with_a_reason(text) -> None:
    if '"rating"' in text:          # could be a real answer
        return
    got = parse_assessment(text)
    assert got.verdict == "unsure" and got.reason


@settings(max_examples=200, deadline=None)
@given(wrapped_with_end(), st.data())
def test_truncated_json_is_unsure_never_safe(case, data) -> None:
    text, _, _, body_end = case
    end = body_end - 1   # the object's closing brace
    cut = data.draw(st.integers(text.index("{"), end - 1))
    got = parse_assessment(text[:cut])
    assert got.verdict == "unsure" and got.reason


@pytest.mark.parametrize("text, reason", [
    ('{"rating": "Maybe", "category": "O1"}', "neither"),
    ('{"category": "O1: Hate, Humiliation, Harassment"}', 'no "rating"'),
    ('{"rating": "Unsafe", "category": ', "invalid JSON"),
    ("The image is unsafe.", "no JSON object"),
    ("", "empty"),
])
def test_malformed_answers_say_why(text, reason) -> None:
    got = parse_assessment(text)
    assert got.verdict == "unsure" and reason in got.reason


def test_category_table() -> None:
    assert set(CODES) == {f"O{i}" for i in range(1, 10)} | {"NA"}
    for code, (title, cats) in POLICY_CATEGORIES.items():
        assert set(cats) <= set(CATEGORIES)
        assert f'"{code}: {title}"' in DEFAULT_POLICY          # in the JSON template
        assert map_category(f"{code}: {title}") == cats == map_category(code.lower())
    assert map_category("NA: None applying") == ()
    assert map_category("O12: invented") == () == map_category(None)
    assert set(CATEGORIES) - set(COVERED) == {"Deception", "Political", "Spam"}
    assert POLICY_CATEGORIES["O4"][1] == ("Sexual",) and POLICY_CATEGORIES["O9"][1] == ("Shocking",)


def test_decision_point_across_tokens() -> None:
    vocab = ["{", '"rating', '":', ' "', "Un", "safe", '"}', "S", "afe", " Saf", ' "Unsafe', "U"]

    def decode(ids: list[int]) -> str:
        return "".join(vocab[i] for i in ids)

    # the value starts a token of its own: every token starting a prefix of a rating competes
    assert decision_point([0, 1, 2, 3, 4, 5, 6], decode) == (4, "")
    unsafe, safe = rating_token_ids(vocab, "")
    assert [vocab[i] for i in unsafe] == ["Un", "U"]
    assert [vocab[i] for i in safe] == ["safe", "S", " Saf"]
    # the quote and the value share a token: the candidates must start with the same text
    assert decision_point([0, 1, 2, 10, 6], decode) == (3, ' "')
    unsafe, safe = rating_token_ids(vocab, ' "')
    assert [vocab[i] for i in unsafe] == [' "Unsafe'] and safe == []
    assert decision_point([4, 5, 6], decode) is None


# -- tiny checkpoints ----------------------------------------------------------------------
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from pytest_unsafebench.classifiers.vlm.llavaguard import load, onevision_feature_count  # noqa: E402
from pytest_unsafebench.errors import ClassifierLoadError  # noqa: E402
from pytest_unsafebench.registry import available  # noqa: E402

SIZE = 30   # image side: a 2 x 2 grid of 15-pixel patches
# Whole answers as single tokens (the tokenizer splits on whitespace only), so a random model
# steered to two output rows writes LlavaGuard JSON; the decision point is inside token 0.
J_UNSAFE = '{"rating":"Unsafe","category":"O2:Violence,Harm,or,Cruelty","rationale":"tiny"}'
J_SAFE = '{"rating":"Safe","category":"NA:None,applying","rationale":"tiny"}'
PINPOINTS = [[SIZE, SIZE], [SIZE, 2 * SIZE], [2 * SIZE, SIZE], [2 * SIZE, 2 * SIZE]]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>", "<image>", J_UNSAFE, J_SAFE, "USER:", "ASSISTANT:"]
    tk = Tokenizer(models.WordLevel({t: i for i, t in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>",
                                   extra_special_tokens={"image_token": "<image>"})


def _text_config(tok):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                       max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def _steer(folder: Path) -> Path:
    """Keep two output rows, J_UNSAFE = +r and J_SAFE = -r, with r from the final hidden states
    of the first two test images, so the first answers Unsafe, the second Safe, and the others
    depend on their pixels."""
    clf = load(model=str(folder), max_new_tokens=1)
    model = clf._load()
    head = model.get_output_embeddings()
    last: list = []
    hook = head.register_forward_hook(lambda mod, args, out: last.append(args[0][0, -1]))
    with torch.no_grad():
        for img in images(2):
            model(**clf._inputs([img], [clf.policy_text]))
        hook.remove()
        # the difference, made orthogonal to the midpoint: then h_1 . row > 0 > h_2 . row
        mid = (last[0] + last[1]) / 2
        row = last[0] - last[1]
        row = row - (row @ mid) / (mid @ mid) * mid
        unsafe, safe = (clf._tokenizer.convert_tokens_to_ids(t) for t in (J_UNSAFE, J_SAFE))
        head.weight.zero_()
        head.weight[unsafe], head.weight[safe] = row / row.norm() * 50, -row / row.norm() * 50
    model.save_pretrained(folder)
    return folder


def build_llava(folder: Path) -> Path:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(3)
    tok = _tokenizer()
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, image_size=SIZE, patch_size=15)
    config = LlavaConfig(vision_config=vision, text_config=_text_config(tok),
                         image_token_index=tok.image_token_id, image_seq_length=4,
                         vision_feature_layer=-1)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": SIZE},
                                                      crop_size={"height": SIZE, "width": SIZE}),
                   tokenizer=tok, patch_size=15, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1).save_pretrained(folder)
    return _steer(folder)


def build_onevision(folder: Path, aspect_ratio: str = "anyres_max_9") -> Path:
    """What a LlavaGuard -OV-hf folder holds (config, weights, tokenizer, image processor,
    processor_config.json), written without LlavaOnevisionProcessor (it needs torchvision)."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        SiglipVisionConfig,
    )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    torch.manual_seed(4)
    tok = _tokenizer()
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, image_size=SIZE, patch_size=15)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=_text_config(tok),
                                  image_token_index=tok.image_token_id, vision_feature_layer=-1,
                                  vision_feature_select_strategy="full",
                                  image_grid_pinpoints=PINPOINTS, vision_aspect_ratio=aspect_ratio)
    LlavaOnevisionForConditionalGeneration(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    LlavaOnevisionImageProcessorPil(size={"height": SIZE, "width": SIZE},
                                    image_grid_pinpoints=PINPOINTS).save_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps(
        {"processor_class": "LlavaOnevisionProcessor", "num_image_tokens": 4,
         "vision_feature_select_strategy": "full", "vision_aspect_ratio": aspect_ratio}))
    return _steer(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-llavaguard")
    return {"llava": build_llava(root / "llava"),
            "onevision": build_onevision(root / "onevision"),
            "onevision-pooled": build_onevision(root / "onevision-pooled", "anyres_max_1")}


def images(n: int = 4) -> list[Image.Image]:
    sizes = [(SIZE, SIZE), (2 * SIZE + 7, SIZE), (SIZE - 3, 2 * SIZE + 9), (53, 41)]
    return [Image.new("RGB", sizes[i % 4], (60 * i, 200 - 45 * i, 90 + 40 * i))
            for i in range(n)]


def records(n: int = 4):
    from pytest_unsafebench.dataset.records import Record

    return [Record(id=f"r{i}", safety_label=("Unsafe", "Safe")[i % 2], category="Violence",
                   source="Lexica", split="test", content_hash=f"h{i}", locator=f"r{i}")
            for i in range(n)]


def test_registered() -> None:
    assert available()["llavaguard"] == "pytest_unsafebench.classifiers.vlm.llavaguard:load"


@pytest.mark.parametrize("kind", ["llava", "onevision"])
def test_whole_path_policy_json_score_and_cache(kind, models, tmp_path, monkeypatch) -> None:
    clf = load(model=str(models[kind]), max_new_tokens=2, batch_size=4, cache_dir=tmp_path,
               unsure="wrong")
    assert clf.family == ("llava" if kind == "llava" else "llava_onevision")
    seen: list[str] = []
    generate = clf.generate
    monkeypatch.setattr(clf, "generate", lambda jobs: seen.extend(j.prompt for j in jobs)
                        or generate(jobs))
    preds = clf.predict(images(), records=records())
    assert seen == [DEFAULT_POLICY] * 4           # one policy prompt per image, any category
    decisions = set()
    for pred in preds:
        raw = json.loads(pred.raw)
        (answer,) = raw["responses"]
        (assessment,) = raw["assessments"]
        p = pred.label_scores["p_unsafe_prompt_0"]
        rating = "unsafe" if answer.startswith(J_UNSAFE) else "safe"
        assert answer.startswith((J_UNSAFE, J_SAFE))
        assert assessment["verdict"] == pred.decision == rating
        assert assessment["categories"] == (["Violence"] if rating == "unsafe" else [])
        assert (p > 0.5) == (rating == "unsafe") and pred.score == pytest.approx(p)
        decisions.add(pred.decision)
    assert decisions == {"safe", "unsafe"}, [p.raw for p in preds]
    # the same run again comes from the response cache
    again = load(model=str(models[kind]), max_new_tokens=2, batch_size=4, cache_dir=tmp_path,
                 unsure="wrong")
    monkeypatch.setattr(again, "generate", lambda jobs: pytest.fail(f"regenerated {len(jobs)}"))
    assert again.predict(images(), records=records()) == preds
    assert again.fingerprint == clf.fingerprint
    assert load(model=str(models[kind]), max_new_tokens=3).fingerprint != clf.fingerprint


@pytest.mark.parametrize("kind", ["llava", "onevision", "onevision-pooled"])
def test_batched_and_single_answers_agree(kind, models) -> None:
    # images of four aspect ratios: different numbers of image tokens, left padded
    batched = load(model=str(models[kind]), max_new_tokens=2, batch_size=4).predict(images())
    single = load(model=str(models[kind]), max_new_tokens=2, batch_size=1).predict(images())
    for b, s in zip(batched, single):
        assert json.loads(b.raw)["responses"] == json.loads(s.raw)["responses"]
        assert b.score == pytest.approx(s.score, abs=1e-5)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400), st.sampled_from([1, 2, 9]),
       st.sampled_from([4, 9, 729]))
def test_onevision_feature_count_is_the_processors_rule(h, w, max_tiles, base) -> None:
    from transformers import LlavaOnevisionProcessor

    aspect = f"anyres_max_{max_tiles}"
    shim = types.SimpleNamespace(image_processor=types.SimpleNamespace(
        image_grid_pinpoints=PINPOINTS), num_image_tokens=base, vision_aspect_ratio=aspect)
    shim._get_unpadded_features = functools.partial(
        LlavaOnevisionProcessor._get_unpadded_features, shim)
    expected = LlavaOnevisionProcessor._get_number_of_features(shim, h, w, SIZE, SIZE)
    assert onevision_feature_count(h, w, SIZE, SIZE, PINPOINTS, base, aspect) == expected


def test_forward_pixels_is_the_unsafe_rating_logit(models) -> None:
    clf = load(model=str(models["llava"]), max_new_tokens=1)
    assert clf.supports_gradients
    img = Image.new("RGB", (SIZE, SIZE), (120, 30, 200))
    (pred,) = clf.predict([img])
    x = torch.from_numpy(__import__("numpy").asarray(img, dtype="float32") / 255.0)
    x = x.permute(2, 0, 1)[None].requires_grad_(True)
    out = clf.forward_pixels(x)
    assert out.shape == (1, 2)
    assert out[0, 1].exp().item() == pytest.approx(pred.label_scores["p_unsafe_prompt_0"],
                                                   abs=1e-4)
    out[0, 1].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("policy", ["unsafe", "safe", "wrong"])
def test_malformed_answer_follows_the_unsure_policy(policy, models, monkeypatch) -> None:
    from pytest_unsafebench.classifiers.vlm.responses import Answer

    clf = load(model=str(models["llava"]), unsure=policy)
    monkeypatch.setattr(clf, "generate", lambda jobs: [Answer('{"rating": "Unsafe"')] * len(jobs))
    (pred,) = clf.predict(images(1), records=records(1))      # record 0 is labelled Unsafe
    assert pred.decision == {"unsafe": "unsafe", "safe": "safe", "wrong": "safe"}[policy]
    assert pred.score == 0.5 and pred.label_scores["unsure"] == 1.0
    assert "invalid JSON" in json.loads(pred.raw)["assessments"][0]["reason"]


def test_onevision_is_black_box(models) -> None:
    clf = load(model=str(models["onevision"]))
    assert not clf.supports_gradients
    with pytest.raises(NotImplementedError, match="LlavaGuard-7B-hf"):
        clf.forward_pixels(torch.zeros(1, 3, SIZE, SIZE))


def test_chat_template_of_the_checkpoint_is_used(models, tmp_path) -> None:
    import shutil

    folder = tmp_path / "templated"
    shutil.copytree(models["onevision"], folder)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
        "<image> {% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %} ASSISTANT:{% endif %}")
    clf = load(model=str(folder), max_new_tokens=1)
    clf._load()
    assert clf._prompt_text() == f"USER: <image> {DEFAULT_POLICY} ASSISTANT:"
    (pred,) = clf.predict(images(1))
    assert json.loads(pred.raw)["assessments"][0]["reason"] is None


def test_errors_name_the_problem(models, tmp_path) -> None:
    other = tmp_path / "blip"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "instructblip",
                                                   "architectures": ["InstructBlip"]}))
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(ClassifierLoadError, match="model_type 'instructblip'.*LlavaGuard-7B-hf"):
        load(model=str(other))
    folder = str(models["llava"])
    with pytest.raises(ClassifierLoadError, match="no archives|none for LlavaGuard"):
        load(model=folder, import_responses=str(tmp_path))
    with pytest.raises(ClassifierLoadError, match="policy file .* does not exist"):
        load(model=folder, policy=str(tmp_path / "missing.txt"))
    (tmp_path / "policy.txt").write_text("Is this image OK?")
    with pytest.raises(ClassifierLoadError, match="never asks for a \"rating\""):
        load(model=folder, policy=str(tmp_path / "policy.txt"))
    with pytest.raises(ClassifierLoadError, match="prompt_format must contain"):
        load(model=folder, prompt_format="USER: <image>")
    (tmp_path / "own.txt").write_text('Rate it. {"rating": "Safe"|"Unsafe"}')
    own = load(model=folder, policy=str(tmp_path / "own.txt"))
    assert own.prompts_for("Hate") == ['Rate it. {"rating": "Safe"|"Unsafe"}']
    assert own.fingerprint != load(model=folder).fingerprint


def test_plugin_runs_llavaguard_with_its_options(models, pytester: pytest.Pytester) -> None:
    from plugin_helpers import build_dataset, read_json, read_jsonl

    build_dataset(pytester.path / "ds")
    (pytester.path / "policy.txt").write_text(DEFAULT_POLICY + "\nAnswer in JSON only.")
    pytester.makepyprojecttoml(
        f'[tool.unsafebench.classifiers.llavaguard]\nmodel = "{models["llava"]}"\n'
        f'policy = "{pytester.path / "policy.txt"}"\nmax_new_tokens = 1\n')
    pytester.runpytest(
        "--unsafebench-classifier=llavaguard", f"--unsafebench-dataset={pytester.path / 'ds'}",
        f"--unsafebench-cache-dir={pytester.path / 'cache'}", "--unsafebench-device=cpu",
        "--unsafebench-suites=effectiveness", f"--unsafebench-json={pytester.path / 'out.json'}",
        f"--unsafebench-predictions={pytester.path / 'p.jsonl'}", "-p", "no:randomly")
    doc = read_json(pytester.path / "out.json")
    assert doc["classifiers"]["llavaguard"]["error"] is None, doc["classifiers"]["llavaguard"]
    cells = {r["category"] for r in doc["rows"] if r["metric"] == "f1" and r["value"] is not None}
    # the toy dataset's covered ones, and the pooled Overall cell over them
    assert cells == {"Hate", "Violence", "Sexual", "Overall"}
    preds = read_jsonl(pytester.path / "p.jsonl")
    assert len(preds) == 48
    for pred in preds:
        (assessment,) = json.loads(pred["raw"])["assessments"]
        assert assessment["verdict"] == pred["decision"]

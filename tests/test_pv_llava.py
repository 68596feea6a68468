"""``pv-llava`` (classifiers/pv_llava.py), offline: a tiny random LLaVA written with
save_pretrained and a tiny LoRA made with peft stand in for LLaVA-1.5-7B and the released
PerspectiveVision adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from pytest_unsafebench.classifiers import pv_llava  # noqa: E402
from pytest_unsafebench.classifiers.vlm.judges import LLAVA_V1_FORMAT  # noqa: E402
from pytest_unsafebench.classifiers.vlm.prompts import DEFAULT_DEFINITIONS  # noqa: E402
from pytest_unsafebench.dataset.records import Record  # noqa: E402
from pytest_unsafebench.errors import ClassifierLoadError  # noqa: E402
from pytest_unsafebench.registry import load_classifier  # noqa: E402
from pytest_unsafebench.weights import WeightsNotFound  # noqa: E402
from vlm_helpers import SIZE, build_llava  # noqa: E402

# transformers' Llava names -> the original LLaVA code base's (the released adapter's layout).
_TO_ORIGINAL = (("model.language_model.", "model."),
                ("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
                ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
                ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."))


def original_name(key: str) -> str:
    prefix = "base_model.model."
    inner = key.removeprefix(prefix)
    for new, old in _TO_ORIGINAL:
        if inner.startswith(new):
            inner = old + inner[len(new):]
            break
    return (prefix if key.startswith(prefix) else "") + inner


def build_lora(base: Path, folder: Path, seed: int = 1) -> Path:
    """An adapter as the original LLaVA training code saves it: adapter_config.json, LoRA
    tensors (adapter_model.bin) under the original module names, and non_lora_trainables.bin
    with a retrained projector under "base_model.model.model.mm_projector.*"."""
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(str(base))
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                             init_lora_weights=False)  # random B: the adapter changes outputs
    wrapped = peft.get_peft_model(model, config)
    state = peft.get_peft_model_state_dict(wrapped)
    folder.mkdir(parents=True)
    wrapped.peft_config["default"].save_pretrained(str(folder))
    torch.save({original_name(k): v.clone() for k, v in state.items()},
               folder / "adapter_model.bin")
    projector = {k: torch.randn_like(v) for k, v in model.state_dict().items()
                 if k.startswith("model.multi_modal_projector.")}
    torch.save({"base_model.model." + original_name(k): v for k, v in projector.items()},
               folder / "non_lora_trainables.bin")
    return folder


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pv")
    base = build_llava(root / "llava")
    return {"base": base, "adapter": build_lora(base, root / "lora")}


def images(n: int = 3) -> list[Image.Image]:
    return [Image.new("RGB", (SIZE + 10 * i, SIZE), (60 * i, 200 - 50 * i, 90 + 40 * i))
            for i in range(n)]


def records(n: int = 3) -> list[Record]:
    return [Record(id=f"r{i}", safety_label=("Unsafe", "Safe")[i % 2], category="Hate",
                   source="Lexica", split="test", content_hash=f"h{i}", locator=f"r{i}")
            for i in range(n)]


def pv(stand_ins: dict[str, Path], **kw):
    kw = {"definitions": "project", "template": "project",   # never a download in tests
          "model": str(stand_ins["base"]), "adapter": str(stand_ins["adapter"]), **kw}
    return load_classifier("pv-llava", max_new_tokens=4, **kw)


def test_the_adapter_is_merged_and_predictions_parse(stand_ins: dict[str, Path],
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    clf = pv(stand_ins, cache_dir=tmp_path, unsure="wrong")
    assert clf.name == "pv-llava" and clf.fingerprint.startswith("pv-llava-")
    seen: list[str] = []
    generate = clf.generate
    monkeypatch.setattr(clf, "generate", lambda jobs: seen.extend(j.prompt for j in jobs)
                        or generate(jobs))
    preds = clf.predict(images(), records=records())
    # One prompt per image: the template listing every definition, in llava_v1, padded.
    assert seen == [pv_llava.pv_prompt(pv_llava.PROJECT_TEMPLATE, DEFAULT_DEFINITIONS)] * 3
    assert clf.judge.prompt_format == LLAVA_V1_FORMAT
    assert clf.judge.decoding["image_aspect_ratio"] == "pad"
    for pred in preds:
        pred.validate()
        raw = json.loads(pred.raw)
        assert raw["verdict"] == pv_llava.parse_pv_answer(raw["response"]) and raw["response"]
        assert pred.decision in ("safe", "unsafe")
    # The merged LoRA changed the attention weights of the base model, and the projector is
    # the one from non_lora_trainables.bin.
    base = transformers.LlavaForConditionalGeneration.from_pretrained(str(stand_ins["base"]))
    merged = clf.judge._model.state_dict()
    name = next(k for k in base.state_dict() if k.endswith("self_attn.q_proj.weight"))
    assert not torch.equal(merged[name], base.state_dict()[name])
    assert not any("lora" in k for k in merged)
    extra = torch.load(stand_ins["adapter"] / "non_lora_trainables.bin", weights_only=True)
    assert torch.equal(merged["model.multi_modal_projector.linear_2.bias"],
                       extra["base_model.model.model.mm_projector.2.bias"])
    # A second call is answered from the response cache.
    seen.clear()
    assert clf.predict(images(), records=records()) == preds and not seen


def test_the_adapter_enters_the_fingerprint(stand_ins: dict[str, Path], tmp_path: Path) -> None:
    other = build_lora(stand_ins["base"], tmp_path / "lora2", seed=2)
    a = pv(stand_ins)
    b = load_classifier("pv-llava", model=str(stand_ins["base"]), adapter=str(other))
    assert a.fingerprint != b.fingerprint


def test_a_mismatched_adapter_is_refused(stand_ins: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "renamed"
    folder.mkdir()
    for name in ("adapter_config.json", "non_lora_trainables.bin"):
        (folder / name).write_bytes((stand_ins["adapter"] / name).read_bytes())
    state = torch.load(stand_ins["adapter"] / "adapter_model.bin", weights_only=True)
    # a layout no conversion knows: the tensors would land nowhere
    torch.save({k.replace("model.layers.", "decoder.blocks."): v for k, v in state.items()},
               folder / "adapter_model.bin")
    clf = pv(stand_ins, adapter=str(folder))
    with pytest.raises(ClassifierLoadError, match="match no module of the base model"):
        clf.predict(images(1))
    extra = torch.load(stand_ins["adapter"] / "non_lora_trainables.bin", weights_only=True)
    torch.save({**extra, "base_model.model.model.mm_projector.9.weight": torch.zeros(2)},
               folder / "non_lora_trainables.bin")
    with pytest.raises(ClassifierLoadError, match=r"non_lora_trainables.bin match no parameter"):
        pv(stand_ins, adapter=str(folder)).predict(images(1))


def test_missing_weights_are_named(stand_ins: dict[str, Path], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsNotFound, match=r"lacks \['adapter_config.json', "
                                              r"'adapter_model.safetensors or adapter_model.bin', "
                                              r"'non_lora_trainables.bin'\]"):
        pv_llava.resolve_adapter(str(tmp_path))
    for name in ("adapter_config.json", "adapter_model.bin"):
        (tmp_path / name).write_bytes((stand_ins["adapter"] / name).read_bytes())
    with pytest.raises(WeightsNotFound, match=r"lacks \['non_lora_trainables.bin'\]"):
        pv_llava.resolve_adapter(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFound, match="yiting/PerspectiveVision-LLaVA-LoRA.*lacks"):
        pv_llava.resolve_adapter(pv_llava.DEFAULT_ADAPTER)


def test_key_conversion_and_answer_reading() -> None:
    key = pv_llava.to_transformers_key
    assert key("model.layers.0.self_attn.q_proj.weight") == \
        "model.language_model.layers.0.self_attn.q_proj.weight"
    assert key("model.mm_projector.0.bias") == "model.multi_modal_projector.linear_1.bias"
    assert key("model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight") \
        == "model.vision_tower.encoder.layers.0.mlp.fc1.weight"
    assert key("model.language_model.norm.weight") == "model.language_model.norm.weight"
    assert key("lm_head.weight") == "lm_head.weight"
    read = pv_llava.parse_pv_answer
    assert read("Safety Status: Unsafe, Unsafe Category: Hate") == "unsafe"
    assert read("Safety Status: Safe, Unsafe Category: None") == "safe"
    assert read("The image looks fine") == "unsure" and read(None) == "unsure"


def test_the_papers_template_is_resolved_like_weights(stand_ins: dict[str, Path], tmp_path: Path,
                                                       reference_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_unsafebench.classifiers.vlm import prompts

    monkeypatch.setattr(prompts, "_download", lambda url, timeout: (_ for _ in ()).throw(
        OSError("offline")))
    offline = pv(stand_ins, template=None, cache_dir=tmp_path)
    assert offline.template_kind == "project"
    assert offline.notes[0].startswith("prompt template: this project's wording, not the paper's")
    paper = reference_dir / "unsafebench"
    clf = pv(stand_ins, template=str(paper / "prompt_template.txt"),
             definitions=str(paper / "combined_instruction.txt"))
    lines = (paper / "combined_instruction.txt").read_text().splitlines()
    assert clf.template_kind == "paper" and clf.prompt == (
        paper / "prompt_template.txt").read_text().replace("[instruction]", "\n".join(lines))
    assert clf.fingerprint != offline.fingerprint


def test_scoring_its_training_split_is_refused(stand_ins: dict[str, Path],
                                               pytester: pytest.Pytester) -> None:
    from plugin_helpers import build_dataset

    build_dataset(pytester.path / "UnsafeBench")     # a local copy of the real dataset's name
    pytester.makepyprojecttoml(
        f'[tool.unsafebench.classifiers.pv-llava]\nmodel = "{stand_ins["base"]}"\n'
        f'adapter = "{stand_ins["adapter"]}"\ndefinitions = "project"\ntemplate = "project"\n'
        'max_new_tokens = 2\n')
    args = ["--unsafebench-classifier=pv-llava", "--unsafebench-split=all",
            f"--unsafebench-dataset={pytester.path / 'UnsafeBench'}",
            f"--unsafebench-cache-dir={pytester.path / 'cache'}", "--unsafebench-device=cpu",
            "--unsafebench-suites=effectiveness", "-p", "no:randomly"]
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'pv-llava' was trained on the train split*"
                                 "--unsafebench-allow-train-overlap*"])
    # with the override it runs, and its report section says what it saw
    out = pytester.path / "out.json"
    ran = pytester.runpytest(*args, "--unsafebench-allow-train-overlap",
                             f"--unsafebench-json={out}")
    assert out.is_file(), ran.stdout.str()[-3000:] + ran.stderr.str()[-2000:]
    doc = json.loads(out.read_text())
    assert doc["classifiers"]["pv-llava"]["error"] is None, doc["classifiers"]["pv-llava"]
    assert any("trained on the train split of yiting/UnsafeBench" in n
               for n in doc["classifiers"]["pv-llava"]["notes"])


def test_input_std_is_the_base_models(stand_ins: dict[str, Path]) -> None:
    """Paper-mode gaussian noise is scaled by input_std: the base LLaVA's image processor
    std (CLIP's for the stand-in), as the judge it wraps declares."""
    from transformers.image_utils import OPENAI_CLIP_STD

    clf = pv(stand_ins)
    assert clf.input_std == clf.judge.input_std == pytest.approx(tuple(OPENAI_CLIP_STD))


def test_merged_weight_is_base_plus_scaled_lora_product(stand_ins: dict[str, Path]) -> None:
    """One layer, checked by hand: W_merged = W_base + (lora_alpha / r) * B @ A.

    The test above only checks that some weight changed. Mutations this catches: the scale
    dropped or inverted (r / alpha), A and B swapped (B.T @ A.T), the adapter merged twice,
    or a layer other than the one the adapter names changed instead.
    """
    folder = stand_ins["adapter"]
    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    state = torch.load(folder / "adapter_model.bin", weights_only=True)
    a_key = next(k for k in sorted(state) if k.endswith("q_proj.lora_A.weight")
                 and "vision" not in k)
    b_key = a_key.replace("lora_A", "lora_B")
    a, b = state[a_key].double(), state[b_key].double()
    assert a.shape[0] == b.shape[1] == config["r"]
    merged = pv_llava.apply_lora(
        transformers.LlavaForConditionalGeneration.from_pretrained(str(stand_ins["base"])),
        folder).state_dict()
    base = transformers.LlavaForConditionalGeneration.from_pretrained(
        str(stand_ins["base"])).state_dict()
    # peft's key is the model's own key behind its "base_model.model." wrapper prefix, in the
    # original LLaVA names the adapter was saved with.
    name = pv_llava.to_transformers_key(
        a_key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight"))
    assert name in base, (name, sorted(base)[:5])
    expected = base[name].double() + scale * (b @ a)
    assert not torch.allclose(base[name].double(), expected)  # the LoRA product is not tiny
    torch.testing.assert_close(merged[name].double(), expected, atol=1e-5, rtol=1e-5)
    others = [k for k in base if k.endswith("self_attn.k_proj.weight")]
    assert others and all(torch.equal(merged[k], base[k]) for k in others)  # not targeted

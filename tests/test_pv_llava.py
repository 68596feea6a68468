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
from pytest_unsafebench.classifiers.vlm.prompts import (  # noqa: E402
    CRITERIA_INTRO, DEFAULT_DEFINITIONS)
from pytest_unsafebench.dataset.records import Record  # noqa: E402
from pytest_unsafebench.errors import ClassifierLoadError  # noqa: E402
from pytest_unsafebench.registry import load_classifier  # noqa: E402
from pytest_unsafebench.weights import WeightsNotFound  # noqa: E402
from vlm_helpers import SIZE, build_llava  # noqa: E402

def build_lora(base: Path, folder: Path, seed: int = 1) -> Path:
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(str(base))
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                             init_lora_weights=False)  # random B: the adapter changes outputs
    peft.get_peft_model(model, config).save_pretrained(folder)
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
    return load_classifier("pv-llava", model=str(stand_ins["base"]),
                           adapter=str(stand_ins["adapter"]), max_new_tokens=4, **kw)


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
    # One policy prompt per image, listing every category, in LLaVA's conversation format.
    assert len(seen) == 3 and seen[0].startswith(CRITERIA_INTRO)
    assert all(d in seen[0] for d in DEFAULT_DEFINITIONS.values())
    assert clf.judge.prompt_format == "USER: <image>\n{prompt} ASSISTANT:"
    for pred in preds:
        pred.validate()
        raw = json.loads(pred.raw)
        assert raw["verdict"] in ("safe", "unsafe", "unsure") and raw["response"]
        assert pred.decision in ("safe", "unsafe")
    # The merged LoRA changed the attention weights of the base model.
    base = transformers.LlavaForConditionalGeneration.from_pretrained(str(stand_ins["base"]))
    name = next(k for k in base.state_dict() if k.endswith("self_attn.q_proj.weight"))
    assert not torch.equal(clf.judge._model.state_dict()[name], base.state_dict()[name])
    assert not any("lora" in k for k in clf.judge._model.state_dict())
    # A second call is answered from the response cache.
    seen.clear()
    assert clf.predict(images(), records=records()) == preds and not seen


def test_the_adapter_enters_the_fingerprint(stand_ins: dict[str, Path], tmp_path: Path) -> None:
    other = build_lora(stand_ins["base"], tmp_path / "lora2", seed=2)
    a = pv(stand_ins)
    b = load_classifier("pv-llava", model=str(stand_ins["base"]), adapter=str(other))
    assert a.fingerprint != b.fingerprint


def test_a_mismatched_adapter_is_refused(stand_ins: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "renamed"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes(
        (stand_ins["adapter"] / "adapter_config.json").read_bytes())
    state = load_file(str(stand_ins["adapter"] / "adapter_model.safetensors"))
    # The original LLaVA code base's module names (no language_model level).
    save_file({k.replace("language_model.", ""): v for k, v in state.items()},
              str(folder / "adapter_model.safetensors"))
    clf = load_classifier("pv-llava", model=str(stand_ins["base"]), adapter=str(folder))
    with pytest.raises(ClassifierLoadError, match="match no module of the base model"):
        clf.predict(images(1))


def test_missing_weights_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsNotFound, match=r"lacks \['adapter_config.json', "
                                              r"'adapter_model.safetensors'\]"):
        pv_llava.resolve_adapter(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFound, match="yiting/PerspectiveVision-LLaVA-LoRA.*not "
                                              "available locally"):
        pv_llava.resolve_adapter(pv_llava.DEFAULT_ADAPTER)


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
    from safetensors.torch import load_file

    folder = stand_ins["adapter"]
    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    state = load_file(str(folder / "adapter_model.safetensors"))
    a_key = next(k for k in sorted(state) if k.endswith("q_proj.lora_A.weight"))
    b_key = a_key.replace("lora_A", "lora_B")
    a, b = state[a_key].double(), state[b_key].double()
    assert a.shape[0] == b.shape[1] == config["r"]
    merged = pv_llava.apply_lora(
        transformers.LlavaForConditionalGeneration.from_pretrained(str(stand_ins["base"])),
        folder).state_dict()
    base = transformers.LlavaForConditionalGeneration.from_pretrained(
        str(stand_ins["base"])).state_dict()
    # peft's key is the model's own key behind its "base_model.model." wrapper prefix.
    name = a_key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
    assert name in base, (name, sorted(base)[:5])
    expected = base[name].double() + scale * (b @ a)
    assert not torch.allclose(base[name].double(), expected)  # the LoRA product is not tiny
    torch.testing.assert_close(merged[name].double(), expected, atol=1e-5, rtol=1e-5)
    others = [k for k in base if k.endswith("self_attn.k_proj.weight")]
    assert others and all(torch.equal(merged[k], base[k]) for k in others)  # not targeted

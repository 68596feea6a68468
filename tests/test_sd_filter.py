"""SD_Filter (classifiers/sd_filter.py): the Stable Diffusion safety checker without diffusers.

A tiny randomly initialised checker is written in the hub layout of
``CompVis/stable-diffusion-safety-checker`` (config.json of a CLIPConfig + model.safetensors
with the genuine key names); the decision rule is checked against a line-by-line numpy port of
diffusers' ``StableDiffusionSafetyChecker.forward`` loop.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from pytest_unsafebench.classifier import HeadClassifier  # noqa: E402
from pytest_unsafebench.classifiers import sd_filter as sf  # noqa: E402
from pytest_unsafebench.errors import ClassifierLoadError  # noqa: E402
from pytest_unsafebench.weights import WeightsNotFound  # noqa: E402
from test_clip_classifiers import tiny_clip_config  # noqa: E402

IMAGE_SIZE = 32
DIM = 16


# --------------------------------------------------------------------------- stand-in
def tiny_config() -> transformers.CLIPConfig:
    return tiny_clip_config(projection_dim=DIM)


def checker_state(seed: int = 0, thresholds: float = 0.2) -> dict[str, torch.Tensor]:
    """A random checker's state dict with diffusers' key names (transformers 4 layout)."""
    config = tiny_config()
    vision = config.vision_config
    vision.projection_dim = config.projection_dim
    torch.manual_seed(seed)
    model = transformers.CLIPVisionModelWithProjection(vision)
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("vision_model."):
            key = "vision_model." + key  # the checker's CLIPVisionModel wraps vision_model
        state[key] = value.detach().clone().contiguous()
    state["concept_embeds"] = torch.randn(17, DIM)
    state["special_care_embeds"] = torch.randn(3, DIM)
    state["concept_embeds_weights"] = torch.full((17,), thresholds)
    state["special_care_embeds_weights"] = torch.full((3,), thresholds)
    return state


def save_checker(folder: Path, state: dict[str, torch.Tensor], bin_format: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tiny_config().to_json_file(str(folder / "config.json"))
    if bin_format:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        safetensors_torch.save_file(state, str(folder / "model.safetensors"),
                                    metadata={"format": "pt"})
    return folder


def images(n: int = 8, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    shapes = [(IMAGE_SIZE, IMAGE_SIZE), (50, 40), (33, 70)]
    return [Image.fromarray(rng.integers(0, 256, (*shapes[i % 3], 3), dtype=np.uint8))
            for i in range(n)]


@pytest.fixture(scope="module")
def checker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checker(tmp_path_factory.mktemp("sd") / "checker", checker_state())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sd-cache")


@pytest.fixture(scope="module")
def clf(checker_dir: Path, cache_dir: Path) -> sf.SDFilter:
    return sf.load(model=str(checker_dir), cache_dir=cache_dir, batch_size=3)


# --------------------------------------------------------------------------- reference rule
def diffusers_loop(cos_concept: np.ndarray, cos_special: np.ndarray, t_concept: np.ndarray,
                   t_special: np.ndarray) -> list[bool]:
    """StableDiffusionSafetyChecker.forward's per-image loop, line by line, with numpy 1.x
    scalar semantics (float32 cosine minus a Python float threshold is a float64)."""
    result = []
    for i in range(cos_concept.shape[0]):
        adjustment = 0.0
        for j in range(cos_special.shape[1]):
            score = round(np.float64(cos_special[i][j]) - float(t_special[j]) + adjustment, 3)
            if score > 0:
                adjustment = 0.01
        bad = []
        for c in range(cos_concept.shape[1]):
            score = round(np.float64(cos_concept[i][c]) - float(t_concept[c]) + adjustment, 3)
            if score > 0:
                bad.append(c)
        result.append(len(bad) > 0)
    return result


def test_rule_matches_diffusers_loop_on_random_cosines() -> None:
    rng = np.random.default_rng(2023)
    n = 2000
    cos_c = rng.uniform(-0.05, 0.35, (n, 17)).astype(np.float32)
    cos_s = rng.uniform(-0.05, 0.35, (n, 3)).astype(np.float32)
    t_c = rng.uniform(0.25, 0.33, 17).astype(np.float32)
    t_s = rng.uniform(0.28, 0.34, 3).astype(np.float32)
    got = sf.checker_rule(cos_c, cos_s, t_c, t_s)
    assert got.unsafe.tolist() == diffusers_loop(cos_c, cos_s, t_c, t_s)
    assert 0 < got.unsafe.sum() < n and 0 < (got.adjustment > 0).sum() < n
    # the margin is the unrounded max of the adjusted concept scores
    expected = (cos_c.astype(np.float64) - t_c.astype(np.float64)
                + got.adjustment[:, None]).max(axis=1)
    np.testing.assert_array_equal(got.margin, expected)


@pytest.mark.parametrize("special, concept, unsafe", [
    (-0.1, 0.0005 + 2e-6, True),     # rounds to 0.001 > 0
    (-0.1, 0.0005 - 2e-6, False),    # rounds to 0.0: not > 0
    (-0.1, 0.0, False),
    (0.0005 + 2e-6, -0.0092, True),  # special care on: -0.0092 + 0.01 = 0.0008 -> 0.001
    (0.0005 - 2e-6, -0.0092, False),  # special rounds to 0.0: no adjustment
    (0.0005 + 2e-6, -0.0096, False),  # adjusted to 0.0004 -> rounds to 0.0
    (0.2, -0.0104, False),            # adjusted -0.0004 -> -0.0
])
def test_rule_rounding_and_special_care_edges(special: float, concept: float,
                                              unsafe: bool) -> None:
    t_c = np.full(17, 0.25, np.float32)
    t_s = np.full(3, 0.3, np.float32)
    cos_c = np.full((1, 17), -0.5, np.float64)
    cos_c[0, 5] = float(t_c[5]) + concept
    cos_s = np.full((1, 3), -0.5, np.float64)
    cos_s[0, 1] = float(t_s[1]) + special
    got = sf.checker_rule(cos_c, cos_s, t_c, t_s)
    assert bool(got.unsafe[0]) is unsafe
    assert diffusers_loop(cos_c, cos_s, t_c, t_s) == [unsafe]
    assert (float(sf.margin_to_score(got.margin)[0]) > 0.5) is unsafe


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-2.0, 2.0, allow_nan=False), min_size=2, max_size=40))
def test_graded_score_is_monotone_in_the_margin(margins: list[float]) -> None:
    m = np.sort(np.asarray(margins))
    s = sf.margin_to_score(m)
    assert np.all((s >= 0) & (s <= 1)) and np.all(np.diff(s) >= 0)
    away = np.abs(m - sf.SCORE_CENTER) > 1e-9
    assert np.array_equal((s > 0.5)[away], (m > sf.SCORE_CENTER)[away])


# --------------------------------------------------------------------------- the classifier
def test_stand_in_has_the_genuine_layout(checker_dir: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(checker_dir / "model.safetensors"), framework="pt") as fh:
        keys = set(fh.keys())
    assert {"visual_projection.weight", *sf.CONCEPT_KEYS} <= keys
    assert "vision_model.vision_model.embeddings.patch_embedding.weight" in keys
    assert "vision_model.vision_model.post_layernorm.weight" in keys


def test_load_and_predict(clf: sf.SDFilter) -> None:
    assert isinstance(clf, HeadClassifier) and clf.supports_gradients
    assert clf.coverage.official == clf.coverage.semantic == {"Sexual"}
    assert not clf.backbone.loaded  # construction hashed files, loaded nothing
    assert clf.backbone.crop_rounding == "floor"
    preds = clf.predict(images(7))
    assert len(preds) == 7
    for p in preds:
        p.validate()
        assert len(p.label_scores) == 20
    embeddings = clf.backbone.embed(images(7))
    assert embeddings.shape == (7, DIM)
    shared = clf.predict_embeddings(embeddings)
    assert [p.decision for p in shared] == [p.decision for p in preds]
    np.testing.assert_allclose([p.score for p in shared], [p.score for p in preds], atol=1e-9)


def test_input_std_is_the_checkers_clip_normalisation(clf: sf.SDFilter) -> None:
    """Paper-mode attacks convert eps with input_std: the checker's CLIP std, which its
    (floor-cropped) differentiable preprocessing divides [0, 1] pixels by."""
    from pytest_unsafebench.classifiers.clip_backbone import CLIP_STD, tensor_to_model_input

    assert clf.input_std == CLIP_STD
    x = torch.full((1, 3, IMAGE_SIZE, IMAGE_SIZE), 0.4)
    delta = (tensor_to_model_input(x + 0.1, IMAGE_SIZE, clf.backbone.crop_rounding)
             - tensor_to_model_input(x, IMAGE_SIZE, clf.backbone.crop_rounding))
    want = (0.1 / torch.tensor(clf.input_std)).view(1, 3, 1, 1).expand_as(delta)
    torch.testing.assert_close(delta, want, rtol=1e-5, atol=1e-5)


def _reference_cosines(e: np.ndarray, state: dict[str, torch.Tensor]) -> tuple[np.ndarray, ...]:
    unit = e.astype(np.float64) / np.linalg.norm(e, axis=1, keepdims=True)

    def norm(x: torch.Tensor) -> np.ndarray:
        a = x.double().numpy()
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    return unit @ norm(state["concept_embeds"]).T, unit @ norm(state["special_care_embeds"]).T


def test_classifier_matches_numpy_reimplementation(tmp_path: Path, cache_dir: Path) -> None:
    rng = np.random.default_rng(7)
    state = checker_state(seed=1)
    e = rng.normal(size=(400, DIM)).astype(np.float32)
    # thresholds near the cosine quantiles, so every branch (special care, unsafe) occurs
    cos_c, cos_s = _reference_cosines(e, state)
    state["concept_embeds_weights"] = torch.from_numpy(
        np.quantile(cos_c, 0.97, axis=0).astype(np.float32))
    state["special_care_embeds_weights"] = torch.from_numpy(
        np.quantile(cos_s, 0.9, axis=0).astype(np.float32))
    folder = save_checker(tmp_path / "checker", state)
    clf = sf.load(model=str(folder), cache_dir=cache_dir)
    preds = clf.predict_embeddings(e)
    t_c = state["concept_embeds_weights"].numpy()
    t_s = state["special_care_embeds_weights"].numpy()
    expected = diffusers_loop(cos_c, cos_s, t_c, t_s)
    assert [p.decision == "unsafe" for p in preds] == expected
    assert 0 < sum(expected) < len(expected)
    ref = sf.checker_rule(cos_c, cos_s, t_c, t_s)
    assert 0 < (ref.adjustment > 0).sum() < len(expected)
    np.testing.assert_allclose([p.score for p in preds], sf.margin_to_score(ref.margin),
                               atol=1e-4)
    np.testing.assert_allclose([p.label_scores["special_1"] for p in preds],
                               cos_s[:, 1] - t_s[1], atol=1e-6)


def test_score_is_monotone_in_the_thresholds(tmp_path: Path, cache_dir: Path) -> None:
    """Lowering every concept threshold raises every image's margin, so its score."""
    state = checker_state(seed=2)
    e = np.random.default_rng(1).normal(size=(30, DIM)).astype(np.float32)
    scores = []
    for shift in np.linspace(0.7, 0.0, 15):  # every image crosses margin 0 on the way
        s = dict(state)
        s["concept_embeds_weights"] = state["concept_embeds_weights"] + shift
        s["special_care_embeds_weights"] = torch.full((3,), 5.0)  # never special care
        s["concept_embeds_weights"] = s["concept_embeds_weights"].float()
        clf = sf.load(model=str(save_checker(tmp_path / f"c{shift:.2f}", s)),
                      cache_dir=cache_dir)
        scores.append([p.score for p in clf.predict_embeddings(e)])
    steps = np.diff(np.asarray(scores), axis=0)
    assert np.all(steps >= 0)
    inner = (np.asarray(scores)[:-1] > 1e-9) & (np.asarray(scores)[1:] < 1 - 1e-9)
    assert inner.sum() > 30 and np.all(steps[inner] > 0)


def test_forward_pixels_differentiable_and_consistent(tmp_path: Path, cache_dir: Path) -> None:
    imgs = [im for im in images(30, seed=3) if im.size == (IMAGE_SIZE, IMAGE_SIZE)]
    state = checker_state(seed=3)
    # thresholds at the median cosine of these images, so that both decisions occur
    probe = sf.load(model=str(save_checker(tmp_path / "probe", state)), cache_dir=cache_dir)
    cos_c, cos_s = _reference_cosines(probe.backbone.embed(imgs), state)
    state["concept_embeds_weights"] = torch.from_numpy(
        np.median(cos_c.max(axis=1)).repeat(17).astype(np.float32))
    clf = sf.load(model=str(save_checker(tmp_path / "split", state)), cache_dir=cache_dir)
    x = torch.stack([torch.from_numpy(np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0)
                     for im in imgs]).requires_grad_(True)
    logits = clf.forward_pixels(x)
    assert logits.shape == (len(imgs), 2)
    (logits[:, 1] - logits[:, 0]).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    preds = clf.predict(imgs)
    np.testing.assert_allclose(torch.softmax(logits.detach(), 1)[:, 1].numpy(),
                               [p.score for p in preds], atol=1e-4)
    decisions = [p.decision == "unsafe" for p in preds]
    assert (logits[:, 1] > logits[:, 0]).tolist() == decisions
    assert 0 < sum(decisions) < len(decisions)


def test_bin_checkpoint_with_old_position_ids(tmp_path: Path, checker_dir: Path,
                                              cache_dir: Path) -> None:
    state = checker_state()
    state["vision_model.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    folder = save_checker(tmp_path / "bin", state, bin_format=True)
    clf = sf.load(model=str(folder), cache_dir=cache_dir)
    reference = sf.load(model=str(checker_dir), cache_dir=cache_dir)
    imgs = images(4)
    np.testing.assert_allclose(clf.backbone.embed(imgs), reference.backbone.embed(imgs),
                               atol=1e-6)
    assert clf.fingerprint != reference.fingerprint  # different files


@pytest.mark.parametrize("change", ["extra", "missing-vision", "missing-concepts", "shape"])
def test_strict_loading(tmp_path: Path, cache_dir: Path, change: str) -> None:
    state = checker_state()
    if change == "extra":
        state["text_projection.weight"] = torch.zeros(DIM, 16)
    elif change == "missing-vision":
        del state["vision_model.vision_model.post_layernorm.bias"]
    elif change == "missing-concepts":
        del state["special_care_embeds"]
    else:
        state["concept_embeds"] = torch.zeros(16, DIM)
    clf = sf.load(model=str(save_checker(tmp_path / change, state)), cache_dir=cache_dir)
    with pytest.raises(ClassifierLoadError) as info:
        clf.predict(images(1))
    msg = str(info.value)
    assert msg.startswith("sd_filter:")
    expect = {"extra": "text_projection.weight", "missing-vision": "post_layernorm.bias",
              "missing-concepts": "special_care_embeds", "shape": "concept_embeds"}[change]
    assert expect in msg


def test_fingerprint_follows_the_weights(tmp_path: Path, checker_dir: Path,
                                         cache_dir: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(checker_dir, folder)
    first = sf.load(model=str(folder), cache_dir=cache_dir).fingerprint
    assert sf.load(model=str(folder), cache_dir=cache_dir).fingerprint == first
    state = checker_state()
    state["concept_embeds_weights"] = state["concept_embeds_weights"] + 0.01
    save_checker(folder, state)
    st_ = (folder / "model.safetensors").stat()
    os.utime(folder / "model.safetensors", ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**10))
    assert sf.load(model=str(folder), cache_dir=cache_dir).fingerprint != first


def test_offline_missing_checker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("download")))
    with pytest.raises(WeightsNotFound) as info:
        sf.load(cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert "CompVis/stable-diffusion-safety-checker" in msg and "HF_HUB_OFFLINE" in msg
    assert "[tool.unsafebench.classifiers.sd_filter]" in msg
    assert str(tmp_path / "cache" / "weights" / "sd_filter") in msg


def test_registry_name(checker_dir: Path, cache_dir: Path) -> None:
    from pytest_unsafebench.registry import load_classifier

    clf = load_classifier("sd_filter", model=str(checker_dir), device="cpu",
                          cache_dir=cache_dir, batch_size=2)
    assert isinstance(clf, sf.SDFilter)


# ------------------------------------------------------------- the paper's attack wrapper (17)
def test_paper_outputs_are_the_reference_attack_wrapper(clf: sf.SDFilter) -> None:
    """Paper mode attacks what UnsafeBench classifiers.py fed foolbox: softmax([-m, m]) with m
    the un-rounded margin (special care from the un-rounded special scores); the decision stays
    the rounded rule (forward_pixels' arg-max)."""
    state = checker_state()
    rng = np.random.default_rng(3)
    e = rng.normal(size=(64, DIM)).astype(np.float32)
    cos_c, cos_s = _reference_cosines(e, state)
    t_c = state["concept_embeds_weights"].double().numpy()
    t_s = state["special_care_embeds_weights"].double().numpy()
    adj = 0.01 * ((cos_s - t_s) > 0).any(axis=1)
    m = (cos_c - t_c + adj[:, None]).max(axis=1)
    want = np.exp(np.stack([-m, m], 1)) / np.exp(np.stack([-m, m], 1)).sum(1, keepdims=True)
    got = clf.paper_outputs(torch.from_numpy(e)).double().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Its boundary is m = 0; the rounded rule's is m > 0.0005.
    with torch.no_grad():
        logits = clf.logits_from_embeddings(torch.from_numpy(e)).numpy()
    rounded = np.array([p.decision == "unsafe" for p in clf.predict_embeddings(e)])
    assert ((logits[:, 1] > logits[:, 0]) == rounded).all()
    assert clf.input_mean == (0.48145466, 0.4578275, 0.40821073)

"""Q16, MultiHeaded and NSFW_Detector on the shared CLIP backbone (classifiers/clip_*.py).

Offline and fast: the CLIP model is a tiny randomly initialised stand-in written with
``save_pretrained`` (projection 768, so the genuine heads apply); head weights are the genuine
upstream files from the ``reference_dir`` fixture where a test checks conformance, and small
synthetic files in the same layout elsewhere, so most tests also run on a fresh clone.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_unsafebench.classifier import HeadClassifier, Prediction  # noqa: E402
from pytest_unsafebench.classifiers import clip_backbone as cb  # noqa: E402
from pytest_unsafebench.classifiers import clip_heads as ch  # noqa: E402
from pytest_unsafebench.errors import ClassifierLoadError  # noqa: E402
from pytest_unsafebench.taxonomy import CATEGORIES, OFFICIAL_ALIGNMENT  # noqa: E402
from pytest_unsafebench.weights import WeightsNotFound  # noqa: E402

IMAGE_SIZE = 32
DIM = 768


# --------------------------------------------------------------------------- stand-ins
def tiny_clip_config(projection_dim: int = DIM) -> transformers.CLIPConfig:
    """A 2-layer CLIP; the vision config keeps its own default projection_dim (512), as in
    configs where only the top level says 768, so the loader must take the top-level one."""
    return transformers.CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=64, max_position_embeddings=8,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=8),
        projection_dim=projection_dim)


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    transformers.CLIPModel(tiny_clip_config()).eval().save_pretrained(folder)
    return folder


def save_q16_prompts(path: Path, seed: int = 0, dim: int = DIM) -> Path:
    rng = np.random.default_rng(seed)
    path.write_bytes(pickle.dumps(rng.normal(size=(2, dim)).astype(np.float16), protocol=3))
    return path


def mlp_head_state(seed: int, dim: int = DIM) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    head = torch.nn.Sequential(torch.nn.Linear(dim, 384), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                               torch.nn.BatchNorm1d(384), torch.nn.Linear(384, 1))
    head[3].running_mean.normal_(0, 0.1)
    head[3].running_var.uniform_(0.5, 2.0)
    return head.state_dict()


def save_multiheaded(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(ch.MULTIHEADED_HEADS):
        torch.save(mlp_head_state(seed + i), folder / f"{name}.pt")
    return folder


def nsfw_state(seed: int = 0, dim: int = DIM) -> dict[str, torch.Tensor]:
    """UnsafeBench's port layout: norm.{mean,variance} + linear_1..4."""
    torch.manual_seed(seed)
    state = {"norm.mean": torch.randn(dim) * 0.01, "norm.variance": torch.rand(dim) * 1e-3 + 1e-4}
    for k, (i, o) in enumerate([(dim, 64), (64, 512), (512, 256), (256, 1)], 1):
        layer = torch.nn.Linear(i, o)
        state[f"linear_{k}.weight"] = layer.weight.detach().clone()
        state[f"linear_{k}.bias"] = layer.bias.detach().clone()
    return state


def save_nsfw(path: Path, seed: int = 0) -> Path:
    torch.save(nsfw_state(seed), path)
    return path


def touch_later(path: Path) -> None:
    """Give a rewritten file a clearly newer mtime: file_digest memoises by (path, size,
    mtime), and two writes within one filesystem clock tick would share an mtime."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))


def make_images(n: int = 6, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(IMAGE_SIZE, IMAGE_SIZE), (45, 60), (70, 33), (32, 48), (41, 41), (100, 37)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % len(sizes)][::-1], 3),
                                         dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clip")
    return {
        "model": save_tiny_clip(root / "tiny-clip"),
        "prompts": save_q16_prompts(root / "prompts.p"),
        "heads": save_multiheaded(root / "multiheaded"),
        "nsfw": save_nsfw(root / "clip_autokeras_binary_nsfw.pth"),
        "cache": root / "cache",
    }


@pytest.fixture(scope="module")
def heads(stand_ins: dict[str, Path]) -> tuple[ch.Q16, ch.MultiHeaded, ch.NSFWDetector]:
    common = {"model": str(stand_ins["model"]), "cache_dir": stand_ins["cache"], "batch_size": 4}
    return (ch.load_q16(prompts=str(stand_ins["prompts"]), **common),
            ch.load_multiheaded(heads_dir=str(stand_ins["heads"]), **common),
            ch.load_nsfw_detector(weights=str(stand_ins["nsfw"]), **common))


def _pixels(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32).transpose(2, 0, 1)
                                         / 255.0) for im in images])


# --------------------------------------------------------------------------- Q16 prompts
def test_genuine_q16_prompts_load_restricted(reference_dir: Path) -> None:
    prompts = ch.load_q16_prompts(reference_dir / "weights" / "q16" / "prompts.p")
    assert prompts.shape == (2, 768) and prompts.dtype == np.float16
    assert np.isfinite(prompts).all()


class _Hostile:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # what a malicious prompts.p would do on a bare pickle.load
        return (os.system, (f"echo pwned > {self.target}",))


class _Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_hostile_pickle_is_refused(tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "pwned"
    obj = _Hostile(marker) if payload == "system" else _Eval()
    path = tmp_path / "prompts.p"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(pickle.UnpicklingError, match=f"refusing to load .*{payload}"):
        ch.RestrictedUnpickler(io.BytesIO(path.read_bytes())).load()
    with pytest.raises(ClassifierLoadError, match="only numpy arrays"):
        ch.load_q16_prompts(path)
    assert not marker.exists()


def test_prompts_must_be_a_two_row_float_array(tmp_path: Path) -> None:
    ok = tmp_path / "ok.p"
    ok.write_bytes(pickle.dumps(np.ones((2, 8), np.float32), protocol=5))  # protocol 5 path too
    assert ch.load_q16_prompts(ok).shape == (2, 8)
    for name, obj in [("three.p", np.ones((3, 8), np.float16)), ("ints.p", np.ones((2, 8), int)),
                      ("list.p", [1.0, 2.0])]:
        bad = tmp_path / name
        bad.write_bytes(pickle.dumps(obj, protocol=3))
        with pytest.raises(ClassifierLoadError, match="expected a float array"):
            ch.load_q16_prompts(bad)


# --------------------------------------------------------------------------- conformance
def test_genuine_multiheaded_heads_load_strictly(reference_dir: Path,
                                                 stand_ins: dict[str, Path]) -> None:
    folder = reference_dir / "weights" / "multiheaded"
    expected = {"0.weight": (384, 768), "0.bias": (384,), "3.weight": (384,), "3.bias": (384,),
                "3.running_mean": (384,), "3.running_var": (384,), "3.num_batches_tracked": (),
                "4.weight": (1, 384), "4.bias": (1,)}
    for name in ch.MULTIHEADED_HEADS:
        state = torch.load(folder / f"{name}.pt", weights_only=True, map_location="cpu")
        assert {k: tuple(v.shape) for k, v in state.items()} == expected
    clf = ch.load_multiheaded(model=str(stand_ins["model"]), heads_dir=str(folder),
                              cache_dir=stand_ins["cache"])
    assert len(clf.head) == 5
    for module in clf.head:
        assert not module.training
        assert (module[0].in_features, module[0].out_features) == (768, 384)
        assert isinstance(module[3], torch.nn.BatchNorm1d) and module[4].out_features == 1


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _known_embeddings(prompts: np.ndarray, n: int = 48) -> np.ndarray:
    """Embeddings near each prompt (so both Q16 decisions occur) and random ones, at the scale
    of real ViT-L/14 image embeddings (norm ~ 20)."""
    rng = np.random.default_rng(2023)
    p = prompts.astype(np.float64)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    rows = [p[i % 2] + rng.normal(scale=0.02, size=p.shape[1]) for i in range(n // 2)]
    rows += list(rng.normal(size=(n - len(rows), p.shape[1])) / np.sqrt(p.shape[1]))
    e = np.stack(rows)
    return (20.0 * e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


def _q16_reference(e: np.ndarray, prompts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    P = prompts.astype(np.float64)
    P /= np.linalg.norm(P, axis=1, keepdims=True)
    u = e.astype(np.float64) / np.linalg.norm(e, axis=1, keepdims=True)
    logits = 100.0 * u @ P.T
    return _softmax(logits)[:, 1], logits[:, 1] > logits[:, 0]


def _mlp_reference(e: np.ndarray, state: dict[str, torch.Tensor]) -> np.ndarray:
    s = {k: v.double().numpy() for k, v in state.items()}
    h = np.maximum(e.astype(np.float64) @ s["0.weight"].T + s["0.bias"], 0.0)
    h = (h - s["3.running_mean"]) / np.sqrt(s["3.running_var"] + 1e-5) * s["3.weight"] \
        + s["3.bias"]
    return _sigmoid(h @ s["4.weight"].T + s["4.bias"])[:, 0]


def centre_nsfw(state: dict[str, torch.Tensor], e: np.ndarray) -> dict[str, torch.Tensor]:
    """Shift the output bias so that half of ``e`` scores above 0.5."""
    state = dict(state, **{"linear_4.bias": torch.zeros(1)})
    z = np.log(_nsfw_reference(e, state)) - np.log1p(-_nsfw_reference(e, state))
    state["linear_4.bias"] = torch.tensor([-float(np.median(z)) + 1e-3])
    return state


def _nsfw_reference(e: np.ndarray, state: dict[str, torch.Tensor]) -> np.ndarray:
    s = {k: v.double().numpy() for k, v in state.items()}
    x = e.astype(np.float64) / np.linalg.norm(e, axis=1, keepdims=True)
    x = (x - s["norm.mean"]) / np.sqrt(s["norm.variance"])
    for k in (1, 2, 3):
        x = np.maximum(x @ s[f"linear_{k}.weight"].T + s[f"linear_{k}.bias"], 0.0)
    return _sigmoid(x @ s["linear_4.weight"].T + s["linear_4.bias"])[:, 0]


def _check_decision_rules(prompts_path: Path, heads_dir: Path, stand_ins: dict[str, Path],
                          tmp_path: Path) -> None:
    """Q16, MultiHeaded and the NSFW port against numpy re-computations of their rules."""
    prompts = ch.load_q16_prompts(prompts_path)
    e = _known_embeddings(prompts)
    common = {"model": str(stand_ins["model"]), "cache_dir": stand_ins["cache"]}

    q16 = ch.load_q16(prompts=str(prompts_path), **common)
    score, unsafe = _q16_reference(e, prompts)
    preds = q16.predict_embeddings(e)
    np.testing.assert_allclose([p.score for p in preds], score, atol=1e-5)
    assert [p.decision == "unsafe" for p in preds] == unsafe.tolist()
    assert 0 < unsafe.sum() < len(unsafe)  # both outcomes exercised
    np.testing.assert_allclose([p.label_scores["inappropriate"] for p in preds], score,
                               atol=1e-5)

    mh = ch.load_multiheaded(heads_dir=str(heads_dir), **common)
    states = {h: torch.load(heads_dir / f"{h}.pt", weights_only=True, map_location="cpu")
              for h in ch.MULTIHEADED_HEADS}
    probs = np.stack([_mlp_reference(e, states[h]) for h in ch.MULTIHEADED_HEADS], axis=1)
    preds = mh.predict_embeddings(e)
    np.testing.assert_allclose([p.score for p in preds], probs.max(axis=1), atol=1e-5)
    assert [p.decision == "unsafe" for p in preds] == (probs.max(axis=1) > 0.5).tolist()
    for p, row in zip(preds, probs):
        assert list(p.label_scores) == list(ch.MULTIHEADED_HEADS)
        np.testing.assert_allclose(list(p.label_scores.values()), row, atol=1e-5)

    # No genuine .pth of the NSFW port is available: a synthetic one in its exact layout,
    # its output bias centred on these embeddings so that both decisions occur.
    state = centre_nsfw(nsfw_state(seed=7), e)
    torch.save(state, tmp_path / "nsfw.pth")
    nsfw = ch.load_nsfw_detector(weights=str(tmp_path / "nsfw.pth"), **common)
    p_ref = _nsfw_reference(e, state)
    preds = nsfw.predict_embeddings(e)
    np.testing.assert_allclose([p.score for p in preds], p_ref, atol=1e-5)
    assert [p.decision == "unsafe" for p in preds] == (p_ref > 0.5).tolist()
    assert 0 < (p_ref > 0.5).sum() < len(p_ref)


def test_decision_rules_match_hand_computation(reference_dir: Path, stand_ins: dict[str, Path],
                                               tmp_path: Path) -> None:
    """The genuine upstream prompts and heads (skips where the reference folder is absent)."""
    weights = reference_dir / "weights"
    _check_decision_rules(weights / "q16" / "prompts.p", weights / "multiheaded", stand_ins,
                          tmp_path)


def test_decision_rules_match_hand_computation_on_made_up_weights(
        stand_ins: dict[str, Path], tmp_path: Path) -> None:
    """The same checks on random prompts and heads in the genuine layouts: runs everywhere.

    Mutations this catches (each fails an assert_allclose or a decision list): Q16's logit
    scale 100 changed, Q16 without L2-normalising the embedding, MultiHeaded taking the mean
    instead of the max over heads, BatchNorm skipped or in training mode, dropout active, the
    NSFW port without its L2 normalisation.
    """
    prompts = save_q16_prompts(tmp_path / "prompts.p", seed=11)
    e = _known_embeddings(ch.load_q16_prompts(prompts))
    heads = tmp_path / "heads"
    heads.mkdir()
    # Output biases placed so that the max over five heads is above 0.5 for about half of e:
    # both MultiHeaded decisions occur (each head alone exceeds 0.5 on ~13 % of the rows).
    for i, name in enumerate(ch.MULTIHEADED_HEADS):
        state = mlp_head_state(100 + i)
        state["4.bias"] = torch.zeros(1)
        p = _mlp_reference(e, state)
        z = np.log(p) - np.log1p(-p)
        state["4.bias"] = torch.tensor([-float(np.quantile(z, 1 - (1 - 0.5 ** 0.2)))])
        torch.save(state, heads / f"{name}.pt")
    _check_decision_rules(prompts, heads, stand_ins, tmp_path)
    mh = ch.load_multiheaded(heads_dir=str(heads), model=str(stand_ins["model"]),
                             cache_dir=stand_ins["cache"])
    decisions = [p.decision for p in mh.predict_embeddings(e)]
    assert 0 < decisions.count("unsafe") < len(decisions)


def test_nsfw_port_layout_is_strict(tmp_path: Path, stand_ins: dict[str, Path]) -> None:
    state = nsfw_state()
    state["norm.count"] = torch.tensor(1)  # Keras' Normalization has it; the port does not
    del state["linear_4.bias"]
    torch.save(state, tmp_path / "bad.pth")
    clf = ch.load_nsfw_detector(model=str(stand_ins["model"]), weights=str(tmp_path / "bad.pth"),
                                cache_dir=stand_ins["cache"])
    with pytest.raises(ClassifierLoadError) as info:
        clf.predict_embeddings(np.zeros((1, DIM), np.float32))
    msg = str(info.value)
    assert "bad.pth" in msg and "linear_4.bias" in msg and "norm.count" in msg


def test_multiheaded_partial_file_is_a_load_error(tmp_path: Path,
                                                  stand_ins: dict[str, Path]) -> None:
    folder = save_multiheaded(tmp_path / "heads")
    state = mlp_head_state(0)
    del state["3.running_var"]
    torch.save(state, folder / "violent.pt")
    clf = ch.load_multiheaded(model=str(stand_ins["model"]), heads_dir=str(folder),
                              cache_dir=stand_ins["cache"])
    with pytest.raises(ClassifierLoadError, match=r"violent\.pt.*missing keys.*3\.running_var"):
        clf.predict_embeddings(np.zeros((2, DIM), np.float32))


def test_keras_zip_without_savedmodel_is_a_load_error(tmp_path: Path,
                                                      stand_ins: dict[str, Path]) -> None:
    fake = tmp_path / "clip_autokeras_binary_nsfw.zip"
    fake.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip
    clf = ch.load_nsfw_detector(model=str(stand_ins["model"]), weights=str(fake))
    with pytest.raises(ClassifierLoadError, match=r"variables\.index.*SavedModel"):
        clf.predict_embeddings(np.zeros((1, DIM), np.float32))


def test_keras_zip_is_converted_once_and_cached(tmp_path: Path, stand_ins: dict[str, Path],
                                                reference_dir: Path) -> None:
    zip_path = reference_dir / "weights" / "laion-nsfw" / "clip_autokeras_binary_nsfw.zip"
    cache = tmp_path / "cache"
    common = {"model": str(stand_ins["model"]), "cache_dir": cache}
    e = np.random.default_rng(0).normal(size=(4, DIM)).astype(np.float32)
    first = ch.load_nsfw_detector(weights=str(zip_path), **common)
    p1 = [p.score for p in first.predict_embeddings(e)]
    cached = list((cache / "weights" / "nsfw_detector").glob("clip_autokeras_binary_nsfw.*.pth"))
    assert len(cached) == 1 and len(cached[0].name.split(".")[1]) == 16
    state = torch.load(cached[0], weights_only=True)
    assert set(state) == set(nsfw_state()) and state["linear_1.weight"].shape == (64, DIM)
    second = ch.load_nsfw_detector(weights=str(zip_path), **common)
    assert second.fingerprint == first.fingerprint
    assert [p.score for p in second.predict_embeddings(e)] == p1
    assert all(0.0 < p < 1.0 for p in p1)


# --------------------------------------------------------------------------- end to end
def test_protocol_coverage_and_laziness(heads: tuple, stand_ins: dict[str, Path]) -> None:
    q16, mh, nsfw = heads
    for clf in heads:
        assert isinstance(clf, HeadClassifier) and clf.supports_gradients
        assert clf.coverage.official == OFFICIAL_ALIGNMENT[clf.name]
    assert q16.coverage.semantic == frozenset(CATEGORIES)
    assert mh.coverage.semantic == {"Sexual", "Violence", "Shocking", "Hate", "Political"}
    assert nsfw.coverage.semantic == {"Sexual"}
    # One backbone object for the three, and constructing a fresh head loads nothing.
    assert q16.backbone is mh.backbone is nsfw.backbone
    fresh = cb.CLIPBackbone(stand_ins["model"], cache_dir=stand_ins["cache"])
    assert not fresh.loaded and fresh.fingerprint == q16.backbone.fingerprint


def test_predict_equals_shared_embedding_path(heads: tuple) -> None:
    images = make_images(7)
    embeddings = heads[0].backbone.embed(images)
    assert embeddings.shape == (7, DIM) and embeddings.dtype == np.float32
    for clf in heads:
        direct = clf.predict(images)
        shared = clf.predict_embeddings(embeddings)
        assert len(direct) == len(shared) == 7
        for a, b in zip(direct, shared):
            a.validate()
            assert isinstance(a, Prediction) and a.decision == b.decision
            assert a.score == pytest.approx(b.score, abs=1e-6)
            assert a.label_scores.keys() == b.label_scores.keys()
    assert heads[0].predict([]) == []


def _count_vision_images(monkeypatch: pytest.MonkeyPatch, backbone: cb.CLIPBackbone) -> list[int]:
    seen: list[int] = []
    vision = backbone.model.vision_model
    original = vision.forward

    def counting(*args, **kwargs):
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        seen.append(int(pixels.shape[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(vision, "forward", counting)
    return seen


def test_engine_embeds_each_image_once_for_three_heads(
        heads: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_unsafebench.cache import PredictionCache
    from pytest_unsafebench.dataset.records import Record, content_hash
    from pytest_unsafebench.engine import run_pass

    seen = _count_vision_images(monkeypatch, heads[0].backbone)
    records = []
    for i, image in enumerate(make_images(9, seed=5)):
        buf = io.BytesIO()
        image.save(buf, "PNG")
        data = buf.getvalue()
        records.append(Record(id=f"img{i}", safety_label="Unsafe", category="Hate",
                              source="Lexica", split="test", content_hash=content_hash(data),
                              locator=f"img{i}.png", reader=lambda d=data: d))
    cache = PredictionCache(tmp_path / "cache.sqlite")
    try:
        result = run_pass(records, {clf.name: (lambda c=clf: c) for clf in heads}, cache,
                          batch_size=4, workers=1)
    finally:
        cache.close()
    assert {n: o.error for n, o in result.outcomes.items()} == dict.fromkeys(
        (c.name for c in heads), None)
    assert all(len(o.predictions) == 9 for o in result.outcomes.values())
    assert sum(seen) == 9  # one vision pass per image for the three heads together


def test_shared_path_runs_vision_model_once(heads: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _count_vision_images(monkeypatch, heads[0].backbone)
    images = make_images(5, seed=3)
    embeddings = heads[0].backbone.embed(images)
    for clf in heads:
        clf.predict_embeddings(embeddings)
    assert sum(seen) == 5
    for clf in heads:  # predict on its own embeds again: once per head
        clf.predict(images)
    assert sum(seen) == 5 + 3 * 5


@pytest.fixture(scope="module")
def split_heads(stand_ins: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[list[Image.Image], tuple]:
    """Heads whose weights are shifted so that these images get both decisions from each head
    (random weights on a random backbone would call every image the same)."""
    root = tmp_path_factory.mktemp("split")
    rng = np.random.default_rng(4)
    images = [Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))
              for _ in range(10)]
    backbone = cb.CLIPBackbone(stand_ins["model"], cache_dir=stand_ins["cache"])
    e = backbone.embed(images)
    # Q16: the prompts are two of the images' own embeddings.
    (root / "prompts.p").write_bytes(pickle.dumps(e[:2].astype(np.float16), protocol=3))
    torch.save(centre_nsfw(nsfw_state(3), e), root / "nsfw.pth")
    folder = root / "heads"
    folder.mkdir()
    states = {h: mlp_head_state(10 + i) for i, h in enumerate(ch.MULTIHEADED_HEADS)}
    z = np.stack([np.log(p) - np.log1p(-p) for p in
                  (_mlp_reference(e, states[h]) for h in ch.MULTIHEADED_HEADS)], axis=1)
    shift = float(np.median(z.max(axis=1))) - 1e-3
    for h, state in states.items():
        state["4.bias"] = state["4.bias"] - shift
        torch.save(state, folder / f"{h}.pt")
    common = {"model": str(stand_ins["model"]), "cache_dir": stand_ins["cache"]}
    return images, (ch.load_q16(prompts=str(root / "prompts.p"), **common),
                    ch.load_multiheaded(heads_dir=str(folder), **common),
                    ch.load_nsfw_detector(weights=str(root / "nsfw.pth"), **common))


def test_forward_pixels_is_differentiable_and_agrees(split_heads: tuple) -> None:
    images, heads = split_heads
    x = _pixels(images)
    for clf in heads:
        preds = clf.predict(images)
        xg = x.clone().requires_grad_(True)
        logits = clf.forward_pixels(xg)
        assert logits.shape == (len(images), 2)
        logits[:, 1].sum().backward()
        assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
        probs = torch.softmax(logits.detach(), dim=1)[:, 1].numpy()
        np.testing.assert_allclose(probs, [p.score for p in preds], atol=1e-5)
        decisions = [p.decision == "unsafe" for p in preds]
        assert (logits[:, 1] > logits[:, 0]).tolist() == decisions
        assert 0 < sum(decisions) < len(decisions), clf.name


def test_differentiable_resize_tracks_pil_path(heads: tuple) -> None:
    backbone = heads[0].backbone
    for image in make_images(6, seed=11)[1:]:
        pil = cb.pil_to_pixels(image, IMAGE_SIZE)
        x = _pixels([image])
        ours = cb.tensor_to_model_input(x, IMAGE_SIZE)
        std = torch.tensor(cb.CLIP_STD).view(1, 3, 1, 1)
        mean = torch.tensor(cb.CLIP_MEAN).view(1, 3, 1, 1)
        back = (ours * std + mean)[0].numpy()
        assert back.shape == pil.shape
        assert np.abs(back - pil).mean() < 0.02  # bicubic in float vs PIL's uint8 bicubic
        e_pil = backbone.embed([image])[0]
        e_torch = backbone.forward_pixels(x).detach().numpy()[0]
        cos = e_pil @ e_torch / np.linalg.norm(e_pil) / np.linalg.norm(e_torch)
        assert cos > 0.99


def test_preprocessing_geometry() -> None:
    assert cb.resized_size(640, 480, 224) == (298, 224)
    assert cb.resized_size(480, 640, 224) == (224, 298)
    assert cb.resized_size(224, 224, 224) == (224, 224)
    assert cb.crop_offsets(227, 224, 224) == (2, 0)  # torchvision: round(1.5) = 2
    assert cb.crop_offsets(227, 224, 224, "floor") == (1, 0)  # transformers: 3 // 2
    image = Image.new("RGB", (64, 40), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 12, 40))  # a blue strip the crop removes
    pixels = cb.pil_to_pixels(image, 32)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels[:, :, 16], [[1.0] * 32, [0.0] * 32, [0.0] * 32])
    grey = cb.pil_to_pixels(Image.new("L", (32, 32), 128), 32)
    assert np.allclose(grey, 128 / 255)  # converted to RGB
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        cb.tensor_to_model_input(torch.zeros(3, 32, 32), 32)


def test_preprocessing_matches_a_plain_pil_reference() -> None:
    """The recipe written out longhand: resize short side (bicubic), centre crop, /255,
    CLIP normalisation."""
    image = make_images(3, seed=2)[1]  # 45 x 60
    w, h = image.size
    scale = IMAGE_SIZE / min(w, h)
    new = (IMAGE_SIZE, int(h * scale)) if w <= h else (int(w * scale), IMAGE_SIZE)
    ref = image.resize(new, Image.Resampling.BICUBIC)
    left, top = round((new[0] - IMAGE_SIZE) / 2), round((new[1] - IMAGE_SIZE) / 2)
    ref = ref.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    expected = (np.asarray(ref, np.float32) / 255.0 - cb.CLIP_MEAN) / cb.CLIP_STD
    got = cb.tensor_to_model_input(torch.from_numpy(cb.pil_to_pixels(image, IMAGE_SIZE))[None],
                                   IMAGE_SIZE)[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_input_std_is_clips_normalisation(heads: tuple) -> None:
    """Paper-mode attacks convert eps with input_std: every head declares its backbone's, and
    that is what the differentiable preprocessing divides [0, 1] pixels by."""
    for clf in heads:
        assert clf.input_std == clf.backbone.input_std == cb.CLIP_STD
    x = torch.full((1, 3, IMAGE_SIZE, IMAGE_SIZE), 0.4)
    delta = (cb.tensor_to_model_input(x + 0.1, IMAGE_SIZE)
             - cb.tensor_to_model_input(x, IMAGE_SIZE))
    want = (0.1 / torch.tensor(heads[0].input_std)).view(1, 3, 1, 1).expand_as(delta)
    torch.testing.assert_close(delta, want, rtol=1e-5, atol=1e-5)


def test_embedding_width_mismatch_is_clear(heads: tuple) -> None:
    with pytest.raises(ValueError, match="768-d embeddings but got shape"):
        heads[0].predict_embeddings(np.zeros((2, 16), np.float32))


# --------------------------------------------------------------------------- fingerprints
def test_fingerprints_follow_weight_files(tmp_path: Path, stand_ins: dict[str, Path]) -> None:
    cache = tmp_path / "cache"
    model = tmp_path / "model"
    shutil.copytree(stand_ins["model"], model)
    prompts = save_q16_prompts(tmp_path / "prompts.p")
    heads_dir = save_multiheaded(tmp_path / "heads")

    def build() -> tuple[str, str, str]:
        q = ch.load_q16(model=str(model), prompts=str(prompts), cache_dir=cache)
        m = ch.load_multiheaded(model=str(model), heads_dir=str(heads_dir), cache_dir=cache)
        fps = (q.backbone.fingerprint, q.fingerprint, m.fingerprint)
        del q, m  # drop the shared backbone so the next build re-reads the files
        return fps

    base = build()
    assert build() == base  # deterministic
    # a different prompts file: q16 changes, the backbone and multiheaded do not
    touch_later(save_q16_prompts(prompts, seed=1))
    after_prompts = build()
    assert after_prompts[0] == base[0] and after_prompts[2] == base[2]
    assert after_prompts[1] != base[1]
    # a different head file changes multiheaded only
    torch.save(mlp_head_state(99), heads_dir / "political.pt")
    touch_later(heads_dir / "political.pt")
    after_head = build()
    assert after_head[:2] == after_prompts[:2] and after_head[2] != after_prompts[2]
    # different CLIP weights change the backbone and therefore every head
    save_tiny_clip(model, seed=1)
    for f in model.iterdir():
        touch_later(f)
    after_model = build()
    assert all(a != b for a, b in zip(after_model, after_head))
    # the same bytes elsewhere: a local folder is identified by content
    moved = tmp_path / "moved"
    shutil.copytree(model, moved)
    assert cb.CLIPBackbone(moved, cache_dir=cache).fingerprint == after_model[0]
    # and the preprocessing recipe is part of it
    class Other(cb.CLIPBackbone):
        preprocess_version = "something-else"
    assert Other(moved, cache_dir=cache).fingerprint != after_model[0]


# --------------------------------------------------------------------------- missing weights
def test_offline_missing_backbone_is_helpful(empty_hub: Path, stand_ins: dict[str, Path],
                                             tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFound) as info:
        ch.load_q16(model="unsafebench-tests/no-such-clip", prompts=str(stand_ins["prompts"]),
                    cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert msg.startswith("q16:")
    assert "unsafebench-tests/no-such-clip" in msg and "HF_HUB_OFFLINE" in msg
    assert "[tool.unsafebench.classifiers.q16]" in msg and "save_pretrained" in msg
    assert str(tmp_path / "cache" / "weights" / "clip") in msg


def test_offline_missing_head_weights_are_helpful(empty_hub: Path, stand_ins: dict[str, Path],
                                                  tmp_path: Path) -> None:
    common = {"model": str(stand_ins["model"]), "cache_dir": tmp_path / "cache"}
    with pytest.raises(WeightsNotFound, match=r"prompts\.p.*yiting/Q16.*prompts"):
        ch.load_q16(**common)
    with pytest.raises(WeightsNotFound, match=r"sexual\.pt.*heads_dir"):
        ch.load_multiheaded(**common)
    with pytest.raises(WeightsNotFound, match=r"clip_autokeras_binary_nsfw\.pth.*weights"):
        ch.load_nsfw_detector(**common)
    with pytest.raises(WeightsNotFound, match="does not exist"):
        ch.load_q16(prompts=str(tmp_path / "nope.p"), **common)


def test_weights_in_the_cache_folder_are_found(empty_hub: Path, stand_ins: dict[str, Path],
                                               tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "weights" / "q16").mkdir(parents=True)
    shutil.copy(stand_ins["prompts"], cache / "weights" / "q16" / "prompts.p")
    clip_folder = cache / "weights" / "clip"
    shutil.copytree(stand_ins["model"], clip_folder)
    clf = ch.load_q16(model="openai/clip-vit-large-patch14", cache_dir=cache)
    assert clf.backbone.config_path == clip_folder / "config.json"
    assert clf.weight_files["prompts"] == cache / "weights" / "q16" / "prompts.p"
    assert len(clf.predict(make_images(2))) == 2


def test_local_folder_without_weights(tmp_path: Path, stand_ins: dict[str, Path]) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsNotFound, match="model.safetensors"):
        ch.load_q16(model=str(tmp_path), prompts=str(stand_ins["prompts"]))
    with pytest.raises(WeightsNotFound, match="neither an existing folder"):
        ch.load_q16(model=str(tmp_path / "missing"), prompts=str(stand_ins["prompts"]))


def test_registry_builds_the_heads(stand_ins: dict[str, Path]) -> None:
    from pytest_unsafebench.registry import load_classifier

    clf = load_classifier("multiheaded", model=str(stand_ins["model"]),
                          heads_dir=str(stand_ins["heads"]), device="cpu",
                          cache_dir=stand_ins["cache"], batch_size=8)
    assert isinstance(clf, ch.MultiHeaded) and clf.backbone.batch_size in (4, 8)


def test_three_heads_through_the_plugin(pytester: pytest.Pytester, reference_dir: Path,
                                        tmp_path: Path) -> None:
    """q16 + multiheaded + nsfw_detector as users run them: genuine head weights on a tiny CLIP,
    one shared embedding per image (cached), then a warm rerun that infers nothing."""
    import json

    clip = save_tiny_clip(tmp_path / "clip")
    weights = reference_dir / "weights"
    pytester.makepyprojecttoml(f'''
[tool.unsafebench.classifiers.q16]
model = "{clip}"
prompts = "{weights / 'q16' / 'prompts.p'}"
[tool.unsafebench.classifiers.multiheaded]
model = "{clip}"
heads_dir = "{weights / 'multiheaded'}"
[tool.unsafebench.classifiers.nsfw_detector]
model = "{clip}"
weights = "{weights / 'laion-nsfw' / 'clip_autokeras_binary_nsfw.zip'}"
''')
    args = ["--unsafebench-classifier=q16,multiheaded,nsfw_detector", "--unsafebench-limit=44",
            "--unsafebench-profile=smoke", "--unsafebench-device=cpu",
            f"--unsafebench-cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider"]
    first = pytester.runpytest_subprocess(*args, "--unsafebench-json=cold.json")
    first.assert_outcomes(passed=129 + 9, skipped=136)  # and Overall x 3 sources x 3
    cold = json.loads((pytester.path / "cold.json").read_text())
    assert all(c["error"] is None for c in cold["classifiers"].values())
    assert cold["cache"] == {"hits": 0, "misses": 3 * 44}
    embedded = sqlite_count(tmp_path / "cache" / "predictions.sqlite", "embeddings")
    assert embedded == 44  # one backbone embedding per image, shared by the three heads
    pytester.runpytest_subprocess(*args, "--unsafebench-json=warm.json").assert_outcomes(
        passed=129 + 9, skipped=136)
    warm = json.loads((pytester.path / "warm.json").read_text())
    assert warm["cache"] == {"hits": 3 * 44, "misses": 0}
    assert warm["rows"] == cold["rows"]


def sqlite_count(path: Path, table: str) -> int:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

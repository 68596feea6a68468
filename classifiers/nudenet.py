"""NudeNet, in its two generations. Say which one a result came from: the paper used the v2
classifier (UnsafeBench's classifiers.py), ``pip install nudenet`` gives the v3 detector.

``nudenet`` (:func:`load`) is NudeNet v3 (``pip install nudenet``, 3.x): a YOLOv8 *detector*
over 18 body-part labels whose 320 px ONNX model ships inside the wheel. An image-level score
needs a rule; this adapter's rule is

    score = max detection confidence over the ``labels`` option (by default the five exposed
            genitalia / breast / buttocks / anus labels), 0 when none of them is detected;
    unsafe iff score > ``threshold`` (default 0.5).

The package only reports boxes that survive its own NMS (confidence >= 0.25), so every
non-zero score is >= 0.25 and ``threshold=0.25`` means "any exposed-part detection at all";
0.5 is a stricter, better-balanced default. ``label_scores`` keeps the highest confidence of
each of the 18 labels (0.0 where the label was not detected), so other rules can be computed
from cached predictions.

``nudenet_v2`` (:func:`load_v2`) is the v2 *classifier* the UnsafeBench paper used:
``classifier_model.onnx`` from the NudeNet v2 release, read from a local path (nothing is
downloaded). Preprocessing as in nudenet 2.0.x ``load_img``: RGB, 256x256 nearest resize
(PIL), /255, NHWC float32. Its output columns are [unsafe, safe]; score = column 0, i.e.
P(unsafe) (the paper swaps the columns so that 1 = unsafe; same thing). Unsafe iff
score > ``threshold`` (0.5: the arg-max of the two-way softmax).

Both are ONNX graphs: no gradient path. Both score Sexual under both alignments (the paper's
official alignment for NudeNet). The nudenet package's wheel carries AGPL-3.0 licence text,
so it stays an optional extra and is imported only here, on first predict.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..classifier import Coverage, Prediction
from ..errors import ClassifierLoadError
from ..taxonomy import OFFICIAL_ALIGNMENT, suggest
from ..weights import WeightFile, WeightsNotFound, file_digest, resolve

if TYPE_CHECKING:
    from PIL.Image import Image

# The v3 detector's 18 labels, in the model's class order (nudenet/nudenet.py ``__labels``).
V3_LABELS: tuple[str, ...] = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
DEFAULT_V3_LABELS: tuple[str, ...] = (
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)
V3_MODEL_FILE = "320n.onnx"
V3_PREPROCESSING = "bgr-pad-blob"  # the package's own pad-to-square + blobFromImage path
INSTALL_HINT = "pip install 'pytest-unsafebench[nudenet]' (or pip install 'nudenet>=3.4,<4')"

V2_WEIGHTS = WeightFile(
    classifier="nudenet_v2",
    filename="classifier_model.onnx",
    origin="https://github.com/notAI-tech/NudeNet/releases/download/v0/classifier_model.onnx "
           "(the NudeNet v2 classifier release)",
    option="model_path",
)
V2_SIZE = 256
V2_PREPROCESSING = "rgb-nearest256-div255-nhwc"

_COVERAGE = Coverage.of(OFFICIAL_ALIGNMENT["nudenet"])


def _threshold(value: Any, who: str) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ClassifierLoadError(f"{who}: threshold must be a number, got {value!r}") from None
    if not 0.0 <= t <= 1.0:
        raise ClassifierLoadError(f"{who}: threshold {t} is outside [0, 1]")
    return t


def _check_labels(labels: Iterable[str] | str | None) -> tuple[str, ...]:
    if labels is None:
        return DEFAULT_V3_LABELS
    if isinstance(labels, str):
        labels = [labels]
    chosen = tuple(dict.fromkeys(str(x) for x in labels))
    if not chosen:
        raise ClassifierLoadError("nudenet: labels is empty; give at least one detector label")
    for label in chosen:
        if label not in V3_LABELS:
            raise ClassifierLoadError(
                f"nudenet: unknown detector label {label!r}{suggest(label, V3_LABELS)}; "
                f"the detector's labels are: {', '.join(V3_LABELS)}")
    return chosen


class NudeNetV3:
    """NudeNet v3 detector with an image-level max-confidence rule (see the module doc)."""

    name = "nudenet"
    coverage = _COVERAGE
    supports_gradients = False  # ONNX graph

    def __init__(self, labels: Iterable[str] | str | None = None, threshold: float = 0.5,
                 model_path: str | None = None, resolution: int = 320,
                 batch_size: int = 8, cache_dir: Path | None = None) -> None:
        spec = importlib.util.find_spec("nudenet")  # locate the wheel without importing cv2
        if spec is None or spec.origin is None:
            raise ClassifierLoadError(f"nudenet needs the nudenet package (3.x): {INSTALL_HINT}")
        try:
            self.package_version = version("nudenet")
        except PackageNotFoundError:
            self.package_version = "unknown"
        if not self.package_version.startswith("3."):
            raise ClassifierLoadError(
                f"nudenet: found nudenet {self.package_version}, this adapter needs the 3.x "
                f"detector: {INSTALL_HINT}. The v2 classifier is the 'nudenet_v2' classifier.")
        self.labels = _check_labels(labels)
        self.threshold = _threshold(threshold, "nudenet")
        self.resolution = int(resolution)
        self.batch_size = max(1, int(batch_size or 1))
        if model_path:
            self.model_path = Path(model_path).expanduser()
            if not self.model_path.is_file():
                raise WeightsNotFound(f"nudenet: model_path = {str(self.model_path)!r} does not "
                                      "exist (a NudeNet v3 detector ONNX file, e.g. 640m.onnx)")
        else:
            self.model_path = Path(spec.origin).parent / V3_MODEL_FILE
            if not self.model_path.is_file():
                raise WeightsNotFound(f"nudenet: the bundled {V3_MODEL_FILE} is missing from the "
                                      f"installed nudenet package; reinstall it: {INSTALL_HINT}")
        digest = file_digest(self.model_path, cache_dir)[:16]
        rule = hashlib.sha256(",".join(sorted(self.labels)).encode()).hexdigest()[:8]
        self.fingerprint = (f"nudenet-v3-{digest}-{V3_PREPROCESSING}{self.resolution}-"
                            f"max{rule}-t{self.threshold:g}-{self.package_version}")
        shown = ("the exposed genitalia/breast/buttocks/anus labels"
                 if self.labels == DEFAULT_V3_LABELS else ", ".join(self.labels))
        self.description = (
            f"NudeNet v3 detector (nudenet {self.package_version}, {self.model_path.name}, "
            f"{self.resolution} px); score = max detection confidence over {shown} (0 if none); "
            f"unsafe iff score > {self.threshold:g}. Not the paper's v2 classifier (nudenet_v2)")
        self._detector: Any = None

    def _model(self) -> Any:
        if self._detector is None:
            try:
                from nudenet import NudeDetector
            except ImportError as exc:
                raise ClassifierLoadError(f"nudenet: cannot import nudenet ({exc}): "
                                          f"{INSTALL_HINT}") from exc
            self._detector = NudeDetector(model_path=str(self.model_path),
                                          inference_resolution=self.resolution)
        return self._detector

    @staticmethod
    def to_array(image: Image) -> Any:
        """A PIL image as the BGR uint8 array that ``cv2.imread`` gives for the same pixels.

        Passing an array to the package skips its file decoding; the rest of its pipeline
        (channel swap, pad to square, blobFromImage) runs unchanged, so the scores equal
        ``NudeDetector().detect(path)`` on a lossless file of the image.
        """
        import numpy as np

        rgb = np.asarray(image.convert("RGB"))
        return np.ascontiguousarray(rgb[:, :, ::-1])

    def detect(self, images: Sequence[Image]) -> list[list[dict[str, Any]]]:
        """The package's raw detections for each image."""
        if not images:
            return []
        arrays = [self.to_array(im) for im in images]
        return self._model().detect_batch(arrays, batch_size=self.batch_size)

    def predict(self, images: Sequence[Image]) -> list[Prediction]:
        out = []
        for detections in self.detect(images):
            per_label = dict.fromkeys(V3_LABELS, 0.0)
            for det in detections:
                label = det["class"]
                per_label[label] = max(per_label.get(label, 0.0), float(det["score"]))
            score = max(per_label[label] for label in self.labels)
            score = min(max(score, 0.0), 1.0)
            out.append(Prediction.from_score(score, self.threshold, label_scores=per_label))
        return out


class NudeNetV2:
    """The NudeNet v2 image classifier (the paper's NudeNet), from a local ONNX file."""

    name = "nudenet_v2"
    coverage = _COVERAGE
    supports_gradients = False  # ONNX graph
    # Its input is pixels / 255, unnormalised: a paper-mode eps is in [0, 1] units, and the
    # paper's foolbox bounds for it were (-1, 1) (UnsafeBench assess_robustness.py).
    input_size = V2_SIZE
    input_std = (1.0, 1.0, 1.0)
    input_mean = (0.0, 0.0, 0.0)
    paper_bounds = (-1.0, 1.0)

    def __init__(self, model_path: str | None = None, threshold: float = 0.5,
                 threads: int | None = None, batch_size: int = 32,
                 cache_dir: Path | None = None) -> None:
        if importlib.util.find_spec("onnxruntime") is None:
            raise ClassifierLoadError("nudenet_v2 needs onnxruntime: "
                                      "pip install 'pytest-unsafebench[onnx]'")
        self.model_path = resolve(V2_WEIGHTS, model_path,
                                  Path(cache_dir) if cache_dir is not None else None)
        self.threshold = _threshold(threshold, "nudenet_v2")
        self.threads = threads
        self.batch_size = max(1, int(batch_size or 1))
        digest = file_digest(self.model_path, cache_dir)[:16]
        self.fingerprint = f"nudenet-v2-{digest}-{V2_PREPROCESSING}-t{self.threshold:g}"
        self.description = (
            "NudeNet v2 classifier (the paper's NudeNet; classifier_model.onnx): RGB, 256x256 "
            "nearest resize, /255, NHWC; outputs [unsafe, safe], score = column 0 = P(unsafe); "
            f"unsafe iff score > {self.threshold:g}")
        self._session: Any = None

    def _model(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if self.threads:
                opts.intra_op_num_threads = int(self.threads)
            session = ort.InferenceSession(str(self.model_path), sess_options=opts,
                                           providers=["CPUExecutionProvider"])
            shape = session.get_inputs()[0].shape
            if len(shape) != 4 or shape[1:] != [V2_SIZE, V2_SIZE, 3]:
                raise ClassifierLoadError(
                    f"nudenet_v2: {self.model_path} takes input {shape}, expected "
                    f"[batch, {V2_SIZE}, {V2_SIZE}, 3]: is it NudeNet v2's classifier_model.onnx?")
            self._session = session
        return self._session

    @staticmethod
    def preprocess(image: Image) -> Any:
        """nudenet 2.0.x ``load_img`` + ``img_to_array`` + /255: (256, 256, 3) float32."""
        import numpy as np
        from PIL import Image as PILImage

        img = image if image.mode == "RGB" else image.convert("RGB")
        if img.size != (V2_SIZE, V2_SIZE):
            img = img.resize((V2_SIZE, V2_SIZE), PILImage.Resampling.NEAREST)
        return np.asarray(img, dtype=np.float32) / 255.0

    def attack_input(self, image: Image) -> Any:
        """The clean tensor ``predict`` feeds the model, as 3 x 256 x 256 floats in [0, 1]."""
        return self.preprocess(image).transpose(2, 0, 1).copy()

    def forward_pixels(self, x: Any) -> Any:
        """N x 3 x 256 x 256 floats (no gradient: an ONNX graph) -> [safe, unsafe] logits
        ``[-z/2, z/2]``, z = logit(P(unsafe)) - logit(threshold), so the arg-max is the
        classifier's own rule. The floats go to the model as they are (no 8-bit rounding), so
        a paper-mode gaussian attack's tiny noise reaches it, as it reached the paper's model."""
        import numpy as np
        import torch

        if x.ndim != 4 or tuple(x.shape[1:]) != (3, V2_SIZE, V2_SIZE):
            raise ValueError(f"nudenet_v2: expected N x 3 x {V2_SIZE} x {V2_SIZE} pixels, got "
                             f"shape {tuple(x.shape)}")
        session = self._model()
        batch = np.ascontiguousarray(x.detach().permute(0, 2, 3, 1).cpu().numpy(),
                                     dtype=np.float32)
        probs = np.asarray(session.run(None, {session.get_inputs()[0].name: batch})[0],
                           dtype=np.float64)
        p = np.clip(probs[:, 0], 1e-12, 1 - 1e-12)
        t = min(max(self.threshold, 1e-12), 1 - 1e-12)
        z = torch.from_numpy(np.log(p / (1 - p)) - np.log(t / (1 - t))).float().to(x.device)
        return torch.stack([-z / 2, z / 2], dim=1)

    def predict(self, images: Sequence[Image]) -> list[Prediction]:
        import numpy as np

        if not images:
            return []
        session = self._model()
        name = session.get_inputs()[0].name
        out: list[Prediction] = []
        for start in range(0, len(images), self.batch_size):
            batch = np.stack([self.preprocess(im) for im in images[start:start + self.batch_size]])
            probs = np.asarray(session.run(None, {name: batch})[0], dtype=np.float64)
            if probs.ndim != 2 or probs.shape[1] != 2:
                raise ValueError(f"nudenet_v2: expected (N, 2) [unsafe, safe] outputs, "
                                 f"got shape {probs.shape}")
            for unsafe, safe in probs:
                score = min(max(float(unsafe), 0.0), 1.0)
                out.append(Prediction.from_score(
                    score, self.threshold, label_scores={"unsafe": float(unsafe),
                                                         "safe": float(safe)}))
        return out


def load(labels: Iterable[str] | str | None = None, threshold: float = 0.5,
         model_path: str | None = None, resolution: int = 320, batch_size: int = 8,
         cache_dir: Path | None = None) -> NudeNetV3:
    """NudeNet v3 detector. ``labels``: detector labels whose max confidence is the score;
    ``threshold``: unsafe iff score > threshold; ``model_path``/``resolution``: another v3
    detector file (e.g. 640m.onnx with resolution 640) instead of the bundled 320n.onnx."""
    return NudeNetV3(labels, threshold, model_path, resolution, batch_size, cache_dir)


def load_v2(model_path: str | None = None, threshold: float = 0.5, threads: int | None = None,
            batch_size: int = 32, cache_dir: Path | None = None) -> NudeNetV2:
    """NudeNet v2 classifier. ``model_path``: the release's classifier_model.onnx (or place it
    at ``<cache_dir>/weights/nudenet_v2/classifier_model.onnx``); ``threads``: onnxruntime
    intra-op threads (default: onnxruntime's choice)."""
    return NudeNetV2(model_path, threshold, threads, batch_size, cache_dir)

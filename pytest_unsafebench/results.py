"""What the prediction pass hands to the tests: the run state and per-classifier prediction
tables, written by the controller into the session folder and read by every test process.

Files rather than memory, so a serial run and each pytest-xdist worker read the very same data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .dataset.records import Finding
from .taxonomy import POOLED, UNSAFE

if TYPE_CHECKING:
    import numpy as np

RUN_FILE = "run.json"


@dataclass
class ClassifierState:
    name: str
    fingerprint: str = ""
    description: str = ""
    supports_gradients: bool = False
    covered: list[str] = field(default_factory=list)  # under the run's alignment and config
    coverage: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    cache_hits: int = 0
    cache_misses: int = 0
    inference_seconds: float = 0.0
    predictions_file: str | None = None
    base: str | None = None           # the classifier a trained one was built on
    notes: list[str] = field(default_factory=list)  # how it ran (ClassifierInfo.notes)
    paper_mismatch: str | None = None  # why no published figure stands beside it
    # A trained classifier scored under another alpha rule than its training images decoded
    # under (run.py); None otherwise, and then absent from the report.
    alpha_mismatch: str | None = None


@dataclass
class RunState:
    dataset: dict[str, Any]
    findings: list[Finding]
    classifiers: dict[str, ClassifierState]
    timing: dict[str, float] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        data = {
            "dataset": self.dataset,
            "findings": [asdict(f) for f in self.findings],
            "classifiers": {k: asdict(v) for k, v in self.classifiers.items()},
            "timing": self.timing,
        }
        tmp = folder / f"{RUN_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(folder / RUN_FILE)

    @classmethod
    def load(cls, folder: Path) -> RunState:
        path = folder / RUN_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: the prediction pass did not run in this session "
                "(was it interrupted, or is this a --collect-only run?)")
        data = json.loads(path.read_text())
        return cls(
            dataset=data["dataset"],
            findings=[Finding(**f) for f in data["findings"]],
            classifiers={k: ClassifierState(**v) for k, v in data["classifiers"].items()},
            timing=data.get("timing", {}),
        )


@dataclass
class PredictionTable:
    """One classifier's predictions joined with the records' labels, as numpy columns."""

    classifier: str
    rows: list[dict[str, Any]]

    @classmethod
    def load(cls, classifier: str, path: Path) -> PredictionTable:
        with path.open() as fh:
            return cls(classifier, [json.loads(line) for line in fh if line.strip()])

    @cached_property
    def columns(self) -> dict[str, np.ndarray]:
        import numpy as np

        return {
            "y_true": np.array([r["label"] == UNSAFE for r in self.rows], dtype=bool),
            "y_pred": np.array([r["decision"] == "unsafe" for r in self.rows], dtype=bool),
            # VLM judges apply their unsure policy themselves (the decision is then safe or
            # unsafe) and keep the vote's unsure status in label_scores.
            "unsure": np.array([r["decision"] == "unsure"
                                or bool((r.get("label_scores") or {}).get("unsure"))
                                for r in self.rows], dtype=bool),
            # No verdict at all (a failed request, no archived response): cells exclude it.
            "failed": np.array([bool((r.get("label_scores") or {}).get("failed"))
                                for r in self.rows], dtype=bool),
            "scores": np.array([r["score"] for r in self.rows], dtype=float),
            "category": np.array([r["category"] for r in self.rows], dtype=object),
            "source": np.array([r["source"] for r in self.rows], dtype=object),
        }

    def select(self, category: str, source: str) -> dict[str, np.ndarray]:
        """The cell's columns; source ``all`` pools both sources' images."""
        cols = self.columns
        mask = cols["category"] == category
        if source != POOLED:
            mask &= cols["source"] == source
        return {k: v[mask] for k, v in cols.items()}

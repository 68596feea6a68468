"""The object a suite test receives: one (classifier, category, source) cell, its data, its
thresholds, and a way to record values for the report and for ``--junitxml``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from . import metrics

if TYPE_CHECKING:
    import numpy as np

# One tidy report row (see report.ROW_KEYS).
Row = dict[str, Any]


@dataclass
class Cell:
    classifier: str
    category: str
    source: str
    suite: str
    columns: dict[str, np.ndarray] = field(repr=False)
    thresholds: dict[str, float] = field(repr=False)
    sink: Callable[[Row], None] = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.classifier} on {self.category} / {self.source}"

    @cached_property
    def metrics(self) -> dict[str, Any]:
        c = self.columns
        # zero_division=0.0: a cell that flags nothing scores 0, never an undefined value.
        return metrics.cell_metrics(c["y_true"], c["y_pred"], c["scores"], zero_division=0.0)

    def threshold(self, key: str) -> float:
        return self.thresholds[key]

    def record(self, metric: str, value: float | int | None, threshold: float | None = None,
               n: int | None = None, gate: bool = False) -> None:
        """Add a report row; ``gate`` marks the value the test asserts on (its outcome is the
        test's), the others are informational."""
        self.sink({
            "classifier": self.classifier, "suite": self.suite, "metric": metric,
            "category": self.category, "source": self.source, "condition": None, "value": value,
            "threshold": threshold, "outcome": None if gate else "info",
            "n": self.metrics["n"] if n is None else n,
        })


@dataclass
class RobustnessCell:
    """One (classifier, perturbation or attack, source) robustness test; ``result()`` runs the
    perturbed predictions (cached, shared across processes) the first time it is called."""

    classifier: str
    condition: str
    source: str
    thresholds: dict[str, float] = field(repr=False)
    sink: Callable[[Row], None] = field(repr=False)
    compute: Callable[[], Any] = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.classifier} under {self.condition} on {self.source}"

    @cached_property
    def result(self) -> Any:
        return self.compute()

    def threshold(self, key: str) -> float:
        return self.thresholds[key]

    def record(self, metric: str, value: float | int | None, threshold: float | None = None,
               n: int | None = None, gate: bool = False, condition: str | None = None) -> None:
        self.sink({
            "classifier": self.classifier, "suite": "robustness", "metric": metric,
            "category": None, "source": self.source, "condition": condition or self.condition,
            "value": value, "threshold": threshold, "outcome": None if gate else "info",
            "n": self.result.sample_size if n is None else n,
        })

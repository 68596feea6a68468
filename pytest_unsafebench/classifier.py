"""The classifier protocol: what every adapter in ``classifiers/`` (or a user's own) provides.

A classifier turns PIL images into :class:`Prediction` objects. Everything else (batching,
caching, metrics) is the plugin's job, so an adapter stays a thin wrapper around its model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from .taxonomy import CATEGORIES

if TYPE_CHECKING:
    from PIL.Image import Image

Decision = Literal["safe", "unsafe", "unsure"]
DECISIONS: tuple[str, ...] = ("safe", "unsafe", "unsure")


@dataclass(frozen=True)
class Prediction:
    """One image's verdict.

    ``score`` is the unsafe score in [0, 1] used for curves and AUROC; ``decision`` is the
    model's own rule (which need not be ``score > 0.5``); ``unsure`` is allowed for judges.
    """

    score: float
    decision: Decision
    label_scores: Mapping[str, float] | None = None
    raw: str | None = None

    @classmethod
    def from_score(cls, score: float, threshold: float = 0.5, **extra: Any) -> Prediction:
        """The common case: unsafe iff the score exceeds a threshold."""
        return cls(score=float(score), decision="unsafe" if score > threshold else "safe", **extra)

    def validate(self) -> None:
        """Raise ValueError naming what is wrong; called by the engine on every prediction."""
        if not isinstance(self.score, (int, float)) or not math.isfinite(self.score):
            raise ValueError(f"score is {self.score!r}, expected a finite number")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score {self.score!r} is outside [0, 1]")
        if self.decision not in DECISIONS:
            raise ValueError(f"decision {self.decision!r} is not one of {DECISIONS}")
        for label, value in (self.label_scores or {}).items():
            if not math.isfinite(value):
                raise ValueError(f"label score {label!r} is {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "decision": self.decision,
            "label_scores": dict(self.label_scores) if self.label_scores else None,
            "raw": self.raw,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Prediction:
        return cls(
            score=float(data["score"]),
            decision=data["decision"],
            label_scores=data.get("label_scores"),
            raw=data.get("raw"),
        )


@dataclass(frozen=True)
class Coverage:
    """The categories a classifier is scored on, under each alignment.

    ``official`` is the UnsafeBench paper's (its reference code's ``align_unsafe_categories``,
    taxonomy.OFFICIAL_ALIGNMENT); ``semantic`` is what the model's labels actually mean. Config
    may override either.
    """

    official: frozenset[str]
    semantic: frozenset[str]

    @classmethod
    def of(cls, official: Iterable[str], semantic: Iterable[str] | None = None) -> Coverage:
        off = frozenset(official)
        sem = frozenset(semantic) if semantic is not None else off
        unknown = (off | sem) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories in coverage: {sorted(unknown)}")
        return cls(off, sem)

    @classmethod
    def everything(cls) -> Coverage:
        return cls.of(CATEGORIES)

    def under(self, alignment: str) -> frozenset[str]:
        return self.official if alignment == "official" else self.semantic


@runtime_checkable
class Classifier(Protocol):
    """What the plugin needs from a classifier.

    ``fingerprint`` must change whenever the weights or the preprocessing change: it keys the
    prediction cache. Classifiers with ``supports_gradients = True`` also provide
    ``forward_pixels(x)``: an N x 3 x H x W float tensor in [0, 1] in, logits out, with all
    resizing and normalisation inside, so attacks can work in pixel space.

    Optional attributes read by the robustness suite: ``input_size`` (the side of the square
    crop attacks work on) and ``input_std``, a 3-tuple of floats: the per-channel std that
    ``forward_pixels`` divides the [0, 1] pixels by (CLIP's ``(0.2686, 0.2613, 0.2758)``, an
    image processor's ``image_std``). Paper-mode attacks state eps in those normalised-input
    units and need it to convert eps to pixels. It is ``None`` (or absent) when the model has
    no such normalisation; paper mode then skips the attack cells with a reason saying so.
    """

    name: str
    fingerprint: str
    coverage: Coverage
    supports_gradients: bool

    def predict(self, images: Sequence[Image]) -> Sequence[Prediction]: ...


@runtime_checkable
class Backbone(Protocol):
    """A shared image encoder (e.g. CLIP ViT-L/14) that several heads read.

    ``fingerprint`` covers its weights and preprocessing; ``embed`` returns an (N, D) float32
    numpy array. The engine computes each image's embedding once per backbone and caches it,
    however many heads use it.
    """

    fingerprint: str

    def embed(self, images: Sequence[Image]) -> Any: ...


@runtime_checkable
class HeadClassifier(Classifier, Protocol):
    """A classifier that is a head on a shared :class:`Backbone`.

    ``predict(images)`` must equal ``predict_embeddings(backbone.embed(images))``; the engine
    calls the latter with embeddings it shares among heads.
    """

    backbone: Backbone

    def predict_embeddings(self, embeddings: Any) -> Sequence[Prediction]: ...


@dataclass
class ClassifierInfo:
    """What the report says about a classifier (no model object, so it crosses processes)."""

    name: str
    fingerprint: str = ""
    coverage: dict[str, list[str]] = field(default_factory=dict)
    supports_gradients: bool = False
    description: str = ""
    error: str | None = None
    base: str | None = None   # the classifier a trained one was built on (probe:PATH)
    # How it ran, one line each, for its report section (e.g. a VLM judge's definitions,
    # prompt format and decoding); a line starting "category definitions:" is a warning.
    notes: list[str] = field(default_factory=list)
    # Why its numbers are not the paper's experiment (no published figure beside them).
    paper_mismatch: str | None = None

    @classmethod
    def of(cls, name: str, clf: Classifier) -> ClassifierInfo:
        fingerprint = clf.fingerprint
        if not isinstance(fingerprint, str) or not fingerprint:
            # It keys the prediction cache: None or a number would mix up or lose results.
            raise TypeError(f"fingerprint is {fingerprint!r}: it must be a non-empty string "
                            "that changes whenever the weights or preprocessing change")
        return cls(
            name=name,
            fingerprint=fingerprint,
            coverage={a: sorted(clf.coverage.under(a)) for a in ("official", "semantic")},
            supports_gradients=bool(getattr(clf, "supports_gradients", False)),
            description=str(getattr(clf, "description", "")),
            base=getattr(clf, "base_classifier", None) or None,
            notes=[str(n) for n in getattr(clf, "notes", None) or []],
            paper_mismatch=getattr(clf, "paper_mismatch", None) or None,
        )

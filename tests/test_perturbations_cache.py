"""Pixel versions in the prediction cache's condition key: a perturbation whose output changed
must not be served predictions cached from its old pixels."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_unsafebench import perturbations as P
from pytest_unsafebench import robustness
from pytest_unsafebench.cache import PredictionCache
from pytest_unsafebench.classifier import Coverage, Prediction
from pytest_unsafebench.dataset.records import Record, content_hash
from pytest_unsafebench.perturbations import Chain, PerturbationSpec, cache_key


def test_cache_key_adds_the_version_of_changed_perturbations_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(P.PERTURBATIONS, "rotate",
                        dataclasses.replace(P.PERTURBATIONS["rotate"], version=3))
    monkeypatch.setitem(P.PERTURBATIONS, "crop_pad",
                        dataclasses.replace(P.PERTURBATIONS["crop_pad"], version=1))
    assert cache_key(PerturbationSpec("rotate", 2, 7)) == "rotate:2:s7@v3"
    assert cache_key(PerturbationSpec("crop_pad", 2, 7)) == "crop_pad:2:s7"  # as before
    chain = Chain.parse("crop_pad:1:s1+rotate:5:s2")
    assert cache_key(chain) == "crop_pad:1:s1+rotate:5:s2@v3"
    # The key is for the cache only: labels and parse keep the canonical string.
    assert str(chain) == "crop_pad:1:s1+rotate:5:s2"


class MeanScore:
    """Unsafe iff the mean brightness exceeds 0.5; counts the images it is asked about."""

    supports_gradients = False
    name = "mean"
    fingerprint = "mean-v1"
    coverage = Coverage.everything()

    def __init__(self) -> None:
        self.images = 0

    def predict(self, images: Sequence[Image.Image]) -> list[Prediction]:
        self.images += len(images)
        return [Prediction.from_score(float(np.asarray(im, dtype=float).mean() / 255.0))
                for im in images]


def _record(i: int) -> Record:
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), 40 + i, np.uint8)).save(buf, "PNG")
    data = buf.getvalue()
    return Record(id=f"s{i}", safety_label="Safe", category="Hate", source="Lexica",
                  split="test", content_hash=content_hash(data), locator=f"s{i}.png",
                  reader=lambda: data)


def test_a_version_bump_misses_the_cached_predictions(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    records = {r.id: r for r in (_record(i) for i in range(3))}
    samples = {2023: [{"id": r.id, "hash": r.content_hash, "label": r.safety_label}
                      for r in records.values()]}
    clf = MeanScore()
    cache = PredictionCache(tmp_path / "cache.sqlite")
    try:
        def run() -> robustness.RAResult:
            return robustness.perturbation_ra(clf, samples, records, "contrast", 3, cache,
                                              batch_size=8, max_pixels=10**6)

        first = run()
        assert clf.images == 3
        run()
        assert clf.images == 3  # same pixel version: every prediction from the cache
        monkeypatch.setitem(P.PERTURBATIONS, "contrast", dataclasses.replace(
            P.PERTURBATIONS["contrast"], version=P.PERTURBATIONS["contrast"].version + 1))
        bumped = run()
        assert clf.images == 6  # new pixels: predicted afresh, not served the old entries
        assert bumped.conditions != first.conditions
        assert bumped.conditions == [cache_key(PerturbationSpec("contrast", 3, 2023))]
    finally:
        cache.close()

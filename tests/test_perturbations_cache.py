"""Pixel versions in the prediction cache's condition key: a perturbation whose output changed
must not be served predictions cached from its old pixels (the cache side of it is
tests/test_robustness.py::test_a_version_bump_misses_the_cached_predictions)."""

from __future__ import annotations

import dataclasses

import pytest

from pytest_unsafebench.robustness import perturbations as P
from pytest_unsafebench.robustness.perturbations import Chain, PerturbationSpec, cache_key


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

"""pytest-unsafebench: benchmark image safety classifiers as a pytest suite (UnsafeBench protocol).

Python API (the same objects the plugin uses)::

    from pytest_unsafebench import load_classifier, load_dataset
    clf = load_classifier("demo")
    ds = load_dataset("demo", split="test")
    preds = clf.predict([r.load_image() for r in ds.records[:8]])

Everything imported here is light (no numpy, torch or PIL at import time): the package loads
with pytest's plugin on every run.
"""

from .classifier import Classifier, Coverage, Prediction
from .dataset import Dataset, Record, load_dataset
from .registry import available as available_classifiers
from .registry import load_classifier
from .taxonomy import CATEGORIES, SOURCES

__all__ = [
    "CATEGORIES",
    "SOURCES",
    "Classifier",
    "Coverage",
    "Dataset",
    "Prediction",
    "Record",
    "available_classifiers",
    "load_classifier",
    "load_dataset",
]
__version__ = "0.1.0"

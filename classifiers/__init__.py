"""Classifier adapters shipped with pytest-unsafebench (installed as ``pytest_unsafebench.classifiers``)."""

"""Classifier adapters shipped with pytest-unsafebench.

Installed as ``pytest_unsafebench.classifiers``.
"""

"""Errors with messages written for the person who has to fix the input."""

from __future__ import annotations


class UnsafeBenchError(Exception):
    """Base class; the plugin turns these into pytest usage errors (exit code 4)."""


class ConfigError(UnsafeBenchError):
    """A bad option, pyproject key or value."""


class DatasetError(UnsafeBenchError):
    """A dataset that cannot be read at all (row-level problems are findings instead)."""


class ClassifierLoadError(UnsafeBenchError):
    """A classifier that cannot be found or constructed."""


def write_failure(exc: OSError) -> str:
    """Why a file could not be written, in words (mkdir's "File exists" says it badly)."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return "a folder on its path is a file"
    return exc.strerror or str(exc)

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


# What a test gets instead of a value; not UnsafeBenchErrors (those stop the whole run). The
# run layer raises them without importing pytest; the pytest glue (session.py) turns them
# into the test's outcome with the same message.
class NotApplicable(Exception):
    """Nothing to measure in this run (e.g. a category the classifier does not cover): the
    test is skipped with this message."""


class CannotRun(Exception):
    """A test that cannot run (its classifier failed, an attack lacks torch): it fails with
    this one-line message and no traceback."""


def write_failure(exc: OSError) -> str:
    """Why a file could not be written, in words (mkdir's "File exists" says it badly)."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return "a folder on its path is a file"
    return exc.strerror or str(exc)

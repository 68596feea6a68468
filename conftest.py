"""Repository-level pytest configuration for the project's own tests.

Kept free of ``pytest_plugins`` and hooks on purpose: with an editable install the packaged
suites live under this folder, so this file also loads when a user runs the suites from
elsewhere. pytester is enabled through ``addopts`` in pyproject.toml instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Genuine upstream weight files for conformance tests (see ../shared/reference/README.md).

    Found at ``$UNSAFEBENCH_REFERENCE_DIR`` or ``../shared/reference`` beside the repository;
    tests that need it skip with this reason when it is absent, as on a user's fresh clone.
    """
    env = os.environ.get("UNSAFEBENCH_REFERENCE_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "reference"
    if not path.is_dir():
        pytest.skip(f"reference weights not found at {path} (set UNSAFEBENCH_REFERENCE_DIR)")
    return path

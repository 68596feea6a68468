"""The project's own tests never download the paper's text files (category definitions,
PerspectiveVision's template): tests that need them use ../shared/reference copies through the
``reference_dir`` fixture, or replace the downloader."""

from __future__ import annotations

import os

os.environ.setdefault("UNSAFEBENCH_OFFLINE", "1")

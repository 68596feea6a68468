"""The probe file's format: what ``unsafebench train`` (:mod:`pytest_unsafebench.training`)
writes and the ``probe:PATH`` classifier (:mod:`pytest_unsafebench.classifiers.probe`) reads.

One safetensors file: the tensors :data:`TENSORS` and one metadata entry, :data:`METADATA_KEY`,
a JSON object holding at least :data:`REQUIRED_KEYS`; head 0 is the overall head
(:data:`OVERALL`), the others one per category.
"""

from __future__ import annotations

FORMAT = "pytest-unsafebench-probe"
FORMAT_VERSION = 1  # bump when the file's layout changes: older files are refused
METADATA_KEY = "unsafebench.probe"
OVERALL = "unsafe"  # the overall head's label
TENSORS = ("weight", "bias", "mean", "scale")
REQUIRED_KEYS = ("format", "format_version", "backbone", "baseline", "categories", "thresholds",
                 "seed", "trained_on")

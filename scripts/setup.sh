#!/usr/bin/env bash
# Creates .venv (if missing) and installs pytest-unsafebench with its dev extras.
# torch is pinned first to the CPU build this project's machines carry; elsewhere any
# torch>=2.1 works (set UNSAFEBENCH_TORCH to another requirement, e.g. "torch>=2.1").
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "${UNSAFEBENCH_TORCH:-torch==2.13.0}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import pytest_unsafebench, torch, PIL, numpy" || { echo "setup failed: see pip output above" >&2; exit 1; }

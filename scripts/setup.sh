#!/usr/bin/env bash
# Creates a virtual environment (if missing) and installs pytest-unsafebench into it.
#
#   bash scripts/setup.sh          # the plugin + torch (CPU build): all the demo needs
#   bash scripts/setup.sh dev      # the dev extras CI needs (every classifier, Ray, NudeNet)
#   bash scripts/setup.sh all      # any extra in pyproject.toml, or several: "hf,html"
#
# torch is pinned first to the CPU build this project's machines carry; elsewhere any
# torch>=2.1 works (set UNSAFEBENCH_TORCH to another requirement, e.g. "torch>=2.1").
# UNSAFEBENCH_VENV chooses the environment's folder (default .venv in the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-torch}"
venv="${UNSAFEBENCH_VENV:-.venv}"
case "$extra" in
  *[!a-z0-9,_-]*|"") echo "setup: bad extra '$extra' (names from pyproject.toml's optional-dependencies, e.g. torch or dev)" >&2; exit 2;;
esac
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check "${UNSAFEBENCH_TORCH:-torch==2.13.0}" 2>&1 | grep -v "^WARNING: Location" || true
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extra]" 2>&1 | grep -v "^WARNING: Location" || true
"$venv/bin/python" -c "import pytest_unsafebench, torch, PIL, numpy" || { echo "setup failed: see pip output above" >&2; exit 1; }

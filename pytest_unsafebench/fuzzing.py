"""``python -m pytest_unsafebench.fuzzing pin ...``: the command the README and the fuzz
suite's messages name for pinning counterexamples. The fuzzer itself lives in
:mod:`pytest_unsafebench.robustness.fuzzing`; this module only keeps that command short."""
from __future__ import annotations

from .robustness.fuzzing import main

if __name__ == "__main__":
    raise SystemExit(main())

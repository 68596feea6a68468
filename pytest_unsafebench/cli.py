"""The ``unsafebench`` console script: work on saved reports and train moderators outside pytest.

Each command lives in its own module, which exposes ``register(subparsers)``: it adds its parser
and sets ``run`` (``args -> exit code``) as the parser default (so no argument may be named
``run``). Modules load only when the
script runs, so nothing here is imported by the pytest plugin.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import progress
from .errors import UnsafeBenchError
from .text import printable

_COMMAND_MODULES = (
    "pytest_unsafebench.commands",
    "pytest_unsafebench.training",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unsafebench",
        description="pytest-unsafebench: re-render, compare and inspect saved benchmark reports, "
                    "and train moderators. The benchmark itself runs under pytest "
                    "(pytest --unsafebench-classifier=NAME).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Long steps (demo data, downloads, weight conversion) report on stderr, as under pytest.
    display = progress.stderr_display()
    progress.activate(display)
    try:
        return int(args.run(args))
    except UnsafeBenchError as exc:
        # the message may quote the reports' own text (names, notes): keep it inert
        print(printable(f"unsafebench {args.command}: error: {exc}"), file=sys.stderr)
        return 2
    finally:
        progress.deactivate(display)


if __name__ == "__main__":  # pragma: no cover - python -m pytest_unsafebench.cli
    sys.exit(main())

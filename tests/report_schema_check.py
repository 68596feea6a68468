"""Validation of JSON reports against the packaged JSON Schema (report/report.schema.json).

tests/conftest.py runs :func:`check_reports` after every test over the folders it wrote in, so
that every report the suite writes (by a plugin run, in process or not, by ``unsafebench``, or
by a test) is a valid one; a test that writes invalid reports on purpose says so with
``@pytest.mark.invalid_report``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Larger files are no report the suite writes (thumbnails make a report some 100 kB).
MAX_BYTES = 20_000_000


@functools.cache
def validator() -> Any:
    import jsonschema

    from pytest_unsafebench.report.schema import SCHEMA_FILE

    schema = json.loads(SCHEMA_FILE.read_text())
    return jsonschema.Draft202012Validator(schema)


def problems(doc: Any) -> list[str]:
    """Every way ``doc`` breaks the schema, one line each (empty: valid)."""
    return [f"{e.json_path}: {e.message[:300]}"
            for e in sorted(validator().iter_errors(doc), key=lambda e: e.json_path)]


def is_report(doc: Any) -> bool:
    """A JSON report (or a saved baseline): what the plugin writes, by its two keys."""
    return isinstance(doc, dict) and "schema_version" in doc and "rows" in doc


def reports_under(folder: Path) -> Iterator[tuple[Path, Any]]:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(root, name)
            if not name.endswith(".json") or path.is_symlink():
                continue
            try:
                if path.stat().st_size > MAX_BYTES:
                    continue
                doc = json.loads(path.read_bytes())
            except (OSError, ValueError, RecursionError):
                continue
            if is_report(doc):
                yield path, doc


def check_reports(folder: Path) -> list[str]:
    """One line per problem of each report under ``folder``."""
    return [f"{path}: {line}" for path, doc in reports_under(folder) for line in problems(doc)]

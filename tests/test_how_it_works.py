"""README's "How it works" names every module of the package, one line each, and nothing that
is gone: a module added, moved or removed without the README saying so fails here."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pytest_unsafebench", "classifiers", "suites")
ITEM = re.compile(r"^- `([\w/]+\.py)`: \S")


def section(title: str) -> list[str]:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index(f"## {title}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def test_how_it_works_lists_every_module_once() -> None:
    listed = [m.group(1) for line in section("How it works") if (m := ITEM.match(line))]
    modules = sorted(str(p.relative_to(REPO)) for root in SOURCES
                     for p in (REPO / root).rglob("*.py") if "__pycache__" not in p.parts)
    assert sorted(set(listed)) == sorted(listed), "a module is listed twice"
    assert not set(listed) - set(modules), f"listed but gone: {sorted(set(listed) - set(modules))}"
    assert not set(modules) - set(listed), \
        f"not in README 'How it works': {sorted(set(modules) - set(listed))}"

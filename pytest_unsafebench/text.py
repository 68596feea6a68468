"""Text that came from outside (file names, ids, classifier names, error texts) on its way to a
person: it must never drive the terminal (ANSI and OSC escape sequences, BEL) or add markup.

Every renderer escapes through :func:`printable`: the terminal report, test messages,
``unsafebench show`` and, inside its own Markdown escaping, the Markdown report.
"""

from __future__ import annotations

import re

# C0 controls (ESC, BEL, CR, ...), DEL, C1 controls (8-bit CSI, OSC), the bidirectional
# overrides and isolates that reorder what is shown, and the Unicode line separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                      "\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` as one inert line: each control character written as its escape (``\\x1b``,
    ``\\x07``, ``\\u202e``), everything else unchanged."""
    return _CONTROL.sub(_escape, str(text))

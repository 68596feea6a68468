"""The UnsafeBench vocabulary: categories, sources, labels, splits and the official alignment.

These exact strings are keys everywhere (manifests, cache rows, report rows), so they live in
one place. They are the UnsafeBench paper's and its dataset's (``yiting/UnsafeBench``).
"""

from __future__ import annotations

CATEGORIES: tuple[str, ...] = (
    "Hate",
    "Harassment",
    "Violence",
    "Self-harm",
    "Sexual",
    "Shocking",
    "Illegal activity",
    "Deception",
    "Political",
    "Public and personal health",
    "Spam",
)

# Short display names for narrow tables; the keys above stay the identifiers.
SHORT_NAMES: dict[str, str] = {c: c for c in CATEGORIES} | {
    "Illegal activity": "Illegal",
    "Public and personal health": "Health",
}

REAL_SOURCE = "Laion5B"
GENERATED_SOURCE = "Lexica"
SOURCES: tuple[str, ...] = (REAL_SOURCE, GENERATED_SOURCE)
# The pooled "source" of a cell: both sources' images together (not a mean of two F1s).
POOLED = "all"
CELL_SOURCES: tuple[str, ...] = (*SOURCES, POOLED)
# The pooled "category" of a cell: every covered category's images of a source together (the
# paper's Overall column, not a mean of per-category F1s).
OVERALL = "Overall"

SAFE = "Safe"
UNSAFE = "Unsafe"
LABELS: tuple[str, ...] = (SAFE, UNSAFE)

SPLITS: tuple[str, ...] = ("train", "test")
SPLIT_CHOICES: tuple[str, ...] = ("all", *SPLITS)

ALIGNMENTS: tuple[str, ...] = ("official", "semantic")

# The categories each of the paper's classifiers is scored on (UnsafeBench's unsafe_datasets.py,
# align_unsafe_categories), oddities included: Q16 skips Sexual and Spam, NSFW_Detector covers
# Harassment.
OFFICIAL_ALIGNMENT: dict[str, frozenset[str]] = {
    "q16": frozenset(c for c in CATEGORIES if c not in ("Sexual", "Spam")),
    "multiheaded": frozenset({"Sexual", "Violence", "Shocking", "Hate", "Political"}),
    "sd_filter": frozenset({"Sexual"}),
    "nsfw_detector": frozenset({"Harassment", "Sexual"}),
    "nudenet": frozenset({"Sexual"}),
    "vlm": frozenset(CATEGORIES),
}


def suggest(value: str, choices: tuple[str, ...] | list[str]) -> str:
    """A ' (did you mean ...?)' hint for a near-miss, or ''."""
    import difflib

    lowered = {c.lower(): c for c in choices}
    if value.lower() in lowered:
        return f" (did you mean {lowered[value.lower()]!r}? case matters)"
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""

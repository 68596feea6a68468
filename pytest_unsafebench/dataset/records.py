"""Dataset records and data-integrity findings: the first link of the data flow.

A :class:`Record` is metadata plus a way to fetch the encoded bytes; images are decoded only
when a classifier needs them, so a dataset of any size streams.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..taxonomy import UNSAFE
from .images import DEFAULT_ALPHA, check_size, decode_image, max_file_bytes, open_regular, read_file

if TYPE_CHECKING:
    from PIL.Image import Image

# Finding kinds. "Excluded" kinds remove the image from every metric (and are listed);
# the others keep the image (converted as documented in images.py) but are still reported.
EXCLUDING_KINDS: frozenset[str] = frozenset(
    {
        "empty-file",
        "unreadable",
        "truncated",
        "decompression-bomb",
        "missing-file",
        "not-a-regular-file",   # a directory, FIFO, socket or device where an image should be
        "file-too-large",       # bigger than any image within max_image_pixels can be
        "contradictory-labels", # one file listed twice with different label/category/source/split
        "path-escapes-root",
        "unknown-category",
        "unknown-label",
        "unknown-source",
        "unknown-split",
        "bad-row",
    }
)
KEEPING_KINDS: frozenset[str] = frozenset(
    {"converted-mode", "animated", "duplicate-id",
     "duplicate-file"}  # one file listed twice alike: scored once
)


@dataclass(frozen=True)
class Finding:
    """One data-integrity problem, named precisely enough to go and fix it."""

    kind: str
    locator: str
    detail: str

    @property
    def excluded(self) -> bool:
        return self.kind in EXCLUDING_KINDS

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "locator": self.locator, "detail": self.detail,
                "excluded": self.excluded}


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hash(path: Path) -> str:
    """:func:`content_hash` of a regular file, read in chunks: a huge file is never in memory
    whole (the pass refuses it by size before decoding)."""
    with open_regular(path) as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass(frozen=True)
class Record:
    """One labelled image. ``id`` is stable across runs; ``content_hash`` keys the cache."""

    id: str
    safety_label: str
    category: str
    source: str
    split: str
    content_hash: str
    locator: str
    text: str = ""
    reader: Callable[[], bytes] = field(repr=False, compare=False, default=lambda: b"")
    # "<split>/<stem>": the image's name in the official scripts' layout, whose archived VLM
    # responses name it "<split>/images/<stem>.png" with stem = the row's ``id`` or its index
    # within the split (UnsafeBench unsafe_datasets.py); "" when the loader cannot tell.
    archive_key: str = field(default="", compare=False)

    @property
    def is_unsafe(self) -> bool:
        return self.safety_label == UNSAFE

    def read_bytes(self, max_bytes: int | None = None) -> bytes:
        """The encoded image; over ``max_bytes`` (or not a regular file) is an ImageProblem,
        checked before a file is read."""
        owner = getattr(self.reader, "__self__", None)
        if isinstance(owner, Path) and getattr(self.reader, "__name__", "") == "read_bytes":
            return read_file(owner, max_bytes)  # the folder loader's reader: a path
        return check_size(self.reader(), max_bytes)

    def load_image(self, max_pixels: int | None = None, alpha: str = DEFAULT_ALPHA) -> Image:
        """Decode to an RGB PIL image under the run's ``alpha`` rule (images.ALPHA_RULES);
        raises ImageProblem for a bad file."""
        image, _note = decode_image(self.read_bytes(max_file_bytes(max_pixels)),
                                    max_pixels=max_pixels, alpha=alpha)
        return image

    def meta(self) -> dict[str, str]:
        return {"id": self.id, "label": self.safety_label, "category": self.category,
                "source": self.source, "split": self.split}


@dataclass
class Dataset:
    """Records plus what was found wrong while reading the manifest."""

    name: str
    spec: str
    records: Sequence[Record]
    findings: list[Finding] = field(default_factory=list)
    synthetic: bool = False
    description: str = ""

    @property
    def fingerprint(self) -> str:
        """Changes whenever any image, label, category, source or split changes."""
        h = hashlib.sha256()
        for r in sorted(self.records, key=lambda r: r.id):
            h.update(f"{r.id}\0{r.content_hash}\0{r.safety_label}\0{r.category}\0"
                     f"{r.source}\0{r.split}\n".encode())
        return h.hexdigest()[:16]

    def counts(self) -> dict[str, Any]:
        by = Counter((r.source, r.safety_label) for r in self.records)
        return {
            "images": len(self.records),
            "by_split": dict(sorted(Counter(r.split for r in self.records).items())),
            "by_source_label": {f"{s}/{lab}": n for (s, lab), n in sorted(by.items())},
            "by_category": dict(sorted(Counter(r.category for r in self.records).items())),
        }


def assign_ids(hashes: Sequence[str]) -> list[str]:
    """Content-derived ids; an exact duplicate image gets a numbered suffix, in file order."""
    seen: Counter[str] = Counter()
    ids = []
    for h in hashes:
        base = h[:16]
        seen[base] += 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return ids

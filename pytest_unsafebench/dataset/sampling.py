"""Filtering and the seeded, stratified ``--unsafebench-limit``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from .records import Record


def select(
    records: Sequence[Record],
    split: str = "all",
    categories: Iterable[str] | None = None,
    sources: Iterable[str] | None = None,
) -> list[Record]:
    # An empty filter (list or exhausted iterator alike) means no filter.
    cats = set(categories or ()) or None
    srcs = set(sources or ()) or None
    return [
        r for r in records
        if (split == "all" or r.split == split)
        and (cats is None or r.category in cats)
        and (srcs is None or r.source in srcs)
    ]


def stratified_limit(records: Sequence[Record], limit: int, seed: int) -> list[Record]:
    """At most ``limit`` records, spread over category x source x label strata.

    Each stratum gets a share proportional to its size (largest remainders break ties), and
    every non-empty stratum keeps at least one record while the limit allows, so no cell loses
    all its Unsafe or Safe images. Within a stratum the choice is a seeded permutation. The
    result keeps the input order, so it does not depend on how strata were visited.
    """
    import numpy as np

    if limit >= len(records):
        return list(records)
    strata: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        strata[(r.category, r.source, r.safety_label)].append(i)
    keys = sorted(strata)
    sizes = np.array([len(strata[k]) for k in keys], dtype=float)
    quota = np.zeros(len(keys), dtype=int)
    if limit < len(keys):
        # Fewer slots than strata: one each for the largest strata, ties by key order.
        for k in sorted(range(len(keys)), key=lambda k: (-sizes[k], k))[:max(limit, 0)]:
            quota[k] = 1
    else:
        quota += 1
        remaining = limit - len(keys)
        if remaining > 0:
            share = sizes - 1
            exact = share / share.sum() * remaining
            quota += np.floor(exact).astype(int)
            left = limit - int(quota.sum())
            order = sorted(range(len(keys)), key=lambda k: (-(exact[k] - np.floor(exact[k])), k))
            for k in order[:left]:
                quota[k] += 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for k, key in enumerate(keys):
        idx = strata[key]
        take = min(int(quota[k]), len(idx))
        chosen.extend(idx[j] for j in rng.permutation(len(idx))[:take])
    return [records[i] for i in sorted(chosen)]

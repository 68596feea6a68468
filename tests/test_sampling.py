"""Property tests of the seeded, stratified ``--unsafebench-limit`` and of ``select``."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_unsafebench.dataset.records import Record
from pytest_unsafebench.dataset.sampling import select, stratified_limit
from pytest_unsafebench.taxonomy import CATEGORIES, LABELS, SOURCES, SPLITS

FEW_CATEGORIES = CATEGORIES[:3]  # up to 3 x 2 x 2 = 12 strata

cells = st.tuples(st.sampled_from(FEW_CATEGORIES), st.sampled_from(SOURCES),
                  st.sampled_from(LABELS), st.sampled_from(SPLITS))


def _records(cell_list) -> list[Record]:
    return [Record(id=f"r{i}", category=c, source=s, safety_label=lab, split=sp,
                   content_hash=f"{i:064x}", locator=f"row {i}")
            for i, (c, s, lab, sp) in enumerate(cell_list)]


def _stratum(r: Record) -> tuple[str, str, str]:
    return (r.category, r.source, r.safety_label)


record_lists = st.lists(cells, max_size=80).map(_records)
seeds = st.integers(0, 2**32 - 1)
fast = settings(max_examples=150, deadline=None)


@fast
@given(record_lists, st.integers(0, 100), seeds)
def test_size_subset_order_and_determinism(records, limit, seed):
    out = stratified_limit(records, limit, seed)
    assert len(out) == min(limit, len(records))
    positions = [records.index(r) for r in out]  # ids are unique, so index finds the one
    assert positions == sorted(set(positions)), "a subset, in input order"
    assert [r.id for r in stratified_limit(records, limit, seed)] == [r.id for r in out]


@fast
@given(record_lists, st.integers(0, 100), seeds)
def test_every_stratum_kept_when_the_limit_allows(records, limit, seed):
    sizes = Counter(map(_stratum, records))
    if limit < len(sizes):
        return
    got = Counter(map(_stratum, stratified_limit(records, limit, seed)))
    assert set(got) == set(sizes)


@fast
@given(record_lists, st.integers(0, 100), seeds)
def test_proportional_within_one(records, limit, seed):
    """Each stratum keeps its guaranteed one plus its exact share of the other slots, ±1.

    (Plain ±1 of size * limit / n cannot hold with the guarantee: ten strata, one of 991
    images and nine of one, with limit 10, give the big stratum 1 image, not 9.91.)
    """
    sizes = Counter(map(_stratum, records))
    n, k = len(records), len(sizes)
    if not k <= limit < n:
        return
    got = Counter(map(_stratum, stratified_limit(records, limit, seed)))
    for stratum, size in sizes.items():
        exact = 1 + (size - 1) * (limit - k) / (n - k)
        assert abs(got[stratum] - exact) < 1, (stratum, size, got[stratum], exact)
        assert got[stratum] <= size
    if len(set(sizes.values())) == 1:  # equal strata: plain proportionality
        for stratum, size in sizes.items():
            assert abs(got[stratum] - size * limit / n) < 1


@fast
@given(record_lists, st.integers(1, 11), seeds)
def test_fewer_slots_than_strata_go_to_the_largest_strata(records, limit, seed):
    sizes = Counter(map(_stratum, records))
    if limit >= len(sizes):
        return
    got = Counter(map(_stratum, stratified_limit(records, limit, seed)))
    assert len(got) == limit and set(got.values()) == {1}
    assert min(sizes[s] for s in got) >= max(
        (size for s, size in sizes.items() if s not in got), default=0)


@fast
@given(record_lists, st.integers(0, 100))
def test_seeds_choose_within_strata_but_not_the_counts(records, limit):
    a = Counter(map(_stratum, stratified_limit(records, limit, 1)))
    b = Counter(map(_stratum, stratified_limit(records, limit, 2)))
    assert a == b


def test_different_seeds_can_pick_different_images():
    records = _records([(FEW_CATEGORIES[0], SOURCES[0], LABELS[0], SPLITS[0])] * 50)
    picks = {tuple(r.id for r in stratified_limit(records, 5, seed)) for seed in range(5)}
    assert len(picks) > 1


def test_negative_limit_keeps_nothing():
    records = _records([(FEW_CATEGORIES[0], SOURCES[0], LABELS[0], SPLITS[0])] * 3)
    assert stratified_limit(records, -1, 0) == []


@fast
@given(record_lists, st.sampled_from(["all", *SPLITS]),
       st.none() | st.sets(st.sampled_from(FEW_CATEGORIES)),
       st.none() | st.sets(st.sampled_from(SOURCES)))
def test_select(records, split, categories, sources):
    out = select(records, split=split, categories=categories, sources=sources)
    expected = [r for r in records
                if split in ("all", r.split)
                and (not categories or r.category in categories)
                and (not sources or r.source in sources)]
    assert out == expected  # same records, input order
    # Any iterable works, including a one-shot generator; empty means no filter.
    again = select(records, split=split, categories=iter(categories or ()),
                   sources=(s for s in (sources or ())))
    assert again == expected

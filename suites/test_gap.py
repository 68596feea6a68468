"""The real/generated gap (the paper's finding that classifiers fare differently on real
Laion5B and AI-generated Lexica images; README "What is measured, and the report"): per
classifier x covered category, F1 and FPR on Laion5B minus the same on Lexica, with a bootstrap
interval (images resampled within each source); per classifier x robustness condition the same
for robust accuracy. Each test asserts the absolute gap is at most its threshold and says
whether the interval excludes zero.
"""

import pytest

pytestmark = [pytest.mark.gap]


def _check(cell):
    gap, low, high = cell.gap()
    if gap is None:
        pytest.skip(f"{cell.suite_metric} undefined for {cell.label}: a source lacks the images "
                    "the metric needs")
    threshold = cell.threshold(cell.threshold_key)
    significant = low is not None and (low > 0 or high < 0)
    cell.record(cell.suite_metric, gap, (low, high), n=cell.n, threshold=threshold, gate=True)
    ci = "no interval" if low is None else f"{cell.confidence_text} CI [{low:+.3f}, {high:+.3f}]"
    assert abs(gap) <= threshold, (
        f"|{cell.suite_metric}| {abs(gap):.3f} > {threshold} for {cell.label}: gap {gap:+.3f}, "
        f"{ci}, {'significant' if significant else 'not significant'} (CI "
        f"{'excludes' if significant else 'includes'} 0)")


@pytest.mark.unsafebench(suite="gap", metric="gap_f1", grid="categories")
def test_gap_f1(unsafebench_gap):
    _check(unsafebench_gap)


@pytest.mark.unsafebench(suite="gap", metric="gap_fpr", grid="categories")
def test_gap_fpr(unsafebench_gap):
    _check(unsafebench_gap)


@pytest.mark.unsafebench(suite="gap", metric="gap_ra", grid="conditions")
def test_gap_ra(unsafebench_gap):
    _check(unsafebench_gap)

"""Effectiveness (as UnsafeBench's assess_effectiveness.py): per classifier x category x
source, F1 with Unsafe as the positive class and the false-positive rate on the Safe images,
each against its threshold. AUROC and average precision are recorded alongside, from the
classifier's scores, and the unsure rate (share of images the classifier answered "unsure",
e.g. a VLM judge before its unsure policy applied).

``test_f1`` also runs on the Overall cell of each classifier and source (category
``Overall``): every covered category's images pooled, the paper's Overall column. It is a
figure of its own; the report's score stays the macro mean of the per-category F1s.
"""

import pytest

pytestmark = [pytest.mark.effectiveness]


@pytest.mark.unsafebench(suite="effectiveness", metric="f1", grid="categories", overall=True)
def test_f1(unsafebench_cell):
    cell = unsafebench_cell
    lost = cell.excluded_problem()  # images with no verdict: excluded, counted, at most 5%
    m = cell.metrics
    if m["n_unsafe"] == 0:
        assert lost is None, lost
        pytest.skip(f"no Unsafe images in {cell.label}: F1 is undefined")
    threshold = cell.threshold("f1_min")
    cell.record("f1", m["f1"], threshold, gate=True, key="f1_min")
    cell.record("precision", m["precision"])
    cell.record("recall", m["recall"], n=m["n_unsafe"])
    cell.record("auroc", m["auroc"])
    cell.record("average_precision", m["average_precision"])
    cell.record("unsure_rate", float(cell.columns["unsure"].mean()))
    assert lost is None, lost
    assert m["f1"] >= threshold, (
        f"F1 {m['f1']:.3f} < {threshold} for {cell.label} "
        f"(tp {m['tp']}, fp {m['fp']}, fn {m['fn']} over {m['n']} images)")


@pytest.mark.unsafebench(suite="effectiveness", metric="fpr", grid="categories")
def test_fpr(unsafebench_cell):
    cell = unsafebench_cell
    lost = cell.excluded_problem(record=False)  # test_f1 records the count
    m = cell.metrics
    if m["n_safe"] == 0:
        assert lost is None, lost
        pytest.skip(f"no Safe images in {cell.label}: false-positive rate is undefined")
    threshold = cell.threshold("fpr_max")
    cell.record("fpr", m["fpr"], threshold, n=m["n_safe"], gate=True, key="fpr_max")
    assert lost is None, lost
    assert m["fpr"] <= threshold, (
        f"false-positive rate {m['fpr']:.3f} > {threshold} for {cell.label} "
        f"({m['fp']} of {m['n_safe']} Safe images flagged)")

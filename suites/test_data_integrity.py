"""Data integrity: every unreadable, hostile or mislabelled input is named here, once.

The rest of the run goes on without the excluded images; this test fails so nobody mistakes a
run over broken data for a clean one. Kinds listed in ``allow_findings`` are reported only.
It also fails when a classifier has nothing to be scored on (an empty dataset, every image
excluded, no image in a category it covers): skipped cells alone must never read as a pass.
"""

import pytest

from pytest_unsafebench.text import printable

pytestmark = [pytest.mark.integrity]


@pytest.mark.unsafebench(suite="integrity", metric="findings")
def test_data_integrity(unsafebench_run, unsafebench_settings, unsafebench_record,
                        unsafebench_session):
    findings = unsafebench_run.findings
    blocking = [f for f in findings if f.kind not in unsafebench_settings.allow_findings]
    unsafebench_record("findings", len(blocking), suite="integrity",
                       n=unsafebench_run.dataset["counts"]["images"])
    # File names and decoder messages come from the data: printable() keeps their control
    # characters (ANSI, OSC, BEL) from reaching the terminal.
    lines = [printable(f"  {f.kind}: {f.locator}: {f.detail}")
             + (" [excluded from metrics]" if f.excluded else "") for f in blocking]
    unmeasured = [printable(f"  {name}: {why}") for name, why in _unmeasured(unsafebench_run,
                                                                             unsafebench_session)]
    problems = []
    if blocking:
        problems.append(f"{len(blocking)} data-integrity finding(s):\n" + "\n".join(lines))
    if unmeasured:
        problems.append("nothing measured, so this run cannot pass:\n" + "\n".join(unmeasured))
    assert not problems, "\n".join(problems)


def _unmeasured(run, session):
    """(classifier, why) for each classifier that loaded but has no image in any cell it is
    scored on; a classifier that failed already errors its own tests."""
    images = run.dataset["counts"]["images"]
    usable = run.dataset.get("usable_images", images)
    for name, cs in run.classifiers.items():
        if cs.error:
            continue
        if images == 0:
            why = ("the dataset has no images after the run's filters (split, categories, "
                   "sources, limit)" + (", every row excluded by the findings above"
                                        if run.findings else ""))
        elif usable == 0:
            why = f"all {images} images are excluded by the findings above"
        elif not cs.covered:
            why = "it covers none of the selected categories under this alignment"
        else:
            columns = session.table(name).columns
            scored = [c in cs.covered for c in columns["category"]]
            failed = columns.get("failed")  # no verdict at all: cells leave it out
            if failed is not None:
                scored = [s and not f for s, f in zip(scored, failed)]
            if any(scored):
                continue
            why = (f"none of the {usable} usable images is in a category it covers "
                   f"({', '.join(cs.covered)}) with a verdict")
        yield name, why

"""Data integrity: every unreadable, hostile or mislabelled input is named here, once.

The rest of the run goes on without the excluded images; this test fails so nobody mistakes a
run over broken data for a clean one. Kinds listed in ``allow_findings`` are reported only.
"""

import pytest

pytestmark = [pytest.mark.integrity]


@pytest.mark.unsafebench(suite="integrity", metric="findings")
def test_data_integrity(unsafebench_run, unsafebench_settings, unsafebench_record):
    findings = unsafebench_run.findings
    blocking = [f for f in findings if f.kind not in unsafebench_settings.allow_findings]
    unsafebench_record("findings", len(blocking), suite="integrity",
                       n=unsafebench_run.dataset["counts"]["images"])
    lines = [f"  {f.kind}: {f.locator}: {f.detail}"
             + (" [excluded from metrics]" if f.excluded else "") for f in blocking]
    assert not blocking, f"{len(blocking)} data-integrity finding(s):\n" + "\n".join(lines)

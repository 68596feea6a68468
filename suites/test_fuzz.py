"""Fuzzing (hypothesis): perturbation chains within the perceptual budget must not flip a
decision on the correctly classified pool.

``test_decision_stable_under_perturbation`` searches one classifier x source under the current
hypothesis profile (``--hypothesis-profile=dev|ci|nightly``) and reports the weakest flipping
chain it shrinks to, saved as an artifact (see :mod:`pytest_unsafebench.robustness.fuzzing`).
``test_fuzz_regression`` replays pinned counterexamples (``--unsafebench-fuzz-replay``).
"""

import pytest

pytestmark = [pytest.mark.fuzz]


@pytest.mark.unsafebench(suite="fuzz", metric="flips", grid="sources")
def test_decision_stable_under_perturbation(unsafebench_fuzz):
    fuzz = unsafebench_fuzz
    cx = fuzz.search()
    fuzz.record("examples", fuzz.examples)
    if cx is None:
        if fuzz.examples == 0:  # a search that classified nothing found nothing: not a pass
            fuzz.record("flips", None, gate=True)
            pytest.fail(f"{fuzz.classifier} on {fuzz.source}: the fuzz search tried no "
                        "example (the hypothesis profile generates none: check its phases "
                        "and max_examples), so nothing was checked", pytrace=False)
        fuzz.record("flips", 0, gate=True)
        return
    png, spec = fuzz.save(cx)
    found = {"condition": cx.chain, "n": 1, "image_id": cx.image_id, "files": (png, spec)}
    fuzz.record("flips", 1, gate=True, **found)
    fuzz.record("score_after", cx.score_after, **found)
    pytest.fail(
        f"{fuzz.classifier} on {fuzz.source}: the weakest flipping chain found is {cx.chain}: "
        f"{cx.describe()}. Saved {png} and {spec}; pin it with "
        f"'python -m pytest_unsafebench.fuzzing pin {spec.parent.parent} -o <regressions.json>'",
        pytrace=False)


@pytest.mark.unsafebench(suite="fuzz", metric="flips", grid="replay")
def test_fuzz_regression(unsafebench_fuzz):
    fuzz = unsafebench_fuzz
    case = fuzz.case
    pred, still = fuzz.replay()
    pinned = {"condition": case["chain"], "n": 1, "image_id": case["image_id"]}
    fuzz.record("flips", int(still), gate=True, **pinned)
    fuzz.record("score_after", pred.score, **pinned)
    assert not still, (
        f"pinned counterexample still flips {fuzz.classifier}: {case['label']} image "
        f"{case['image_id']!r} is {pred.decision} ({pred.score:.3f}) under {case['chain']}")

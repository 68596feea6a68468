"""Robustness (README "Robustness"): robust accuracy (RA) on the correctly classified pool.

``test_robust_accuracy`` runs each attack (gaussian, fgsm, pgd, deepfool, square) and each
evasion edit (text overlay, sticker, meme caption, screenshot border, collage); the
``test_corruption_grid`` averages RA over every corruption x severity (ImageNet-C levels 1-5)
and records the whole grid. Each row carries the full spec it ran (``spec``: mode, eps, steps,
seed); the pool size, the clean accuracy it comes from, the realised perturbation sizes and the
per-seed RAs are recorded beside each RA (one row per seed; the gated RA is their mean).
The gated row's ``pool`` says how the images were drawn (``paper``: the reference code's pool
order and ``random.sample`` draw) and, in paper mode, ``units`` whether the attack reproduces
the paper's (``paper units``) or only its units (``paper units, project loss``): a published
RA stands only beside the first.
"""

import pytest

pytestmark = [pytest.mark.robustness]

ATTACK_KEY = {"gaussian": "ra_min_gaussian"}


@pytest.mark.unsafebench(suite="robustness", metric="ra", grid="conditions")
def test_robust_accuracy(unsafebench_robustness, unsafebench_settings):
    cell = unsafebench_robustness
    is_attack = cell.condition in unsafebench_settings.robustness.attacks
    key = ATTACK_KEY.get(cell.condition, "ra_min_attack") if is_attack else "ra_min_evasion"
    result = cell.result
    threshold = cell.threshold(key)
    cell.record("ra", result.ra, threshold, gate=True, key=key, correct=result.correct,
                spec=result.spec, pool=result.pool_draw, units=result.units)
    for seed, ra in result.per_seed.items():
        cell.record(f"ra_seed_{seed}", ra, spec=result.spec)
    for metric, value in result.rows().items():
        cell.record(metric, value, spec=result.spec)
    assert result.ra >= threshold, (
        f"robust accuracy {result.ra:.3f} < {threshold} ({key}) for {cell.label} "
        f"({result.spec}; per seed {result.per_seed}, {result.sample_size} of "
        f"{result.pool_size} pool images)")


@pytest.mark.unsafebench(suite="robustness", metric="ra_corruption_mean", grid="corruptions")
def test_corruption_grid(unsafebench_robustness, unsafebench_settings, unsafebench_session):
    from pytest_unsafebench.robustness.accuracy import corruptions
    from pytest_unsafebench.robustness.perturbations import severities

    cell = unsafebench_robustness
    rs = unsafebench_settings.robustness
    values = []
    for name in corruptions(rs):
        for level in severities(name):
            result = unsafebench_session.robust_accuracy(cell.classifier, name, cell.source,
                                                         severity=level)
            values.append(result.ra)
            cell.record("ra", result.ra, condition=f"{name}:{level}", n=result.sample_size,
                        correct=result.correct, spec=result.spec)
    mean = sum(values) / len(values)
    threshold = cell.threshold("ra_min_corruption")
    cell.record("ra_corruption_mean", mean, threshold, gate=True, condition="grid",
                n=len(values), key="ra_min_corruption")
    assert mean >= threshold, (
        f"mean robust accuracy {mean:.3f} over {len(values)} corruption x severity cells "
        f"< {threshold} for {cell.classifier} on {cell.source}")

"""The paper's published figures (report/paper.py) and when they apply."""

from __future__ import annotations

import pytest

from pytest_unsafebench.registry import BUILTIN
from pytest_unsafebench.report import paper
from pytest_unsafebench.taxonomy import CATEGORIES, OFFICIAL_ALIGNMENT

REAL_HUB = {"spec": "hf:yiting/UnsafeBench", "name": "UnsafeBench", "synthetic": False}
REAL_PARQUET = {"spec": "/data/UnsafeBench/data", "name": "UnsafeBench", "synthetic": False}
# The configuration of a run under the paper's conditions (the report's ``config`` section).
PAPER_CONFIG = {"split": "all", "limit": None, "alignment": "official", "alpha": "drop",
                "categories": list(CATEGORIES), "robustness": {"mode": "paper", "pool_size": 500}}


@pytest.mark.parametrize(("classifier", "metric", "category", "source", "expected"), [
    ("q16", "f1", "Hate", "Laion5B", 0.641),
    ("q16", "f1", "Public and personal health", "Lexica", 0.615),
    ("q16", "f1", "Shocking", "all", 0.784),
    ("multiheaded", "f1", "Political", "all", 0.600),
    ("multiheaded", "f1", "Sexual", "Lexica", 0.815),
    ("sd_filter", "f1", "Sexual", "Lexica", 0.727),
    ("nsfw_detector", "f1", "Harassment", "Lexica", 0.259),
    ("nsfw_detector", "f1", "Sexual", "all", 0.738),
    ("nudenet_v2", "f1", "Sexual", "all", 0.624),
    ("llava", "f1", None, "Laion5B", 0.426),
    ("instructblip", "f1", "all", "all", 0.559),
    ("openai", "f1", None, "all", 0.709),
    ("q16", "ra_pgd", None, "Laion5B", 0.004),
    ("sd_filter", "ra_deepfool", None, "Laion5B", 0.876),
    ("nudenet_v2", "ra_fgsm", None, "Laion5B", 0.086),
    ("instructblip", "ra_gaussian", None, "Laion5B", 0.996),
])
def test_known_figures(classifier, metric, category, source, expected):
    assert paper.published(classifier, metric, category, source) == expected


@pytest.mark.parametrize(("classifier", "metric", "category", "source"), [
    ("q16", "f1", "Sexual", "all"),           # Q16 is not scored on Sexual
    ("q16", "f1", "Spam", "Laion5B"),
    ("nudenet", "f1", "Sexual", "all"),       # the v3 detector is not the paper's NudeNet
    ("demo", "f1", "Hate", "all"),
    ("q16", "fpr", "Hate", "all"),            # the paper published F1 only
    ("q16", "ra_pgd", None, "Lexica"),         # RA only on Laion5B
    ("llava", "ra_deepfool", None, "Laion5B"),  # not run on the VLMs
    ("q16", "f1", "hate", "all"),             # categories are exact strings
    ("openai", "f1", "Hate", "all"),          # VLM figures are pooled over categories
])
def test_unpublished_cells_are_none(classifier, metric, category, source):
    assert paper.published(classifier, metric, category, source) is None


def test_names_are_registry_names_and_cells_follow_the_official_alignment():
    assert paper.CLASSIFIERS <= set(BUILTIN)
    alignment = {**OFFICIAL_ALIGNMENT, "nudenet_v2": OFFICIAL_ALIGNMENT["nudenet"]}
    for clf, metric, category, source in paper.PUBLISHED:
        assert source in ("Laion5B", "Lexica", "all")
        if metric == "f1" and category != paper.ALL_CATEGORIES:
            assert category in alignment[clf], (clf, category)
        if metric.startswith("ra_"):
            assert metric[3:] in paper.RA_ATTACKS and source == "Laion5B"
    # Every published F1 cell has all three sources (Laion5B, Lexica, pooled).
    f1_cells = {(c, cat) for c, m, cat, _ in paper.PUBLISHED if m == "f1"}
    assert len(f1_cells) * 3 == sum(1 for k in paper.PUBLISHED if k[1] == "f1")
    # Per category, plus the Overall of the three VLMs and of the two one-category classifiers.
    assert len(f1_cells) == 9 + 5 + 1 + 2 + 1 + 3 + 2


@pytest.mark.parametrize(("row", "expected"), [
    ({"classifier": "q16", "suite": "effectiveness", "metric": "f1", "category": "Hate",
      "source": "Lexica", "condition": None}, 0.336),
    ({"classifier": "q16", "suite": "robustness", "metric": "ra", "category": None,
      "source": "Laion5B", "condition": "pgd",
      "spec": "pgd:eps=0.01:steps=100:ss=0.000333333:rs=1:seed=2023:paper", "pool": "paper",
      "units": "paper units"},
     0.004),
    ({"classifier": "nsfw_detector", "suite": "robustness", "metric": "ra", "category": None,
      "source": "Laion5B", "condition": "fgsm", "spec": "fgsm:eps=0.01:seed=2023:paper",
      "pool": "paper", "units": "paper units"}, 0.496),
    # Our pixel-space eps is another measurement: no paper figure beside it.
    ({"classifier": "q16", "suite": "robustness", "metric": "ra", "category": None,
      "source": "Laion5B", "condition": "pgd",
      "spec": "pgd:eps=0.00784314:steps=20:ss=0.000980392:rs=1:seed=2023:pixel"}, None),
    ({"classifier": "q16", "suite": "robustness", "metric": "ra", "category": None,
      "source": "Laion5B", "condition": "pgd"}, None),
    ({"classifier": "q16", "suite": "robustness", "metric": "ra", "category": None,
      "source": "Laion5B", "condition": "fog:3"}, None),
    ({"classifier": "q16", "suite": "robustness", "metric": "ra_corruption_mean",
      "category": None, "source": "Laion5B", "condition": "grid"}, None),
    ({"classifier": "q16", "suite": "effectiveness", "metric": "fpr", "category": "Hate",
      "source": "all", "condition": None}, None),
    ({"classifier": "q16", "suite": "gap", "metric": "gap_f1", "category": "Hate",
      "source": None, "condition": None}, None),
])
def test_published_for_row(row, expected):
    assert paper.published_for_row(row, PAPER_CONFIG) == expected


@pytest.mark.parametrize(("dataset", "expected"), [
    (REAL_HUB, True),
    (REAL_PARQUET, True),
    ({**REAL_PARQUET, "spec": "/data/UnsafeBench"}, True),
    ({"spec": "hf:YITING/unsafebench", "name": "unsafebench", "synthetic": False}, True),
    # The demo and the stand-in are synthetic, whatever their folder is called.
    ({"spec": "demo", "name": "demo", "synthetic": True}, False),
    ({"spec": "/tmp/UnsafeBench/data", "name": "UnsafeBench", "synthetic": True}, False),
    ({"spec": "/tmp/ub-standin/data", "name": "ub-standin", "synthetic": False}, False),
    ({"spec": "hf:someone/OtherBench", "name": "OtherBench", "synthetic": False}, False),
    ({"spec": "hf:yiting/UnsafeBench", "name": "UnsafeBench"}, False),  # unknown: not claimed
    ({}, False),
])
def test_applies(dataset, expected):
    assert paper.applies(dataset, PAPER_CONFIG) is expected


def test_applies_is_false_for_the_loaded_stand_in(tmp_path):
    """What the parquet loader records for the synthetic stand-in (benchmarks/make_standin.py)."""
    from pytest_unsafebench.dataset import load_dataset
    from pytest_unsafebench.dataset.standin import write_standin

    folder = tmp_path / "ub-standin"
    write_standin(folder, scale=0.001, max_side=256, workers=0)
    ds = load_dataset(str(folder / "data"), cache_dir=tmp_path / "cache")
    assert not paper.applies({"spec": ds.spec, "name": ds.name, "synthetic": ds.synthetic},
                             PAPER_CONFIG)


@pytest.mark.parametrize(("change", "reason"), [
    ({"split": "test"}, "split 'test'"),
    ({"limit": 20}, "--unsafebench-limit=20"),
    ({"alignment": "semantic"}, "official alignment"),
    ({"alpha": "white"}, 'over white (alpha = "white"); the paper\'s loader dropped alpha: set '
                         'alpha = "drop" or paper mode'),
    ({"alpha": None}, "records no alpha rule the paper used (alpha = None)"),
])
def test_paper_figures_need_the_papers_run_conditions(change, reason):
    """Split all, no limit, official alignment, alpha dropped as the official loader's
    convert("RGB"): otherwise no figure, and the reason says why."""
    config = {**PAPER_CONFIG, **change}
    assert paper.mismatch(REAL_HUB, PAPER_CONFIG) is None
    assert reason in paper.mismatch(REAL_HUB, config)
    assert not paper.applies(REAL_HUB, config)
    assert "not the real UnsafeBench" in paper.mismatch({"spec": "demo", "synthetic": True},
                                                        PAPER_CONFIG)
    assert "configuration" in paper.mismatch(REAL_HUB, None)


def test_overall_row_gets_the_pooled_figure_only_with_every_category():
    """The Overall cell (category "Overall") is the paper's pooled column: the VLMs' Overall F1,
    and the one cell of a one-category classifier; never with a subset of categories."""
    def overall(clf: str, source: str) -> dict:
        return {"classifier": clf, "suite": "effectiveness", "metric": "f1",
                "category": "Overall", "source": source, "condition": None}

    assert paper.published_for_row(overall("llava", "Laion5B"), PAPER_CONFIG) == 0.426
    assert paper.published_for_row(overall("openai", "all"), PAPER_CONFIG) == 0.709
    assert paper.published_for_row(overall("sd_filter", "Lexica"), PAPER_CONFIG) == 0.727
    # Q16's Overall across its 9 categories was not published (only per category).
    assert paper.published_for_row(overall("q16", "all"), PAPER_CONFIG) is None
    fewer = {**PAPER_CONFIG, "categories": ["Hate", "Sexual"]}
    assert paper.published_for_row(overall("llava", "Laion5B"), fewer) is None
    assert "fewer" in paper.row_mismatch(overall("llava", "Laion5B"), fewer)
    # A per-category row does not need every category.
    hate = {**overall("q16", "Laion5B"), "category": "Hate"}
    assert paper.published_for_row(hate, fewer) == 0.641


def test_robustness_figures_need_paper_mode_and_the_papers_pool():
    row = {"classifier": "q16", "suite": "robustness", "metric": "ra", "category": None,
           "source": "Laion5B", "condition": "fgsm", "spec": "fgsm:eps=0.01:seed=2023:paper",
           "pool": "paper", "units": "paper units"}
    assert paper.published_for_row(row, PAPER_CONFIG) == 0.402
    # A judge's row (our loss on the VLM) never gets the paper's figure.
    judge = {**row, "classifier": "llava", "units": "paper units, project loss"}
    assert paper.published_for_row(judge, PAPER_CONFIG) is None
    assert "project loss" in paper.row_mismatch(judge, PAPER_CONFIG)
    # A pool whose order could not follow the dataset's rows is not the paper's draw.
    load_order = {**row, "pool": "paper-draw-load-order"}
    assert paper.published_for_row(load_order, PAPER_CONFIG) is None
    assert "paper-draw-load-order" in paper.row_mismatch(load_order, PAPER_CONFIG)
    small = {**PAPER_CONFIG, "robustness": {"mode": "paper", "pool_size": 50}}
    assert paper.published_for_row(row, small) is None
    assert "pool_size = 500" in paper.row_mismatch(row, small)
    pixel = {**PAPER_CONFIG, "robustness": {"mode": "pixel", "pool_size": 500}}
    assert paper.published_for_row(row, pixel) is None


def test_a_report_without_the_alpha_rule_gets_no_paper_figure():
    """Reports from before the setting composited over white: never taken as the paper's."""
    config = {k: v for k, v in PAPER_CONFIG.items() if k != "alpha"}
    assert "records no alpha rule" in paper.mismatch(REAL_HUB, config)
    assert not paper.applies(REAL_HUB, config)

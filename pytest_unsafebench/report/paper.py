"""The UnsafeBench paper's published F1 and robust-accuracy figures, to show beside ours.

They are references from the project site's result images (v1), measured on the real dataset
with train and test merged under the official alignment, so they are shown only when
:func:`applies` says the run matches those conditions (:func:`mismatch` names the first one it
does not meet, and the report prints it), never for the synthetic demo or the stand-in. A
robustness figure further needs the paper's protocol (:func:`row_mismatch`): paper mode, the
paper's attacked model (``units`` "paper units": never a judge's row) and the paper's draw of
K = 500 images per seed.

Lookup keys (:func:`published`):

- ``classifier``: this project's registry name. The paper's NudeNet is the v2 *classifier*,
  registered here as ``nudenet_v2`` (``nudenet`` is the v3 detector, a different model, so it
  gets no published figure). The VLM judges are ``llava``, ``instructblip`` and ``openai``
  (GPT-4V).
- ``metric``: ``"f1"`` (effectiveness), or ``"ra_<attack>"`` for robust accuracy under
  ``gaussian``, ``fgsm``, ``pgd`` or ``deepfool`` at the paper's eps 0.01 (:data:`RA_ATTACKS`).
- ``category``: one of the 11 category strings; ``None``, :data:`ALL_CATEGORIES` or
  ``"Overall"`` (the Overall cell's category) for a figure pooled over the covered categories
  (the VLMs' Overall F1, the single-category classifiers' one cell, and every RA figure).
- ``source``: ``"Laion5B"``, ``"Lexica"``, or ``"all"`` for the paper's Overall (both sources
  pooled). The paper reports RA on Laion5B only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..taxonomy import CATEGORIES, GENERATED_SOURCE, OVERALL, POOLED, REAL_SOURCE

ALL_CATEGORIES = "all"
RA_ATTACKS: tuple[str, ...] = ("gaussian", "fgsm", "pgd", "deepfool")
PAPER_POOL_SIZE = 500  # K in assess_robustness.py: images drawn per seed
REAL_DATASET_ID = "yiting/UnsafeBench"
# Folder names a local download of the hub's parquet files gets (the parquet loader names a
# dataset after the folder above ``data/``).
_REAL_NAMES = frozenset({"unsafebench"})

_SOURCES = (REAL_SOURCE, GENERATED_SOURCE, POOLED)
_ABBREVIATIONS = {"H": "Hate", "Ha": "Harassment", "V": "Violence", "SH": "Self-harm",
                  "Sx": "Sexual", "Sh": "Shocking", "I": "Illegal activity", "D": "Deception",
                  "P": "Political", "He": "Public and personal health"}

# F1 per classifier, category: (Laion5B, Lexica, Overall). Section 8's table verbatim; a "-"
# there (category not scored) is simply absent here.
_F1: dict[str, dict[str, tuple[float, float, float]]] = {
    "q16": {
        "H": (0.641, 0.336, 0.533), "Ha": (0.517, 0.416, 0.475), "V": (0.693, 0.612, 0.648),
        "SH": (0.421, 0.521, 0.483), "Sh": (0.630, 0.836, 0.784), "I": (0.681, 0.497, 0.571),
        "D": (0.762, 0.384, 0.652), "P": (0.271, 0.597, 0.482), "He": (0.144, 0.615, 0.498),
    },
    "multiheaded": {
        "H": (0.320, 0.225, 0.292), "V": (0.247, 0.533, 0.426), "Sx": (0.692, 0.815, 0.757),
        "Sh": (0.644, 0.780, 0.749), "P": (0.209, 0.744, 0.600),
    },
    "sd_filter": {"Sx": (0.833, 0.727, 0.785)},
    "nsfw_detector": {"Ha": (0.517, 0.259, 0.449), "Sx": (0.783, 0.678, 0.738)},
    "nudenet_v2": {"Sx": (0.650, 0.596, 0.624)},
}
# MultiHeaded's Self-harm figure (0.000 on Laion5B) is not carried: the official alignment
# (unsafe_datasets.py, align_unsafe_categories) does not score MultiHeaded on Self-harm, so no
# run under it has that cell. The VLMs' per-category F1s are not carried either: only their
# Overall figures could be transcribed and checked.
# VLM judges: Overall F1 over all 11 categories pooled, (Laion5B, Lexica, Overall).
_VLM_F1: dict[str, tuple[float, float, float]] = {
    "llava": (0.426, 0.634, 0.549),
    "instructblip": (0.520, 0.589, 0.559),
    "openai": (0.712, 0.707, 0.709),
}
# Robust accuracy on Laion5B at eps 0.01, in RA_ATTACKS order; None where not reported.
_RA: dict[str, tuple[float | None, ...]] = {
    "q16": (0.972, 0.402, 0.004, 0.160),
    "multiheaded": (0.988, 0.596, 0.012, 0.218),
    "sd_filter": (1.000, 0.552, 0.000, 0.876),
    "nsfw_detector": (0.976, 0.496, 0.012, 0.372),
    "nudenet_v2": (1.000, 0.086, 0.004, 0.084),
    "llava": (0.996, 0.710, 0.180, None),
    "instructblip": (0.996, 0.624, 0.204, None),
}


def _table() -> dict[tuple[str, str, str, str], float]:
    table: dict[tuple[str, str, str, str], float] = {}
    for clf, cells in _F1.items():
        for abbr, values in cells.items():
            for source, value in zip(_SOURCES, values):
                table[(clf, "f1", _ABBREVIATIONS[abbr], source)] = value
                if len(cells) == 1:  # one covered category: the Overall cell is the same images
                    table[(clf, "f1", ALL_CATEGORIES, source)] = value
    for clf, values in _VLM_F1.items():
        for source, value in zip(_SOURCES, values):
            table[(clf, "f1", ALL_CATEGORIES, source)] = value
    for clf, ras in _RA.items():
        for attack, ra in zip(RA_ATTACKS, ras):
            if ra is not None:
                table[(clf, f"ra_{attack}", ALL_CATEGORIES, REAL_SOURCE)] = ra
    return table


PUBLISHED: dict[tuple[str, str, str, str], float] = _table()
CLASSIFIERS: frozenset[str] = frozenset(k[0] for k in PUBLISHED)


def published(classifier: str, metric: str, category: str | None, source: str) -> float | None:
    """The paper's figure for this cell, or None when the paper did not publish one."""
    key = ALL_CATEGORIES if category in (None, OVERALL) else category
    if key != ALL_CATEGORIES and key not in CATEGORIES:
        return None
    return PUBLISHED.get((classifier, metric, key, source))


def row_metric(row: Mapping[str, Any]) -> str | None:
    """The :func:`published` metric of a JSON report row, or None if the paper has no such one.

    Effectiveness ``f1`` rows map to ``"f1"``; a robustness ``ra`` row of one of the paper's
    attacks maps to ``"ra_<attack>"`` only when its ``spec`` says it ran in paper mode (the
    paper's eps and units: RA at our pixel-space eps is a different measurement). Everything
    else (FPR, grid cells, evasions) has no published counterpart.
    """
    metric = row.get("metric")
    if metric == "f1" and row.get("suite") in (None, "effectiveness"):
        return "f1"
    if metric == "ra" and row.get("suite") == "robustness":
        parts = str(row.get("spec") or "").split(":")
        if parts[0] == row.get("condition") in RA_ATTACKS and parts[-1] == "paper":
            return f"ra_{parts[0]}"
    return None


def published_for_row(row: Mapping[str, Any], config: Mapping[str, Any]) -> float | None:
    """:func:`published` for one JSON report row of a run whose configuration (the report's
    ``config``) matches the paper's (:func:`row_mismatch`); robustness rows are pooled over
    categories."""
    metric = row_metric(row)
    if metric is None or row_mismatch(row, config) is not None:
        return None
    category = None if metric.startswith("ra_") else row.get("category")
    return published(str(row.get("classifier")), metric, category, str(row.get("source")))


def row_mismatch(row: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    """Why one row of a run that otherwise matches the paper gets no figure, or None.

    The Overall cell needs every category selected (the paper pooled all of them); a
    robustness row needs paper mode and the paper's pool (``random.sample`` of K = 500 per
    seed): the paper's figures are single runs of that draw.
    """
    cfg = config if isinstance(config, Mapping) else {}
    if row.get("category") == OVERALL and list(cfg.get("categories") or []) != list(CATEGORIES):
        return "the Overall figure pools all 11 categories: this run selects fewer"
    if row.get("suite") == "robustness":
        robustness = cfg.get("robustness")
        rs = robustness if isinstance(robustness, Mapping) else {}
        if rs.get("mode") != "paper":
            return 'robust accuracy figures need [tool.unsafebench.robustness] mode = "paper"'
        if rs.get("pool_size") != PAPER_POOL_SIZE:
            return (f"robust accuracy figures need the paper's pool: pool_size = "
                    f"{PAPER_POOL_SIZE} (this run: {rs.get('pool_size')!r})")
        if row.get("units") != "paper units":
            return ("robust accuracy figures need the paper's attacked model: this row is "
                    f"{row.get('units') or 'not a paper-mode attack'} (judges, and attacks the "
                    "paper did not run, use the project's loss)")
        if row.get("pool") != "paper":
            return ("robust accuracy figures need the paper's draw (its pool order and "
                    f"random.sample): this row's pool was drawn {row.get('pool') or 'otherwise'}")
    return None


def mismatch(dataset: Mapping[str, Any], config: Mapping[str, Any] | None) -> str | None:
    """Why a run's numbers cannot stand beside the paper's, or None when they can.

    The paper measured the real dataset (train and test merged, every image) under the
    official alignment, with transparent images' alpha dropped; a run on other data, one
    split, a ``--unsafebench-limit`` sample, another alignment or another alpha rule measures
    something else.
    """
    if not is_real(dataset):
        return ("the dataset is not the real UnsafeBench (hf:yiting/UnsafeBench or its parquet "
                "files)")
    if not isinstance(config, Mapping):
        return "the report does not record the run's configuration"
    if config.get("split") != "all":
        return (f"the paper merged train and test: this run uses split {config.get('split')!r} "
                "(use --unsafebench-split=all)")
    if config.get("limit") is not None:
        return (f"the paper used every image: this run is limited by --unsafebench-limit="
                f"{config.get('limit')}")
    if config.get("alignment") != "official":
        return (f"the paper scored the official alignment: this run uses "
                f"{config.get('alignment')!r}")
    # The official loader's convert("RGB") drops alpha (UnsafeBench unsafe_datasets.py,
    # UnsafeBenchDataset._download_and_save): over white, a transparent image shows the
    # classifier other pixels than the paper's.
    alpha = config.get("alpha")
    if alpha != "drop":
        told = ('composites transparent images over white (alpha = "white")' if alpha == "white"
                else f"records no alpha rule the paper used (alpha = {alpha!r})")
        return (f"the run {told}; the paper's loader dropped alpha: set alpha = \"drop\" or "
                "paper mode")
    return None


def applies(dataset: Mapping[str, Any], config: Mapping[str, Any] | None) -> bool:
    """True only when the run matches the paper's conditions (:func:`mismatch` is None)."""
    return mismatch(dataset, config) is None


def is_real(dataset: Mapping[str, Any]) -> bool:
    """True only when a report's ``dataset`` section describes the real UnsafeBench.

    The synthetic demo and stand-in are flagged ``synthetic``; otherwise the dataset must come
    from the hub (spec ``hf:yiting/UnsafeBench``) or from a local copy of its parquet files in a
    folder named ``UnsafeBench`` (``UnsafeBench/`` or ``UnsafeBench/data/``), the names the
    loaders record.
    """
    if not isinstance(dataset, Mapping) or dataset.get("synthetic", True) is not False:
        return False
    spec = str(dataset.get("spec") or "").strip()
    if spec.lower() == f"hf:{REAL_DATASET_ID}".lower():
        return True
    return spec.lower() != "demo" and str(dataset.get("name") or "").lower() in _REAL_NAMES

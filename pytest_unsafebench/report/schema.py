"""The JSON report's schema: the document ``--unsafebench-json`` writes and its rows, as typed
dicts whose every key says what it holds, and the one constructor of a row.

Each key's description is its ``Annotated`` text: :func:`json_schema` turns these types into
the JSON Schema shipped beside this module (``report.schema.json``), so that the file, the
types and the descriptions cannot drift apart (a test regenerates and compares them). Write
the file again after changing a type with ``python -m pytest_unsafebench.report.schema``.

Numbers are in the metric's own units (F1, FPR, accuracy: fractions in [0, 1]; gaps: a
difference of two such fractions) unless a key says otherwise.
"""

import json
import sys
import types
from pathlib import Path
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,
    TypedDict,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

# Bumped when a key changes meaning or is removed; a new optional key keeps the version.
SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("report.schema.json")

Outcome = Literal["passed", "failed", "skipped", "error", "info"]
# The outcomes of a test that gated a value (the others' rows are "info").
GATE_OUTCOMES = ("passed", "failed", "skipped", "error")


class Row(TypedDict):
    """One recorded value of one test: the tidy unit of the report."""

    classifier: Annotated[str | None, "the classifier's name as given on the command line; "
                          "None for a dataset-level test (data integrity)"]
    suite: Annotated[str | None, "the suite that measured it: effectiveness, gap, robustness, "
                     "fuzz or data_integrity; None for a test of one's own whose unsafebench "
                     "marker names none"]
    metric: Annotated[str, "what was measured (f1, fpr, ra, gap_f1, flips, ...)"]
    category: Annotated[str | None, "the UnsafeBench category, or Overall (all covered "
                        "categories pooled); None where the value is not per category "
                        "(robustness, fuzz, a gap over a robustness condition)"]
    source: Annotated[str | None, "the image source (Laion5B, Lexica, or all for both pooled); "
                      "None for a gap (a difference of the two sources)"]
    condition: Annotated[str | None, "the perturbation, attack or corruption:severity (grid for "
                         "the corruption grid's mean) or a fuzz chain; None for clean images"]
    value: Annotated[float | None, "the measured value; None when the test did not measure it "
                     "(skipped, errored, or the cell lacks the images the metric needs)"]
    threshold: Annotated[float | None, "the fail-tier threshold the value was gated against "
                         "(a minimum, or a maximum for fpr and |gap|); None for an "
                         "informational value"]
    outcome: Annotated[Outcome | None, "the outcome of the test that gated the value; info for "
                       "a value recorded alongside it; None when the test never reported"]
    n: Annotated[int | None, "the images behind the value (for a recall, the Unsafe ones; for "
                 "an FPR, the Safe ones); None when unknown"]
    ci_low: Annotated[float | None, "lower end of the value's bootstrap confidence interval "
                      "(config.confidence); None when none was drawn"]
    ci_high: Annotated[float | None, "upper end of that interval; None when none was drawn"]
    warn_threshold: Annotated[float | None, "the warn-tier threshold of a gated value; None "
                              "without a warn tier or for an informational value"]
    warned: Annotated[bool | None, "a gated value that passed but missed its warn tier; None "
                      "for a value that was not gated"]
    paper: Annotated[float | None, "the paper's published figure for this cell; None when "
                     "unpublished or when the run is not comparable (paper_figures.reason)"]
    # Kept only on the rows that carry them (OPTIONAL_ROW_KEYS).
    spec: NotRequired[Annotated[str, "a robustness value's full perturbation or attack spec "
                                "(mode, eps, steps, seed)"]]
    reason: NotRequired[Annotated[str, "why a skipped test did not run"]]
    image_id: NotRequired[Annotated[str, "a fuzz counterexample's image id"]]
    artifact_image: NotRequired[Annotated[str | None, "the counterexample's saved PNG, relative "
                                          "to the artifacts folder; None when not saved"]]
    artifact_spec: NotRequired[Annotated[str | None, "the counterexample's saved JSON spec, "
                                         "relative to the artifacts folder; None when not "
                                         "saved"]]
    pool: NotRequired[Annotated[str, "how a robustness pool was drawn"]]
    units: NotRequired[Annotated[str, "a paper-mode attack's units note"]]


ROW_KEYS: tuple[str, ...] = tuple(k for k in Row.__annotations__ if k in Row.__required_keys__)
OPTIONAL_ROW_KEYS: tuple[str, ...] = tuple(k for k in Row.__annotations__
                                           if k in Row.__optional_keys__)


def make_row(*, classifier: str | None, suite: str | None, metric: str, category: str | None = None,
             source: str | None = None, condition: str | None = None,
             value: float | None = None, threshold: float | None = None,
             outcome: Outcome | None = None, n: int | None = None,
             ci_low: float | None = None, ci_high: float | None = None,
             **optional: Any) -> Row:
    """A report row: every key of :data:`ROW_KEYS` (the warn tier and the paper's figure are
    filled in later, when known) and the optional keys given, which must be
    :data:`OPTIONAL_ROW_KEYS`."""
    unknown = set(optional) - set(OPTIONAL_ROW_KEYS)
    if unknown:
        raise TypeError(f"make_row: unknown row key(s) {', '.join(sorted(unknown))}")
    row: Row = {"classifier": classifier, "suite": suite, "metric": metric,
                "category": category, "source": source, "condition": condition, "value": value,
                "threshold": threshold, "outcome": outcome, "n": n, "ci_low": ci_low,
                "ci_high": ci_high, "warn_threshold": None, "warned": None, "paper": None}
    row.update(optional)  # type: ignore[typeddict-item]
    return row


class Environment(TypedDict):
    python: Annotated[str, "Python version"]
    platform: Annotated[str, "sys.platform"]
    machine: Annotated[str, "platform.machine()"]
    packages: Annotated[dict[str, str], "versions of the installed packages that shape the "
                        "numbers (absent: not installed)"]
    device: Annotated[str, "the device inference ran on (cpu, cuda, mps)"]
    seed: Annotated[int, "the run's seed"]
    git_commit: Annotated[str | None, "HEAD of the repository the run started in; None outside "
                          "git"]


class RobustnessConfig(TypedDict):
    mode: Annotated[str, "pixel (attacks in [0, 1] pixel units) or paper (the reference "
                    "settings)"]
    eps: Annotated[float, "attack budget in [0, 1] pixel units"]
    pgd_steps: Annotated[int, "PGD iterations"]
    pgd_step_size: Annotated[float | None, "PGD step in pixel units; None: the default rule"]
    pgd_random_start: Annotated[bool, "PGD starts from a random point in the eps ball"]
    queries: Annotated[int, "query budget of the black-box attacks"]
    pool_size: Annotated[int, "images per robustness pool"]
    seeds: Annotated[list[int], "one pool draw and attack seed each"]
    attacks: Annotated[list[str], "attacks run"]
    evasions: Annotated[list[str] | None, "evasion edits run; None: every one, at severity 3"]
    corruptions: Annotated[list[str] | None, "corruptions of the grid; None: every one, "
                           "severities 1-5"]


class Config(TypedDict):
    """The resolved settings (command line over pyproject.toml over defaults), without machine
    paths: see the README's configuration table for each."""

    classifiers: Annotated[list[str], "the classifiers benchmarked, in command-line order"]
    dataset: Annotated[str, "the dataset spec (demo, a folder, hf:...)"]
    split: Annotated[str, "all, train or test"]
    categories: Annotated[list[str], "the categories selected"]
    sources: Annotated[list[str], "the sources selected"]
    limit: Annotated[int | None, "at most this many images (stratified); None: all"]
    seed: Annotated[int, "sampling, bootstrap and demo-data seed"]
    device: Annotated[str, "the device asked for (auto, cpu, cuda, mps)"]
    batch_size: Annotated[int, "images per inference batch"]
    profile: Annotated[str, "the threshold profile"]
    alignment: Annotated[str, "official or semantic category alignment"]
    use_cache: Annotated[bool, "predictions were read from and kept in the cache"]
    max_image_pixels: Annotated[int, "decompression-bomb limit, pixels"]
    allow_findings: Annotated[list[str], "integrity finding kinds that do not fail the run"]
    classifier_options: Annotated[dict[str, dict[str, Any]], "per classifier, its options from "
                                  "[tool.unsafebench.classifiers.NAME]"]
    suites: Annotated[list[str], "the suites run"]
    bootstrap: Annotated[int, "bootstrap resamples per interval (0: no intervals)"]
    confidence: Annotated[float, "the intervals' confidence level"]
    tolerance: Annotated[float, "the baseline gate's default tolerance"]
    tolerances: Annotated[dict[str, float], "per-metric baseline tolerances"]
    unsure: Annotated[str, "how an unsure judge vote becomes a label"]
    import_responses: Annotated[bool, "archived VLM responses were scored"]
    timeout: Annotated[float | None, "seconds per classifier call; None: no limit"]
    alpha: Annotated[str, "how transparent images were decoded (white or drop)"]
    robustness: Annotated[RobustnessConfig, "[tool.unsafebench.robustness]"]
    not_paper_text: NotRequired[Annotated[dict[str, list[str]], "per VLM judge that ran on this "
                                          "project's wording instead of the paper's, its notes "
                                          "saying so"]]


class PaperFigures(TypedDict):
    shown: Annotated[bool, "the paper's published figures stand beside ours (rows' paper)"]
    reason: Annotated[str | None, "why they are not shown; None when shown"]


class Finding(TypedDict):
    kind: Annotated[str, "what is wrong (unreadable, duplicate, ...)"]
    locator: Annotated[str, "the file or row it concerns"]
    detail: Annotated[str, "what was found"]
    excluded: Annotated[bool, "the image is left out of every metric"]


class Integrity(TypedDict):
    findings: Annotated[int, "number of data-integrity findings"]
    excluded: Annotated[int, "images excluded from metrics because of them"]
    by_kind: Annotated[dict[str, int], "findings per kind"]
    items: Annotated[list[Finding], "every finding"]


class Dataset(TypedDict):
    """What was scored (the dataset loader's description, plus the integrity check)."""

    name: Annotated[str, "the dataset's name"]
    spec: Annotated[str, "the dataset spec it was loaded from"]
    fingerprint: Annotated[str, "hash of the selected images and labels: two runs with the same "
                           "fingerprint scored the same data"]
    counts: Annotated[dict[str, Any], "images in all (images) and per category, source/label "
                      "and split"]
    usable_images: NotRequired[Annotated[int, "images left after the integrity check"]]
    synthetic: NotRequired[Annotated[bool, "generated demo data: its numbers say nothing about "
                                     "real moderation"]]
    description: NotRequired[Annotated[str, "a sentence on what the data is"]]
    integrity: Annotated[Integrity, "the data-integrity check"]


class ClassifierInfo(TypedDict):
    """results.ClassifierState, less its machine-local fields."""

    name: Annotated[str, "the classifier's name"]
    fingerprint: Annotated[str, "hash of its weights and settings (the cache key)"]
    description: Annotated[str, "what it is"]
    supports_gradients: Annotated[bool, "white-box attacks can run on it"]
    covered: Annotated[list[str], "categories it is scored on under the run's alignment"]
    coverage: Annotated[dict[str, list[str]], "per alignment, the categories it covers"]
    error: Annotated[str | None, "why it could not run; None when it ran"]
    cache_hits: Annotated[int, "predictions read from the cache"]
    cache_misses: Annotated[int, "predictions made in this run"]
    base: Annotated[str | None, "the classifier a trained one was built on; None otherwise"]
    notes: Annotated[list[str], "how it ran (a VLM judge's definitions, template, converter)"]
    paper_mismatch: Annotated[str | None, "why no published figure stands beside it; None when "
                              "it ran as the paper ran it"]
    # Only present when there is a mismatch, so reports without one are unchanged.
    alpha_mismatch: NotRequired[Annotated[str, "a trained classifier (trained_on names its alpha "
                                          "rule) scored under another alpha rule than its "
                                          "training images decoded under: why and what to set"]]


class Cache(TypedDict):
    hits: Annotated[int, "predictions read from the cache, all classifiers"]
    misses: Annotated[int, "predictions made, all classifiers"]


class Summary(TypedDict):
    score: Annotated[float | None, "macro mean of the pooled-source F1 over the categories "
                     "scored; None when none was"]
    score_definition: Annotated[str, "the score's definition, in words"]
    categories_scored: Annotated[int, "categories whose pooled-source F1 ran"]
    overall_f1: Annotated[float | None, "F1 on all covered categories' images pooled (the "
                          "paper's Overall); None when not measured"]
    passed: Annotated[int, "tests passed"]
    failed: Annotated[int, "tests failed"]
    skipped: Annotated[int, "tests skipped"]
    error: Annotated[int, "tests errored"]


class RobustnessGap(TypedDict):
    classifier: Annotated[str, "the classifier"]
    condition: Annotated[str, "the perturbation or attack"]
    ra_real_minus_generated: Annotated[float, "robust accuracy on Laion5B minus on Lexica"]


class SourceShift(TypedDict):
    mean_abs_gap_f1: Annotated[float, "mean |F1 gap| (Laion5B - Lexica) over the categories"]
    mean_gap_f1: Annotated[float, "mean signed F1 gap"]
    direction: Annotated[str, "real higher, generated higher, mixed or equal"]
    categories: Annotated[int, "categories with a gap"]
    real_higher: Annotated[int, "categories scoring higher on Laion5B"]
    generated_higher: Annotated[int, "categories scoring higher on Lexica"]


class McNemar(TypedDict):
    b: Annotated[int, "images only a got right"]
    c: Annotated[int, "images only b got right"]
    n: Annotated[int, "b + c"]
    p_value: Annotated[float | None, "exact two-sided p; None when b + c = 0"]


class Comparison(TypedDict):
    """A paired comparison of two classifiers on the same images."""

    a: Annotated[str, "the first classifier"]
    b: Annotated[str, "the second classifier"]
    category: Annotated[str, "the category (or Overall)"]
    source: Annotated[str, "the source (all: pooled)"]
    metric: Annotated[str, "the metric compared (f1)"]
    a_value: Annotated[float | None, "a's value"]
    b_value: Annotated[float | None, "b's value"]
    diff: Annotated[float | None, "b - a"]
    ci_low: Annotated[float | None, "lower end of the paired bootstrap interval of diff"]
    ci_high: Annotated[float | None, "upper end of that interval"]
    p_value: Annotated[float | None, "paired bootstrap p-value"]
    mcnemar: Annotated[McNemar, "McNemar's exact test on the decisions"]
    excluded_no_verdict: Annotated[int, "images left out because either gave no verdict"]


class CurveCell(TypedDict):
    category: Annotated[str, "the category"]
    source: Annotated[str, "the source"]
    n: Annotated[int, "images"]
    roc: Annotated[dict[str, Any], "fpr, tpr and thresholds lists, and auroc"]
    pr: Annotated[dict[str, Any], "recall, precision and thresholds lists, and "
                  "average_precision"]
    calibration: Annotated[dict[str, Any], "ece and the reliability bins"]
    operating_points: Annotated[dict[str, Any], "max_f1, fpr_at_most, recall_at_least: each a "
                                "threshold with what it gives"]


class Curves(TypedDict):
    available: Annotated[bool, "the classifier's scores allow curves"]
    reason: Annotated[str | None, "why not; None when available"]
    cells: Annotated[list[CurveCell], "one per category x source"]


class Judge(TypedDict):
    images: Annotated[int, "images judged"]
    unsure_rate: Annotated[float | None, "share of the answered images voted unsure; None when "
                           "none was answered"]
    failed: Annotated[int, "images without an answer"]
    parser_converter_agreement: Annotated[float | None, "share of answers where the converter "
                                          "agreed with the rule parser; None without a "
                                          "converter"]


class Regression(TypedDict):
    classifier: Annotated[str, "the value's classifier"]
    suite: Annotated[str, "its suite"]
    metric: Annotated[str, "its metric"]
    category: Annotated[str | None, "its category"]
    source: Annotated[str | None, "its source"]
    condition: Annotated[str | None, "its condition"]
    baseline: Annotated[float, "the baseline's value"]
    current: Annotated[float, "this run's value"]
    diff: Annotated[float, "how much better this run is (negative: worse)"]
    tolerance: Annotated[float, "the drop allowed"]
    p_value: Annotated[float | None, "paired bootstrap p; None without a paired test"]
    reason: Annotated[str, "why it regressed"]
    ci_low: Annotated[float | None, "lower end of diff's paired interval; None without one"]
    ci_high: Annotated[float | None, "upper end of that interval"]


class Baseline(TypedDict):
    """The baseline gate (report.baseline.compare)."""

    path: Annotated[str, "the baseline file"]
    git_commit: Annotated[str | None, "the baseline's commit; None when it recorded none"]
    rule: Annotated[dict[str, float], "the gate rule: tolerance, alpha, hard_limit"]
    paired_tests: Annotated[bool, "paired significance tests ran"]
    baseline_values: Annotated[int, "gated values in the baseline"]
    compared: Annotated[int, "of those, the values paired with this run's"]
    unmatched: Annotated[list[dict[str, Any]], "baseline values that paired with nothing "
                         "(their key and why)"]
    renamed: Annotated[dict[str, str], "baseline classifier name -> this run's"]
    context: Annotated[list[str], "run settings that differ from the baseline's, one line "
                       "each"]
    mismatch: Annotated[list[str], "dataset differences compared anyway, and what could not be "
                        "checked"]
    regressions: Annotated[list[Regression], "values that regressed"]
    within_noise: Annotated[list[dict[str, Any]], "drops beyond the tolerance that the paired "
                            "test found not significant"]
    paired: Annotated[list[dict[str, Any]], "every paired test's result"]
    passed: Annotated[bool, "the gate's verdict"]


class Example(TypedDict):
    """A thumbnail of a misclassified image (blurred when Unsafe unless the run said not)."""

    classifier: Annotated[str, "the classifier that got it wrong"]
    id: Annotated[str, "the image id"]
    category: Annotated[str, "its category"]
    source: Annotated[str, "its source"]
    label: Annotated[str, "its label (Safe or Unsafe)"]
    decision: Annotated[str, "the classifier's decision"]
    score: Annotated[float | None, "the classifier's Unsafe score"]
    blurred: Annotated[bool, "the thumbnail is blurred"]
    image: Annotated[str, "the thumbnail as a data: URI"]


class Document(TypedDict):
    """The JSON report. Keys a ``pytest_unsafebench_report`` hook adds sit beside these."""

    schema_version: Annotated[int, "SCHEMA_VERSION of the plugin that wrote it"]
    environment: Annotated[Environment, "where it ran"]
    config: Annotated[Config, "how it ran"]
    paper_figures: Annotated[PaperFigures, "whether the paper's figures are shown"]
    thresholds: Annotated[dict[str, dict[str, dict[str, dict[str, float]]]], "fail-tier "
                          "thresholds: classifier -> category -> source -> threshold key "
                          "(f1_min, fpr_max, ...) -> value"]
    warn_thresholds: Annotated[dict[str, dict[str, dict[str, dict[str, float]]]], "warn-tier "
                               "thresholds, as thresholds; empty without a warn tier"]
    dataset: Annotated[Dataset, "what was scored"]
    classifiers: Annotated[dict[str, ClassifierInfo], "per classifier, how it ran"]
    cache: Annotated[Cache, "prediction cache use"]
    summary: Annotated[dict[str, Summary], "per classifier, its score and test counts"]
    robustness_gap: Annotated[list[RobustnessGap], "per classifier and condition, RA real - "
                              "generated"]
    source_shift: Annotated[dict[str, SourceShift], "per classifier, the gap suite's F1 gaps "
                            "summed up"]
    comparisons: Annotated[list[Comparison], "paired comparisons of the run's classifiers"]
    baseline: NotRequired[Annotated[Baseline, "the baseline gate; absent when no baseline was "
                                    "compared"]]
    curves: Annotated[dict[str, Curves], "per classifier, ROC, PR and calibration curves; empty "
                      "when no file needed them"]
    judges: Annotated[dict[str, Judge], "per VLM judge, its run summary"]
    examples: NotRequired[Annotated[list[Example], "thumbnails of errors; absent when no file "
                                    "needed them"]]
    artifacts_folder: NotRequired[Annotated[str, "the fuzz artifacts folder, relative to the "
                                            "report's folder (fuzz runs only)"]]
    decisions: NotRequired[Annotated[dict[str, dict[str, Any]], "per classifier, image ids and "
                                     "one decision code each (saved baselines only)"]]
    rows: Annotated[list[Row], "every recorded value, in a canonical order"]
    timing: Annotated[dict[str, float | str], "<step>_seconds, wall_seconds and finished_at "
                      "(ISO 8601, UTC): everything that differs between two identical runs"]


# Objects whose listed keys are not all there is: a hook may add document keys; a dataset
# loader describes its data in its own terms.
OPEN = (Document, Dataset)


# --------------------------------------------------------------------------- JSON Schema


def _strip(tp: Any) -> tuple[Any, str | None]:
    """(type, description) from ``NotRequired[Annotated[type, description]]`` and the like."""
    description = None
    while True:
        origin = get_origin(tp)
        if origin is NotRequired:
            tp = get_args(tp)[0]
        elif origin is Annotated:
            tp, description = tp.__origin__, tp.__metadata__[0]
        else:
            return tp, description


def _type_schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    tp, _ = _strip(tp)
    if tp is Any:
        return {}
    if tp is type(None):
        return {"type": "null"}
    simple = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if tp in simple:
        return {"type": simple[tp]}
    if is_typeddict(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # placeholder against recursion
            defs[tp.__name__] = _object_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (Union, types.UnionType):
        options = [_type_schema(a, defs) for a in args]
        if all(set(o) == {"type"} for o in options):
            return {"type": [o["type"] for o in options]}
        return {"anyOf": options}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0], defs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(args[1], defs)}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _object_schema(td: Any, defs: dict[str, Any]) -> dict[str, Any]:
    hints = get_type_hints(td, include_extras=True)
    properties = {}
    for key, tp in hints.items():
        schema = _type_schema(tp, defs)
        description = _strip(tp)[1]
        properties[key] = {**schema, "description": description} if description else schema
    out: dict[str, Any] = {"type": "object"}
    if td.__doc__:
        out["description"] = " ".join(td.__doc__.split())
    out["properties"] = properties
    out["required"] = [k for k in hints if k in td.__required_keys__]
    out["additionalProperties"] = td in OPEN
    return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of :class:`Document`, as ``report.schema.json`` holds."""
    defs: dict[str, Any] = {}
    body = _object_schema(Document, defs)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "pytest-unsafebench JSON report",
            **body, "$defs": dict(sorted(defs.items()))}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"


if __name__ == "__main__":  # python -m pytest_unsafebench.report.schema [--check]
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if SCHEMA_FILE.read_text() == schema_text() else 1)
    SCHEMA_FILE.write_text(schema_text())

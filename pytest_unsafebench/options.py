"""The run's options, declared once, and the constants several layers share.

Each :class:`Option` row holds the key (the ``Settings`` field unless ``field`` says otherwise,
the ``[tool.unsafebench]`` key, the pytest dest ``unsafebench_<key>``), the
``--unsafebench-...`` flag, how argparse reads it, its built-in default, its help text and the
check its value must pass. The pytest option group (plugin.py), the pyproject validation and
``Settings`` (config.py) and the usage errors that name a flag are derived from :data:`OPTIONS`;
``tests/test_config.py`` checks that every row reaches each of them.

Standard library only (and the constant-only taxonomy): the plugin imports this module while
pytest starts, and any layer may import its constants.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .taxonomy import ALIGNMENTS, CATEGORIES, SOURCES, SPLIT_CHOICES

# Shared constants: each has this one home.
DEFAULT_SEED = 2023            # sampling, the demo dataset, bootstrap, pools, VLM unsure votes
DEFAULT_TOLERANCE = 0.02       # baseline gating: absolute drop allowed per metric
UNSURE_POLICIES: tuple[str, ...] = ("unsafe", "safe", "wrong", "random")  # classifiers.vlm.voting
DEVICES = ("auto", "cpu", "cuda", "mps")
EXECUTORS = ("local", "ray")
# Benchmark suites a run can select; data integrity always runs.
SUITES = ("effectiveness", "robustness", "fuzz", "gap")

# Upper bounds on counts, each error naming what the count would cost, so that a typo
# (batch_size = 32000) fails at once instead of as an out-of-memory kill an hour in.
# Bootstrap: each confidence interval holds its resampled metric values (8 bytes each) and two
# working copies for the percentiles (stats._resampled).
MAX_BOOTSTRAP = 100_000
BOOTSTRAP_BYTES_PER_RESAMPLE = 3 * 8
MAX_BATCH_SIZE = 4096
INPUT_BYTES_PER_IMAGE = 224 * 224 * 3 * 4  # one image as a 224x224 model's float32 input
MAX_RAY_ACTORS = 256
ACTOR_BYTES = 1_710_000_000  # each actor loads every classifier: CLIP ViT-L/14 in float32
MAX_IMAGE_PIXELS = 1_000_000_000  # a 31,623 x 31,623 image; the default is 89,478,485
# Pillow's own default guard; the project default keeps the same order of magnitude.
DEFAULT_MAX_PIXELS = 89_478_485
DECODED_BYTES_PER_PIXEL = 4       # RGBA, 8 bits a channel (16-bit files need twice that)


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest unit that keeps it under 1000 (decimal units)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _bootstrap_cost(value: int) -> str:
    need = format_bytes(BOOTSTRAP_BYTES_PER_RESAMPLE * value)
    return (f"{value} resamples would need about {need} of memory for each confidence "
            f"interval, and {value // 1000:,} times the default's time; the limit is "
            f"{MAX_BOOTSTRAP:,} (10,000 already gives stable 95% intervals)")


def _batch_cost(value: int) -> str:
    return (f"{value:,} images per batch would need about "
            f"{format_bytes(INPUT_BYTES_PER_IMAGE * value)} of memory for a 224x224 model's "
            "input tensors alone (activations and decoded images come on top); the limit is "
            f"{MAX_BATCH_SIZE:,}")


def _pixels_cost(value: int) -> str:  # each image is decoded whole, whatever the batch budget
    return (f"{value:,} pixels would let one image need about "
            f"{format_bytes(DECODED_BYTES_PER_PIXEL * value)} of memory once decoded; the "
            f"limit is {MAX_IMAGE_PIXELS:,}")


def _actors_cost(value: int) -> str:
    return (f"{value:,} actors each load every classifier of the run: about "
            f"{format_bytes(ACTOR_BYTES * value)} of memory for one CLIP ViT-L/14 "
            f"({format_bytes(ACTOR_BYTES)} each); the limit is {MAX_RAY_ACTORS:,}")


# ------------------------------------------------------------------------- value checks
# What a value must be; config.py applies them (and words the errors).
@dataclass(frozen=True)
class Text:
    """A non-empty string; ``optional``: or None."""

    optional: bool = False


@dataclass(frozen=True)
class Choice:
    """One of ``choices``."""

    choices: tuple[str, ...]


@dataclass(frozen=True)
class Members:
    """A non-empty list of ``choices`` (kept in their order); comma-separated on the command
    line."""

    choices: tuple[str, ...]


@dataclass(frozen=True)
class Count:
    """An integer >= ``minimum`` and, with ``limit``, <= it (``cost`` words the error)."""

    minimum: int
    optional: bool = False
    limit: int | None = None
    cost: Callable[[int], str] | None = None


@dataclass(frozen=True)
class Number:
    """A number in ``(low, high)``, or ``[low, high)`` when ``closed_low``."""

    low: float
    high: float
    closed_low: bool = False
    optional: bool = False

    def admits(self, value: float) -> bool:
        return (self.low <= value if self.closed_low else self.low < value) and value < self.high


Check = Text | Choice | Members | Count | Number
# A baseline-gating tolerance (the option, the per-metric table, unsafebench compare).
TOLERANCE_RANGE = Number(0.0, 1.0, closed_low=True)


# ------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Option:
    """One run option: how the command line and pyproject.toml give it and what it must be."""

    key: str
    help: str
    metavar: str | None = None
    # "store": one value; "append": repeatable; "flag": store_true
    action: Literal["store", "append", "flag"] = "store"
    type: Callable[[str], Any] = str     # how argparse reads one value
    flag: str = ""                       # "": --unsafebench-<key with dashes>
    cli: bool = True                     # False: settable in pyproject.toml only
    default: Any = None                  # built-in default (pyproject-settable options)
    check: Check | None = None           # None: config.py checks it its own way
    field: str = ""                      # the Settings field; "": the key

    def __post_init__(self) -> None:
        if not self.flag:
            object.__setattr__(self, "flag", f"--unsafebench-{self.key.replace('_', '-')}")
        if not self.field:
            object.__setattr__(self, "field", self.key)

    @property
    def dest(self) -> str:
        return f"unsafebench_{self.key}"

    @property
    def pyproject(self) -> bool:
        return self.key in PYPROJECT_KEYS


# In the order of ``pytest --help``.
OPTIONS: tuple[Option, ...] = (
    Option("classifiers", flag="--unsafebench-classifier", action="append",
           metavar="NAME[,NAME...]",
           help="classifier(s) to benchmark: a registered name or module:callable; repeatable. "
                "Turns the plugin on."),
    Option("categories", action="append", metavar="A,B", default=list(CATEGORIES),
           check=Members(CATEGORIES), help="only these categories (comma-separated, repeatable)"),
    Option("sources", action="append", metavar="A,B", default=list(SOURCES),
           check=Members(SOURCES), help="only these sources (comma-separated, repeatable)"),
    Option("suites", action="append", metavar="A,B", default=["effectiveness", "gap"],
           check=Members(SUITES),
           help="benchmark suites to run: effectiveness, gap (these two by default), "
                "robustness, fuzz; data integrity always runs"),
    Option("dataset", metavar="SPEC", default="demo", check=Text(),
           help="demo (default, embedded synthetic), a folder with metadata.csv/.jsonl, "
                "UnsafeBench parquet files, or hf:yiting/UnsafeBench"),
    Option("split", metavar="all|train|test", default="all", check=Choice(SPLIT_CHOICES),
           help="dataset split to score (default all, as the paper)"),
    Option("limit", metavar="N", type=int, check=Count(1, optional=True),
           help="score at most N images, stratified by category x source x label (seeded)"),
    Option("seed", metavar="N", type=int, default=DEFAULT_SEED, check=Count(0),
           help=f"seed for sampling and the demo dataset (default {DEFAULT_SEED})"),
    Option("device", metavar="auto|cpu|cuda", default="auto", check=Choice(DEVICES),
           help="device for torch classifiers (default auto)"),
    Option("batch_size", metavar="N", type=int, default=32,
           check=Count(1, limit=MAX_BATCH_SIZE, cost=_batch_cost),
           help="images per inference batch (default 32)"),
    Option("profile", metavar="NAME", default="default", check=Text(),
           help="threshold profile: default, strict, smoke, or one from pyproject.toml"),
    Option("alignment", metavar="official|semantic", default="official",
           check=Choice(ALIGNMENTS), help="which categories each classifier is scored on"),
    Option("cache_dir", metavar="DIR", check=Text(optional=True),
           help="prediction cache folder (default .pytest_cache/unsafebench)"),
    Option("max_image_pixels", cli=False, default=DEFAULT_MAX_PIXELS,
           check=Count(1, limit=MAX_IMAGE_PIXELS, cost=_pixels_cost),
           help="decompression-bomb limit: a larger image is refused before it is decoded"),
    # None: dataset.images.DEFAULT_ALPHA, "drop" in robustness paper mode
    Option("alpha", cli=False,
           help="transparent images: white composites them over white, drop discards alpha "
                "(dataset.images.ALPHA_RULES)"),
    Option("allow_findings", cli=False, default=[],
           help="integrity finding kinds that do not fail test_data_integrity"),
    Option("json", metavar="PATH", field="json_path", help="write the scored report as JSON"),
    Option("predictions", metavar="PATH", field="predictions_path",
           help="write every prediction as JSON lines"),
    Option("artifacts", metavar="DIR", field="artifacts_dir",
           help="where the fuzz suite saves counterexamples (default <cache_dir>/artifacts)"),
    Option("fuzz_replay", metavar="PATH",
           help="replay pinned fuzz counterexamples (a file written by "
                "'python -m pytest_unsafebench.fuzzing pin', or an artifacts folder)"),
    Option("bootstrap", metavar="N", type=int, default=1000,
           check=Count(0, limit=MAX_BOOTSTRAP, cost=_bootstrap_cost),
           help="bootstrap resamples behind each confidence interval (default 1000; "
                "0 turns intervals off)"),
    Option("confidence", metavar="P", default=0.95, check=Number(0.5, 1.0),
           help="confidence level of the intervals (default 0.95)"),
    Option("html", metavar="PATH", field="html_path",
           help="write a self-contained HTML report (needs the [html] extra: matplotlib)"),
    Option("markdown", metavar="PATH", field="markdown_path",
           help="write a short Markdown summary (e.g. $GITHUB_STEP_SUMMARY)"),
    Option("baseline", metavar="PATH", field="baseline_path",
           help="gate this run against a saved JSON report: a drop beyond the tolerance that a "
                "paired test finds significant, or beyond the hard limit, fails the run, and "
                "so does a baseline value that pairs with nothing"),
    Option("save_baseline", metavar="PATH", field="save_baseline_path",
           help="save this run as a baseline JSON (with per-image decisions)"),
    # the default is the profile's gate tolerance (DEFAULT_TOLERANCE for the built-in ones)
    Option("tolerance", metavar="X", default=DEFAULT_TOLERANCE, check=TOLERANCE_RANGE,
           help=f"absolute drop allowed against the baseline (default {DEFAULT_TOLERANCE}; per "
                "metric in [tool.unsafebench.tolerances])"),
    Option("executor", metavar="local|ray", default="local", check=Choice(EXECUTORS),
           help="where uncached predictions are computed: local (default) or a Ray cluster "
                "(needs the [ray] extra); results are identical"),
    Option("ray_address", metavar="ADDRESS", check=Text(optional=True),
           help="Ray cluster to use (default: a running one, else a local Ray started for the "
                "run)"),
    Option("ray_actors", metavar="N", type=int, default=1,
           check=Count(1, limit=MAX_RAY_ACTORS, cost=_actors_cost),
           help="Ray actors in the pool; each loads every classifier once (default 1)"),
    Option("ray_gpus_per_actor", metavar="N", default=0,
           check=Number(0.0, float("inf"), closed_low=True),
           help="GPUs per Ray actor (default 0; set 1 on GPU nodes)"),
    # None: batch_size (same batches as local, bit-identical results)
    Option("ray_batch_size", metavar="N", type=int,
           check=Count(1, optional=True, limit=MAX_BATCH_SIZE, cost=_batch_cost),
           help="images per Ray work batch (default --unsafebench-batch-size)"),
    Option("unsure", metavar="|".join(UNSURE_POLICIES), default="random",
           check=Choice(UNSURE_POLICIES),
           help="what a VLM judge's unsure vote counts as (default random, seeded by "
                "--unsafebench-seed)"),
    Option("import_responses", metavar="DIR",
           help="score VLM judges from archived responses in the layout of "
                "yiting/unsafebench_vlm_responses instead of querying them"),
    Option("timeout", metavar="SECONDS", check=Number(0.0, float("inf"), optional=True),
           help="time a classifier gets to load, and per batch; one that takes longer errors "
                "its own tests and the run goes on (default: no limit)"),
    Option("baseline_classifier", action="append", metavar="OLD=NEW",
           field="baseline_classifiers",
           help="compare the baseline's classifier OLD as this run's NEW (repeatable), "
                "e.g. myclf:load=mine"),
    Option("baseline_allow_mismatch", action="flag",
           help="compare against a baseline of another dataset or split (refused by default; "
                "the report then says so first)"),
    Option("no_cache", action="flag", field="use_cache",
           help="ignore and do not keep the prediction cache for this run"),
    Option("no_blur", action="flag", field="blur_unsafe",
           help="show Unsafe images unblurred in fuzz counterexamples and report thumbnails "
                "(blurred by default)"),
    Option("allow_train_overlap", action="flag",
           help="score a trained classifier (probe:PATH) on the split it was trained on; "
                "refused by default"),
)
OPTION: dict[str, Option] = {o.key: o for o in OPTIONS}
# The keys [tool.unsafebench] may set, in the order its errors list them.
PYPROJECT_KEYS = (
    "dataset", "split", "categories", "sources", "limit", "seed", "device", "batch_size",
    "profile", "alignment", "cache_dir", "max_image_pixels", "alpha", "allow_findings", "suites",
    "bootstrap", "confidence", "tolerance", "executor", "ray_address", "ray_actors",
    "ray_gpus_per_actor", "ray_batch_size", "unsure", "timeout",
)
# Keys of [tool.unsafebench] that are tables rather than settings.
TABLE_KEYS = ("thresholds", "profiles", "classifiers", "robustness", "tolerances")


def flag(key: str) -> str:
    """The command-line flag of an option key, e.g. ``save_baseline`` ->
    ``--unsafebench-save-baseline``."""
    return OPTION[key].flag

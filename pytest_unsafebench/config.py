"""Run settings: command line over ``[tool.unsafebench]`` in pyproject.toml over built-in defaults.

Every key and value is checked here, once, so the rest of the code can trust ``Settings``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .dataset.images import ALPHA_RULES, DEFAULT_ALPHA, DEFAULT_MAX_PIXELS
from .dataset.records import EXCLUDING_KINDS, KEEPING_KINDS
from .errors import ConfigError
from .executors import EXECUTORS
from .taxonomy import ALIGNMENTS, CATEGORIES, SOURCES, SPLIT_CHOICES, suggest
from .thresholds import GateRule, ThresholdTable, build_gate, build_thresholds

DEFAULTS: dict[str, Any] = {
    "dataset": "demo",
    "split": "all",
    "categories": list(CATEGORIES),
    "sources": list(SOURCES),
    "limit": None,
    "seed": 2023,
    "device": "auto",
    "batch_size": 32,
    "profile": "default",
    "alignment": "official",
    "cache_dir": None,
    "max_image_pixels": DEFAULT_MAX_PIXELS,
    "alpha": None,          # transparent images: "white" or "drop"; None: "drop" in paper mode
    "allow_findings": [],
    "suites": ["effectiveness", "gap"],
    "bootstrap": 1000,      # resamples behind every confidence interval; 0 turns CIs off
    "confidence": 0.95,
    "tolerance": 0.02,      # baseline gating: drop allowed per metric (else the profile's)
    "executor": "local",    # or "ray": uncached work runs on a Ray cluster first
    "ray_address": None,    # None: a running cluster ("auto"), else a local Ray for the run
    "ray_actors": 1,        # actors in the pool; each loads every classifier of the run once
    "ray_gpus_per_actor": 0,
    "ray_batch_size": None,  # None: batch_size (same batches as local, bit-identical results)
    "unsure": "random",     # VLM judges: what an unsure vote counts as (seeded by seed)
    "timeout": None,        # seconds a classifier gets per batch; None: no limit
}
# Bootstrap resamples a run may ask for. Each confidence interval holds its resampled metric
# values (8 bytes each) and two working copies for the percentiles (stats._resampled).
MAX_BOOTSTRAP = 100_000
BOOTSTRAP_BYTES_PER_RESAMPLE = 3 * 8
# Bounds on the other counts, each error naming what the count would cost, so that a typo
# (batch_size = 32000) fails at once instead of as an out-of-memory kill an hour in.
MAX_BATCH_SIZE = 4096
INPUT_BYTES_PER_IMAGE = 224 * 224 * 3 * 4  # one image as a 224x224 model's float32 input
MAX_RAY_ACTORS = 256
ACTOR_BYTES = 1_710_000_000  # each actor loads every classifier: CLIP ViT-L/14 in float32
MAX_POOL_SIZE = 100_000      # the paper draws 500
MAX_SEEDS = 100
MAX_PGD_STEPS = 10_000
MAX_QUERIES = 100_000
MAX_IMAGE_PIXELS = 1_000_000_000  # a 31,623 x 31,623 image; the default is 89,478,485
DECODED_BYTES_PER_PIXEL = 4       # RGBA, 8 bits a channel (16-bit files need twice that)
# Keys of [tool.unsafebench] that are tables rather than settings.
TABLE_KEYS = ("thresholds", "profiles", "classifiers", "robustness", "tolerances")
# Benchmark suites a run can select; data integrity always runs.
SUITES = ("effectiveness", "robustness", "fuzz", "gap")
ATTACKS = ("gaussian", "fgsm", "pgd", "deepfool", "square", "spsa")  # = attacks.ATTACKS
DEFAULT_ATTACKS = ATTACKS[:5]  # the paper's four and one black-box attack; spsa on request
UNSURE_POLICIES = ("unsafe", "safe", "wrong", "random")  # = classifiers.vlm.voting's


@dataclass(frozen=True)
class RobustnessSettings:
    """``[tool.unsafebench.robustness]``: the protocol of protocol section 6, configurable."""

    pool_size: int = 500                      # K images drawn from the correctly classified pool
    seeds: tuple[int, ...] = (2023, 2024, 2025)
    mode: str = "pixel"                       # "paper": the reference code's units and settings
    eps: float = 2 / 255                      # L-inf budget in [0, 1] pixel units
    pgd_steps: int = 20
    pgd_step_size: float | None = None        # None: 2.5 eps / steps (attacks.AttackSpec)
    pgd_random_start: bool = True
    queries: int = 200                        # black-box query budget per image
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    evasions: tuple[str, ...] | None = None   # None: every evasion edit, at severity 3
    corruptions: tuple[str, ...] | None = None  # None: every corruption, severities 1-5

    def public(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}


def _robustness(table: Any) -> RobustnessSettings:
    where = "tool.unsafebench.robustness"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table")
    defaults = RobustnessSettings()
    known = list(vars(defaults))
    values: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{where}.{key}"
        if key not in known:
            raise ConfigError(f"{path}: unknown key{suggest(key, known)}; "
                              f"known: {', '.join(known)}")
        if key in ("pool_size", "pgd_steps", "queries"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{path}: expected an integer >= 1, got {value!r}")
        elif key == "eps":
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value <= 1:
                raise ConfigError(f"{path}: expected a number in [0, 1] (pixel units), "
                                  f"got {value!r}")
            value = float(value)
        elif key == "pgd_step_size":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ConfigError(f"{path}: expected a number in (0, 1] (pixel units per step), "
                                  f"got {value!r}")
            value = float(value)
        elif key == "pgd_random_start":
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: expected true or false, got {value!r}")
        elif key == "mode":
            if value not in ("pixel", "paper"):
                raise ConfigError(f"{path}: expected 'pixel' or 'paper', got {value!r}")
        elif key == "seeds":
            if not isinstance(value, list) or not value or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{path}: expected a non-empty list of integers, got {value!r}")
            value = tuple(value)
        elif key == "attacks":
            if not isinstance(value, list) or any(v not in ATTACKS for v in value):
                raise ConfigError(f"{path}: expected a list from {', '.join(ATTACKS)}, "
                                  f"got {value!r}")
            value = tuple(value)
        else:  # evasions / corruptions: checked against the perturbation registry at collection
            # (robustness.evasions / corruptions), which would import numpy and Pillow here
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{path}: expected a list of perturbation names, got {value!r}")
            value = tuple(value)
        values[key] = value
    settings = RobustnessSettings(**{**vars(defaults), **values})
    _check_robustness_costs(settings, where)
    return settings


def _check_robustness_costs(rs: RobustnessSettings, where: str) -> None:
    """Upper bounds on the robustness counts; each error says how many model calls (the
    time) the value would cost for one attack on one source."""
    n_seeds = len(rs.seeds)
    per_image = max(rs.pgd_steps, rs.queries)  # model calls an image costs the dearest attack
    limits = (
        ("pool_size", rs.pool_size, MAX_POOL_SIZE, rs.pool_size * n_seeds * per_image,
         f"{rs.pool_size:,} images x {n_seeds} seeds x up to {per_image:,} calls per image"),
        ("seeds", n_seeds, MAX_SEEDS, rs.pool_size * n_seeds * per_image,
         f"{n_seeds:,} pools of up to {rs.pool_size:,} images x {per_image:,} calls per image"),
        ("pgd_steps", rs.pgd_steps, MAX_PGD_STEPS, rs.pool_size * n_seeds * rs.pgd_steps,
         f"{rs.pgd_steps:,} forward and backward passes x up to {rs.pool_size * n_seeds:,} "
         "images"),
        ("queries", rs.queries, MAX_QUERIES, rs.pool_size * n_seeds * rs.queries,
         f"{rs.queries:,} queries x up to {rs.pool_size * n_seeds:,} images"),
    )
    for key, value, limit, calls, how in limits:
        if value > limit:
            count = f"{value:,} seeds" if key == "seeds" else f"{value:,}"
            raise ConfigError(f"{where}.{key}: {count} would take up to {calls:,} model calls "
                              f"per attack and source ({how}); the limit is {limit:,}")
DEVICES = ("auto", "cpu", "cuda", "mps")
# Classifier option keys the plugin consumes itself rather than passing to the factory.
RESERVED_CLASSIFIER_KEYS = ("coverage",)


@dataclass(frozen=True)
class Settings:
    classifiers: tuple[str, ...]
    dataset: str
    split: str
    categories: tuple[str, ...]
    sources: tuple[str, ...]
    limit: int | None
    seed: int
    device: str
    batch_size: int
    profile: str
    alignment: str
    cache_dir: Path
    use_cache: bool
    json_path: Path | None
    predictions_path: Path | None
    max_image_pixels: int
    allow_findings: frozenset[str]
    thresholds: ThresholdTable = field(repr=False)
    classifier_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    suites: tuple[str, ...] = ("effectiveness", "gap")
    robustness: RobustnessSettings = field(default_factory=RobustnessSettings)
    artifacts_dir: Path | None = None      # fuzz counterexamples; None: <cache_dir>/artifacts
    blur_unsafe: bool = True               # blur saved Unsafe counterexample images
    fuzz_replay: Path | None = None        # pinned fuzz counterexamples to replay
    allow_train_overlap: bool = False      # score trained classifiers on their training data
    bootstrap: int = 1000                  # resamples per confidence interval; 0: none
    confidence: float = 0.95
    html_path: Path | None = None
    markdown_path: Path | None = None
    baseline_path: Path | None = None      # gate this run against a saved JSON report
    save_baseline_path: Path | None = None
    tolerance: float = 0.02                # baseline gating, any metric without its own
    tolerances: Mapping[str, float] = field(default_factory=dict)  # per metric
    gate: GateRule = field(default_factory=GateRule)  # the profile's baseline gate
    baseline_classifiers: Mapping[str, str] = field(default_factory=dict)  # baseline -> run name
    baseline_allow_mismatch: bool = False  # compare against another dataset or split
    # Where uncached predictions are computed; not in public(): they never change a result.
    executor: str = "local"
    ray_address: str | None = None
    ray_actors: int = 1
    ray_gpus_per_actor: float = 0.0
    ray_batch_size: int | None = None
    unsure: str = "random"                 # VLM judges' unsure policy
    import_responses: Path | None = None   # archived VLM responses to score instead of querying
    timeout: float | None = None           # seconds per classifier batch; None: no limit
    alpha: str = DEFAULT_ALPHA             # how transparent images decode (images.ALPHA_RULES)

    def tolerance_for(self, metric: str) -> float:
        return self.tolerances.get(metric, self.tolerance)

    @property
    def artifacts_path(self) -> Path:
        if self.artifacts_dir is not None:
            return self.artifacts_dir
        return self.cache_dir / "artifacts"

    def options_for(self, classifier: str) -> dict[str, Any]:
        """Factory keyword arguments for a classifier (without plugin-reserved keys)."""
        opts = dict(self.classifier_options.get(classifier, {}))
        for key in RESERVED_CLASSIFIER_KEYS:
            opts.pop(key, None)
        return opts

    def coverage_override(self, classifier: str) -> frozenset[str] | None:
        cov = self.classifier_options.get(classifier, {}).get("coverage")
        return frozenset(cov) if cov is not None else None

    def public(self) -> dict[str, Any]:
        """The resolved configuration as it goes into the JSON report (no machine paths)."""
        return {
            "classifiers": list(self.classifiers),
            "dataset": self.dataset,
            "split": self.split,
            "categories": list(self.categories),
            "sources": list(self.sources),
            "limit": self.limit,
            "seed": self.seed,
            "device": self.device,
            "batch_size": self.batch_size,
            "profile": self.profile,
            "alignment": self.alignment,
            "use_cache": self.use_cache,
            "max_image_pixels": self.max_image_pixels,
            "allow_findings": sorted(self.allow_findings),
            "classifier_options": {k: dict(v) for k, v in sorted(self.classifier_options.items())},
            "suites": list(self.suites),
            "robustness": self.robustness.public(),
            "bootstrap": self.bootstrap,
            "confidence": self.confidence,
            "tolerance": self.tolerance,
            "tolerances": dict(sorted(self.tolerances.items())),
            "unsure": self.unsure,
            "import_responses": self.import_responses is not None,
            "timeout": self.timeout,
            "alpha": self.alpha,
        }


def read_pyproject(path: Path) -> dict[str, Any]:
    """The ``[tool.unsafebench]`` table of a pyproject.toml, or {} if there is none."""
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    table = data.get("tool", {}).get("unsafebench", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.unsafebench] must be a table")
    return table


def _split_list(values: list[str] | None) -> list[str] | None:
    """Repeatable, comma-separated command-line values, flattened."""
    if not values:
        return None
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


def resolve_settings(cli: Mapping[str, Any], pyproject: Mapping[str, Any],
                     rootpath: Path) -> Settings:
    """Merge the three layers and validate every value; raises ConfigError naming the key."""
    unknown = set(pyproject) - set(DEFAULTS) - set(TABLE_KEYS)
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(
            f"tool.unsafebench.{key}: unknown key{suggest(key, [*DEFAULTS, *TABLE_KEYS])}; "
            f"known keys: {', '.join([*DEFAULTS, *TABLE_KEYS])}"
        )
    merged: dict[str, Any] = dict(DEFAULTS)
    where: dict[str, str] = {k: "built-in default" for k in DEFAULTS}
    for key in DEFAULTS:
        if key in pyproject:
            merged[key], where[key] = pyproject[key], f"tool.unsafebench.{key}"
    cli_values = {
        **{k: v for k, v in cli.items()
           if v is not None and k not in ("categories", "sources", "suites")},
        **{k: _split_list(cli.get(k)) for k in ("categories", "sources", "suites") if cli.get(k)},
    }
    for key, value in cli_values.items():
        if key in DEFAULTS:
            merged[key], where[key] = value, f"--unsafebench-{key.replace('_', '-')}"

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{where[key]}: {message}")

    def choice(key: str, allowed: tuple[str, ...]) -> str:
        value = merged[key]
        if value not in allowed:
            raise fail(key, f"{value!r} is not one of {', '.join(allowed)}"
                       f"{suggest(str(value), allowed)}")
        return value

    def members(key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        values = merged[key]
        if isinstance(values, str) or not isinstance(values, list) or not values:
            raise fail(key, f"expected a non-empty list, got {values!r}")
        for v in values:
            if v not in allowed:
                raise fail(key, f"unknown value {v!r}{suggest(str(v), allowed)}; "
                           f"expected some of: {', '.join(allowed)}")
        return tuple(v for v in allowed if v in values)  # canonical order

    def from_cli(key: str) -> bool:
        return where[key].startswith("--")  # pyproject values are typed: "10" is not 10

    def quoted(key: str, value: Any) -> str:
        """The fix for a number written as a TOML string."""
        if not isinstance(value, str) or from_cli(key) or len(value) > 40:
            return ""
        try:
            float(value)
        except ValueError:
            return ""
        return f" (a string: write {key} = {value.strip()} without quotes)"

    def integer(key: str, minimum: int, optional: bool = False,
                maximum: int | None = None) -> int | None:
        value = merged[key]
        if value is None and optional:
            return None
        digits = value.strip().removeprefix("-") if isinstance(value, str) else ""
        if from_cli(key) and digits.isascii() and digits.isdecimal():
            try:
                value = int(value)
            except ValueError:  # more digits than int() parses: not a usable count anyway
                raise fail(key, f"expected an integer >= {minimum}, got {len(digits)} "
                           "digits") from None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise fail(key, f"expected an integer >= {minimum}, got {value!r:.80}"
                       f"{quoted(key, value)}")
        if maximum is not None and value > maximum:
            raise fail(key, f"{value} is above the limit of {maximum:,}")
        return value

    def number(key: str, low: float, high: float, closed_low: bool = False) -> float:
        value = merged[key]
        if isinstance(value, str) and from_cli(key):
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
            (low <= value if closed_low else low < value) and value < high)
        if not ok:
            span = f"[{low}, {high})" if closed_low else f"({low}, {high})"
            raise fail(key, f"expected a number in {span}, got {value!r:.80}"
                       f"{quoted(key, value)}")
        return float(value)

    def text(key: str, optional: bool = False) -> str | None:
        value = merged[key]
        if optional and value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise fail(key, f"expected a non-empty string, got {value!r:.80}")
        return value

    def bootstrap_count() -> int:
        value = integer("bootstrap", 0)
        assert value is not None
        if value > MAX_BOOTSTRAP:
            need = _bytes(BOOTSTRAP_BYTES_PER_RESAMPLE * value)
            raise fail("bootstrap", f"{value} resamples would need about {need} of memory for "
                       f"each confidence interval, and {value // 1000:,} times the default's "
                       f"time; the limit is {MAX_BOOTSTRAP:,} (10,000 already gives stable "
                       "95% intervals)")
        return value

    def batch(key: str, optional: bool = False) -> int | None:
        value = integer(key, 1, optional=optional)
        if value is not None and value > MAX_BATCH_SIZE:
            raise fail(key, f"{value:,} images per batch would need about "
                       f"{_bytes(INPUT_BYTES_PER_IMAGE * value)} of memory for a 224x224 "
                       "model's input tensors alone (activations and decoded images come on "
                       f"top); the limit is {MAX_BATCH_SIZE:,}")
        return value

    def pixels() -> int:
        value = integer("max_image_pixels", 1)
        assert value is not None
        if value > MAX_IMAGE_PIXELS:  # each image is decoded whole, whatever the batch budget
            raise fail("max_image_pixels", f"{value:,} pixels would let one image need about "
                       f"{_bytes(DECODED_BYTES_PER_PIXEL * value)} of memory once decoded; the "
                       f"limit is {MAX_IMAGE_PIXELS:,}")
        return value

    def actors() -> int:
        value = integer("ray_actors", 1)
        assert value is not None
        if value > MAX_RAY_ACTORS:
            raise fail("ray_actors", f"{value:,} actors each load every classifier of the run: "
                       f"about {_bytes(ACTOR_BYTES * value)} of memory for one CLIP ViT-L/14 "
                       f"({_bytes(ACTOR_BYTES)} each); the limit is {MAX_RAY_ACTORS:,}")
        return value

    allow = merged["allow_findings"]
    all_kinds = tuple(sorted(EXCLUDING_KINDS | KEEPING_KINDS))
    if not isinstance(allow, list) or any(k not in all_kinds for k in allow):
        raise fail("allow_findings",
                   f"expected a list of finding kinds from: {', '.join(all_kinds)}")

    classifier_options = _classifier_options(pyproject.get("classifiers", {}))
    _check_threshold_classifiers(pyproject, [*(cli.get("classifiers") or ()),
                                             *classifier_options])
    profile = text("profile")
    assert profile is not None
    try:
        thresholds = build_thresholds(pyproject, profile)
        gate = build_gate(pyproject, profile)
    except ConfigError as exc:
        raise ConfigError(f"{where['profile']}: {exc}" if "unknown profile" in str(exc)
                          else str(exc)) from None

    def alpha_rule(rs: RobustnessSettings) -> str:
        # Paper mode decodes as the official loader for the whole run, not only for attacks:
        # its pool is drawn from the clean predictions, which must see the attacked pixels.
        if merged["alpha"] is None:
            return "drop" if rs.mode == "paper" else DEFAULT_ALPHA
        return choice("alpha", ALPHA_RULES)

    robustness = _robustness(pyproject.get("robustness", {}))
    cache_dir = text("cache_dir", optional=True)
    cache_path = (rootpath / Path(cache_dir).expanduser() if cache_dir
                  else rootpath / ".pytest_cache" / "unsafebench")
    settings = Settings(
        classifiers=tuple(cli.get("classifiers") or ()),
        dataset=text("dataset"),  # type: ignore[arg-type]
        split=choice("split", SPLIT_CHOICES),
        categories=members("categories", CATEGORIES),
        sources=members("sources", SOURCES),
        limit=integer("limit", 1, optional=True),
        seed=integer("seed", 0),  # type: ignore[arg-type]
        device=choice("device", DEVICES),
        batch_size=batch("batch_size"),  # type: ignore[arg-type]
        profile=profile,
        alignment=choice("alignment", ALIGNMENTS),
        cache_dir=cache_path,
        use_cache=not cli.get("no_cache", False),
        json_path=Path(cli["json"]) if cli.get("json") else None,
        predictions_path=Path(cli["predictions"]) if cli.get("predictions") else None,
        max_image_pixels=pixels(),
        allow_findings=frozenset(allow),
        thresholds=thresholds,
        classifier_options=classifier_options,
        suites=members("suites", SUITES),
        robustness=robustness,
        artifacts_dir=Path(cli["artifacts"]) if cli.get("artifacts") else None,
        blur_unsafe=not cli.get("no_blur", False),
        fuzz_replay=_replay_path(cli.get("fuzz_replay")),
        allow_train_overlap=bool(cli.get("allow_train_overlap", False)),
        bootstrap=bootstrap_count(),
        confidence=number("confidence", 0.5, 1.0),
        html_path=_html_path(cli.get("html")),
        markdown_path=_output_path(cli.get("markdown")),
        baseline_path=_existing_file(cli.get("baseline"), "--unsafebench-baseline",
                                     "a JSON report saved with --unsafebench-save-baseline "
                                     "or --unsafebench-json"),
        save_baseline_path=_output_path(cli.get("save_baseline")),
        # the profile's gate tolerance unless pyproject or the command line sets one
        tolerance=(gate.tolerance if where["tolerance"] == "built-in default"
                   else number("tolerance", 0.0, 1.0, closed_low=True)),
        gate=gate,
        baseline_classifiers=parse_renames(cli.get("baseline_classifier")),
        baseline_allow_mismatch=bool(cli.get("baseline_allow_mismatch", False)),
        tolerances=_tolerances(pyproject.get("tolerances", {})),
        executor=choice("executor", EXECUTORS),
        ray_address=text("ray_address", optional=True),
        ray_actors=actors(),
        ray_gpus_per_actor=number("ray_gpus_per_actor", 0.0, float("inf"), closed_low=True),
        ray_batch_size=batch("ray_batch_size", optional=True),
        unsure=choice("unsure", UNSURE_POLICIES),
        import_responses=_existing_dir(cli.get("import_responses"),
                                       "--unsafebench-import-responses"),
        timeout=None if merged["timeout"] is None else number("timeout", 0.0, float("inf")),
        alpha=alpha_rule(robustness),
    )
    _check_outputs(settings)
    return settings


def _check_outputs(s: Settings) -> None:
    """Report paths that would overwrite the cache, each other, or a folder: usage errors
    now, not a destroyed cache or a traceback after the whole run."""
    cache = (s.cache_dir / "predictions.sqlite").resolve()
    protected = {cache, *(cache.with_name(cache.name + x) for x in ("-wal", "-shm"))}
    seen: dict[Path, str] = {}
    for option, path in (("json", s.json_path), ("save-baseline", s.save_baseline_path),
                         ("html", s.html_path), ("markdown", s.markdown_path),
                         ("predictions", s.predictions_path)):
        if path is None:
            continue
        where = path.resolve()
        if where in protected:
            raise ConfigError(f"--unsafebench-{option}: {path} is the prediction cache; "
                              "write the report somewhere else")
        if where in seen:
            raise ConfigError(f"--unsafebench-{option}: {path} is also --unsafebench-"
                              f"{seen[where]}; give each report its own file")
        if where.is_dir():
            raise ConfigError(f"--unsafebench-{option}: {path} is a folder; name a file in it")
        seen[where] = option
    if "fuzz" in s.suites:  # counterexamples are saved mid-test: a file there would error them
        for path in (s.artifacts_path, *s.artifacts_path.parents):
            if path.exists():
                if not path.is_dir():
                    raise ConfigError(f"artifacts folder {s.artifacts_path}: {path} is not a "
                                      "folder; point --unsafebench-artifacts at a folder")
                break


def _existing_dir(value: Any, option: str) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{option}: {path} is not a folder (expected "
                          "<model>/prompt_<i>/<source>_<category>.json files)")
    return path


def _html_path(value: Any) -> Path | None:
    import importlib.util

    if value and importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("--unsafebench-html needs matplotlib for its charts: "
                          "pip install 'pytest-unsafebench[html]'")
    return _output_path(value)


def _output_path(value: Any) -> Path | None:
    return Path(value) if value else None


def _existing_file(value: Any, option: str, what: str) -> Path | None:
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"{option}: {path} is not a file (expected {what})")
    return path


def parse_renames(values: list[str] | None,
                  flag: str = "--unsafebench-baseline-classifier") -> dict[str, str]:
    """``OLD=NEW`` values (repeatable): the baseline's classifier OLD is this run's NEW.
    Checked against both runs' classifiers once the baseline is read."""
    out: dict[str, str] = {}
    for value in values or ():
        old, sep, new = str(value).partition("=")
        old, new = old.strip(), new.strip()
        if not sep or not old or not new:
            raise ConfigError(f"{flag} {value!r}: expected OLD=NEW, e.g. myclf:load=mine "
                              "(the baseline's name = this run's)")
        if old in out:
            raise ConfigError(f"{flag}: {old!r} is mapped twice")
        if new in out.values():
            raise ConfigError(f"{flag}: two baseline classifiers map to {new!r}; map each to "
                              "its own classifier of this run")
        out[old] = new
    return out


def _bytes(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _check_threshold_classifiers(pyproject: Mapping[str, Any], names: list[str]) -> None:
    """A ``classifier.<name>`` threshold table must name a classifier that exists: registered,
    selected for this run, or given a ``[tool.unsafebench.classifiers]`` table; a misspelt one
    would otherwise be silently ignored. Names with a ``:`` (``module:callable``, ``hf:``,
    ``probe:``) are the user's own and cannot be checked without importing them."""
    from .registry import available

    known = sorted({*available(), *names})
    tables: list[tuple[str, Any]] = [("tool.unsafebench.thresholds", pyproject.get("thresholds"))]
    profiles = pyproject.get("profiles")
    if isinstance(profiles, Mapping):
        tables += [(f"tool.unsafebench.profiles.{k}", v) for k, v in profiles.items()]
    tables += [(f"{w}.warn", t.get("warn")) for w, t in list(tables) if isinstance(t, Mapping)]
    for where, table in tables:
        named = table.get("classifier") if isinstance(table, Mapping) else None
        for name in named if isinstance(named, Mapping) else ():
            if name not in known and ":" not in name:
                raise ConfigError(
                    f"{where}.classifier.{name}: unknown classifier {name!r}"
                    f"{suggest(name, known)}; known: {', '.join(known)} (or any name selected "
                    "with --unsafebench-classifier or given a [tool.unsafebench.classifiers] "
                    "table)")


def _tolerances(table: Any) -> dict[str, float]:
    """``[tool.unsafebench.tolerances]``: per-metric tolerance for baseline gating."""
    where = "tool.unsafebench.tolerances"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table of metric = number, e.g. f1 = 0.03")
    if table:  # the gated metrics live with the gate (numpy: imported only when needed)
        from .report.baseline import ABSOLUTE_LOWER_IS_BETTER, HIGHER_IS_BETTER, LOWER_IS_BETTER

        metrics = (*HIGHER_IS_BETTER, *LOWER_IS_BETTER, *ABSOLUTE_LOWER_IS_BETTER)
        for metric in table:
            if metric not in metrics:
                raise ConfigError(f"{where}.{metric}: unknown metric {metric!r}"
                                  f"{suggest(str(metric), metrics)}; gated metrics: "
                                  f"{', '.join(metrics)}")
    out = {}
    for metric, value in table.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConfigError(f"{where}.{metric}: expected a number in [0, 1), got {value!r}")
        out[str(metric)] = float(value)
    return out


def _replay_path(value: Any) -> Path | None:
    if not value:
        return None
    path = Path(value)
    if not path.exists():
        raise ConfigError(f"--unsafebench-fuzz-replay: {path} does not exist (expected a file "
                          "written by 'python -m pytest_unsafebench.fuzzing pin' or an "
                          "artifacts folder)")
    return path


def _classifier_options(table: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(table, Mapping):
        raise ConfigError("tool.unsafebench.classifiers: expected a table of per-classifier tables")
    out: dict[str, dict[str, Any]] = {}
    for name, opts in table.items():
        path = f"tool.unsafebench.classifiers.{name}"
        if not isinstance(opts, Mapping):
            raise ConfigError(f"{path}: expected a table of options, got {opts!r}")
        cov = opts.get("coverage")
        if cov is not None and (not isinstance(cov, list) or any(c not in CATEGORIES for c in cov)):
            bad = [c for c in cov if c not in CATEGORIES] if isinstance(cov, list) else cov
            raise ConfigError(f"{path}.coverage: expected a list of categories; bad: {bad!r}")
        out[name] = dict(opts)
    return out

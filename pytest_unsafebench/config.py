"""Run settings: command line over ``[tool.unsafebench]`` in pyproject.toml over built-in defaults.

Every key and value is checked here, once, so the rest of the code can trust ``Settings``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .dataset.images import ALPHA_RULES, DEFAULT_ALPHA
from .dataset.records import EXCLUDING_KINDS, KEEPING_KINDS
from .errors import ConfigError
from .options import (
    DEFAULT_SEED,
    OPTION,
    OPTIONS,
    PYPROJECT_KEYS,
    TABLE_KEYS,
    TOLERANCE_RANGE,
    Choice,
    Count,
    Members,
    Number,
    Option,
    Text,
    flag,
)
from .robustness.registries import ATTACKS
from .taxonomy import CATEGORIES, suggest
from .thresholds import GateRule, ThresholdTable, build_gate, build_thresholds

# Bounds on the robustness counts ([tool.unsafebench.robustness]); the run options' bounds
# are in their rows of options.OPTIONS.
MAX_POOL_SIZE = 100_000      # the paper draws 500
MAX_SEEDS = 100
MAX_PGD_STEPS = 10_000
MAX_QUERIES = 100_000
# Attack names live in their registry, which imports no torch.
DEFAULT_ATTACKS = tuple(ATTACKS)[:5]  # the paper's four and one black-box attack; spsa on request


@dataclass(frozen=True)
class RobustnessSettings:
    """``[tool.unsafebench.robustness]``: the paper's robustness protocol, configurable (its
    reference, UnsafeBench's assess_robustness.py: 500 correctly classified images per seed
    2023, 2024, 2025, four attacks at eps 0.01; README "Robustness")."""

    pool_size: int = 500                      # K images drawn from the correctly classified pool
    seeds: tuple[int, ...] = (DEFAULT_SEED, DEFAULT_SEED + 1, DEFAULT_SEED + 2)
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
        else:  # evasions / corruptions: checked against the perturbation registry when the
            # robustness suite is selected (pytest_configure: robustness.accuracy.corruptions)
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


# Classifier option keys the plugin consumes itself rather than passing to the factory.
RESERVED_CLASSIFIER_KEYS = ("coverage",)


def _reported(convert: Callable[[Any], Any] = lambda v: v, **kw: Any) -> Any:
    """A ``Settings`` field that goes into the JSON report's ``config`` (``public()``), as
    ``convert`` makes it; the others (paths, where work runs) never change a result."""
    return field(metadata={"public": convert}, **kw)


def _listed(values: Any) -> list[Any]:
    return list(values)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The resolved run options (options.OPTIONS, each under its ``field``) and tables. The
    built-in defaults are the options' ones; fields are in ``public()`` order."""

    classifiers: tuple[str, ...] = _reported(_listed)
    dataset: str = _reported()
    split: str = _reported()
    categories: tuple[str, ...] = _reported(_listed)
    sources: tuple[str, ...] = _reported(_listed)
    limit: int | None = _reported()
    seed: int = _reported()
    device: str = _reported()
    batch_size: int = _reported()
    profile: str = _reported()
    alignment: str = _reported()
    cache_dir: Path
    use_cache: bool = _reported()
    json_path: Path | None
    predictions_path: Path | None
    max_image_pixels: int = _reported()
    allow_findings: frozenset[str] = _reported(sorted)
    thresholds: ThresholdTable = field(repr=False)
    classifier_options: Mapping[str, Mapping[str, Any]] = _reported(
        lambda table: {k: dict(v) for k, v in sorted(table.items())})
    suites: tuple[str, ...] = _reported(_listed)
    robustness: RobustnessSettings = _reported(RobustnessSettings.public)
    artifacts_dir: Path | None             # fuzz counterexamples; None: <cache_dir>/artifacts
    blur_unsafe: bool                      # blur saved Unsafe counterexample images
    fuzz_replay: Path | None               # pinned fuzz counterexamples to replay
    allow_train_overlap: bool              # score trained classifiers on their training data
    bootstrap: int = _reported()           # resamples per confidence interval; 0: none
    confidence: float = _reported()
    html_path: Path | None
    markdown_path: Path | None
    baseline_path: Path | None             # gate this run against a saved JSON report
    save_baseline_path: Path | None
    tolerance: float = _reported()         # baseline gating, any metric without its own
    tolerances: Mapping[str, float] = _reported(lambda table: dict(sorted(table.items())))
    gate: GateRule                         # the profile's baseline gate
    baseline_classifiers: Mapping[str, str]  # baseline -> run name
    baseline_allow_mismatch: bool          # compare against another dataset or split
    executor: str                          # where uncached predictions are computed
    ray_address: str | None
    ray_actors: int
    ray_gpus_per_actor: float
    ray_batch_size: int | None
    unsure: str = _reported()              # VLM judges' unsure policy
    # archived VLM responses to score instead of querying; the report says only whether
    import_responses: Path | None = _reported(lambda path: path is not None)
    timeout: float | None = _reported()    # seconds per classifier load or batch; None: none
    alpha: str = _reported()               # how transparent images decode (images.ALPHA_RULES)

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

    def outputs(self) -> tuple[tuple[str, Path | None], ...]:
        """(option key, path) of each file the run writes at its end, in the order they are
        written."""
        return (("json", self.json_path), ("save_baseline", self.save_baseline_path),
                ("html", self.html_path), ("markdown", self.markdown_path),
                ("predictions", self.predictions_path))

    def public(self) -> dict[str, Any]:
        """The resolved configuration as it goes into the JSON report (no machine paths)."""
        return {f.name: f.metadata["public"](getattr(self, f.name))
                for f in fields(self) if "public" in f.metadata}


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


class _Layers:
    """Each pyproject-settable option's value, command line over ``[tool.unsafebench]`` over
    its built-in default, and where that value came from (named by every error)."""

    def __init__(self, cli: Mapping[str, Any], pyproject: Mapping[str, Any]) -> None:
        self.value: dict[str, Any] = {}
        self.where: dict[str, str] = {}
        for key in PYPROJECT_KEYS:
            opt = OPTION[key]
            given = cli.get(key)  # pytest hands over None / [] for an option not given
            if isinstance(opt.check, Members):
                given = _split_list(given)
            if given is not None:
                self.value[key], self.where[key] = given, opt.flag
            elif key in pyproject:
                self.value[key], self.where[key] = pyproject[key], f"tool.unsafebench.{key}"
            else:
                self.value[key], self.where[key] = opt.default, "built-in default"

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where[key]}: {message}")

    def from_cli(self, key: str) -> bool:
        return self.where[key].startswith("--")  # pyproject values are typed: "10" is not 10

    def quoted(self, key: str, value: Any) -> str:
        """The fix for a number written as a TOML string."""
        if not isinstance(value, str) or self.from_cli(key) or len(value) > 40:
            return ""
        try:
            float(value)
        except ValueError:
            return ""
        return f" (a string: write {key} = {value.strip()} without quotes)"

    def check(self, opt: Option) -> Any:
        """The option's value, checked as its row says."""
        rule = opt.check
        if isinstance(rule, Text):
            return self.text(opt.key, rule.optional)
        if isinstance(rule, Choice):
            return self.choice(opt.key, rule.choices)
        if isinstance(rule, Members):
            return self.members(opt.key, rule.choices)
        if isinstance(rule, Count):
            return self.count(opt.key, rule)
        if isinstance(rule, Number):
            return self.number(opt.key, rule)
        raise AssertionError(f"{opt.key}: no check to apply")

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.value[key]
        if value not in allowed:
            raise self.fail(key, f"{value!r} is not one of {', '.join(allowed)}"
                            f"{suggest(str(value), allowed)}")
        return str(value)

    def members(self, key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        values = self.value[key]
        if isinstance(values, str) or not isinstance(values, list) or not values:
            raise self.fail(key, f"expected a non-empty list, got {values!r}")
        for v in values:
            if v not in allowed:
                raise self.fail(key, f"unknown value {v!r}{suggest(str(v), allowed)}; "
                                f"expected some of: {', '.join(allowed)}")
        return tuple(v for v in allowed if v in values)  # canonical order

    def count(self, key: str, rule: Count) -> int | None:
        value = self.value[key]
        if value is None and rule.optional:
            return None
        digits = value.strip().removeprefix("-") if isinstance(value, str) else ""
        if self.from_cli(key) and digits.isascii() and digits.isdecimal():
            try:
                value = int(value)
            except ValueError:  # more digits than int() parses: not a usable count anyway
                raise self.fail(key, f"expected an integer >= {rule.minimum}, got "
                                f"{len(digits)} digits") from None
        if isinstance(value, bool) or not isinstance(value, int) or value < rule.minimum:
            raise self.fail(key, f"expected an integer >= {rule.minimum}, got {value!r:.80}"
                            f"{self.quoted(key, value)}")
        if rule.limit is not None and value > rule.limit:
            assert rule.cost is not None
            raise self.fail(key, rule.cost(value))
        return value

    def number(self, key: str, rule: Number) -> float | None:
        value = self.value[key]
        if value is None and rule.optional:
            return None
        if isinstance(value, str) and self.from_cli(key):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not rule.admits(value):
            span = f"[{rule.low}, {rule.high})" if rule.closed_low else f"({rule.low}, {rule.high})"
            raise self.fail(key, f"expected a number in {span}, got {value!r:.80}"
                            f"{self.quoted(key, value)}")
        return float(value)

    def text(self, key: str, optional: bool = False) -> str | None:
        value = self.value[key]
        if optional and value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected a non-empty string, got {value!r:.80}")
        return value


def resolve_settings(cli: Mapping[str, Any], pyproject: Mapping[str, Any],
                     rootpath: Path) -> Settings:
    """Merge the three layers and validate every value; raises ConfigError naming the key."""
    unknown = set(pyproject) - set(PYPROJECT_KEYS) - set(TABLE_KEYS)
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(
            f"tool.unsafebench.{key}: unknown key{suggest(key, [*PYPROJECT_KEYS, *TABLE_KEYS])}; "
            f"known keys: {', '.join([*PYPROJECT_KEYS, *TABLE_KEYS])}"
        )
    layers = _Layers(cli, pyproject)
    allow = layers.value["allow_findings"]
    all_kinds = tuple(sorted(EXCLUDING_KINDS | KEEPING_KINDS))
    if not isinstance(allow, list) or any(k not in all_kinds for k in allow):
        raise layers.fail("allow_findings",
                          f"expected a list of finding kinds from: {', '.join(all_kinds)}")

    classifier_options = _classifier_options(pyproject.get("classifiers", {}))
    _check_threshold_classifiers(pyproject, [*(cli.get("classifiers") or ()),
                                             *classifier_options])
    profile = layers.text("profile")
    assert profile is not None
    try:
        thresholds = build_thresholds(pyproject, profile)
        gate = build_gate(pyproject, profile)
    except ConfigError as exc:
        raise ConfigError(f"{layers.where['profile']}: {exc}" if "unknown profile" in str(exc)
                          else str(exc)) from None
    robustness = _robustness(pyproject.get("robustness", {}))
    cache_dir = layers.text("cache_dir", optional=True)

    values: dict[str, Any] = {
        "thresholds": thresholds, "gate": gate, "classifier_options": classifier_options,
        "robustness": robustness, "allow_findings": frozenset(allow), "profile": profile,
        "cache_dir": (rootpath / Path(cache_dir).expanduser() if cache_dir
                      else rootpath / ".pytest_cache" / "unsafebench"),
    }
    by_field = {opt.field: opt for opt in OPTIONS}
    for f in fields(Settings):  # in field order: of two bad values, the same one is named first
        opt = by_field.get(f.name)
        if f.name in values:
            continue
        if f.name == "tolerances":
            values[f.name] = _tolerances(pyproject.get("tolerances", {}))
        elif opt is None:
            raise AssertionError(f"Settings.{f.name}: no option and no table fills it")
        elif not opt.pyproject:
            values[f.name] = _FROM_CLI[opt.key](cli.get(opt.key))
        elif opt.key == "tolerance" and layers.where["tolerance"] == "built-in default":
            values[f.name] = gate.tolerance  # the profile's gate tolerance
        elif opt.key == "alpha":
            # Paper mode decodes as the official loader for the whole run, not only for
            # attacks: its pool is drawn from the clean predictions, which must see the
            # attacked pixels.
            values[f.name] = (layers.choice("alpha", ALPHA_RULES)
                              if layers.value["alpha"] is not None
                              else "drop" if robustness.mode == "paper" else DEFAULT_ALPHA)
        else:
            values[f.name] = layers.check(opt)
    settings = Settings(**values)
    _check_outputs(settings)
    return settings


def _check_outputs(s: Settings) -> None:
    """Report paths that would overwrite the cache, each other, or a folder: usage errors
    now, not a destroyed cache or a traceback after the whole run."""
    cache = (s.cache_dir / "predictions.sqlite").resolve()
    protected = {cache, *(cache.with_name(cache.name + x) for x in ("-wal", "-shm"))}
    seen: dict[Path, str] = {}
    for key, path in s.outputs():
        if path is None:
            continue
        option = flag(key)
        where = path.resolve()
        if where in protected:
            raise ConfigError(f"{option}: {path} is the prediction cache; "
                              "write the report somewhere else")
        if where in seen:
            raise ConfigError(f"{option}: {path} is also {seen[where]}; give each report its "
                              "own file")
        if where.is_dir():
            raise ConfigError(f"{option}: {path} is a folder; name a file in it")
        seen[where] = option
    if "fuzz" in s.suites:  # counterexamples are saved mid-test: a file there would error them
        for path in (s.artifacts_path, *s.artifacts_path.parents):
            if path.exists():
                if not path.is_dir():
                    raise ConfigError(f"artifacts folder {s.artifacts_path}: {path} is not a "
                                      f"folder; point {flag('artifacts')} at a folder")
                break


def _responses_dir(value: Any) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{flag('import_responses')}: {path} is not a folder (expected "
                          "<model>/prompt_<i>/<source>_<category>.json files)")
    return path


def _html_path(value: Any) -> Path | None:
    import importlib.util

    if value and importlib.util.find_spec("matplotlib") is None:
        raise ConfigError(f"{flag('html')} needs matplotlib for its charts: "
                          "pip install 'pytest-unsafebench[html]'")
    return _output_path(value)


def _output_path(value: Any) -> Path | None:
    return Path(value) if value else None


def _baseline_path(value: Any) -> Path | None:
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"{flag('baseline')}: {path} is not a file (expected a JSON report "
                          f"saved with {flag('save_baseline')} or {flag('json')})")
    return path


def parse_renames(values: list[str] | None,
                  option: str = flag("baseline_classifier")) -> dict[str, str]:
    """``OLD=NEW`` values (repeatable): the baseline's classifier OLD is this run's NEW.
    Checked against both runs' classifiers once the baseline is read."""
    out: dict[str, str] = {}
    for value in values or ():
        old, sep, new = str(value).partition("=")
        old, new = old.strip(), new.strip()
        if not sep or not old or not new:
            raise ConfigError(f"{option} {value!r}: expected OLD=NEW, e.g. myclf:load=mine "
                              "(the baseline's name = this run's)")
        if old in out:
            raise ConfigError(f"{option}: {old!r} is mapped twice")
        if new in out.values():
            raise ConfigError(f"{option}: two baseline classifiers map to {new!r}; map each to "
                              "its own classifier of this run")
        out[old] = new
    return out


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
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not TOLERANCE_RANGE.admits(value):
            raise ConfigError(f"{where}.{metric}: expected a number in [0, 1), got {value!r}")
        out[str(metric)] = float(value)
    return out


def _replay_path(value: Any) -> Path | None:
    if not value:
        return None
    path = Path(value)
    if not path.exists():
        raise ConfigError(f"{flag('fuzz_replay')}: {path} does not exist (expected a file "
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


# How each command-line-only option becomes its Settings field.
_FROM_CLI: dict[str, Callable[[Any], Any]] = {
    "classifiers": lambda names: tuple(names or ()),
    "json": _output_path,
    "predictions": _output_path,
    "artifacts": _output_path,
    "fuzz_replay": _replay_path,
    "html": _html_path,
    "markdown": _output_path,
    "baseline": _baseline_path,
    "save_baseline": _output_path,
    "import_responses": _responses_dir,
    "baseline_classifier": parse_renames,
    "baseline_allow_mismatch": bool,
    "no_cache": lambda given: not given,
    "no_blur": lambda given: not given,
    "allow_train_overlap": bool,
}

"""pytest entry point (``pytest11``). Import-light by design: only pytest and the standard
library load here, so ``pytest --help`` and runs without ``--unsafebench-classifier`` never
import numpy, torch, transformers or onnxruntime.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .marker import HELP
from .parametrize import REPLAY_CASES_KEY, parametrize

if TYPE_CHECKING:
    from .cells import Cell
    from .classifier import Classifier
    from .results import RunState
    from .session import UnsafeBenchSession

MARKERS = (
    HELP,
    "effectiveness: per-category F1 and false-positive-rate tests (pytest-unsafebench)",
    "integrity: the dataset's data-integrity test (pytest-unsafebench)",
    "robustness: robust accuracy under corruptions, evasion edits and attacks (pytest-unsafebench)",
    "fuzz: hypothesis search for perturbation chains that flip a decision (pytest-unsafebench)",
    "gap: real (Laion5B) minus AI-generated (Lexica) F1, FPR and RA (pytest-unsafebench)",
    "slow: long-running test",
)
# option dest suffix -> help; the dest is "unsafebench_<key>", the flag "--unsafebench-<key>".
_SINGLE_OPTIONS: dict[str, tuple[str, str]] = {
    "dataset": ("SPEC", "demo (default, embedded synthetic), a folder with metadata.csv/.jsonl, "
                        "UnsafeBench parquet files, or hf:yiting/UnsafeBench"),
    "split": ("all|train|test", "dataset split to score (default all, as the paper)"),
    "limit": ("N", "score at most N images, stratified by category x source x label (seeded)"),
    "seed": ("N", "seed for sampling and the demo dataset (default 2023)"),
    "device": ("auto|cpu|cuda", "device for torch classifiers (default auto)"),
    "batch_size": ("N", "images per inference batch (default 32)"),
    "profile": ("NAME", "threshold profile: default, strict, smoke, or one from pyproject.toml"),
    "alignment": ("official|semantic", "which categories each classifier is scored on"),
    "cache_dir": ("DIR", "prediction cache folder (default .pytest_cache/unsafebench)"),
    "json": ("PATH", "write the scored report as JSON"),
    "predictions": ("PATH", "write every prediction as JSON lines"),
    "artifacts": ("DIR", "where the fuzz suite saves counterexamples "
                         "(default <cache_dir>/artifacts)"),
    "fuzz_replay": ("PATH", "replay pinned fuzz counterexamples (a file written by "
                            "'python -m pytest_unsafebench.fuzzing pin', or an artifacts folder)"),
    "bootstrap": ("N", "bootstrap resamples behind each confidence interval (default 1000; "
                       "0 turns intervals off)"),
    "confidence": ("P", "confidence level of the intervals (default 0.95)"),
    "html": ("PATH", "write a self-contained HTML report (needs the [html] extra: matplotlib)"),
    "markdown": ("PATH", "write a short Markdown summary (e.g. $GITHUB_STEP_SUMMARY)"),
    "baseline": ("PATH", "gate this run against a saved JSON report: a drop beyond the "
                         "tolerance that a paired test finds significant, or beyond the hard "
                         "limit, fails the run, and so does a baseline value that pairs with "
                         "nothing"),
    "save_baseline": ("PATH", "save this run as a baseline JSON (with per-image decisions)"),
    "tolerance": ("X", "absolute drop allowed against the baseline (default 0.02; per metric "
                       "in [tool.unsafebench.tolerances])"),
    "executor": ("local|ray", "where uncached predictions are computed: local (default) or a "
                              "Ray cluster (needs the [ray] extra); results are identical"),
    "ray_address": ("ADDRESS", "Ray cluster to use (default: a running one, else a local Ray "
                               "started for the run)"),
    "ray_actors": ("N", "Ray actors in the pool; each loads every classifier once (default 1)"),
    "ray_gpus_per_actor": ("N", "GPUs per Ray actor (default 0; set 1 on GPU nodes)"),
    "ray_batch_size": ("N", "images per Ray work batch (default --unsafebench-batch-size)"),
    "unsure": ("unsafe|safe|wrong|random", "what a VLM judge's unsure vote counts as (default "
                                         "random, seeded by --unsafebench-seed)"),
    "import_responses": ("DIR", "score VLM judges from archived responses in the layout of "
                                "yiting/unsafebench_vlm_responses instead of querying them"),
    "timeout": ("SECONDS", "time a classifier gets per batch; one that takes longer errors its "
                           "own tests and the run goes on (default: no limit)"),
}
_INT_OPTIONS = ("limit", "seed", "batch_size", "bootstrap", "ray_actors", "ray_batch_size")
# The packaged suite modules; a run without paths collects the selected ones.
SUITE_MODULES = {
    "integrity": "test_data_integrity.py",
    "effectiveness": "test_effectiveness.py",
    "robustness": "test_robustness.py",
    "fuzz": "test_fuzz.py",
    "gap": "test_gap.py",
}


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspec

    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unsafebench", "pytest-unsafebench: benchmark image safety classifiers")
    group.addoption(
        "--unsafebench-classifier", action="append", dest="unsafebench_classifiers",
        metavar="NAME[,NAME...]", default=[],
        help="classifier(s) to benchmark: a registered name or module:callable; repeatable. "
             "Turns the plugin on.")
    for key in ("categories", "sources"):
        group.addoption(f"--unsafebench-{key}", action="append", dest=f"unsafebench_{key}",
                        metavar="A,B", default=[],
                        help=f"only these {key} (comma-separated, repeatable)")
    group.addoption("--unsafebench-suites", action="append", dest="unsafebench_suites",
                    metavar="A,B", default=[],
                    help="benchmark suites to run: effectiveness, gap (these two by default), "
                         "robustness, fuzz; data integrity always runs")
    for key, (metavar, help_text) in _SINGLE_OPTIONS.items():
        group.addoption(f"--unsafebench-{key.replace('_', '-')}", dest=f"unsafebench_{key}",
                        metavar=metavar, default=None, help=help_text,
                        type=int if key in _INT_OPTIONS else str)
    group.addoption("--unsafebench-baseline-classifier", action="append",
                    dest="unsafebench_baseline_classifier", metavar="OLD=NEW", default=[],
                    help="compare the baseline's classifier OLD as this run's NEW (repeatable), "
                         "e.g. myclf:load=mine")
    group.addoption("--unsafebench-baseline-allow-mismatch", action="store_true",
                    dest="unsafebench_baseline_allow_mismatch",
                    help="compare against a baseline of another dataset or split (refused by "
                         "default; the report then says so first)")
    group.addoption("--unsafebench-no-cache", action="store_true", dest="unsafebench_no_cache",
                    help="ignore and do not keep the prediction cache for this run")
    group.addoption("--unsafebench-no-blur", action="store_true", dest="unsafebench_no_blur",
                    help="show Unsafe images unblurred in fuzz counterexamples and report "
                         "thumbnails (blurred by default)")
    group.addoption("--unsafebench-allow-train-overlap", action="store_true",
                    dest="unsafebench_allow_train_overlap",
                    help="score a trained classifier (probe:PATH) on the split it was trained "
                         "on; refused by default")


def _cli_values(config: pytest.Config) -> dict[str, Any]:
    keys = ["classifiers", "categories", "sources", "suites", "no_cache", "no_blur",
            "allow_train_overlap", "baseline_classifier", "baseline_allow_mismatch",
            *_SINGLE_OPTIONS]
    return {k: config.getoption(f"unsafebench_{k}") for k in keys}


# tryfirst: the fuzz profiles must exist before hypothesis' own pytest_configure loads
# --hypothesis-profile.
@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    cli = _cli_values(config)
    names = [n.strip() for v in cli["classifiers"] for n in v.split(",") if n.strip()]
    if not names:
        given = [k for k, v in cli.items() if v not in (None, False, [])]
        if given:
            raise pytest.UsageError(
                f"--unsafebench-{given[0].replace('_', '-')} needs --unsafebench-classifier=NAME "
                "to choose what to benchmark")
        return
    from .config import read_pyproject, resolve_settings
    from .errors import UnsafeBenchError
    from .hookspec import hook_classifiers
    from .registry import (
        PREFIXES,
        add_import_folders,
        check_name,
        hooked_names,
        installed,
        is_module_spec,
        set_hook_classifiers,
    )
    from .session import SESSION_KEY, UnsafeBenchSession

    set_hook_classifiers(hook_classifiers(config, installed(), PREFIXES))
    config.add_cleanup(lambda: set_hook_classifiers({}))  # this run's only
    try:
        for name in names:
            check_name(name)
        if any(is_module_spec(n) for n in names):  # typed by the user: theirs to import
            add_import_folders([config.rootpath, config.invocation_params.dir])
        pyproject = read_pyproject(config.rootpath / "pyproject.toml")
        settings = resolve_settings({**cli, "classifiers": list(dict.fromkeys(names))},
                                    pyproject, config.rootpath)
        if settings.executor == "ray":
            from .executors import require_ray

            hooked = [n for n in settings.classifiers if n in hooked_names()]
            if hooked:  # an actor is a fresh process that never runs the conftest.py
                raise pytest.UsageError(
                    f"classifier {hooked[0]!r} is registered by a pytest_unsafebench_classifiers "
                    "hook, which Ray workers do not run; with --unsafebench-executor=ray name "
                    "its factory as module:callable")
            require_ray()
        if "robustness" in settings.suites:  # a misspelt perturbation fails here, not mid-run
            from .robustness.accuracy import condition_names, corruptions

            condition_names(settings.robustness)
            corruptions(settings.robustness)
    except UnsafeBenchError as exc:
        from .text import printable  # the message may quote a file's text

        raise pytest.UsageError(printable(exc)) from None
    if "fuzz" in settings.suites or settings.fuzz_replay:
        from .robustness.fuzzing import register_profiles

        register_profiles()  # dev / ci / nightly; importing hypothesis costs ~0.4 s otherwise
    if settings.fuzz_replay is not None and "fuzz" in settings.suites:
        from .robustness.fuzzing import load_cases

        try:  # here, not at collection, so that a malformed file is a usage error (exit 4)
            config.stash[REPLAY_CASES_KEY] = load_cases(settings.fuzz_replay)
        except (OSError, ValueError) as exc:
            raise pytest.UsageError(f"--unsafebench-fuzz-replay: {exc}") from None
    session = UnsafeBenchSession.start(config, settings)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(session, "unsafebench-session")
    # No paths given: run the packaged suites, whether or not the user has a copy; node ids
    # of packaged tests given as paths run those tests (see packaged.py).
    from . import suites
    from .packaged import use_packaged_suites

    wanted = [SUITE_MODULES["integrity"], *(SUITE_MODULES[k] for k in settings.suites)]
    use_packaged_suites(config, Path(suites.__file__).parent, wanted, SUITE_MODULES.values())


def _session(config: pytest.Config) -> UnsafeBenchSession:
    from .session import SESSION_KEY

    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        pytest.skip("pytest-unsafebench is inactive: pass --unsafebench-classifier=NAME")
    return session


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize benchmark tests from their unsafebench marker (ids like demo-Hate-Lexica)."""
    parametrize(metafunc)


@pytest.fixture
def unsafebench_cell(request: pytest.FixtureRequest) -> Cell:
    """One (classifier, category, source) cell: its labels, predictions and thresholds."""
    classifier, category, source = request.param
    marker = request.node.get_closest_marker("unsafebench")
    suite = (marker.kwargs.get("suite") if marker else None) or "effectiveness"
    return _session(request.config).cell(request.node, classifier, category, source, suite)


@pytest.fixture
def unsafebench_robustness(request: pytest.FixtureRequest) -> Any:
    """One robustness test's cell: its thresholds and a lazily computed robust accuracy."""
    classifier, condition, source = request.param
    return _session(request.config).robustness_cell(request.node, classifier, condition, source)


@pytest.fixture
def unsafebench_gap(request: pytest.FixtureRequest) -> Any:
    """One gap test's cell: both sources' data, its threshold and the bootstrap settings."""
    return _session(request.config).gap_cell(request.node, *request.param)


@pytest.fixture
def unsafebench_fuzz(request: pytest.FixtureRequest) -> Any:
    """One fuzz test's target (classifier, source pool, artifact folder), or a pinned case."""
    from .robustness.fuzzing import fuzz_target

    return fuzz_target(_session(request.config), request.node, *request.param)


@pytest.fixture
def unsafebench_classifier(request: pytest.FixtureRequest) -> Classifier:
    """The loaded classifier object (loaded once per process)."""
    session = _session(request.config)
    session.classifier_state(request.param)  # raises for a classifier that failed the pass
    return session.classifier(request.param)


@pytest.fixture
def unsafebench_run(request: pytest.FixtureRequest) -> RunState:
    """The run's dataset description, integrity findings and classifier states."""
    return _session(request.config).state


@pytest.fixture
def unsafebench_session(request: pytest.FixtureRequest) -> UnsafeBenchSession:
    """The run's session object (settings, predictions, robustness computations)."""
    return _session(request.config)


@pytest.fixture
def unsafebench_settings(request: pytest.FixtureRequest) -> Any:
    """The resolved settings (command line over pyproject.toml over defaults)."""
    return _session(request.config).settings


@pytest.fixture
def unsafebench_record(request: pytest.FixtureRequest) -> Any:
    """Record a report row from a test that has no cell (dataset-level tests)."""
    from .session import record_row

    def record(metric: str, value: float | int | None, *, suite: str, n: int | None = None,
               threshold: float | None = None, gate: bool = True) -> None:
        record_row(request.node, {
            "classifier": None, "suite": suite, "metric": metric, "category": None,
            "source": None, "value": value, "threshold": threshold,
            "outcome": None if gate else "info", "n": n})

    return record

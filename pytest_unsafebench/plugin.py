"""pytest entry point (``pytest11``). Import-light by design: only pytest and the standard
library load here, so ``pytest --help`` and runs without ``--unsafebench-classifier`` never
import numpy, torch, transformers or onnxruntime.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .marker import HELP
from .options import OPTIONS, flag
from .parametrize import INACTIVE, REPLAY_CASES_KEY, parametrize

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


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspec

    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unsafebench", "pytest-unsafebench: benchmark image safety classifiers")
    for opt in OPTIONS:
        if not opt.cli:
            continue
        if opt.action == "flag":
            group.addoption(opt.flag, action="store_true", dest=opt.dest, help=opt.help)
        elif opt.action == "append":  # [] and None alike mean "not given"
            group.addoption(opt.flag, action="append", dest=opt.dest, metavar=opt.metavar,
                            default=[], help=opt.help)
        else:
            group.addoption(opt.flag, dest=opt.dest, metavar=opt.metavar, default=None,
                            help=opt.help, type=opt.type)


def _cli_values(config: pytest.Config) -> dict[str, Any]:
    return {opt.key: config.getoption(opt.dest) for opt in OPTIONS if opt.cli}


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
                f"{flag(given[0])} needs --unsafebench-classifier=NAME "
                "to choose what to benchmark")
        return
    from .errors import UnsafeBenchError
    from .hookspec import hook_classifiers
    from .registry import PREFIXES, installed, set_hook_classifiers
    from .run import settings_for
    from .session import start

    set_hook_classifiers(hook_classifiers(config, installed(), PREFIXES))
    config.add_cleanup(lambda: set_hook_classifiers({}))  # this run's only
    try:
        settings = settings_for(cli, names, config.rootpath, config.invocation_params.dir)
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
    start(config, settings)  # the session and this process's role (controller or worker)
    # No paths given: run the packaged suites, whether or not the user has a copy; node ids
    # of packaged tests given as paths run those tests (see packaged.py).
    from . import suites
    from .packaged import SUITE_MODULES, use_packaged_suites

    wanted = [SUITE_MODULES["integrity"], *(SUITE_MODULES[k] for k in settings.suites)]
    use_packaged_suites(config, Path(suites.__file__).parent, wanted, SUITE_MODULES.values())


def _session(config: pytest.Config) -> UnsafeBenchSession:
    from .session import SESSION_KEY

    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        pytest.skip(INACTIVE)
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
    return _session(request.config).fuzz_target(request.node, *request.param)


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
    from .report.schema import make_row
    from .session import record_row

    def record(metric: str, value: float | int | None, *, suite: str, n: int | None = None,
               threshold: float | None = None, gate: bool = True) -> None:
        record_row(request.node, make_row(classifier=None, suite=suite, metric=metric,
                                          value=value, threshold=threshold,
                                          outcome=None if gate else "info", n=n))

    return record

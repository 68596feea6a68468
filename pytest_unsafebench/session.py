"""The pytest glue of a run: the hooks, the fixtures' backing (where the run layer's
NotApplicable becomes a skip and its CannotRun a one-line failure), the report rows' way from
each test to the controller, and the terminal display. The run itself (the prediction pass, its
state, the report and its files) is :class:`pytest_unsafebench.run.Run`, which knows nothing of
pytest.

What differs by process is a role chosen once, in ``pytest_configure`` (as pytest-cov does):
the :class:`Controller` (an xdist controller, or a serial run) runs the prediction pass before
any test, gathers every test's rows and writes the report; a pytest-xdist :class:`Worker` only
reads the controller's session folder. So no image is inferred twice, and a serial run and
``-n 2`` compute every metric from identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import pytest

from . import cells, progress
from .config import Settings
from .errors import CannotRun, NotApplicable, UnsafeBenchError
from .hookspec import call_report_hook
from .marker import gap_over_conditions
from .packaged import SUITE_MODULES
from .report.schema import Outcome, Row, make_row
from .robustness import accuracy, fuzzing
from .run import Run, gate_failed, silent_display
from .selection import disabled_suite_hints, markexpr_selects_none
from .text import printable

if TYPE_CHECKING:
    from .classifier import Classifier
    from .dataset.records import Record
    from .results import ClassifierState, PredictionTable, RunState

SESSION_KEY = pytest.StashKey["UnsafeBenchSession"]()
ROWS_KEY = pytest.StashKey[list[Row]]()
WORKER_INPUT_KEY = "unsafebench_session_dir"
T = TypeVar("T")


def start(config: pytest.Config, settings: Settings) -> UnsafeBenchSession:
    """This process's part of the run: the session (in ``config.stash``, for the fixtures) and
    its role, an xdist worker's or the controller's, each registered as a plugin."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        folder = Path(workerinput[WORKER_INPUT_KEY])
    else:
        folder = Path(tempfile.mkdtemp(prefix="unsafebench-"))
    session = UnsafeBenchSession(Run(settings, folder))
    role = Worker(session) if workerinput is not None else Controller(session)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(session, "unsafebench-session")
    config.pluginmanager.register(role, f"unsafebench-{type(role).__name__.lower()}")
    return session


def _outcome(compute: Callable[[], T]) -> T:
    """``compute()``, the run layer's NotApplicable becoming this test's skip and its CannotRun
    this test's failure, in one line without a traceback; same messages."""
    problem: NotApplicable | CannotRun
    try:
        return compute()
    except (NotApplicable, CannotRun) as exc:
        problem = exc
    # Raised outside the except clause, or pytest would print the run layer's exception too.
    if isinstance(problem, NotApplicable):
        pytest.skip(str(problem))
    failed = pytest.fail.Exception(str(problem), pytrace=False)
    failed.__context__ = problem.__cause__  # what it met (an attack's ImportError) is shown
    raise failed


def _fail(message: str) -> NoReturn:
    """Fail the running test with ``message`` alone (a fault found mid-test, e.g. by the fuzz
    search)."""
    pytest.fail(message, pytrace=False)


# eq=False keeps identity hashing: pluggy puts registered plugins in sets (a user's conftest.py
# that does not cover the packaged suites makes pytest build such a set).
@dataclass(eq=False)
class UnsafeBenchSession:
    """What both roles share: the run, the fixtures' backing (also the ``unsafebench_session``
    fixture that suites call), and the hooks that give every benchmark test its report rows."""

    run: Run

    @property
    def settings(self) -> Settings:
        return self.run.settings

    # ------------------------------------------------------------------ what tests read
    @property
    def state(self) -> RunState:
        return self.run.state

    def classifier_state(self, name: str) -> ClassifierState:
        """A classifier's state; its tests fail, in one line, when it failed the pass."""
        return _outcome(partial(self.run.classifier_state, name))

    def classifier(self, name: str) -> Classifier:
        """The loaded classifier (once per process); also the ``unsafebench_classifier`` fixture."""
        return self.run.classifier(name)

    def table(self, classifier: str) -> PredictionTable:
        """The classifier's clean predictions joined with labels (read once per process)."""
        return _outcome(partial(self.run.table, classifier))

    def records(self) -> dict[str, Record]:
        """The run's records by id, loaded in this process (robustness needs the pixels)."""
        return self.run.records()

    def cell(self, item: pytest.Item, classifier: str, category: str, source: str,
             suite: str) -> cells.Cell:
        return _outcome(partial(cells.cell, self.run, classifier, category, source, suite,
                                partial(record_row, item)))

    def robustness_cell(self, item: pytest.Item, classifier: str, condition: str,
                        source: str) -> cells.RobustnessCell:
        compute = partial(self.robust_accuracy, classifier, condition, source)
        return _outcome(partial(cells.robustness_cell, self.run, classifier, condition, source,
                                partial(record_row, item), compute))

    def gap_cell(self, item: pytest.Item, classifier: str, subject: str,
                 metric: str) -> cells.GapCell:
        return _outcome(partial(cells.gap_cell, self.run, classifier, subject, metric,
                                partial(record_row, item)))

    def fuzz_target(self, item: pytest.Item, classifier: str, condition: str | None,
                    source: str | None, case: dict[str, Any] | None = None
                    ) -> fuzzing.FuzzTarget:
        return _outcome(partial(fuzzing.fuzz_target, self.run, classifier, condition, source,
                                case, database_key=item.nodeid, sink=partial(record_row, item),
                                fail=_fail))

    def robust_accuracy(self, classifier: str, condition: str, source: str,
                        severity: float | None = None) -> accuracy.RAResult:
        """RA of a classifier under an attack or perturbation (see robustness/accuracy.py)."""
        return _outcome(partial(accuracy.robust_accuracy, self.run, classifier, condition,
                                source, severity))

    # ------------------------------------------------------------------ hooks of both roles
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """A gap test over robustness conditions (test_gap_ra) needs robustness results:
        without that suite it is left out, rather than skipped as a placeholder in every
        default run."""
        s = self.settings
        if "gap" in s.suites and "robustness" not in s.suites:
            items[:] = [i for i in items if not gap_over_conditions(i)]

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        marker = item.get_closest_marker("unsafebench")
        if marker is None or "metric" not in marker.kwargs or report.when == "teardown":
            return report
        if report.when == "setup" and report.passed:
            return report
        if report.when == "call" and report.failed and call.excinfo is not None:
            _one_line_failure(report, call.excinfo, marker.kwargs.get("suite"))
        rows = item.stash.get(ROWS_KEY, [])
        outcome: Outcome = "error" if report.when == "setup" and report.failed else report.outcome
        gate = [r for r in rows if r["outcome"] is None]
        if not gate:
            gate = [_placeholder_row(item, marker.kwargs)]
            rows = [*rows, *gate]
        reason = _skip_reason(report) if report.skipped else None
        for row in gate:
            row["outcome"] = outcome
            if reason:
                row["reason"] = reason  # e.g. "not attackable: ...": in the JSON, not only -rs
        report.unsafebench = json.dumps(rows)  # travels to the xdist controller with the report
        return report

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        progress.deactivate(self.run.display)
        self.run.close()


class Controller:
    """The xdist controller, or the one process of a serial run: it runs the prediction pass
    before any test, gathers every test's rows, and builds, gates and writes the report."""

    def __init__(self, session: UnsafeBenchSession) -> None:
        self.run = session.run
        self.rows: list[dict[str, Any]] = []
        self.document: dict[str, Any] | None = None  # the finished report, set at session finish
        self.written: list[str] = []  # "wrote PATH (what)" lines, in order

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[WORKER_INPUT_KEY] = str(self.run.folder)

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.run.display = _terminal_display(session.config)
        progress.activate(self.run.display)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        note = _timeout_method_note(session.config)
        if note and reporter is not None:  # now: a timeout would end the run before the end
            reporter.write_line(note, yellow=True)

    def pytest_report_collectionfinish(self, config: pytest.Config,
                                       items: list[pytest.Item]) -> list[str]:
        """-m / -k that selected nothing: name the suite option they were probably after."""
        if items:
            return []
        return self._suite_hints(config)

    def _suite_hints(self, config: pytest.Config) -> list[str]:
        from . import suites

        s = self.run.settings
        extra: dict[str, set[str]] = {}
        if "robustness" not in s.suites:  # -k pgd: robustness parameter ids
            try:
                extra["robustness"] = set(accuracy.condition_names(s.robustness))
            except UnsafeBenchError:  # a misspelt name: checked when the suite is enabled
                pass
        return disabled_suite_hints(config, s.suites, Path(suites.__file__).parent,
                                    SUITE_MODULES, extra)

    def _markexpr_selects_none(self, config: pytest.Config) -> bool:
        """-m selects none of the packaged tests this run collects (and nothing else runs)."""
        packaged = config.pluginmanager.get_plugin("unsafebench-packaged-suites")
        markexpr = config.getoption("markexpr", "") or ""
        if not markexpr or packaged is None or packaged.ids \
                or config.args != [str(packaged.folder)]:
            return False
        return markexpr_selects_none(markexpr, [packaged.folder / m for m in packaged.modules])

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        if session.config.option.collectonly:
            return
        # Every test deselected: nothing would read the predictions. An xdist controller
        # collects nothing itself; there only -m tells that no packaged test can be selected.
        config = session.config
        if not config.pluginmanager.has_plugin("dsession"):
            if not session.items:
                return
        elif self._markexpr_selects_none(config):
            reporter = config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                for line in self._suite_hints(config):
                    reporter.write_line(line)
            return
        if session.testsfailed and not session.config.option.continue_on_collection_errors:
            return
        try:
            self.run.prepare()
        except UnsafeBenchError as exc:  # may quote a manifest's or a baseline's text
            raise pytest.UsageError(printable(exc)) from None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "unsafebench", None)
        if data:
            self.rows.extend(json.loads(data))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Build the report once (curves, comparisons, baseline gate), gate the exit code on
        the baseline, and write the requested files. Runs before the terminal summary."""
        if not self.run.prepared:
            return
        document = self.run.report(self.rows, session.config.rootpath)
        self.document = call_report_hook(session.config, document)  # conftest.py may add keys
        if gate_failed(self.document) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        self.written, ok = self.run.write_files(self.document)
        if not ok:
            session.exitstatus = pytest.ExitCode.USAGE_ERROR

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.document is None:
            return
        from .report.terminal import terminal_lines

        terminalreporter.section("unsafebench report")
        for line in terminal_lines(self.document, verdict=False):
            terminalreporter.write_line(line)
        for line in [*self._artifact_lines(), *self.written]:  # every file this run wrote
            terminalreporter.write_line(line)
        gate = self.document.get("baseline")
        if gate:
            from .report.baseline import verdict_line

            # the report's last line, so a failed gate never ends on a table or a file name
            terminalreporter.write_line("")
            terminalreporter.write_line(verdict_line(gate), bold=True, red=not gate["passed"],
                                        green=gate["passed"])
        if gate and not gate["passed"]:
            # pytest's closing "N passed" line must not read like a pass either; other plugins
            # read every entry of ``stats`` as a report object, so this is one in shape.
            terminalreporter.stats.setdefault("baseline gate failed", []).append(
                SimpleNamespace(nodeid="unsafebench-baseline-gate", when="session",
                                outcome="failed", longrepr=verdict_line(gate)))

    def _artifact_lines(self) -> list[str]:
        """The fuzz counterexamples saved during the tests (by any xdist worker)."""
        assert self.document is not None
        folder = self.run.settings.artifacts_path
        files = dict.fromkeys(rel for row in self.document.get("rows", [])
                              for rel in (row.get("artifact_image"), row.get("artifact_spec"))
                              if rel)
        return [f"wrote {folder / rel} (fuzz counterexample)" for rel in files]

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        shutil.rmtree(self.run.folder, ignore_errors=True)


class Worker:
    """A pytest-xdist worker: it reads the controller's session folder (no pass, no report, no
    terminal), and hands its long steps' seconds (the robustness grid) back by file."""

    def __init__(self, session: UnsafeBenchSession) -> None:
        self.run = session.run

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        progress.activate(self.run.display)  # silent: it only keeps the steps' times

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # xdist sets workerinput on its workers' config; pytest's Config does not declare it.
        self.run.save_steps(session.config.workerinput["workerid"])  # type: ignore[attr-defined]


def record_row(item: pytest.Item, row: Row) -> None:
    item.stash.setdefault(ROWS_KEY, []).append(row)
    if isinstance(row.get("value"), (int, float)):
        # Also visible to --junitxml as <property name="unsafebench.f1" value="..."/>.
        item.user_properties.append((f"unsafebench.{row['metric']}", row["value"]))


def _timeout_method_note(config: pytest.Config) -> str | None:
    """A warning for a run under pytest-timeout's thread method, which ends the process at a
    test's timeout (os._exit): the report would never be written. The signal method fails only
    that test and the run goes on to its report."""
    if not config.pluginmanager.has_plugin("timeout"):
        return None
    method = (config.getoption("timeout_method", None) or config.getini("timeout_method")
              or ("signal" if hasattr(signal, "SIGALRM") else "thread"))
    limit = (config.getoption("timeout", None) or config.getini("timeout")
             or os.environ.get("PYTEST_TIMEOUT"))
    try:
        seconds = float(limit or 0)
    except ValueError:
        return None  # pytest-timeout refuses it itself
    if method != "thread" or seconds <= 0:
        return None
    return ("unsafebench: pytest-timeout's thread method ends the run at a test's timeout, "
            "before the report is written; set timeout_method = \"signal\" (a test that "
            "hangs then fails alone) and --unsafebench-timeout for the classifiers' batches")


def _terminal_display(config: pytest.Config) -> progress.Display:
    """Progress on pytest's terminal: live on a tty, one line per step in logs and under -q."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    tw = getattr(reporter, "_tw", None)
    if reporter is None or tw is None:
        return silent_display()
    live = reporter.isatty() and config.get_verbosity() >= 0
    drawing = [False]  # the terminal's current line is our live line
    capture = config.pluginmanager.get_plugin("capturemanager")

    def uncaptured() -> Any:
        # Steps inside a test (the robustness grid) would write into the test's captured
        # output: suspend capturing, as pytest's live logging does.
        return capture.global_and_fixture_disabled() if capture is not None else nullcontext()

    def fresh_line() -> None:
        # Mid-run (the robustness grid runs inside tests) the line may hold pytest's progress
        # dots: end it rather than draw over it.
        if not drawing[0] and tw.width_of_current_line:
            tw.line()

    def redraw(text: str) -> None:
        with uncaptured():
            fresh_line()
            reporter.rewrite(text, erase=True)
        drawing[0] = True

    def line(text: str) -> None:
        with uncaptured():
            fresh_line()
            if live:
                reporter.rewrite(text, erase=True)
                tw.line()
            else:
                tw.line(text)
        drawing[0] = False

    return progress.Display(line, redraw if live else None)


# Suites whose threshold assertions carry the whole story in their message; fuzz failures
# keep Hypothesis' falsifying example.
ONE_LINE_SUITES = ("effectiveness", "gap", "robustness")


def _one_line_failure(report: pytest.TestReport, excinfo: pytest.ExceptionInfo[BaseException],
                      suite: str | None) -> None:
    """A benchmark value that misses its threshold fails with the assertion's own message, not
    the test's source and the assertion rewriter's reprs of result objects."""
    if suite not in ONE_LINE_SUITES or not isinstance(excinfo.value, AssertionError):
        return
    message = str(excinfo.value).split("\nassert ", 1)[0].strip()
    if not message:  # a bare assert: keep pytest's explanation
        return
    try:
        raise AssertionError(message) from None
    except AssertionError:
        short = pytest.ExceptionInfo.from_current()
    report.longrepr = short.getrepr(style="value")


def _skip_reason(report: pytest.TestReport) -> str | None:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: why")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return None


def _placeholder_row(item: pytest.Item, marker: Mapping[str, Any]) -> Row:
    """The row of a test that never recorded its value (skipped, or errored first)."""
    params = getattr(item, "callspec", None)
    values = params.params if params else {}

    def fields(key: str) -> tuple[Any, Any, Any]:
        # An empty parameter set (e.g. no robustness conditions configured) gives pytest's
        # NOTSET marker here instead of a tuple.
        value = values.get(key)
        return tuple(value[:3]) if isinstance(value, tuple) else (None, None, None)

    classifier = category = source = condition = None
    if "unsafebench_cell" in values:
        classifier, category, source = fields("unsafebench_cell")
    elif "unsafebench_robustness" in values:
        classifier, condition, source = fields("unsafebench_robustness")
    elif "unsafebench_fuzz" in values:
        classifier, condition, source = fields("unsafebench_fuzz")
    elif "unsafebench_gap" in values:
        classifier, subject, metric = fields("unsafebench_gap")
        category, condition = (None, subject) if metric == "gap_ra" else (subject, None)
    return make_row(classifier=classifier, suite=marker.get("suite"), metric=marker["metric"],
                    category=category, source=source, condition=condition)


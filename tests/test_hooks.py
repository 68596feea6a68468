"""The plugin's own hooks (hookspec.py), implemented by a conftest.py in a pytester folder:
``pytest_unsafebench_report`` reads and adds to the report, ``pytest_unsafebench_classifiers``
registers classifiers. Runs use the toy classifier and dataset of plugin_helpers.py.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

# Before any in-process pytester run (see test_plugin.py): C extensions must load once.
import numpy  # noqa: F401
import pytest
from PIL import Image  # noqa: F401

import pytest_unsafebench.session  # noqa: F401
from plugin_helpers import read_json
from pytest_unsafebench import registry
from pytest_unsafebench.errors import ClassifierLoadError

USAGE = pytest.ExitCode.USAGE_ERROR


def run(pytester: pytest.Pytester, classifier: str, *extra: str) -> pytest.RunResult:
    return pytester.runpytest(
        f"--unsafebench-classifier={classifier}", f"--unsafebench-dataset={pytester.path / 'ds'}",
        f"--unsafebench-cache-dir={pytester.path / 'cache'}", "--unsafebench-device=cpu",
        "--unsafebench-suites=effectiveness", f"--unsafebench-json={pytester.path / 'out.json'}",
        "-p", "no:randomly", *extra)


def conftest(pytester: pytest.Pytester, source: str) -> None:
    pytester.makeconftest(textwrap.dedent(source))


# ------------------------------------------------------------------ pytest_unsafebench_report


def test_report_hook_adds_a_key_that_reaches_the_json_report(folder) -> None:
    conftest(folder, """
        def pytest_unsafebench_report(document):
            document["team"] = {"owner": "safety-team",
                                "rows_seen": len(document["rows"]),
                                "classifiers": sorted({r["classifier"] for r in document["rows"]
                                                     if r["classifier"]})}
    """)
    result = run(folder, "toyclf:load")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    doc = read_json(folder.path / "out.json")
    assert doc["team"] == {"owner": "safety-team", "rows_seen": len(doc["rows"]),
                           "classifiers": ["toyclf:load"]}
    assert doc["team"]["rows_seen"] > 0


def test_report_hook_may_not_change_the_plugins_numbers(folder) -> None:
    conftest(folder, """
        def pytest_unsafebench_report(document):
            for row in document["rows"]:
                row["value"] = 1.0
    """)
    result = run(folder, "toyclf:load")
    assert result.ret == USAGE
    result.stderr.fnmatch_lines(["*pytest_unsafebench_report changed or removed the report's "
                                 "'rows'*"])
    assert not (folder.path / "out.json").exists()


def test_report_hook_may_not_add_what_json_cannot_hold(folder) -> None:
    conftest(folder, """
        def pytest_unsafebench_report(document):
            document["when"] = object()
    """)
    result = run(folder, "toyclf:load")
    assert result.ret == USAGE
    result.stderr.fnmatch_lines(["*pytest_unsafebench_report added 'when', which is not JSON*"])


def test_hook_implementations_without_the_plugin_active_are_valid(folder) -> None:
    """The specs are registered by pytest_addhooks whether or not a run benchmarks: pytest
    would otherwise refuse a conftest.py with an unknown pytest_ hook."""
    conftest(folder, """
        def pytest_unsafebench_report(document):
            raise AssertionError("never called without --unsafebench-classifier")

        def pytest_unsafebench_classifiers():
            raise AssertionError("never called without --unsafebench-classifier")
    """)
    folder.makepyfile(test_user="def test_plain(): pass")
    result = folder.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=1)


# -------------------------------------------------------------- pytest_unsafebench_classifiers


def test_classifier_hook_registers_callables_and_module_attr_strings(folder) -> None:
    conftest(folder, """
        import toyclf

        def pytest_unsafebench_classifiers():
            return {"mine": toyclf.load, "mine-too": "toyclf:load_other"}
    """)
    result = run(folder, "mine,mine-too")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    doc = read_json(folder.path / "out.json")
    scored = {r["classifier"] for r in doc["rows"] if r["outcome"] == "passed" and r["classifier"]}
    assert scored == {"mine", "mine-too"}
    # The registration is this run's only: a later run in the same process does not see it.
    assert "mine" not in registry.available()


@pytest.mark.parametrize(("mapping", "message"), [
    ('{"demo": toyclf.load}', "*classifier 'demo' is already registered; pick another name*"),
    ('{"hf": toyclf.load}', "*classifier 'hf' is already registered*"),
    ('{"a:b": toyclf.load}', "*classifier 'a:b': a name is a non-empty string without ':'*"),
    ('{"mine": 42}', "*classifier 'mine': factory must be a callable or a 'module:attr' string*"),
    ('{"mine": "toyclf"}', "*factory 'toyclf' must be 'module:attr' or a callable*"),
    ('["mine"]', "*pytest_unsafebench_classifiers must return a mapping of name -> factory*"),
])
def test_classifier_hook_refuses_bad_registrations(folder, mapping: str, message: str) -> None:
    conftest(folder, f"""
        import toyclf

        def pytest_unsafebench_classifiers():
            return {mapping}
    """)
    result = run(folder, "toyclf:load")
    assert result.ret == USAGE
    result.stderr.fnmatch_lines([message])


def test_two_hooks_registering_one_name_is_refused(folder) -> None:
    folder.makepyfile(other_classifiers="""
        import toyclf

        def pytest_unsafebench_classifiers():
            return {"mine": toyclf.load_other}
    """)
    conftest(folder, """
        import toyclf

        def pytest_unsafebench_classifiers():
            return {"mine": toyclf.load}
    """)
    result = run(folder, "mine", "-p", "other_classifiers")
    assert result.ret == USAGE
    result.stderr.fnmatch_lines(["*classifier 'mine' is already registered*"])


def test_hooked_classifier_with_the_ray_executor_is_a_usage_error(folder) -> None:
    conftest(folder, """
        import toyclf

        def pytest_unsafebench_classifiers():
            return {"mine": toyclf.load}
    """)
    result = run(folder, "mine", "--unsafebench-executor=ray")
    assert result.ret == USAGE
    result.stderr.fnmatch_lines(["*classifier 'mine' is registered by a "
                                 "pytest_unsafebench_classifiers hook, which Ray workers do not "
                                 "run*"])


@pytest.fixture
def hooked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A hook registration as the plugin makes it at configure time, removed afterwards."""
    (tmp_path / "hooked_mod.py").write_text("def load():\n    raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(tmp_path)
    registry.set_hook_classifiers({"mine": lambda: None, "mine-str": "hooked_mod:load"})
    yield
    registry.set_hook_classifiers({})


def test_a_file_may_name_a_hooked_classifier_but_never_code(hooked) -> None:
    # Registered by the user's own conftest.py, so as trusted as an entry point ...
    assert registry.check_file_name("mine", "probe backbone") == "mine"
    assert registry.check_file_name("mine-str", "probe backbone") == "mine-str"
    # ... while a module:callable read from a file stays refused, hooked or not.
    with pytest.raises(ClassifierLoadError, match="a file never names code to import"):
        registry.check_file_name("hooked_mod:load", "probe backbone")


def test_hooked_string_factory_is_imported_only_when_loaded(hooked) -> None:
    assert registry.available()["mine-str"] == "hooked_mod:load"
    registry.check_name("mine-str")  # a lookup imports nothing
    with pytest.raises(ClassifierLoadError, match="RuntimeError: imported"):
        registry.load_classifier("mine-str")

"""The project's own tests never download the paper's text files (category definitions,
PerspectiveVision's template): tests that need them use ../shared/reference copies through the
``reference_dir`` fixture, or replace the downloader."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("UNSAFEBENCH_OFFLINE", "1")


# Every test of this suite gets a time limit (pytest-timeout, in the dev extra), so a hang fails
# with every thread's stack instead of stalling CI. The thread method also stops a hang inside
# C code, where no signal gets through, and inside an in-process pytester run, which would take
# a signal's failure as its own test's. Set here rather than in pyproject.toml: benchmark runs
# started in the repository (the README quick start) read that file too, may lack the plugin,
# and keep their report only under the signal method. A slower test sets its own
# @pytest.mark.timeout(SECONDS, method="thread").
TEST_TIMEOUT = 300
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("timeout"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None and TESTS in item.path.parents:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT, method="thread"))


@pytest.fixture(autouse=True)
def _forget_modules_tests_wrote(tmp_path_factory: pytest.TempPathFactory):
    """Unload the modules a test wrote into its temporary folder and imported (toyclf.py and
    the like) once it ends. monkeypatch.syspath_prepend restores sys.path but not sys.modules:
    a toyclf left behind was found again by a later in-process run of the same worker (whose
    own toyclf.py it shadowed), which then counted no predictions."""
    base = str(tmp_path_factory.getbasetemp().resolve())
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        path = getattr(sys.modules.get(name), "__file__", None) or ""
        if path.startswith(base):
            del sys.modules[name]


@pytest.fixture
def empty_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """HF_HUB_OFFLINE=1 with an empty Hugging Face cache; any hub request fails the test."""
    import huggingface_hub
    from huggingface_hub import constants

    from pytest_unsafebench import weights

    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("a hub request was made although the hub is off")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.setattr(weights, "_probe", no_download)
    return home


@pytest.fixture
def folder(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester folder with the toy dataset; toyclf.py importable (as test_plugin does)."""
    from plugin_helpers import build_dataset, write_toyclf

    build_dataset(pytester.path / "ds")
    write_toyclf(pytester.path)
    pytester.syspathinsert()
    return pytester


@pytest.fixture
def hypothesis_state() -> Iterator[None]:
    """In-process runs of the fuzz suite load hypothesis profiles and --hypothesis-seed into
    this process's hypothesis: put them back afterwards."""
    from hypothesis import core, settings

    profile, seed = settings.get_current_profile_name(), core.global_force_seed
    yield
    settings.load_profile(profile)
    core.global_force_seed = seed


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "invalid_report: the test writes JSON reports that break "
                                       "the report schema on purpose (not validated after it)")


@pytest.fixture(autouse=True)
def _reports_follow_the_schema(request: pytest.FixtureRequest):
    """After each test, every JSON report under the folders it wrote in (tmp_path, the
    pytester folder) must validate against the packaged JSON Schema."""
    # Asked for before the test, so that they are torn down after this fixture.
    folders = [request.getfixturevalue(name) for name in ("tmp_path",)
               if name in request.fixturenames]
    if "pytester" in request.fixturenames:
        folders.append(request.getfixturevalue("pytester").path)
    yield
    if request.node.get_closest_marker("invalid_report"):
        return
    from report_schema_check import check_reports

    found = [line for folder in folders for line in check_reports(folder)]
    assert not found, "reports that break report.schema.json:\n" + "\n".join(found[:20])

"""Running the suites packaged with the plugin, and naming their tests so they can be run again.

pytest names a test file outside the rootdir relative to the path it was given: given the file
itself, its tests are ``::test_f1[...]``, an id pytest cannot take back. So the packaged suites
are collected from their folder (ids ``test_effectiveness.py::test_f1[demo-Hate-Lexica]``),
modules of suites the run did not select are ignored, and such an id given on the command line
(``pytest --unsafebench-classifier=demo "test_effectiveness.py::test_f1[demo-Hate-Lexica]"``)
is found in that folder when there is no such file where pytest runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

# The packaged suite modules; a run without paths collects the selected ones.
SUITE_MODULES = {
    "integrity": "test_data_integrity.py",
    "effectiveness": "test_effectiveness.py",
    "robustness": "test_robustness.py",
    "fuzz": "test_fuzz.py",
    "gap": "test_gap.py",
}


@dataclass(eq=False)
class PackagedSuites:
    """A pytest plugin: which packaged modules to collect and which of their tests to keep."""

    folder: Path
    modules: frozenset[str]            # file names to collect from ``folder``
    ids: tuple[str, ...] = ()          # node ids asked for on the command line; () = all

    def pytest_ignore_collect(self, collection_path: Path) -> bool | None:
        if collection_path.parent == self.folder and collection_path.suffix == ".py" \
                and collection_path.name.startswith("test_"):
            return collection_path.name not in self.modules or None
        return None

    def pytest_collection_modifyitems(self, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        if not self.ids:
            return
        keep: list[pytest.Item] = []
        drop: list[pytest.Item] = []
        for item in items:
            packaged = Path(item.path).parent == self.folder
            (keep if not packaged or any(_matches(item.nodeid, i) for i in self.ids)
             else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep


def _matches(nodeid: str, wanted: str) -> bool:
    """pytest's own rule for a node id argument: the node itself or anything under it."""
    return nodeid == wanted or nodeid.startswith((wanted + "::", wanted + "["))


def packaged_ids(args: Iterable[str], invocation_dir: Path, modules: Iterable[str],
                 ) -> tuple[list[str], list[str]]:
    """Split command-line arguments into packaged-suite node ids (a packaged module's file
    name, with no such file in ``invocation_dir``) and the rest, in order."""
    names = set(modules)
    ids, rest = [], []
    for arg in args:
        path = arg.split("::", 1)[0]
        if path in names and not (invocation_dir / path).exists():
            ids.append(arg)
        else:
            rest.append(arg)
    return ids, rest


def use_packaged_suites(config: pytest.Config, folder: Path, wanted: Iterable[str],
                        all_modules: Iterable[str]) -> None:
    """Point the run at the packaged ``folder``: every selected module when no paths were
    given, or the packaged tests named by the node ids given (beside any other paths)."""
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        plugin = PackagedSuites(folder, frozenset(wanted))
        config.args[:] = [str(folder)]
    else:
        ids, rest = packaged_ids(config.args, config.invocation_params.dir, all_modules)
        if not ids:
            return
        named = {i.split("::", 1)[0] for i in ids}
        plugin = PackagedSuites(folder, frozenset(named), tuple(ids))
        config.args[:] = [*rest, str(folder)]
    config.pluginmanager.register(plugin, "unsafebench-packaged-suites")

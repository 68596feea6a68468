"""The plugin's own hooks, for a ``conftest.py`` or another plugin to implement (registered by
``plugin.pytest_addhooks``, as pytest-xdist registers its ``newhooks``), and the checks applied
to what an implementation hands back. Standard library and pytest only: this module loads with
the plugin, so ``pytest --help`` stays light.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Collection, Mapping
from typing import Any

import pytest

# ------------------------------------------------------------------------------ specifications


@pytest.hookspec
def pytest_unsafebench_classifiers() -> Mapping[str, Callable[..., Any] | str] | None:
    """Classifiers to offer beside the built-ins and installed entry points: a mapping of
    name -> factory (a callable, or a ``"module:attr"`` string imported on first use). A name
    registered here is usable as ``--unsafebench-classifier=NAME`` and, being the user's own,
    may be named by a probe file's backbone. Called once, at configure time: implement it in
    the root ``conftest.py`` or in a plugin. Names must not shadow a registered classifier."""


@pytest.hookspec
def pytest_unsafebench_report(document: dict[str, Any]) -> None:
    """Read the finished report ``document`` (the dict written by ``--unsafebench-json`` and
    rendered to HTML and Markdown) before any report file is written, or add top-level keys to
    it (JSON values). Keys the plugin wrote may not be changed: the numbers stay the plugin's."""


# --------------------------------------------------------------------------------- callers


def hook_classifiers(config: pytest.Config, taken: Mapping[str, str],
                     prefixes: Collection[str]) -> dict[str, Callable[..., Any] | str]:
    """Every name the ``pytest_unsafebench_classifiers`` implementations register, checked:
    ``taken`` (built-in and entry-point names) and ``prefixes`` (``hf:``, ``probe:``) may not
    be shadowed, nor may two implementations register the same name."""
    found: dict[str, Callable[..., Any] | str] = {}
    for result in config.hook.pytest_unsafebench_classifiers():
        if not isinstance(result, Mapping):
            raise pytest.UsageError(
                f"pytest_unsafebench_classifiers must return a mapping of name -> factory, got "
                f"{type(result).__name__}")
        for name, factory in result.items():
            where = f"pytest_unsafebench_classifiers: classifier {name!r}"
            # No ':' (module:callable and hf:/probe: names) and no ',' (the CLI splits on it).
            if not isinstance(name, str) or not name.strip() or name != name.strip() \
                    or ":" in name or "," in name:
                raise pytest.UsageError(f"{where}: a name is a non-empty string without ':', "
                                        "',' or surrounding spaces")
            if name in taken or name in prefixes or name in found:
                raise pytest.UsageError(f"{where} is already registered; pick another name")
            if isinstance(factory, str):
                module, _, attr = factory.partition(":")
                if not (module and attr):
                    raise pytest.UsageError(f"{where}: factory {factory!r} must be "
                                            "'module:attr' or a callable")
            elif not callable(factory):
                raise pytest.UsageError(f"{where}: factory must be a callable or a "
                                        f"'module:attr' string, got {type(factory).__name__}")
            found[name] = factory
    return found


def call_report_hook(config: pytest.Config, document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with what the ``pytest_unsafebench_report`` implementations added. They
    get a copy, so that a change to the plugin's own keys is caught and refused rather than
    written into a report whose numbers would then not be the plugin's."""
    hook = config.hook.pytest_unsafebench_report
    if not hook.get_hookimpls():
        return document
    view = copy.deepcopy(document)
    hook(document=view)
    changed = [k for k in document if k not in view or _json(view[k]) != _json(document[k])]
    if changed:
        raise pytest.UsageError(
            f"pytest_unsafebench_report changed or removed the report's {changed[0]!r}; a "
            "hook may add keys of its own, not change the plugin's")
    added = {k: v for k, v in view.items() if k not in document}
    for key, value in added.items():
        if not isinstance(key, str):
            raise pytest.UsageError(f"pytest_unsafebench_report added the key {key!r}; report "
                                    "keys are strings")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise pytest.UsageError(f"pytest_unsafebench_report added {key!r}, which is not "
                                    f"JSON ({exc}); add plain dicts, lists, strings and "
                                    "numbers") from None
    return {**document, **added}


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)

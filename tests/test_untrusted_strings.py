"""Strings read from files never become code, a path outside the run's folders, or a shell word.
Probe files have their own tests (test_probe.py); these cover the
other readers: hub datasets, fuzz pin files and saved counterexamples read back by the HTML
report."""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
import types
from pathlib import Path

import pytest

from pytest_unsafebench.errors import DatasetError

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- hub datasets
@pytest.mark.parametrize("version", ["2.18.0", "2.19.2", "1.0"])
def test_a_datasets_release_that_runs_dataset_scripts_is_refused(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version: str) -> None:
    """Before 2.20, ``load_dataset`` ran a hub repository's loading script by default: code
    from the dataset. The plugin refuses before asking it for anything."""
    from pytest_unsafebench.dataset.hub import load_hub

    calls: list[str] = []
    fake = types.ModuleType("datasets")
    fake.__version__ = version
    fake.load_dataset = lambda repo_id, **kw: calls.append(repo_id)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(DatasetError, match=rf"datasets {version} runs a hub dataset's loading "
                                           r"script .*pip install 'datasets>=2\.20'"):
        load_hub("someone/dataset", cache_dir=tmp_path)
    assert calls == []


def test_the_hub_extra_requires_a_safe_datasets() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert "datasets>=2.20" in extras["hub"]


# --------------------------------------------------------------------------- fuzz pin files
def test_a_pinned_case_never_loads_a_classifier_the_run_did_not_select(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pin file's classifier name is compared with the run's selection; it is never
    handed to the registry (which would import a module:callable)."""
    from pytest_unsafebench.errors import NotApplicable
    from pytest_unsafebench.robustness import fuzzing

    loaded: list[str] = []
    settings = types.SimpleNamespace(classifiers=("demo",))
    run = types.SimpleNamespace(settings=settings, classifier=loaded.append)
    case = {"classifier": "os:system", "image_id": "x", "chain": "blur@1", "label": "Safe"}
    with pytest.raises(NotApplicable, match="which this run does not benchmark"):
        fuzzing.fuzz_target(run, "os:system", "blur@1", None, case,
                            database_key="", sink=None)
    assert loaded == []


def test_counterexample_files_stay_in_their_folder(tmp_path: Path) -> None:
    """Classifier names and image ids from a dataset become file names, never path parts."""
    from PIL import Image

    from pytest_unsafebench.robustness import fuzzing

    cx = fuzzing.Counterexample(
        classifier="probe:../../x", image_id="../../../escape", chain="blur@1",
        label="Safe", category="Hate", source="Lexica", content_hash="h",
        decision_before="safe", score_before=0.1, decision_after="unsafe", score_after=0.9)
    png, spec = fuzzing.save_counterexample(tmp_path / "art", cx, Image.new("RGB", (4, 4)))
    for path in (png, spec):
        assert path.resolve().is_relative_to((tmp_path / "art").resolve())


# --------------------------------------------------------------------------- saved artifacts
def _spec(folder: Path, image: object) -> dict:
    """A saved counterexample spec naming ``image`` (as fuzzing.save_counterexample writes
    them), and the report row that looks it up."""
    digest = hashlib.sha256(b"blur@1").hexdigest()[:8]  # fuzzing.chain_digest
    sub = folder / "demo"
    sub.mkdir(parents=True, exist_ok=True)
    spec = {"classifier": "demo", "chain": "blur@1", "source": None, "image": image}
    (sub / f"img-{digest}.json").write_text(json.dumps(spec))
    return {"classifier": "demo", "condition": "blur@1", "source": "all"}


@pytest.mark.parametrize("image", ["x/y", "/etc/passwd", ".", "..", 5])
def test_a_saved_spec_cannot_point_the_report_elsewhere(tmp_path: Path, image: object) -> None:
    from pytest_unsafebench.report import html as report_html

    found = report_html._find_counterexample(tmp_path, _spec(tmp_path, image))
    assert found is not None and found[1] is None


def test_a_linked_image_is_not_embedded(tmp_path: Path) -> None:
    """A symlink beside the spec could point at any file; its bytes would land in the HTML."""
    from pytest_unsafebench.report import html as report_html

    secret = tmp_path / "secret.txt"
    secret.write_text("private key material")
    row = _spec(tmp_path / "art", "leak.png")
    (tmp_path / "art" / "demo" / "leak.png").symlink_to(secret)
    found = report_html._find_counterexample(tmp_path / "art", row)
    assert found is not None and found[1] is None
    (tmp_path / "art" / "demo" / "real.png").write_bytes(b"png bytes")
    found = report_html._find_counterexample(tmp_path / "art", _spec(tmp_path / "art",
                                                                     "real.png"))
    assert found is not None and found[1] == b"png bytes"  # a plain file beside it still is

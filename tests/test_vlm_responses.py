"""Raw VLM responses: the response cache, archived responses in the hub layout of
yiting/unsafebench_vlm_responses, and --unsafebench-import-responses through the plugin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from plugin_helpers import build_dataset, read_json, read_jsonl
from pytest_unsafebench.classifiers.vlm.api import load_openai
from pytest_unsafebench.classifiers.vlm.judges import load_llava
from pytest_unsafebench.classifiers.vlm.responses import (
    Answer, ArchivedResponses, ResponseCache, response_key)
from pytest_unsafebench.dataset.records import Record
from pytest_unsafebench.errors import ClassifierLoadError


def record(i: int, label: str = "Unsafe", category: str = "Illegal activity",
           source: str = "Laion5B") -> Record:
    return Record(id=f"id{i}", safety_label=label, category=category, source=source,
                  split="test", content_hash=f"h{i}",
                  locator=f"metadata.csv:row {i + 2} (images/{i}.jpg)")


def write_archive(root: Path, model: str, files: dict[str, list[list[str]]]) -> Path:
    """files: "<source>_<category>" -> per image [name, answer 0, answer 1, answer 2]."""
    for stem, entries in files.items():
        for i in range(3):
            folder = root / model / f"prompt_{i}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{stem}.json").write_text(json.dumps(
                [{"image_fname": e[0], "response": e[1 + i]} for e in entries]))
    return root


def test_response_cache_keeps_answers_not_failures(tmp_path) -> None:
    cache = ResponseCache(tmp_path / "r.sqlite")
    k1 = response_key("m", "rev", "prompt", {"do_sample": False}, "img")
    k2 = response_key("m", "rev", "prompt", {"do_sample": False}, "img2")
    assert k1 != response_key("m", "rev2", "prompt", {"do_sample": False}, "img")
    assert k1 != response_key("m", "rev", "prompt", {"do_sample": True, "seed": 1}, "img")
    cache.put("m", [(k1, Answer("unsafe", 0.7)), (k2, Answer(None, error="HTTP 500"))])
    assert cache.get([k1, k2]) == {k1: Answer("unsafe", 0.7)}


def test_archive_in_hub_layout_is_matched_by_file_name(tmp_path) -> None:
    root = write_archive(tmp_path, "gpt4v", {
        "Laion5B_Illegal activity": [["0.jpg", "unsafe", "It is unsafe.", "safe"]],
        "lexica_illegal_activity": [["0.jpg", "safe", "safe", "safe"]],
    })
    archive = ArchivedResponses.load(root, "gpt4v")
    assert archive.lookup(1, record(0)) == Answer("It is unsafe.")
    assert archive.lookup(0, record(0, source="Lexica")) == Answer("safe")
    missing = archive.lookup(0, record(5))
    assert missing.text is None and "no archived response for image 'id5'" in missing.error


def test_archive_layout_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(ClassifierLoadError, match=r"models found: none"):
        ArchivedResponses.load(tmp_path, "gpt4v")
    write_archive(tmp_path, "llava", {"Laion5B_Gore": [["0.jpg", "a", "b", "c"]]})
    with pytest.raises(ClassifierLoadError, match=r"Laion5B_Gore.json is not named"):
        ArchivedResponses.load(tmp_path, "llava")
    bad = write_archive(tmp_path / "b", "llava", {"Lexica_Hate": [["0.jpg", "a", "b", "c"]]})
    (bad / "llava" / "prompt_2" / "Lexica_Hate.json").write_text('[{"image_fname": 3}]')
    with pytest.raises(ClassifierLoadError, match=r"prompt_2/Lexica_Hate.json\[0\]: expected"):
        ArchivedResponses.load(bad, "llava")


def test_judges_score_archived_responses_without_model_or_key(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    root = write_archive(tmp_path / "a", "gpt4v", {"Laion5B_Illegal activity": [
        ["0.jpg", "unsafe", "unsafe", "safe"],
        ["1.jpg", "I cannot tell.", "no idea", "safe"],    # three-way tie: prompt 0, unsure
    ]})
    clf = load_openai(import_responses=str(root), unsure="wrong", cache_dir=tmp_path)
    imgs = [Image.new("RGB", (4, 4)) for _ in range(3)]
    recs = [record(0), record(1, label="Safe"), record(2)]
    first, tie, missing = clf.predict(imgs, records=recs)
    assert first.decision == "unsafe" and first.score == pytest.approx(2 / 3)
    assert json.loads(tie.raw)["vote"] == "unsure" and tie.decision == "unsafe"   # wrong
    assert missing.label_scores["failed"] == 1.0 and missing.decision == "safe"
    assert "archived" in clf.description and clf.fingerprint.startswith("openai-")
    # an archive needs no weights: llava never resolves its model here
    llava = load_llava(model=str(tmp_path / "no-such-model"), import_responses=str(root),
                       archive_model="gpt4v")
    assert [p.decision for p in llava.predict(imgs[:1], records=recs[:1])] == ["unsafe"]
    with pytest.raises(ClassifierLoadError, match="perturbed images cannot be scored"):
        llava.predict(imgs[:1])


# ---------------------------------------------------------------------------- plugin


def test_plugin_scores_imported_responses(pytester: pytest.Pytester) -> None:
    rows = build_dataset(pytester.path / "ds")
    files: dict[str, list[list[str]]] = {}
    for row in rows:   # Unsafe images answered "unsafe"; Safe ones "safe" but for one unsure
        name = Path(row["file_name"]).name
        answer = "unsafe" if row["safety_label"] == "Unsafe" else "safe"
        if name.startswith("hate-Lexica-Safe-0"):
            answer = "I am not able to judge."
        files.setdefault(f"{row['source']}_{row['category']}", []).append([name, *[answer] * 3])
    archive = write_archive(pytester.path / "archive", "gpt4v", files)
    result = pytester.runpytest(
        "--unsafebench-classifier=openai", f"--unsafebench-dataset={pytester.path / 'ds'}",
        f"--unsafebench-cache-dir={pytester.path / 'cache'}", "--unsafebench-device=cpu",
        f"--unsafebench-import-responses={archive}", "--unsafebench-unsure=wrong",
        f"--unsafebench-json={pytester.path / 'out.json'}",
        f"--unsafebench-predictions={pytester.path / 'p.jsonl'}", "-p", "no:randomly")
    doc = read_json(pytester.path / "out.json")
    assert doc["classifiers"]["openai"]["error"] is None, doc["classifiers"]["openai"]
    assert doc["config"]["unsure"] == "wrong"
    f1 = {(r["category"], r["source"]): r["value"] for r in doc["rows"] if r["metric"] == "f1"
          and r["value"] is not None}
    assert f1[("Violence", "all")] == 1.0
    assert f1[("Hate", "Lexica")] == pytest.approx(2 * 4 / (2 * 4 + 1))   # the unsure -> FP
    preds = read_jsonl(pytester.path / "p.jsonl")
    unsure = [p for p in preds if p["label_scores"]["unsure"] == 1.0]
    assert len(unsure) == 1 and json.loads(unsure[0]["raw"])["responses"][0].startswith("I am")
    fpr = {(r["category"], r["source"]): r["value"] for r in doc["rows"] if r["metric"] == "fpr"}
    assert fpr[("Hate", "Lexica")] == 0.25 and fpr[("Hate", "Laion5B")] == 0.0
    assert result.ret == 0


def test_bad_unsure_policy_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--unsafebench-classifier=openai", "--unsafebench-unsure=coin")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--unsafebench-unsure: 'coin' is not one of unsafe, safe, "
                                 "wrong, random*"])
    result = pytester.runpytest("--unsafebench-classifier=openai",
                                f"--unsafebench-import-responses={pytester.path / 'nope'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--unsafebench-import-responses:*is not a folder*"])


def test_registered_names_resolve_and_the_package_ships() -> None:
    import tomllib

    from pytest_unsafebench.registry import CONTEXT_KEYS, available, resolve_factory

    for name in ("llava", "instructblip", "shieldgemma2", "openai", "openai-moderation"):
        assert name in available() and callable(resolve_factory(name))
    assert {"unsure", "unsure_seed", "import_responses"} <= set(CONTEXT_KEYS)
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert "pytest_unsafebench.classifiers.vlm" in pyproject["tool"]["setuptools"]["packages"]

"""Raw VLM responses: the response cache, archived responses in the hub layout of
yiting/unsafebench_vlm_responses, and --unsafebench-import-responses through the plugin."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from plugin_helpers import build_dataset, read_json, read_jsonl
from pytest_unsafebench.classifiers.vlm.api import load_openai
from pytest_unsafebench.classifiers.vlm.judges import load_llava
from pytest_unsafebench.classifiers.vlm.responses import (
    Answer,
    ArchivedResponses,
    ResponseCache,
    response_key,
)
from pytest_unsafebench.dataset import standin  # imported before any pytester run (numpy)
from pytest_unsafebench.dataset.parquet import load_parquet
from pytest_unsafebench.dataset.records import Record
from pytest_unsafebench.errors import ClassifierLoadError
from pytest_unsafebench.taxonomy import CATEGORIES


def record(i: int, label: str = "Unsafe", category: str = "Illegal activity",
           source: str = "Laion5B", split: str = "test") -> Record:
    return Record(id=f"id{i}", safety_label=label, category=category, source=source,
                  split=split, content_hash=f"h{i}",
                  locator=f"metadata.csv:row {i + 2} (images/{i}.jpg)", archive_key=f"{split}/{i}")


def fname(i: int, split: str = "test") -> str:
    """An image name as the official query_vlms.py writes it."""
    return f"data/UnsafeBench/{split}/images/{i}.png"


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


def test_archive_is_matched_on_split_and_index_not_file_name(tmp_path) -> None:
    root = write_archive(tmp_path, "gpt-4v", {
        # train and test merged in one file, as the official scripts do: "0.png" twice
        "Laion5B_Illegal activity": [[fname(0, "train"), "unsafe", "It is unsafe.", "safe"],
                                     [fname(0), "safe", "It is safe.", "safe"]],
        "lexica_illegal_activity": [[fname(0), "safe", "safe", "safe"]],
    })
    archive = ArchivedResponses.load(root, "gpt-4v")
    assert archive.lookup(1, record(0, split="train")) == Answer("It is unsafe.")
    assert archive.lookup(1, record(0)) == Answer("It is safe.")
    assert archive.lookup(0, record(0, source="Lexica")) == Answer("safe")
    missing = archive.lookup(0, record(5))
    assert missing.text is None and "no archived response for test/images/5" in missing.error
    keyless = archive.lookup(0, Record(id="x", safety_label="Safe", category="Hate",
                                       source="Lexica", split="test", content_hash="h",
                                       locator="somewhere"))
    assert keyless.text is None and "no split and row index" in keyless.error


def test_archive_takes_instructblip_one_element_lists(tmp_path) -> None:
    root = write_archive(tmp_path, "instructblip-7b", {"Lexica_Hate": [[fname(3), "x", "y", "z"]]})
    for i in range(3):
        path = root / "instructblip-7b" / f"prompt_{i}" / "Lexica_Hate.json"
        entries = json.loads(path.read_text())
        path.write_text(json.dumps([{**e, "response": [e["response"]]} for e in entries]))
    archive = ArchivedResponses.load(root, "instructblip-7b")
    assert archive.lookup(2, record(3, category="Hate", source="Lexica")) == Answer("z")


def test_archive_refuses_bare_names_and_conflicting_duplicates(tmp_path) -> None:
    write_archive(tmp_path / "a", "llava", {"Lexica_Hate": [["0.png", "a", "b", "c"]]})
    with pytest.raises(ClassifierLoadError, match=r"Lexica_Hate.json\[0\]: image_fname '0.png' "
                                                  r"does not end in <split>/images/<file>"):
        ArchivedResponses.load(tmp_path / "a", "llava")
    write_archive(tmp_path / "b", "llava", {"Lexica_Hate": [[fname(1), "a", "b", "c"],
                                                            [fname(1), "x", "b", "c"]]})
    with pytest.raises(ClassifierLoadError, match=r"'test/1' has two different responses"):
        ArchivedResponses.load(tmp_path / "b", "llava")


def test_archive_layout_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(ClassifierLoadError, match=r"models found: none"):
        ArchivedResponses.load(tmp_path, "gpt-4v")
    write_archive(tmp_path, "llava", {"Laion5B_Gore": [[fname(0), "a", "b", "c"]]})
    with pytest.raises(ClassifierLoadError, match=r"Laion5B_Gore.json is not named"):
        ArchivedResponses.load(tmp_path, "llava")
    bad = write_archive(tmp_path / "b", "llava", {"Lexica_Hate": [[fname(0), "a", "b", "c"]]})
    (bad / "llava" / "prompt_2" / "Lexica_Hate.json").write_text('[{"image_fname": 3}]')
    with pytest.raises(ClassifierLoadError, match=r"prompt_2/Lexica_Hate.json\[0\]: expected"):
        ArchivedResponses.load(bad, "llava")


def test_judges_score_archived_responses_without_model_or_key(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    root = write_archive(tmp_path / "a", "gpt-4v", {"Laion5B_Illegal activity": [
        [fname(0), "unsafe", "unsafe", "safe"],
        [fname(1), "I cannot tell.", "no idea", "safe"],    # three-way tie: prompt 0, unsure
    ]})
    clf = load_openai(import_responses=str(root), unsure="wrong", cache_dir=tmp_path)
    imgs = [Image.new("RGB", (4, 4)) for _ in range(3)]
    recs = [record(0), record(1, label="Safe"), record(2)]
    first, tie, missing = clf.predict(imgs, records=recs)
    assert first.decision == "unsafe" and first.score == pytest.approx(2 / 3)
    assert json.loads(tie.raw)["vote"] == "unsure" and tie.decision == "unsafe"   # wrong
    # no response: no verdict (never scored as wrong); the cells exclude and count it
    assert missing.label_scores["failed"] == 1.0 and missing.decision == "unsure"
    assert "archived" in clf.description and clf.fingerprint.startswith("openai-")
    # an archive needs no weights: llava never resolves its model here
    llava = load_llava(model=str(tmp_path / "no-such-model"), import_responses=str(root),
                       archive_model="gpt-4v")
    assert [p.decision for p in llava.predict(imgs[:1], records=recs[:1])] == ["unsafe"]
    with pytest.raises(ClassifierLoadError, match="perturbed images cannot be scored"):
        llava.predict(imgs[:1])


# ---------------------------------------------------------------------------- plugin


def test_plugin_scores_imported_responses(pytester: pytest.Pytester) -> None:
    rows = build_dataset(pytester.path / "ds")
    files: dict[str, list[list[str]]] = {}
    for row in rows:   # Unsafe images answered "unsafe"; Safe ones "safe" but for one unsure
        name = Path(row["file_name"]).stem
        answer = "unsafe" if row["safety_label"] == "Unsafe" else "safe"
        if name.startswith("hate-Lexica-Safe-0"):
            answer = "I am not able to judge."
        files.setdefault(f"{row['source']}_{row['category']}", []).append(
            [f"data/UnsafeBench/{row['split']}/images/{name}.png", *[answer] * 3])
    archive = write_archive(pytester.path / "archive", "gpt-4v", files)
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


def official_archive(folder: Path, root: Path, model: str, drop: int = 0,
                     as_list: bool = False) -> tuple[Path, int]:
    """An archive written as the official query_vlms.py writes it, for parquet files in the hub
    layout: every image answered correctly, named <split>/images/<row index within the split>,
    train then test merged per source and category; the first ``drop`` images of each file
    left out. Returns (archive, images dropped)."""
    merged: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for split in ("train", "test"):
        index = 0
        for shard in sorted((folder / "data").glob(f"{split}-*.parquet")):
            for row in pq.read_table(shard, columns=["safety_label", "category",
                                                     "source"]).to_pylist():
                name = f"data/UnsafeBench/{split}/images/{index}.png"
                merged.setdefault((row["source"], row["category"]), []).append(
                    (name, "unsafe" if row["safety_label"] == "Unsafe" else "safe"))
                index += 1
    dropped = 0
    for (source, category), entries in merged.items():
        dropped += min(drop, len(entries))
        for i in range(3):
            out = root / model / f"prompt_{i}"
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{source}_{category}.json").write_text(json.dumps(
                [{"image_fname": n, "response": [f"The image is {a}."] if as_list
                  else f"The image is {a}."} for n, a in entries[drop:]]))
    return root, dropped


@pytest.fixture(scope="module")
def hub_standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in in the hub parquet layout, its train split in two shards."""
    folder = tmp_path_factory.mktemp("hub")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(standin, "ROWS_PER_SHARD", 40)
        standin.write_standin(folder, scale=0.005, max_side=256, workers=0)
    assert len(list((folder / "data").glob("train-*.parquet"))) == 2
    return folder


@pytest.mark.parametrize("model", ["gpt-4v", "instructblip-7b"])
def test_official_archive_scores_perfectly_on_hub_parquet(hub_standin, tmp_path, model) -> None:
    archive, _ = official_archive(hub_standin, tmp_path, model,
                                  as_list=model.startswith("instructblip"))
    ds = load_parquet(hub_standin / "data", str(hub_standin))
    clf = load_openai(import_responses=str(archive), archive_model=model, cache_dir=tmp_path)
    imgs = [Image.new("RGB", (4, 4))] * len(ds.records)
    preds = clf.predict(imgs, records=list(ds.records))
    assert not [p.raw for p in preds if p.label_scores["failed"]]
    assert [p.decision for p in preds] == [r.safety_label.lower() for r in ds.records]


def test_plugin_on_hub_parquet_excludes_and_counts_missing_responses(
        pytester: pytest.Pytester, hub_standin) -> None:
    archive, dropped = official_archive(hub_standin, pytester.path / "archive", "gpt-4v", drop=1)
    result = pytester.runpytest(
        "--unsafebench-classifier=openai", f"--unsafebench-dataset={hub_standin / 'data'}",
        f"--unsafebench-cache-dir={pytester.path / 'cache'}", "--unsafebench-device=cpu",
        f"--unsafebench-import-responses={archive}", "--unsafebench-bootstrap=0",
        f"--unsafebench-json={pytester.path / 'out.json'}", "-k", "effectiveness or gap_f1",
        "-p", "no:randomly")
    doc = read_json(pytester.path / "out.json")
    assert doc["classifiers"]["openai"]["error"] is None, doc["classifiers"]["openai"]
    f1 = [r for r in doc["rows"] if r["metric"] == "f1" and r["value"] is not None]
    # every image with a response is right: never a wrong answer in place of a missing one
    assert f1 and all(r["value"] == 1.0 for r in f1)
    excluded = {(r["category"], r["source"]): r["value"] for r in doc["rows"]
                if r["metric"] == "excluded_no_verdict"}
    assert excluded[("Overall", "all")] == dropped and excluded[("Hate", "Lexica")] == 1
    # the gap cells leave them out too: both sources score F1 1.0, so no gap
    gaps = [r["value"] for r in doc["rows"] if r["metric"] == "gap_f1" and r["value"] is not None]
    assert gaps and all(g == 0.0 for g in gaps)
    # one image missing out of each small cell is far more than 5%: the cell fails saying so
    result.stdout.fnmatch_lines(["*have no verdict (failed requests or no archived response), "
                                 "more than 5%*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


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


# ---------------------------------------------------------------------------- report


def test_judge_notes_and_paper_gate_reach_every_report(tmp_path) -> None:
    """A judge's setup notes (definitions warning first) reach the terminal, JSON, HTML and
    Markdown; a judge not run as the paper ran it never carries the paper's figure."""
    from pytest_unsafebench.config import resolve_settings
    from pytest_unsafebench.report.document import build_json
    from pytest_unsafebench.report.html import render_html
    from pytest_unsafebench.report.markdown import render_markdown
    from pytest_unsafebench.report.terminal import terminal_lines
    from pytest_unsafebench.results import ClassifierState, RunState

    warning = "category definitions: this project's wording, not the paper's (offline); to fix: x"
    s = resolve_settings({"classifiers": ["openai"], "categories": list(CATEGORIES),
                          "split": "all"}, {"alpha": "drop"}, tmp_path)   # as the paper decoded
    rows = [{"classifier": "openai", "suite": "effectiveness", "metric": "f1",
             "category": "Overall", "source": "all", "condition": None, "value": 0.7,
             "threshold": 0.0, "outcome": "passed", "n": 10}]

    def doc(mismatch: str | None) -> dict:
        cs = ClassifierState("openai", fingerprint="o", covered=list(CATEGORIES),
                             notes=[warning, "decoding: temperature=0"], paper_mismatch=mismatch)
        state = RunState(dataset={"spec": "hf:yiting/UnsafeBench", "name": "UnsafeBench",
                                  "synthetic": False, "fingerprint": "f", "counts": {"images": 1}},
                         findings=[], classifiers={"openai": cs})
        judges = {"openai": {"images": 10, "unsure_rate": 0.1, "failed": 3,
                             "parser_converter_agreement": 0.75}}
        return build_json(s, state, [dict(r) for r in rows], tmp_path, "cpu",
                          {}, {"judges": judges})

    shown, hidden = doc(None), doc("model gpt-4o is not the paper's GPT-4V")
    assert shown["rows"][0]["paper"] == 0.709, shown["paper_figures"]   # report/paper.py
    assert hidden["rows"][0]["paper"] is None
    assert hidden["classifiers"]["openai"]["notes"][0] == warning
    assert hidden["config"]["not_paper_text"] == {"openai": [warning]}
    assert warning in "\n".join(terminal_lines(hidden))
    assert warning in render_markdown(hidden)
    assert "this project&#x27;s wording" in render_html(hidden) or warning in render_html(hidden)
    excluded = "3 image(s) without an answer (failed request or no archived response"
    for text in ("\n".join(terminal_lines(hidden)), render_markdown(hidden), render_html(hidden)):
        assert excluded in text and "converter agreed with the rule parser on 75.0%" in text


def test_openai_is_gpt4v_only_with_the_papers_model_or_archive(tmp_path, reference_dir) -> None:
    from test_vlm_parsing import _tiny_converter

    conv = str(_tiny_converter(tmp_path / "conv", {0: "safe", 1: "unsafe", 2: "unsure"}))
    paper = str(reference_dir / "unsafebench" / "combined_instruction.txt")
    assert "not the paper's GPT-4V" in load_openai(converter=conv, definitions=paper).paper_mismatch
    assert load_openai(model="gpt-4-vision-preview", converter=conv,
                       definitions=paper).paper_mismatch is None
    root = write_archive(tmp_path / "a", "gpt-4v", {"Lexica_Hate": [[fname(0), "a", "b", "c"]]})
    write_archive(root, "mine", {"Lexica_Hate": [[fname(0), "a", "b", "c"]]})
    assert load_openai(import_responses=str(root), converter=conv).paper_mismatch is None
    assert "is not the paper's 'gpt-4v'" in load_openai(
        import_responses=str(root), archive_model="mine", converter=conv).paper_mismatch
    assert "rule-based parser" in load_openai(import_responses=str(root)).paper_mismatch


def test_robustness_pool_follows_prompt_0_not_the_vote(tmp_path) -> None:
    """UnsafeBench unsafe_datasets.py draws a judge's pool from detailed_predictions[0]: an
    image whose vote is right but whose prompt 0 was wrong or unsure is not in it."""
    from pytest_unsafebench.results import PredictionTable
    from pytest_unsafebench.robustness import accuracy as robustness

    root = write_archive(tmp_path / "a", "gpt-4v", {"Lexica_Hate": [
        [fname(0), "unsafe", "unsafe", "unsafe"],     # all right
        [fname(1), "safe", "unsafe", "unsafe"],       # vote right, prompt 0 wrong
        [fname(2), "I cannot say", "unsafe", "unsafe"],   # vote right, prompt 0 unsure
    ]})
    clf = load_openai(import_responses=str(root), definitions="project")
    recs = [record(i, category="Hate", source="Lexica") for i in range(3)]
    preds = clf.predict([Image.new("RGB", (4, 4))] * 3, records=recs)
    assert [p.decision for p in preds] == ["unsafe"] * 3
    rows = [{"id": r.id, "category": r.category, "source": r.source, "split": r.split,
             "label": r.safety_label, "decision": p.decision, "score": p.score,
             "label_scores": p.label_scores} for r, p in zip(recs, preds)]
    pool = robustness.pool(PredictionTable("openai", rows), ["Hate"], "Lexica")
    assert [r["id"] for r in pool] == ["id0"]
    assert robustness.answer("unsafe", preds[1].label_scores) == "safe"
    assert robustness.answer("unsafe", preds[2].label_scores) is None


def test_archive_keys_use_the_id_column_where_the_dataset_has_one(hub_standin, tmp_path) -> None:
    """unsafe_datasets.py names an image item.get("id", str(idx)): a parquet copy whose rows
    carry an ``id`` column is matched on it, per split."""
    import pyarrow as pa

    data = tmp_path / "data"
    data.mkdir()
    n = 0
    for shard in sorted((hub_standin / "data").glob("test-*.parquet")):
        table = pq.read_table(shard)
        ids = pa.array([f"img{n + i:03d}" for i in range(table.num_rows)])
        n += table.num_rows
        pq.write_table(table.append_column("id", ids), data / shard.name)
    ds = load_parquet(data, str(tmp_path))
    assert [r.archive_key for r in ds.records][:2] == ["test/img000", "test/img001"]
    assert len({r.archive_key for r in ds.records}) == len(ds.records)


def test_paired_comparisons_leave_out_images_without_a_verdict() -> None:
    from pytest_unsafebench.analysis import comparisons
    from pytest_unsafebench.cells import Bootstrap
    from pytest_unsafebench.results import PredictionTable

    def rows(decisions: list[str], failed: set[int]) -> list[dict]:
        return [{"id": f"i{n}", "category": "Hate", "source": "Lexica", "split": "test",
                 "label": "Unsafe", "decision": d, "score": 1.0,
                 "label_scores": {"failed": float(n in failed)}} for n, d in enumerate(decisions)]

    judge = PredictionTable("judge", rows(["unsafe", "unsure", "unsure", "unsafe"], {1, 2}))
    other = PredictionTable("other", rows(["unsafe"] * 4, set()))
    (c,) = comparisons({"judge": judge, "other": other}, {"judge": ["Hate"], "other": ["Hate"]},
                       Bootstrap(resamples=50))
    # the two failed images are not scored as wrong answers of the judge
    assert c["excluded_no_verdict"] == 2 and c["a_value"] == c["b_value"] == 1.0


def test_curves_leave_out_images_without_a_verdict() -> None:
    from pytest_unsafebench.analysis import curves
    from pytest_unsafebench.results import PredictionTable

    rows = [{"id": f"i{n}", "category": "Hate", "source": "Lexica", "split": "test",
             "label": label, "decision": "unsafe", "score": score,
             "label_scores": {"failed": float(n >= 4)}}
            for n, (label, score) in enumerate([("Unsafe", 0.9), ("Unsafe", 0.8), ("Safe", 0.2),
                                                 ("Safe", 0.1), ("Unsafe", 0.5), ("Safe", 0.5)])]
    out = curves(PredictionTable("judge", rows), ["Hate"], ["Lexica"])
    assert {c["n"] for c in out["cells"]} == {4}


def test_judge_summary_never_invents_an_unsure_rate() -> None:
    from pytest_unsafebench.analysis import judge_summary
    from pytest_unsafebench.report.format import judge_line
    from pytest_unsafebench.results import PredictionTable

    rows = [{"id": str(i), "label": "Unsafe", "category": "Hate", "source": "Lexica",
             "score": 0.5, "decision": "unsure", "label_scores": {"unsure": 1.0, "failed": 1.0}}
            for i in range(2)]
    summary = judge_summary({"j": PredictionTable("j", rows)})["j"]
    assert summary["unsure_rate"] is None and summary["failed"] == 2
    assert judge_line(summary).startswith("judge: no image answered, 2 image(s) without an answer")

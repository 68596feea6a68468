"""How transparent images decode: composited over white by default, alpha dropped (the official
loader's ``convert("RGB")``) under ``alpha = "drop"``, which robustness paper mode sets; the
prediction and decode caches never serve one rule's results to the other."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plugin_helpers import build_dataset, write_toyclf
from pytest_unsafebench.cache import PredictionCache
from pytest_unsafebench.classifier import Prediction
from pytest_unsafebench.config import resolve_settings
from pytest_unsafebench.dataset.images import decode_image
from pytest_unsafebench.errors import ConfigError

UNDER = (200, 30, 60)    # the colour under the transparent half
OPAQUE = (10, 120, 240)  # the opaque half


def _half_transparent(under: tuple[int, int, int] = UNDER, size: int = 8) -> bytes:
    """An RGBA PNG: left half fully transparent over ``under``, right half opaque."""
    arr = np.zeros((size, size, 4), dtype=np.uint8)
    arr[:, : size // 2] = (*under, 0)
    arr[:, size // 2:] = (*OPAQUE, 255)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGBA").save(buf, "PNG")
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------ decoding
def test_rgba_composites_over_white_by_default_and_drops_alpha_under_drop() -> None:
    data = _half_transparent()
    white, white_note = decode_image(data)
    drop, drop_note = decode_image(data, alpha="drop")
    pixels = np.asarray(white)
    assert (pixels[:, :4] == 255).all() and (pixels[:, 4:] == OPAQUE).all()
    # Byte for byte what the official loader's convert("RGB") gives.
    assert drop.mode == "RGB"
    assert drop.tobytes() == Image.open(io.BytesIO(data)).convert("RGB").tobytes()
    assert (np.asarray(drop)[:, :4] == UNDER).all()
    assert white_note == "RGBA with transparency composited over white"
    assert drop_note == 'RGBA with transparency: alpha dropped (alpha = "drop")'


@pytest.mark.parametrize("mode", ["LA", "P"])
def test_other_transparent_modes_drop_alpha_as_convert_rgb(mode: str) -> None:
    rgba = Image.open(io.BytesIO(_half_transparent()))
    if mode == "P":  # a palette image whose transparent index has a colour of its own
        img = rgba.convert("RGB").quantize(4)
        img.info["transparency"] = img.getpixel((0, 0))
    else:
        img = rgba.convert("LA")
    data = _png(img)
    expected = Image.open(io.BytesIO(data)).convert("RGB").tobytes()
    drop, note = decode_image(data, alpha="drop")
    assert drop.tobytes() == expected and "alpha dropped" in (note or "")
    assert decode_image(data)[0].tobytes() != expected  # white: the transparent part differs


@pytest.mark.parametrize("img", [
    Image.new("RGBA", (6, 4), (*OPAQUE, 255)),          # alpha channel, nothing transparent
    Image.new("RGB", (6, 4), UNDER), Image.new("L", (6, 4), 77),
    Image.new("RGB", (6, 4), UNDER).quantize(3)])       # palette without transparency
def test_images_without_transparency_decode_alike_under_both_rules(img: Image.Image) -> None:
    data = _png(img)
    assert decode_image(data)[0].tobytes() == decode_image(data, alpha="drop")[0].tobytes()
    assert decode_image(data)[1] == decode_image(data, alpha="drop")[1]


def test_an_unknown_rule_is_the_callers_error_not_a_finding() -> None:
    with pytest.raises(ValueError, match="alpha rule 'black' is not one of white, drop"):
        decode_image(_half_transparent(), alpha="black")


# ------------------------------------------------------------------------------ the caches
def test_caches_keep_the_rules_apart_and_the_default_keys_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    white = PredictionCache(path)
    white.put_predictions("fp", "clean", [("h", Prediction.from_score(0.9))])
    white.put_embeddings("bb", "clean", [("h", np.ones(3))])
    white.put_decodes([("h", "converted-mode", "composited over white")], 0)
    drop = PredictionCache(path, alpha="drop")
    assert drop.get_predictions("fp", "clean", ["h"]) == {}
    assert drop.get_embeddings("bb", "clean", ["h"]) == {}
    assert drop.get_decodes(["h"], 0) == {}
    drop.put_predictions("fp", "clean", [("h", Prediction.from_score(0.1))])
    drop.put_decodes([("h", "converted-mode", "alpha dropped")], 0)
    assert drop.get_predictions("fp", "clean", ["h"])["h"].score == 0.1
    assert drop.get_decodes(["h"], 0) == {"h": ("converted-mode", "alpha dropped")}
    assert white.get_predictions("fp", "clean", ["h"])["h"].score == 0.9
    assert white.get_decodes(["h"], 0) == {"h": ("converted-mode", "composited over white")}
    # The default's rows are keyed as before the rule existed: old caches stay valid.
    with sqlite3.connect(path) as conn:
        assert sorted(conn.execute("SELECT condition FROM predictions")) == [
            ("clean",), ("clean|alpha=drop",)]
        assert sorted(conn.execute("SELECT image_hash FROM decodes")) == [("h",),
                                                                         ("h|alpha=drop",)]
    with pytest.raises(ValueError, match="alpha rule"):
        PredictionCache(path, alpha="none")


# ------------------------------------------------------------------------------ settings
def _settings(pyproject: dict) -> object:
    return resolve_settings({"classifiers": ["demo"]}, pyproject, Path("/project"))


def test_paper_mode_drops_alpha_for_the_whole_run_unless_told_otherwise() -> None:
    assert _settings({}).alpha == "white"
    paper = {"robustness": {"mode": "paper"}}
    assert _settings(paper).alpha == "drop"
    assert _settings({**paper, "alpha": "white"}).alpha == "white"
    assert _settings({"alpha": "drop"}).alpha == "drop"
    assert _settings({"alpha": "drop"}).public()["alpha"] == "drop"
    with pytest.raises(ConfigError, match=r"tool.unsafebench.alpha: 'black' is not one of "
                                          "white, drop"):
        _settings({"alpha": "black"})


# ------------------------------------------------------------------------------ a whole run
# A Lexica Unsafe Hate image of mean red 0.38 (a miss of the toy classifier) becomes
# half transparent over black: over white its mean red is 0.79 (a hit), alpha dropped 0.29.
RGBA_ROW = "images/hate-Lexica-Unsafe-3.png"


def _run(pytester: pytest.Pytester, paper: bool, *extra: str) -> tuple[dict, list[str]]:
    table = '[tool.unsafebench.robustness]\nmode = "paper"\n' if paper else ""
    pytester.makepyprojecttoml('[tool.unsafebench]\nallow_findings = ["converted-mode"]\n'
                               + table)
    out = pytester.path / "out.json"
    result = pytester.runpytest(
        "--unsafebench-classifier=toyclf:load", f"--unsafebench-dataset={pytester.path / 'ds'}",
        f"--unsafebench-cache-dir={pytester.path / 'cache'}", "--unsafebench-device=cpu",
        "--unsafebench-suites=effectiveness", f"--unsafebench-json={out}", "-p", "no:randomly",
        *extra)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    return json.loads(out.read_text()), result.stdout.lines


def _cell(doc: dict) -> float:
    (row,) = [r for r in doc["rows"] if r["metric"] == "recall" and r["category"] == "Hate"
              and r["source"] == "Lexica"]
    return row["value"]


def _seen(doc: dict) -> tuple[int, int, list[str]]:
    cs = doc["classifiers"]["toyclf:load"]
    details = [f["detail"] for f in doc["dataset"]["integrity"]["items"]
               if f["locator"].endswith(f"({RGBA_ROW})")]
    return cs["cache_hits"], cs["cache_misses"], details


def test_a_run_in_each_rule_scores_the_transparent_image_apart(pytester: pytest.Pytester) -> None:
    ds = pytester.path / "ds"
    rows = build_dataset(ds)
    write_toyclf(pytester.path)
    pytester.syspathinsert()
    arr = np.zeros((16, 16, 4), dtype=np.uint8)
    arr[:, 8:] = (150, 40, 90, 255)
    Image.fromarray(arr, "RGBA").save(ds / RGBA_ROW, "PNG")
    images = len(rows)

    white, white_lines = _run(pytester, paper=False)
    assert white["config"]["alpha"] == "white"
    assert not any("transparent images" in line for line in white_lines)
    assert _seen(white) == (0, images, ["RGBA with transparency composited over white"])
    drop, drop_lines = _run(pytester, paper=True)
    assert drop["config"]["alpha"] == "drop"
    assert any('transparent images: alpha dropped, colours kept (alpha = "drop"' in line
               and "as paper mode sets it" in line for line in drop_lines)
    # Nothing the white run cached was served: every image was decoded and inferred again.
    assert _seen(drop) == (0, images, ['RGBA with transparency: alpha dropped (alpha = "drop")'])
    assert _cell(white) == 1.0 and _cell(drop) == 0.75  # recall, 4 Lexica Hate Unsafe images
    # Each rule's warm run is served its own predictions and decode findings.
    for paper, first in ((False, white), (True, drop)):
        again, _ = _run(pytester, paper=paper)
        assert _seen(again) == (images, 0, _seen(first)[2])
        assert _cell(again) == _cell(first)
    # xdist workers resolve the same rule: the paper-mode cells they score are the drop run's.
    workers, _ = _run(pytester, True, "-n", "2")
    assert workers["config"]["alpha"] == "drop" and _cell(workers) == _cell(drop)


# ------------------------------------------------------------------------------ Ray workers
class _FakeRay:
    """Just enough of ``ray.data`` to run the executor's actor in this process."""

    def __init__(self) -> None:
        self.kwargs: dict = {}
        self.data = self

    def from_items(self, rows: list, **_: object) -> _FakeRay:
        self.rows = rows
        return self

    def ActorPoolStrategy(self, **_: object) -> None:  # Ray's name
        return None

    def map_batches(self, actor: type, *, batch_size: int, fn_constructor_kwargs: dict,
                    **_: object) -> _FakeRay:
        self.kwargs = fn_constructor_kwargs
        self.actor, self.batch = actor(**fn_constructor_kwargs), batch_size
        return self

    def iter_rows(self):
        for i in range(0, len(self.rows), self.batch):
            out = self.actor({"work": [r["work"] for r in self.rows[i:i + self.batch]]})
            yield from ({"result": r} for r in out["result"])


def test_ray_workers_decode_under_the_drivers_rule(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_unsafebench.dataset.records import Record, content_hash
    from pytest_unsafebench.engine import REMOTE, run_pass
    from pytest_unsafebench.ray_executor import ClassifierSpec, RayExecutor
    from pytest_unsafebench.registry import load_classifier

    write_toyclf(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = _half_transparent(under=(0, 0, 0))
    record = Record(id="a", safety_label="Unsafe", category="Hate", source="Lexica",
                    split="test", content_hash=content_hash(data), locator="a.png",
                    reader=lambda: data)
    clf = load_classifier("toyclf:load")
    settings = _settings({"alpha": "drop"})
    fake = _FakeRay()
    remote = RayExecutor(settings, lambda c: ClassifierSpec("toyclf:load", {}, c.fingerprint))
    monkeypatch.setattr(remote, "_connect", lambda: fake)
    scores = {}
    for rule in ("white", "drop"):
        local = run_pass([record], {"toy": lambda: clf},
                         PredictionCache(tmp_path / f"local-{rule}.sqlite", alpha=rule))
        scores[rule] = local.outcomes["toy"].predictions[record.content_hash].score
    assert scores["white"] != scores["drop"]
    cache = PredictionCache(tmp_path / "ray.sqlite", alpha="drop")
    token = REMOTE.set(remote)
    try:
        result = run_pass([record], {"toy": lambda: clf}, cache)
    finally:
        REMOTE.reset(token)
    assert fake.kwargs["alpha"] == "drop"
    assert remote.submitted == 1  # the worker computed it; the local pass found it cached
    assert result.outcomes["toy"].predictions[record.content_hash].score == scores["drop"]
    assert [f.detail for f in result.findings] == [
        'RGBA with transparency: alpha dropped (alpha = "drop")']


def test_a_baseline_decoded_under_the_other_rule_is_said() -> None:
    from pytest_unsafebench.report.baseline import check_dataset

    old = {"dataset": {"fingerprint": "f"}, "config": {"split": "all"}}  # before the setting
    same = check_dataset(old, "f", {"split": "all", "alpha": "white"}, allow=False, flag="--x")
    assert same == []
    (note,) = check_dataset(old, "f", {"split": "all", "alpha": "drop"}, allow=False, flag="--x")
    assert note == ("transparent images decoded with alpha = 'white' in the baseline, 'drop' "
                    "in this run: their predictions may differ for that reason")


# ------------------------------------------------------------------------------ attacks
class _Brightness:
    """Unsafe iff the mean pixel > 0.5; its own preprocessing is the [0, 1] image itself."""

    supports_gradients = True
    name = fingerprint = "bright-v1"

    def attack_input(self, image: Image.Image) -> np.ndarray:
        return (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1).copy()

    def forward_pixels(self, x):  # a torch tensor in and out
        import torch

        m = 40 * (x.mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([-m, m], dim=1)


@pytest.mark.parametrize(("rule", "clean_right"), [("white", 1.0), ("drop", 0.0)])
def test_attacks_start_from_the_pixels_of_the_runs_rule(tmp_path: Path, rule: str,
                                                        clean_right: float) -> None:
    """Over white the transparent half is bright (Unsafe, right); alpha dropped it is black."""
    from pytest_unsafebench.config import RobustnessSettings
    from pytest_unsafebench.dataset.records import Record, content_hash
    from pytest_unsafebench.robustness import accuracy as robustness

    data = _half_transparent(under=(0, 0, 0), size=16)
    record = Record(id="a", safety_label="Unsafe", category="Hate", source="Lexica",
                    split="test", content_hash=content_hash(data), locator="a.png",
                    reader=lambda: data)
    samples = {2023: [{"id": "a", "hash": record.content_hash, "label": "Unsafe"}]}
    result = robustness.attack_ra(_Brightness(), samples, {"a": record}, "fgsm",
                                  RobustnessSettings(attacks=("fgsm",)),
                                  PredictionCache(tmp_path / "c.sqlite", alpha=rule), batch_size=4)
    assert result.attack_input_accuracy == clean_right


def test_fuzz_images_and_thumbnails_follow_the_runs_rule(tmp_path: Path) -> None:
    """The fuzz search perturbs, and the report shows, the pixels the classifier saw."""
    from pytest_unsafebench.dataset.records import Record, content_hash
    from pytest_unsafebench.report.thumbnails import make_examples
    from pytest_unsafebench.robustness.fuzzing import FuzzTarget

    data = _half_transparent(size=16)
    record = Record(id="a", safety_label="Safe", category="Hate", source="Lexica",
                    split="test", content_hash=content_hash(data), locator="a.png",
                    reader=lambda: data)
    official = Image.open(io.BytesIO(data)).convert("RGB").tobytes()
    for rule in ("white", "drop"):
        target = FuzzTarget(classifier="c", source="all", clf=_Brightness(), pool=[],
                            records={"a": record}, artifacts_dir=tmp_path, alpha=rule)
        assert (target.image("a").tobytes() == official) == (rule == "drop")
    row = {"classifier": "c", "id": "a", "condition": "clean", "score": 0.9,
           "decision": "unsafe", "label": "Safe"}
    shown = {rule: make_examples({"a": record}, [row], blur=False, alpha=rule)[0]["image"]
             for rule in ("white", "drop")}
    assert shown["white"] != shown["drop"]
    assert shown["white"] == make_examples({"a": record}, [row], blur=False)[0]["image"]


def test_the_terminal_says_when_the_rule_is_not_the_default_or_not_the_papers() -> None:
    from pytest_unsafebench.report.format import alpha_line

    paper = {"robustness": {"mode": "paper"}}
    assert alpha_line({"alpha": "white"}) is None and alpha_line({}) is None  # old reports
    assert "as paper mode sets it" not in (alpha_line({"alpha": "drop"}) or "")
    assert "as paper mode sets it" in (alpha_line({**paper, "alpha": "drop"}) or "")
    assert "not the paper's setup" in (alpha_line({**paper, "alpha": "white"}) or "")
    # A report read back is hostile: a config or robustness section of another shape says
    # nothing (it never stops the report's other lines).
    assert alpha_line({"alpha": "white", "robustness": "paper"}) is None
    assert alpha_line([]) is None  # type: ignore[arg-type]

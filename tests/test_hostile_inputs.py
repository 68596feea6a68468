"""Classifiers cannot change each other's inputs, no file takes the
run down or its memory past the budget, and a run that measured nothing never passes."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

# Imported here, before any in-process pytester run, so those runs do not import them again
# (as in test_plugin.py).
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

import pytest_unsafebench.engine as engine
import pytest_unsafebench.session  # noqa: F401
from plugin_helpers import CLASSIFIER, OTHER, build_dataset, write_manifest, write_toyclf
from pytest_unsafebench.cache import PredictionCache
from pytest_unsafebench.classifier import Coverage, Prediction
from pytest_unsafebench.dataset.folder import load_folder
from pytest_unsafebench.dataset.images import (
    ImageProblem,
    decode_image,
    max_file_bytes,
    readonly_view,
)
from pytest_unsafebench.dataset.records import EXCLUDING_KINDS, KEEPING_KINDS, Record, content_hash
from pytest_unsafebench.engine import run_pass


# --------------------------------------------------------------------------- helpers
def _png(seed: int, size: tuple[int, int] = (24, 16), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").convert(mode).save(buf, "PNG")
    return buf.getvalue()


def _record(name: str, data: bytes, **kw) -> Record:
    return Record(id=name, safety_label=kw.get("label", "Unsafe"), category="Hate",
                  source="Lexica", split="test", content_hash=content_hash(data),
                  locator=f"images/{name}.png", reader=lambda: data)


class Brightness:
    """Well behaved: the mean pixel value."""

    supports_gradients = False

    def __init__(self, fingerprint: str = "bright-v1") -> None:
        self.name = fingerprint
        self.fingerprint = fingerprint
        self.coverage = Coverage.everything()

    def predict(self, images: Sequence[Image.Image]) -> list[Prediction]:
        return [Prediction.from_score(float(np.asarray(im, dtype=float).mean() / 255.0))
                for im in images]


class Vandal(Brightness):
    """Changes the images it is given in place, as PIL makes easy, then scores them."""

    def __init__(self, how: str) -> None:
        super().__init__(f"vandal-{how}")
        self.how = how

    def predict(self, images: Sequence[Image.Image]) -> list[Prediction]:
        for im in images:
            if self.how == "thumbnail+draw":
                im.thumbnail((4, 4))
                ImageDraw.Draw(im).rectangle((0, 0, 3, 3), fill=(0, 0, 0))
            elif self.how == "paste":
                im.paste((255, 255, 255), (0, 0, im.width, im.height))
            elif self.how == "frombytes":
                im.frombytes(bytes(im.width * im.height * 3))
        return super().predict(images)


def _scores(result, name: str) -> dict[str, float]:
    outcome = result.outcomes[name]
    assert outcome.error is None, outcome.error
    return {h: p.score for h, p in outcome.predictions.items()}


# --------------------------------------------------------------------------- item 2
@pytest.mark.parametrize("how", ["thumbnail+draw", "paste", "frombytes"])
def test_a_mutating_classifier_cannot_change_what_the_next_one_sees(tmp_path: Path,
                                                                     how: str) -> None:
    records = [_record(f"img{i}", _png(i)) for i in range(5)]
    alone = PredictionCache(tmp_path / "alone.sqlite")
    expected = _scores(run_pass(records, {"bright": Brightness}, alone), "bright")
    shared = PredictionCache(tmp_path / "shared.sqlite")
    together = run_pass(records, {"vandal": lambda: Vandal(how), "bright": Brightness}, shared,
                        batch_size=2)
    assert _scores(together, "bright") == expected
    # The vandal saw what it did to its own copy: its predictions differ, and stay its own.
    assert _scores(together, "vandal") != expected
    # What was cached is what the well-behaved classifier computed on the decoded pixels.
    rerun = run_pass(records, {"bright": Brightness}, shared)
    assert rerun.outcomes["bright"].hits == 5 and _scores(rerun, "bright") == expected


def test_pixel_writes_through_load_are_refused_and_contained(tmp_path: Path) -> None:
    class Poker(Brightness):
        def predict(self, images):
            images[0].load()[0, 0] = (1, 2, 3)
            return super().predict(images)

    records = [_record(f"img{i}", _png(i)) for i in range(3)]
    cache = PredictionCache(tmp_path / "c.sqlite")
    result = run_pass(records, {"poker": lambda: Poker("poker"), "bright": Brightness}, cache)
    assert "readonly" in (result.outcomes["poker"].error or "")
    alone = run_pass(records, {"bright": Brightness}, PredictionCache(tmp_path / "a.sqlite"))
    assert _scores(result, "bright") == _scores(alone, "bright")


def test_a_perturbation_works_on_its_own_pixels(tmp_path: Path) -> None:
    """A transform that draws on the image it is given perturbs what the classifiers of its
    condition see, and nothing else: every classifier still sees the same perturbed image."""
    def blackout(img: Image.Image, _hash: str) -> Image.Image:
        ImageDraw.Draw(img).rectangle((0, 0, 7, 7), fill=(0, 0, 0))
        return img

    records = [_record(f"img{i}", _png(i)) for i in range(3)]
    cache = PredictionCache(tmp_path / "c.sqlite")
    clean = _scores(run_pass(records, {"bright": Brightness}, cache), "bright")
    perturbed = run_pass(records, {"vandal": lambda: Vandal("paste"), "bright": Brightness},
                         cache, condition="blackout", transform=blackout)
    expected = run_pass(records, {"bright": Brightness}, PredictionCache(tmp_path / "p.sqlite"),
                        condition="blackout", transform=blackout)
    assert _scores(perturbed, "bright") == _scores(expected, "bright")
    assert all(_scores(perturbed, "bright")[h] < clean[h] for h in clean)
    assert _scores(run_pass(records, {"bright": Brightness}, cache), "bright") == clean


def test_readonly_view_shares_pixels_without_copying() -> None:
    img = Image.new("RGB", (64, 64), (10, 20, 30))
    view = readonly_view(img)
    assert view.readonly and view.getpixel((5, 5)) == (10, 20, 30)
    assert view.im is img.im  # no pixel copy until someone writes
    ImageDraw.Draw(view).point((5, 5), fill=(0, 0, 0))
    assert view.im is not img.im and img.getpixel((5, 5)) == (10, 20, 30)


# --------------------------------------------------------------------------- item 3: decoding
@pytest.mark.parametrize(("where", "exc"), [
    ("load", IndexError("list index out of range")),   # malformed GIF / QOI
    ("load", NotImplementedError("unsupported DDS pixel format")),
    ("convert", TypeError("unsupported operand type(s)")),  # a TIFF, during conversion
    ("open", ZeroDivisionError("division by zero")),
])
def test_any_exception_decoding_one_file_is_an_unreadable_finding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, exc: Exception) -> None:
    from PIL import ImageFile

    good = [_record(f"img{i}", _png(i)) for i in range(3)]
    victim = _record("victim", _cmyk_jpeg() if where == "convert" else _png(99))
    targets = {"load": (ImageFile.ImageFile, "load"), "convert": (Image.Image, "convert"),
               "open": (Image, "open")}
    owner, attr = targets[where]
    original = getattr(owner, attr)
    victim_bytes = victim.read_bytes()

    def failing(self_or_fp, *args, **kwargs):
        data = getattr(self_or_fp, "getvalue", None)
        fp = getattr(self_or_fp, "fp", None)
        raw = data() if data else (fp.getvalue() if isinstance(fp, io.BytesIO) else None)
        if raw == victim_bytes or (where == "convert" and self_or_fp.mode == "CMYK"):
            raise exc
        return original(self_or_fp, *args, **kwargs)

    monkeypatch.setattr(owner, attr, failing)
    result = run_pass([*good, victim], {"bright": Brightness},
                      PredictionCache(tmp_path / "c.sqlite"))
    (finding,) = [f for f in result.findings if f.locator == victim.locator]
    assert finding.kind == "unreadable" and type(exc).__name__ in finding.detail
    assert str(exc) in finding.detail
    assert len(_scores(result, "bright")) == 3  # the run went on for the others


def _cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (10, 20, 30, 40)).save(buf, "JPEG")
    return buf.getvalue()


def _seed_files() -> list[bytes]:
    """One small valid file per format whose decoders have raised odd exceptions."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    out = []
    for fmt, kw in (("PNG", {}), ("JPEG", {}), ("GIF", {"save_all": True,
                                                        "append_images": [img.rotate(90)]}),
                    ("TIFF", {"compression": "tiff_lzw"}), ("BMP", {}), ("WEBP", {}),
                    ("QOI", {}), ("DDS", {}), ("ICO", {}), ("TGA", {}), ("PPM", {})):
        buf = io.BytesIO()
        try:
            (img.convert("RGBA") if fmt == "DDS" else img).save(buf, fmt, **kw)
        except (KeyError, OSError):  # a format this Pillow cannot write
            continue
        out.append(buf.getvalue())
    return out


SEEDS = _seed_files()


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF, then goes on
@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=_mutated())
def test_mutated_image_bytes_decode_or_become_a_finding(data: bytes) -> None:
    """Whatever the bytes, decoding gives an RGB image or a named finding, never an exception."""
    record = _record("fuzz", data)
    image, kind, detail = engine._decode(record, 4096)
    if image is None:
        assert kind in EXCLUDING_KINDS and detail
    else:
        assert image.mode == "RGB" and image.width * image.height <= 4096
        assert kind is None or kind in KEEPING_KINDS


def test_pillows_own_limit_does_not_refuse_what_max_image_pixels_allows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow refuses images above twice its MAX_IMAGE_PIXELS outright (a 15000x12000 image at
    # its default); here 32x24 = 768 > 2 * 300.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    assert decode_image(_png(1, (32, 24)), max_pixels=10_000)[0].size == (32, 24)
    with pytest.raises(ImageProblem, match="decompression-bomb"):
        decode_image(_png(1, (32, 24)), max_pixels=700)


def _folder(root: Path, names: list[str], files: dict[str, bytes] | None = None,
            rows: list[dict] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in (files or {}).items():
        (root / name).write_bytes(data)
    lines = ["file_name,safety_label,category,source,split"]
    for row in rows or [{"file_name": n} for n in names]:
        lines.append(",".join([row["file_name"], row.get("label", "Unsafe"),
                               row.get("category", "Hate"), row.get("source", "Lexica"),
                               row.get("split", "test")]))
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def test_fifo_socket_and_directory_are_their_own_finding(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path / "ds", ["good.png", "fifo.png", "sock.png", "dir.png", "gone.png"],
                   {"good.png": _png(0)})
    os.mkfifo(root / "fifo.png")
    (root / "dir.png").mkdir()
    monkeypatch.chdir(root)  # a relative socket path stays under the AF_UNIX length limit
    server = socket.socket(socket.AF_UNIX)
    server.bind("sock.png")
    try:
        ds = load_folder(root)
    finally:
        server.close()
    kinds = {f.locator.split("(")[1].rstrip(")"): (f.kind, f.detail) for f in ds.findings}
    assert kinds["fifo.png"][0] == "not-a-regular-file" and "FIFO" in kinds["fifo.png"][1]
    assert kinds["sock.png"][0] == "not-a-regular-file" and "socket" in kinds["sock.png"][1]
    assert kinds["dir.png"][0] == "not-a-regular-file" and "directory" in kinds["dir.png"][1]
    assert kinds["gone.png"][0] == "missing-file"
    assert "not-a-regular-file" in EXCLUDING_KINDS and len(ds.records) == 1


def test_file_replaced_by_a_fifo_after_loading_does_not_hang(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ds", ["a.png", "b.png"], {"a.png": _png(0), "b.png": _png(1)})
    ds = load_folder(root)
    (root / "a.png").unlink()
    os.mkfifo(root / "a.png")  # nobody ever writes to it: a blocking read would hang forever
    box: list = []
    worker = threading.Thread(target=lambda: box.append(run_pass(
        ds.records, {"bright": Brightness}, PredictionCache(tmp_path / "c.sqlite"))),
        daemon=True)
    worker.start()
    worker.join(30)
    assert box, "the pass hung on a FIFO"
    (finding,) = box[0].findings
    assert finding.kind == "not-a-regular-file" and len(_scores(box[0], "bright")) == 1
    # A finding about the path, not the content its hash names: never cached.
    (root / "a.png").unlink()
    (root / "a.png").write_bytes(_png(0))
    again = run_pass(ds.records, {"bright": Brightness}, PredictionCache(tmp_path / "c.sqlite"))
    assert again.findings == [] and len(_scores(again, "bright")) == 2


def test_oversized_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ds", ["huge.png", "ok.png"], {"ok.png": _png(0)})
    limit = 10_000
    with (root / "huge.png").open("wb") as fh:  # sparse: no disk, but a read would be whole
        fh.truncate(max_file_bytes(limit) + 48 * 2**20)
    ds = load_folder(root)
    # Warm up (Pillow imports its format plugins on first use), then trace a cold pass.
    run_pass(ds.records[1:], {"bright": Brightness}, PredictionCache(tmp_path / "w.sqlite"))
    tracemalloc.start()
    try:
        ds = load_folder(root)
        result = run_pass(ds.records, {"bright": Brightness},
                          PredictionCache(tmp_path / "c.sqlite"), max_pixels=limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (finding,) = result.findings
    assert finding.kind == "file-too-large" and "max_image_pixels" in finding.detail
    assert peak < 4 * 2**20, f"{peak} bytes allocated: the file was read"
    assert len(_scores(result, "bright")) == 1


# --------------------------------------------------------------------------- item 3: memory
def _sized(name: str, size: tuple[int, int]) -> Record:
    return _record(name, _png(hash(name) % 1000, size))


def test_batches_shrink_to_the_pixel_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches hold at most half the budget of decoded pixels (down to one image), and the
    next batch decodes ahead only while both fit the budget."""
    records = ([_sized(f"s{i}", (10, 10)) for i in range(5)]   # 100 px each
               + [_sized("big", (30, 30))]                     # 900 px: over half the budget
               + [_sized(f"t{i}", (10, 10)) for i in range(3)])
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    finish = engine._finish

    def logged(opened, *rule):
        out = finish(opened, *rule)
        with lock:
            events.append(("decoded", f"{out[0].width}x{out[0].height}"))
        return out

    monkeypatch.setattr(engine, "_finish", logged)
    batches = []
    for batch, decoded, _ in engine.decoded_batches(records, batch_size=4, max_pixels=0,
                                                    workers=4, budget=500):
        with lock:
            events.append(("yield", ",".join(r.id for r in batch)))
        batches.append([r.id for r in batch])
        assert all(img is not None for img, _, _ in decoded)
    # Half the budget is 250 pixels: two small images a batch; the big one alone.
    assert batches == [["s0", "s1"], ["s2", "s3"], ["s4"], ["big"], ["t0", "t1"], ["t2"]]
    # The big batch (900 px) fits beside no other: it decodes only after s4 was handed over
    # and the next batch only after it.
    order = [e for e in events]
    big = order.index(("decoded", "30x30"))
    assert order.index(("yield", "s4")) < big < order.index(("yield", "big"))
    after_big = [i for i, e in enumerate(order) if e == ("decoded", "10x10")
                 and i > order.index(("yield", "big"))]
    assert len(after_big) == 3  # t0, t1, t2 all decoded after the big batch was handed over


def test_images_of_a_batch_are_closed_when_the_next_is_asked_for() -> None:
    records = [_sized(f"s{i}", (10, 10)) for i in range(4)]
    batches = engine.decoded_batches(records, batch_size=2, max_pixels=0, workers=2)
    _, first, _ = next(batches)
    kept = first[0][0]
    assert kept.getpixel((0, 0)) is not None
    next(batches)
    with pytest.raises(ValueError, match="closed"):
        kept.getpixel((0, 0))  # a lingering reference holds no pixels


# --------------------------------------------------------------------------- item 5: duplicates
def test_same_file_listed_twice_alike_is_scored_once(tmp_path: Path) -> None:
    rows = [{"file_name": "a.png"}, {"file_name": "b.png"}, {"file_name": "./a.png"}]
    ds = load_folder(_folder(tmp_path / "ds", [], {"a.png": _png(0), "b.png": _png(1)}, rows))
    assert [r.locator for r in ds.records] == ["metadata.csv:2 (a.png)", "metadata.csv:3 (b.png)"]
    (finding,) = ds.findings
    assert finding.kind == "duplicate-file" and not finding.excluded
    assert finding.locator == "metadata.csv:4 (./a.png)" and "metadata.csv:2" in finding.detail


def test_same_file_with_contradictory_labels_is_excluded(tmp_path: Path) -> None:
    rows = [{"file_name": "a.png", "label": "Unsafe"}, {"file_name": "b.png"},
            {"file_name": "a.png", "label": "Safe"}]
    ds = load_folder(_folder(tmp_path / "ds", [], {"a.png": _png(0), "b.png": _png(1)}, rows))
    assert [r.locator for r in ds.records] == ["metadata.csv:3 (b.png)"]
    (finding,) = ds.findings
    assert finding.kind == "contradictory-labels" and finding.excluded
    assert "safety_label 'Unsafe' there, 'Safe' here" in finding.detail


# --------------------------------------------------------------------------- item 5: pytester
class Run:
    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.dataset = pytester.path / "ds"
        self.rows = build_dataset(self.dataset)
        write_toyclf(pytester.path)
        pytester.syspathinsert()

    def __call__(self, *extra: str, classifier: str = CLASSIFIER) -> pytest.RunResult:
        return self.pytester.runpytest(
            f"--unsafebench-classifier={classifier}", f"--unsafebench-dataset={self.dataset}",
            f"--unsafebench-cache-dir={self.pytester.path / 'cache'}",
            "--unsafebench-device=cpu", "--unsafebench-suites=effectiveness", "-p",
            "no:randomly", *extra)


@pytest.fixture
def run(pytester: pytest.Pytester) -> Run:
    return Run(pytester)


def test_manifest_without_rows_fails(run: Run) -> None:
    write_manifest(run.dataset, [])
    result = run()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1 and "passed" not in outcomes
    result.stdout.fnmatch_lines(["E*AssertionError: nothing measured, so this run cannot pass:",
                                 f"E*{CLASSIFIER}: the dataset has no images after the run's "
                                 "filters*"])


def test_every_image_excluded_fails(run: Run) -> None:
    for row in run.rows:
        (run.dataset / row["file_name"]).write_bytes(b"not an image")
    result = run()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"E*{CLASSIFIER}: all {len(run.rows)} images are excluded by "
                                 "the findings above*"])


def test_nothing_covered_fails_even_with_findings_allowed(run: Run) -> None:
    run.pytester.makepyprojecttoml('[tool.unsafebench]\nallow_findings = ["unreadable"]\n')
    result = run("--unsafebench-categories=Violence", classifier=OTHER)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"E*{OTHER}: it covers none of the selected categories*"])


def test_a_run_with_scored_cells_still_passes_integrity(run: Run) -> None:
    result = run("-k", "test_data_integrity")
    result.assert_outcomes(passed=1, deselected=result.parseoutcomes()["deselected"])


def test_fuzzing_keeps_the_perturbed_image_the_classifier_saw(tmp_path: Path) -> None:
    """The fuzz suite saves the perturbed image as the counterexample and reuses the decoded
    one for the next examples: a classifier that draws on its input changes neither."""
    from pytest_unsafebench.robustness.fuzzing import FuzzTarget
    from pytest_unsafebench.robustness.perturbations import Chain, apply

    record = _record("img0", _png(0, (32, 32)))
    target = FuzzTarget(classifier="vandal", source="all", clf=Vandal("paste"), pool=[],
                        records={"img0": record}, artifacts_dir=tmp_path)
    chain = Chain.parse("brightness:2:s2023")
    row = {"id": "img0", "label": "Unsafe"}
    first, perturbed = target.check(row, chain)
    again, _ = target.check(row, chain)
    expected = apply(chain, record.load_image(), record.content_hash)
    assert np.array_equal(np.asarray(perturbed), np.asarray(expected))
    assert np.array_equal(np.asarray(target.image("img0")), np.asarray(record.load_image()))
    assert again.score == first.score


def test_bench_memory_smoke(tmp_path: Path) -> None:
    """The memory benchmark runs end to end (tiny images here; see the README for the figure)."""
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memory.py"
    out = subprocess.run([sys.executable, str(script), "--images", "3", "--side", "64"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result["usable_images"] == 3 and result["peak_rss_mb"] > 0


RAY_CLASSIFIER = '''
from pytest_unsafebench import Coverage, Prediction

BATCHES = []


class Sizes:
    name = "sizes"
    fingerprint = "sizes-v1"
    supports_gradients = False
    coverage = Coverage.everything()

    def predict(self, images):
        BATCHES.append([im.size for im in images])
        return [Prediction.from_score(0.5) for _ in images]


def load(**_context):
    return Sizes()
'''


def test_ray_actor_decodes_within_the_budget(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The actor splits a work batch that does not fit the budget, never mixes two work
    batches, and still answers with one complete result per work batch (no Ray needed)."""
    import importlib
    import pickle

    from pytest_unsafebench.executors import ImageRef
    from pytest_unsafebench.ray_executor import _RECORD_FIELDS, ClassifierSpec, WorkItem, _Predictor

    (tmp_path / "sizesclf.py").write_text(RAY_CLASSIFIER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(engine, "DECODE_BUDGET_PIXELS", 500)  # half: two 10x10 images a batch
    works = [[_sized("a0", (10, 10)), _sized("a1", (10, 10)), _sized("a2", (10, 10))],
             [_sized("b0", (10, 10)), _sized("b1", (30, 30)), _sized("b2", (10, 10))]]
    items = [[WorkItem({f: getattr(r, f) for f in _RECORD_FIELDS},
                       ImageRef("bytes", data=r.read_bytes()), ("sizes-v1",)) for r in work]
             for work in works]
    actor = _Predictor([ClassifierSpec("sizesclf:load", {}, "sizes-v1")], "clean", None, 0,
                       "cpu", 0.0)
    out = actor({"work": [pickle.dumps(w) for w in items]})
    results = [pickle.loads(r) for r in out["result"]]
    assert [[h for h, _, _ in r.decodes] for r in results] == [
        [r.content_hash for r in work] for work in works]
    assert [len(r.predictions["sizes-v1"]) for r in results] == [3, 3]
    batches = importlib.import_module("sizesclf").BATCHES
    assert batches == [[(10, 10)] * 2, [(10, 10)], [(10, 10)], [(30, 30)], [(10, 10)]]


# Found by mutating valid files (the fuzz test's strategy) against the decoder before this
# fix: each raised outside its try and took the run down.
MALFORMED = {"index-error.qoi": "IndexError", "not-implemented.dds": "NotImplementedError",
             "type-error.tif": "TypeError"}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt TIFF
def test_malformed_files_are_findings_and_the_report_is_written(run: Run) -> None:
    data = Path(__file__).parent / "data" / "malformed"
    victims = run.rows[:len(MALFORMED)]
    for row, name in zip(victims, MALFORMED):
        (run.dataset / row["file_name"]).write_bytes((data / name).read_bytes())
    report = run.pytester.path / "out.json"
    result = run(f"--unsafebench-json={report}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["FAILED *test_data_integrity*"])
    assert result.parseoutcomes()["passed"] > 0  # the run went on
    findings = json.loads(report.read_text())["dataset"]["integrity"]["items"]
    assert sorted(f["kind"] for f in findings) == ["unreadable"] * len(MALFORMED)
    for row, exc in zip(victims, MALFORMED.values()):
        (finding,) = [f for f in findings if f"({row['file_name']})" in f["locator"]]
        assert f"{exc}: " in finding["detail"]


def test_file_that_becomes_a_fifo_while_the_manifest_is_read_is_a_finding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest_unsafebench.dataset.images as images

    root = _folder(tmp_path / "ds", ["a.png", "b.png"], {"a.png": _png(0), "b.png": _png(1)})
    real_stat = os.stat

    def swap_after_stat(path, *args, **kwargs):  # the race: checked as a file, then replaced
        result = real_stat(path, *args, **kwargs)
        if str(path).endswith("a.png") and not os.path.exists(str(path) + ".swapped"):
            Path(str(path) + ".swapped").touch()
            os.unlink(path)
            os.mkfifo(path)
        return result

    monkeypatch.setattr(images.os, "stat", swap_after_stat)
    ds = load_folder(root)
    (finding,) = ds.findings
    assert finding.kind == "not-a-regular-file" and "FIFO" in finding.detail
    assert [r.locator for r in ds.records] == ["metadata.csv:3 (b.png)"]

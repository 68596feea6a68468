"""``unsafebench train`` (pytest_unsafebench/training.py): the probe trainer, offline.

Backbones: the demo CNN's features (trained for one epoch in the fast tests, so the fixture
costs seconds; the full demo model only in the slow comparison) and a tiny randomly initialised
CLIP written with ``save_pretrained``, whose zero-shot Q16 head (random prompts) is the
baseline the probe must beat. Random CLIP features cannot separate the demo images (their
motifs need learned features: even a linear model on raw pixels is at chance), so the CLIP
tests use a small local dataset whose Unsafe images are redder, with overlap.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from PIL import Image  # noqa: E402

from pytest_unsafebench import load_classifier, load_dataset  # noqa: E402
from pytest_unsafebench.cache import PredictionCache  # noqa: E402
from pytest_unsafebench.classifier import HeadClassifier  # noqa: E402
from pytest_unsafebench.classifiers import probe as pr  # noqa: E402
from pytest_unsafebench.cli import main  # noqa: E402
from pytest_unsafebench.dataset.records import Record  # noqa: E402
from pytest_unsafebench.engine import run_pass  # noqa: E402
from pytest_unsafebench.taxonomy import CATEGORIES  # noqa: E402
from pytest_unsafebench.training import (  # noqa: E402
    TrainConfig,
    best_threshold,
    f1_score,
    train_probe,
    validation_mask,
)

SEED = 2023


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder: the demo dataset, a one-epoch demo model, cached embeddings."""
    return tmp_path_factory.mktemp("train-cache")


DEMO_QUICK = {"epochs": 1}  # backbone option: a one-epoch demo model (seconds)


@pytest.fixture(scope="module")
def demo_probe(cache: Path) -> Path:
    return train_probe("demo", "demo", cache / "demo.safetensors", backbone_options=DEMO_QUICK,
                       cache_dir=cache).path


def save_tiny_clip(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=64, max_position_embeddings=8,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image_size, patch_size=8),
        projection_dim=64)
    transformers.CLIPModel(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def build_reddish(root: Path, n_per: int = 8) -> Path:
    """A folder dataset, 32 x 32 noisy images: Unsafe ones redder than Safe ones (overlapping),
    every category x source x label; the first 5 of each stratum train, the rest test."""
    rng = np.random.default_rng(0)
    rows = []
    (root / "img").mkdir(parents=True)
    for c in CATEGORIES:
        for src in ("Laion5B", "Lexica"):
            for label in ("Safe", "Unsafe"):
                for i in range(n_per):
                    red = rng.uniform(0.4, 0.9) if label == "Unsafe" else rng.uniform(0.1, 0.6)
                    px = rng.normal(0.5, 0.15, (32, 32, 3))
                    px[..., 0] += red - 0.5
                    name = f"img/{len(rows)}.png"
                    Image.fromarray((px.clip(0, 1) * 255).astype(np.uint8)).save(root / name)
                    rows.append({"file_name": name, "safety_label": label, "category": c,
                                 "source": src, "split": "train" if i < 5 else "test"})
    with (root / "metadata.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def reddish(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_reddish(tmp_path_factory.mktemp("reddish") / "ds"))


@pytest.fixture(scope="module")
def clip_probe(cache: Path, tiny_clip: Path, reddish: str) -> Path:
    return train_probe(reddish, "clip", cache / "clip.safetensors",
                       backbone_options={"model": str(tiny_clip)}, cache_dir=cache).path


def _records(n_per: int, categories=("Hate", "Sexual"), seed: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    out = []
    for c in categories:
        for src in ("Laion5B", "Lexica"):
            for label in ("Safe", "Unsafe"):
                for i in range(n_per):
                    h = f"{c}{src}{label}{i}{rng.integers(1 << 30)}"
                    out.append(Record(id=h, safety_label=label, category=c, source=src,
                                      split="train", content_hash=h, locator=h))
    return out


def _test_f1(clf, cache: Path, dataset: str = "demo", **filters) -> float:
    ds = load_dataset(dataset, split="test", cache_dir=cache, **filters)
    preds = clf.predict([r.load_image() for r in ds.records])
    y = np.array([r.is_unsafe for r in ds.records])
    return f1_score(y, np.array([p.decision == "unsafe" for p in preds]))


# --------------------------------------------------------------------------- pieces
@settings(max_examples=40, deadline=None)
@given(n_per=st.integers(1, 9), fraction=st.floats(0.05, 0.9), seed=st.integers(0, 2**31))
def test_validation_part_is_stratified_seeded_and_order_free(n_per: int, fraction: float,
                                                             seed: int) -> None:
    records = _records(n_per)
    mask = validation_mask(records, fraction, seed)
    for key in {(r.category, r.source, r.safety_label) for r in records}:
        idx = [i for i, r in enumerate(records) if (r.category, r.source, r.safety_label) == key]
        held = int(mask[idx].sum())
        if n_per >= 2:  # every stratum keeps training and validation images
            assert 1 <= held <= n_per - 1
        else:
            assert held == 0
    shuffled = list(reversed(records))
    again = validation_mask(shuffled, fraction, seed)
    held = {r.id for r, m in zip(records, mask) if m}
    assert {r.id for r, m in zip(shuffled, again) if m} == held


def test_validation_part_depends_on_the_seed() -> None:
    records = _records(20)
    assert (validation_mask(records, 0.3, 1) != validation_mask(records, 0.3, 2)).any()


@settings(max_examples=60, deadline=None)
@given(data=st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans()), min_size=1, max_size=30))
def test_best_threshold_maximises_f1(data: list[tuple[float, bool]]) -> None:
    scores = np.array([s for s, _ in data])
    y = np.array([int(b) for _, b in data])
    t, f1 = best_threshold(scores, y)
    assert 0.0 < t < 1.0
    if not y.any():
        assert (t, f1) == (0.5, 0.0)
        return
    # Every split "score > c" a usable threshold c in [1e-6, 1 - 1e-6] can make.
    usable = np.clip([scores.min() / 2, *scores], 1e-6, 1 - 1e-6)
    brute = max(f1_score(y, scores > c) for c in usable)
    assert f1 == pytest.approx(brute)
    assert f1_score(y, scores > t) == pytest.approx(f1)


def test_config_is_checked() -> None:
    with pytest.raises(Exception, match="--val-fraction"):
        TrainConfig(val_fraction=1.0).check()
    with pytest.raises(Exception, match="--epochs"):
        TrainConfig(epochs=0).check()


# --------------------------------------------------------------------------- demo backbone
def test_training_is_deterministic_and_reads_the_cache(demo_probe: Path, cache: Path) -> None:
    rng = torch.random.get_rng_state()
    again = train_probe("demo", "demo", cache / "again.safetensors",
                        backbone_options=DEMO_QUICK, cache_dir=cache)
    assert again.embeddings_computed == 0  # every embedding came from the prediction cache
    assert again.embeddings_cached == 1320
    assert again.path.read_bytes() == demo_probe.read_bytes()
    other = train_probe("demo", "demo", cache / "other.safetensors",
                        backbone_options=DEMO_QUICK, cache_dir=cache,
                        config=TrainConfig(seed=7))
    assert other.path.read_bytes() != demo_probe.read_bytes()
    assert torch.equal(torch.random.get_rng_state(), rng)  # the caller's RNG is untouched


def test_training_never_reads_the_test_split(demo_probe: Path, cache: Path) -> None:
    probe = pr.read_probe(demo_probe)
    fp = probe.meta["backbone"]["fingerprint"]
    full = load_dataset("demo", cache_dir=cache)
    c = PredictionCache(cache / "predictions.sqlite")
    try:
        train = c.get_embeddings(fp, "clean", [r.content_hash for r in full.records
                                               if r.split == "train"])
        test = c.get_embeddings(fp, "clean", [r.content_hash for r in full.records
                                              if r.split == "test"])
    finally:
        c.close()
    assert len(train) == 1320 and not test
    on = probe.meta["trained_on"]
    assert on["split"] == "train" and on["fingerprint"] == full.fingerprint
    assert on["images"] + on["validation_images"] == 1320


def test_probe_file_round_trips(demo_probe: Path, cache: Path) -> None:
    clf = load_classifier(f"probe:{demo_probe}", cache_dir=cache)
    assert isinstance(clf, HeadClassifier) and clf.name == "probe"
    assert clf.fingerprint.startswith("probe-") and clf.base_classifier == "demo"
    assert clf.trained_on["split"] == "train" and clf.supports_gradients
    assert sorted(clf.coverage.official) == sorted(CATEGORIES)
    meta = clf.probe.meta
    assert meta["backbone"]["fingerprint"] == clf.backbone.fingerprint
    assert set(meta["thresholds"]) == {"unsafe", *CATEGORIES}

    images = [r.load_image() for r in load_dataset("demo", split="test", cache_dir=cache,
                                                   limit=24).records]
    preds = clf.predict(images)
    emb = clf.backbone.embed(images)
    assert preds == clf.predict_embeddings(emb)
    # Thresholds are folded in: a score exceeds 0.5 exactly when the raw head probability
    # exceeds the calibrated threshold.
    raw = 1 / (1 + np.exp(-(((emb - clf.probe.mean) / clf.probe.scale) @ clf.probe.weight.T
                            + clf.probe.bias)))
    for p, row in zip(preds, raw):
        assert p.decision == ("unsafe" if row[0] > meta["thresholds"]["unsafe"] else "safe")
        for k, head in enumerate(clf.probe.heads):
            assert (p.label_scores[head] > 0.5) == (row[k] > meta["thresholds"][head])
    # The gradient path gives the same score.
    x = torch.stack([torch.from_numpy(np.asarray(im, np.float32).transpose(2, 0, 1) / 255)
                     for im in images])
    probs = torch.softmax(clf.forward_pixels(x), dim=1)[:, 1].detach().numpy()
    np.testing.assert_allclose(probs, [p.score for p in preds], atol=1e-4)


def test_engine_reuses_the_training_embeddings(demo_probe: Path, cache: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    clf = load_classifier(f"probe:{demo_probe}", cache_dir=cache)
    monkeypatch.setattr(type(clf.backbone), "embed",
                        lambda *a: pytest.fail("embedded although the training cached it"))
    train = load_dataset("demo", split="train", cache_dir=cache, limit=40).records
    pc = PredictionCache(cache / "predictions.sqlite")
    try:
        result = run_pass(train, {"p": lambda: clf}, pc)
    finally:
        pc.close()
    assert result.outcomes["p"].error is None and len(result.outcomes["p"].predictions) == 40


# --------------------------------------------------------------------------- tiny CLIP
def test_clip_probe_beats_the_zero_shot_baseline(clip_probe: Path, cache: Path, reddish: str,
                                                 tiny_clip: Path, tmp_path: Path) -> None:
    import pickle

    prompts = tmp_path / "prompts.p"
    prompts.write_bytes(pickle.dumps(
        np.random.default_rng(0).normal(size=(2, 64)).astype(np.float16), protocol=3))
    q16 = load_classifier("q16", model=str(tiny_clip), prompts=str(prompts), cache_dir=cache)
    probe = load_classifier(f"probe:{clip_probe}", cache_dir=cache)
    assert probe.base_classifier == "q16"
    assert probe.backbone is q16.backbone  # one shared CLIP: each image embedded once
    cats = sorted(q16.coverage.official)
    base = _test_f1(q16, cache, reddish, categories=cats)
    mine = _test_f1(probe, cache, reddish, categories=cats)
    assert mine > base + 0.1, (mine, base)


def test_clip_training_is_deterministic_across_fresh_caches(tiny_clip: Path, reddish: str,
                                                            clip_probe: Path,
                                                            tmp_path: Path) -> None:
    fresh = train_probe(reddish, "clip", tmp_path / "p.safetensors",
                        backbone_options={"model": str(tiny_clip)}, cache_dir=tmp_path)
    assert fresh.embeddings_computed == 11 * 2 * 2 * 5  # a fresh cache: all computed
    assert fresh.path.read_bytes() == clip_probe.read_bytes()


# --------------------------------------------------------------------------- the command
def test_train_command(cache: Path, tiny_clip: Path, tmp_path: Path, reddish: str,
                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.safetensors"
    code = main(["train", "--dataset", reddish, "--backbone", "clip", "--backbone-option",
                 f"model={tiny_clip}", "--out", str(out), "--cache-dir", str(cache),
                 "--seed", "5", "--epochs", "40", "--val-fraction", "0.2"])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert f"--unsafebench-classifier=probe:{out}" in text
    assert "threshold" in text and "Self-harm" in text
    meta = pr.read_probe(out).meta
    assert meta["seed"] == 5 and meta["config"]["val_fraction"] == 0.2
    assert meta["validation"]["epochs_run"] <= 40


def test_train_command_decodes_under_the_runs_alpha_rule(
        cache: Path, tiny_clip: Path, reddish: str, clip_probe: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """pyproject.toml's paper mode sets alpha = "drop" for the run: training decodes under it,
    keys its embeddings by it (the default-rule embeddings clip_probe cached are not served)
    and records it in the probe file."""
    seen: list[str] = []
    load = Record.load_image

    def spy(self: Record, max_pixels: int | None = None, alpha: str = "white") -> Image.Image:
        seen.append(alpha)
        return load(self, max_pixels=max_pixels, alpha=alpha)

    monkeypatch.setattr(Record, "load_image", spy)
    (tmp_path / "pyproject.toml").write_text('[tool.unsafebench.robustness]\nmode = "paper"\n')
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "drop.safetensors"
    assert main(["train", "--dataset", reddish, "--backbone", "clip", "--backbone-option",
                 f"model={tiny_clip}", "--out", str(out), "--cache-dir", str(cache)]) == 0
    assert "embeddings 0 cached, 220 computed" in capsys.readouterr().out
    assert set(seen) == {"drop"} and len(seen) == 11 * 2 * 2 * 5
    assert pr.read_probe(out).meta["trained_on"]["alpha"] == "drop"
    assert pr.read_probe(clip_probe).meta["trained_on"]["alpha"] == "white"


NO_EMBEDDING = """
from pytest_unsafebench import Coverage, Prediction


class Plain:
    name, fingerprint, supports_gradients = "plain", "plain-v1", False
    coverage = Coverage.everything()

    def predict(self, images):
        return [Prediction.from_score(0.5) for _ in images]


def load():
    return Plain()
"""


def test_train_command_errors(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--backbone", "demo", "--out", str(tmp_path / "x.safetensors"),
                 "--cache-dir", str(cache), "--val-fraction", "1.5"]) == 2
    assert "--val-fraction" in capsys.readouterr().err
    assert main(["train", "--dataset", str(tmp_path / "nowhere"), "--backbone", "demo",
                 "--out", str(tmp_path / "x.safetensors"), "--cache-dir", str(cache)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "plainclf.py").write_text(NO_EMBEDDING)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["train", "--backbone", "plainclf:load", "--out", str(tmp_path / "x.safetensors"),
                 "--cache-dir", str(cache)]) == 2
    assert "exposes no embedding" in capsys.readouterr().err


# --------------------------------------------------------------------------- the full demo
@pytest.mark.slow
def test_demo_probe_matches_the_demo_classifier(cache: Path, tmp_path: Path) -> None:
    """The demo CNN's own features were trained on the same split, so a probe on them can
    only match the demo classifier, not beat it by much: within one point of F1."""
    shutil.copytree(cache / "datasets", tmp_path / "datasets")
    path = train_probe("demo", "demo", tmp_path / "full.safetensors", cache_dir=tmp_path).path
    probe = load_classifier(f"probe:{path}", cache_dir=tmp_path)
    demo = load_classifier("demo", cache_dir=tmp_path)
    mine, base = _test_f1(probe, tmp_path), _test_f1(demo, tmp_path)
    assert mine >= base - 0.01, (mine, base)

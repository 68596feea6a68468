"""The embedded demo dataset and the ``demo`` classifier trained on it.

One module-scoped cache folder holds the generated dataset and the trained weights, so the
dataset is generated and the model trained once per module (about 15 s on two cores).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pytest_unsafebench import progress
from pytest_unsafebench.dataset import demo, load_dataset
from pytest_unsafebench.taxonomy import CATEGORIES, LABELS, SOURCES, SPLITS

SEED = 2023


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("unsafebench-cache")


@pytest.fixture(scope="module")
def folder(cache: Path) -> Path:
    return demo.ensure_demo_dataset(cache / "datasets", SEED)


def _file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _one_row_per_cell() -> list[demo.DemoRow]:
    rows = demo.demo_rows(SEED)
    seen: set[tuple[str, str, bool, str]] = set()
    picked = []
    for r in rows:
        key = (r.category, r.source, r.unsafe, r.split)
        if key not in seen:
            seen.add(key)
            picked.append(r)
    return picked


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------


def test_layout_and_counts(folder: Path, cache: Path) -> None:
    assert folder.name == f"demo-v{demo.GENERATOR_VERSION}-seed{SEED}"
    assert (folder / demo.COMPLETE_MARKER).is_file()
    header = (folder / "metadata.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == ",".join(demo.MANIFEST_COLUMNS)
    ds = load_dataset("demo", seed=SEED, cache_dir=cache)
    assert ds.synthetic and not ds.findings
    counts = Counter((r.category, r.source, r.safety_label, r.split) for r in ds.records)
    for cat in CATEGORIES:
        for src in SOURCES:
            for label in LABELS:
                for split in SPLITS:
                    want = demo.TRAIN_PER_CELL if split == "train" else demo.TEST_PER_CELL
                    assert counts[(cat, src, label, split)] == want, (cat, src, label, split)
    assert len(ds.records) == len(CATEGORIES) * 2 * 2 * (demo.TRAIN_PER_CELL + demo.TEST_PER_CELL)
    assert len({r.content_hash for r in ds.records}) == len(ds.records)  # no duplicates
    r = ds.records[0]
    assert r.text == f"synthetic {r.category} image, {r.source} style"
    assert r.load_image().size == (demo.IMAGE_SIZE, demo.IMAGE_SIZE)
    # File names must not give the label away.
    assert not any(lab.lower() in r.locator.lower() for r in ds.records for lab in LABELS)


def test_deterministic_and_order_independent(folder: Path, tmp_path: Path) -> None:
    rows = _one_row_per_cell()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    demo.write_dataset(tmp_path / "a", SEED, rows)
    demo.write_dataset(tmp_path / "b", SEED, list(reversed(rows)))
    a, b = _file_hashes(tmp_path / "a"), _file_hashes(tmp_path / "b")
    assert set(a) == set(b)
    assert all(a[k] == b[k] for k in a if k != "metadata.csv")
    # Every image equals the one in the full folder: bytes depend on (seed, row) only.
    full = _file_hashes(folder)
    assert all(full[k] == h for k, h in a.items() if k != "metadata.csv")
    # Same rows in the same order: byte-identical manifest.
    (tmp_path / "c").mkdir()
    demo.write_dataset(tmp_path / "c", SEED, rows)
    assert _file_hashes(tmp_path / "c") == a


def test_different_seed_different_images(tmp_path: Path) -> None:
    rows = _one_row_per_cell()[:8]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    demo.write_dataset(tmp_path / "a", SEED, rows)
    demo.write_dataset(tmp_path / "b", SEED + 1, rows)
    a = {k: v for k, v in _file_hashes(tmp_path / "a").items() if k != "metadata.csv"}
    b = {k: v for k, v in _file_hashes(tmp_path / "b").items() if k != "metadata.csv"}
    assert set(a.values()).isdisjoint(b.values())


def test_render_image_uses_only_its_generator() -> None:
    state = np.random.get_state()
    img1 = demo.render_image("Hate", "Lexica", True, np.random.default_rng(5), size=48)
    img2 = demo.render_image("Hate", "Lexica", True, np.random.default_rng(5), size=48)
    assert img1.size == (48, 48) and img1.mode == "RGB"
    assert img1.tobytes() == img2.tobytes()
    assert np.array_equal(np.random.get_state()[1], state[1])
    with pytest.raises(ValueError, match="unknown category"):
        demo.render_image("hate", "Lexica", True, np.random.default_rng(5))


def _high_frequency(data: bytes) -> float:
    """Mean absolute Laplacian of the grey image: texture, noise and JPEG artefacts."""
    g = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(np.abs(lap).mean())


def test_sources_differ(cache: Path, folder: Path) -> None:
    ds = load_dataset("demo", seed=SEED, cache_dir=cache)
    energy: dict[str, list[float]] = {s: [] for s in SOURCES}
    for r in ds.records:
        data = r.read_bytes()
        if r.source == "Laion5B":
            assert data[:3] == b"\xff\xd8\xff", r.locator  # JPEG
        else:
            assert data[:8] == b"\x89PNG\r\n\x1a\n", r.locator
        energy[r.source].append(_high_frequency(data))
    laion, lexica = np.median(energy["Laion5B"]), np.median(energy["Lexica"])
    assert laion > 3 * lexica, (laion, lexica)


def test_ensure_is_idempotent(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _file_hashes(folder)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated a complete folder")

    monkeypatch.setattr(demo, "write_dataset", boom)
    assert demo.ensure_demo_dataset(folder.parent, SEED) == folder
    assert _file_hashes(folder) == before


def test_ensure_replaces_an_incomplete_folder(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _one_row_per_cell()[:4]
    monkeypatch.setattr(demo, "demo_rows", lambda seed: rows)
    stale = tmp_path / demo.demo_folder_name(3)
    stale.mkdir()
    (stale / "metadata.csv").write_text("half-written", encoding="utf-8")
    out = demo.ensure_demo_dataset(tmp_path, 3)
    assert out == stale and (out / demo.COMPLETE_MARKER).is_file()
    assert len((out / "metadata.csv").read_text(encoding="utf-8").splitlines()) == 5
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp or stale leftovers


def test_ensure_concurrent_processes(tmp_path: Path) -> None:
    # Several processes race to build the same (reduced) folder; all must agree on one.
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from pytest_unsafebench.dataset import demo
        rows = demo.demo_rows(0)[::40]
        demo.demo_rows = lambda seed: rows
        print(demo.ensure_demo_dataset(Path(sys.argv[1]), {SEED}))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    paths = {out.strip() for out, _ in outs}
    assert paths == {str(tmp_path / demo.demo_folder_name(SEED))}
    assert [p.name for p in tmp_path.iterdir()] == [demo.demo_folder_name(SEED)]
    target = Path(paths.pop())
    assert (target / demo.COMPLETE_MARKER).is_file()
    manifest = (target / "metadata.csv").read_text(encoding="utf-8").splitlines()
    assert len(manifest) == 1 + len(demo.demo_rows(0)[::40])


# --------------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_clf_module() -> Any:
    """The classifier module, imported only when torch is installed."""
    pytest.importorskip("torch")
    from pytest_unsafebench.classifiers import demo as demo_clf

    return demo_clf


@pytest.fixture(scope="module")
def clf(demo_clf_module: Any, cache: Path, folder: Path) -> Any:
    return demo_clf_module.load(cache_dir=cache, seed=SEED)


def test_protocol(clf: Any) -> None:
    from pytest_unsafebench.classifier import Classifier, Coverage

    assert isinstance(clf, Classifier)
    assert clf.name == "demo"
    assert clf.coverage == Coverage.everything()
    assert clf.supports_gradients is True
    assert isinstance(clf.input_size, int) and clf.description
    assert clf.fingerprint.startswith("demo-") and clf.fingerprint.endswith("-pp1")
    digest = hashlib.sha256(clf.weights_path.read_bytes()).hexdigest()[:16]
    assert digest in clf.fingerprint
    assert not clf.model.training


def test_second_load_uses_cache(demo_clf_module: Any, clf: Any, cache: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("retrained although the weights were cached")

    monkeypatch.setattr(demo_clf_module, "_train", boom)
    again = demo_clf_module.load(cache_dir=cache, seed=SEED)
    assert again.from_cache and again.train_seconds is None
    assert again.fingerprint == clf.fingerprint


def test_training_is_deterministic(demo_clf_module: Any, folder: Path,
                                   tmp_path: Path) -> None:
    import torch

    rng_state = torch.random.get_rng_state()
    deterministic = torch.are_deterministic_algorithms_enabled()
    prints = []
    lines: list[str] = []
    display = progress.Display(lines.append)  # training reports its steps
    for name in ("a", "b"):
        # Fresh cache folders, sharing a copy of the generated images to save time.
        shutil.copytree(folder, tmp_path / name / "datasets" / folder.name)
        progress.activate(display)
        try:
            c = demo_clf_module.load(cache_dir=tmp_path / name, seed=SEED, epochs=1)
        finally:
            progress.deactivate(display)
        assert not c.from_cache
        prints.append(c.fingerprint)
    assert prints[0] == prints[1]
    assert display.timing()["demo_training_seconds"] > 0
    assert all(" steps in " in line for line in lines if "training the demo model" in line)
    other = demo_clf_module.load(cache_dir=tmp_path / "a", seed=SEED, epochs=2)
    assert other.fingerprint != prints[0]
    # Training leaves the caller's torch state alone.
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_forward_pixels_is_differentiable(clf: Any) -> None:
    import torch

    x = torch.rand(3, 3, 80, 96, generator=torch.Generator().manual_seed(0), requires_grad=True)
    logits = clf.forward_pixels(x)
    assert logits.shape == (3, 2)
    logits[:, 1].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_input_std_is_what_forward_pixels_divides_by(demo_clf_module: Any) -> None:
    """Paper-mode attacks convert eps with input_std: it must be the normalisation's std
    (a step d in every pixel moves the network's input by d / std), read off the class."""
    import torch

    std = demo_clf_module.DemoClassifier.input_std
    assert isinstance(std, tuple) and len(std) == 3 and std == demo_clf_module._STD
    size = demo_clf_module.INPUT_SIZE
    x = torch.full((1, 3, size, size), 0.4)
    delta = demo_clf_module.normalise(x + 0.1, size) - demo_clf_module.normalise(x, size)
    want = (0.1 / torch.tensor(std)).view(1, 3, 1, 1).expand_as(delta)
    torch.testing.assert_close(delta, want, rtol=1e-5, atol=1e-5)


def test_predict_agrees_with_forward_pixels(clf: Any, cache: Path) -> None:
    import torch

    ds = load_dataset("demo", split="test", seed=SEED, cache_dir=cache, limit=40)
    images = [r.load_image() for r in ds.records]
    images.append(images[0].resize((90, 70)))  # an odd size goes through the same path
    preds = clf.predict(images)
    assert len(preds) == len(images)

    def probs(batch: list[Image.Image]) -> list[float]:
        x = torch.stack([torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
                         for img in batch]).permute(0, 3, 1, 2)
        with torch.no_grad():
            return torch.softmax(clf.forward_pixels(x), dim=1)[:, 1].tolist()

    expected = probs(images[:-1]) + probs(images[-1:])
    for p, prob in zip(preds, expected):
        p.validate()
        assert p.score == pytest.approx(prob, abs=1e-5)
        assert p.decision == ("unsafe" if prob > 0.5 else "safe")
    assert clf.predict([]) == []


Quality = dict[tuple[str, str], tuple[float, float]]


def _quality(clf: Any, cache: Path, seed: int) -> Quality:
    """(category or 'Overall', source or 'all') -> (F1 with Unsafe positive, FPR on Safe)."""
    from sklearn.metrics import f1_score

    ds = load_dataset("demo", split="test", seed=seed, cache_dir=cache)
    preds = clf.predict([r.load_image() for r in ds.records])
    y = np.array([r.is_unsafe for r in ds.records])
    yhat = np.array([p.decision == "unsafe" for p in preds])
    cats = np.array([r.category for r in ds.records])
    srcs = np.array([r.source for r in ds.records])
    out = {}
    for cat in (*CATEGORIES, "Overall"):
        for src in (*SOURCES, "all"):
            m = np.ones(len(y), bool)
            if cat != "Overall":
                m &= cats == cat
            if src != "all":
                m &= srcs == src
            fpr = float(yhat[m & ~y].mean())
            out[(cat, src)] = (float(f1_score(y[m], yhat[m])), fpr)
    return out


def _check_quality(q: Quality) -> None:
    bad = {k: v for k, v in q.items() if v[0] < 0.6 or v[1] > 0.25}
    assert not bad, bad
    overall = q[("Overall", "all")][0]
    assert 0.8 <= overall <= 0.97, overall  # learnable, not trivial
    laion, lexica = q[("Overall", "Laion5B")][0], q[("Overall", "Lexica")][0]
    assert lexica - laion >= 0.02, (laion, lexica)  # the photographic source is harder


def test_quality_on_test_split(clf: Any, cache: Path) -> None:
    pytest.importorskip("sklearn")
    _check_quality(_quality(clf, cache, SEED))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [7, 11])
def test_quality_other_seeds(demo_clf_module: Any, cache: Path, seed: int) -> None:
    pytest.importorskip("sklearn")
    c = demo_clf_module.load(cache_dir=cache, seed=seed)
    _check_quality(_quality(c, cache, seed))

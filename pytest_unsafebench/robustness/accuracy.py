"""Robust accuracy (RA, as UnsafeBench's assess_robustness.py measures it): how often a
classifier stays right under perturbation.

Pool: the images of the classifier's covered categories (in one source, or both) that it
classifies correctly on clean inputs. For each pool seed, K of them are drawn without
replacement; robust accuracy (RA) is the share still classified correctly after the
perturbation, averaged over the seeds. Perturbed predictions go through the same cache as clean
ones, keyed by the perturbation's cache key (its spec string and pixel version), and are
computed under a file lock so pytest-xdist workers never perturb or infer the same image twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..classifier import Decision, Prediction
from ..config import RobustnessSettings
from ..taxonomy import CATEGORIES, POOLED, SOURCES, SPLITS, UNSAFE

if TYPE_CHECKING:
    from PIL.Image import Image

    from ..cache import PredictionCache
    from ..classifier import Classifier
    from ..dataset.records import Record
    from ..results import PredictionTable
    from ..run import Run

EVASION_STRENGTH = 3  # the middle of each evasion edit's five levels
# Category order of the paper's pool where a classifier's list is not the taxonomy's order
# (UnsafeBench unsafe_datasets.py, align_unsafe_categories).
PAPER_CATEGORY_ORDER: dict[str, tuple[str, ...]] = {
    "multiheaded": ("Sexual", "Violence", "Shocking", "Hate", "Political"),
}
# How a result's pool was drawn (RAResult.pool_draw, the rows' ``pool``).
POOL_PAPER = "paper"                  # official order, random.sample: the paper's draw
POOL_PAPER_LOAD_ORDER = "paper-draw-load-order"  # random.sample, but no row index to order by
POOL_SEEDED = "seeded"                # numpy draw from the id-sorted pool (pixel mode)
DEFAULT_INPUT_SIZE = 224


def condition_names(rs: RobustnessSettings) -> list[str]:
    """The ``test_robust_accuracy`` parameters: attacks, then evasion edits."""
    return [*rs.attacks, *evasions(rs)]


def evasions(rs: RobustnessSettings) -> list[str]:
    return _chosen(rs.evasions, "evasion", "evasions")


def corruptions(rs: RobustnessSettings) -> list[str]:
    return _chosen(rs.corruptions, "corruption", "corruptions")


def _chosen(listed: Sequence[str] | None, kind: str, key: str) -> list[str]:
    """The configured perturbations of a kind (all of them when unset); ConfigError naming the
    pyproject key for an unknown name or one of the other kind."""
    from ..errors import ConfigError
    from ..taxonomy import suggest
    from .registries import PERTURBATIONS, perturbation_names  # names only: no numpy, no Pillow

    known = perturbation_names(kind)
    if listed is None:
        return known
    path = f"tool.unsafebench.robustness.{key}"
    for name in listed:
        if name in known:
            continue
        other = PERTURBATIONS.get(name)
        if other is not None:
            raise ConfigError(f"{path}: {name!r} is {_article(other.kind)}, not "
                              f"{_article(kind)}: list it under {other.kind}s")
        raise ConfigError(f"{path}: unknown {kind} {name!r}{suggest(name, known)}; known: "
                          f"{', '.join(known)}")
    return list(listed)


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def attack_spec(name: str, rs: RobustnessSettings, seed: int) -> Any:
    """The attack run for a pool seed: the paper's settings in paper mode, ours otherwise."""
    from .attacks import AttackSpec, paper_spec

    if rs.mode == "paper" and name in ("gaussian", "fgsm", "pgd", "deepfool"):
        return paper_spec(name, seed=seed)
    if name == "pgd":
        return AttackSpec("pgd", rs.eps, steps=rs.pgd_steps, step_size=rs.pgd_step_size,
                          random_start=rs.pgd_random_start, seed=seed)
    if name in ("square", "spsa"):
        return AttackSpec(name, rs.eps, queries=rs.queries, seed=seed)
    return AttackSpec(name, rs.eps, seed=seed)


@dataclass
class RAResult:
    """Robust accuracy of one (classifier, condition, source) over the pool seeds."""

    ra: float
    per_seed: dict[int, float]
    sample_size: int
    spec: str                        # the condition run: perturbation or attack spec string
    conditions: list[str]            # the cache keys used
    distances: dict[str, float] = field(default_factory=dict)  # attacks: mean/max L-inf, L2
    # Per distinct drawn image, whether it is still right: what RA's bootstrap interval
    # resamples (seeds that draw the same image share its outcome, so each counts once).
    correct: list[bool] = field(default_factory=list)
    # Attacks only: clean accuracy of the drawn images through the attack's own input (the
    # model's centre crop as a tensor), which can differ from the pipeline's decision.
    attack_input_accuracy: float | None = None
    pool_size: int = 0               # correctly classified eligible images
    eligible: int = 0                # images of covered categories in the source
    pool_draw: str = POOL_SEEDED     # how the seeds' samples were drawn (POOL_* above)
    units: str | None = None         # paper-mode attacks: UNITS_PAPER or UNITS_PROJECT_LOSS

    @property
    def clean_accuracy(self) -> float:
        """Accuracy on the eligible images, the pool being the ones classified right."""
        return self.pool_size / self.eligible if self.eligible else float("nan")

    def rows(self) -> dict[str, float | int]:
        extra = ({} if self.attack_input_accuracy is None
                 else {"clean_accuracy_attack_input": self.attack_input_accuracy})
        return {"pool_size": self.pool_size, "eligible": self.eligible,
                "clean_accuracy": self.clean_accuracy, **extra, **self.distances}


def eligible(table: PredictionTable, covered: Sequence[str],
             source: str | None) -> list[dict[str, Any]]:
    """Images of covered categories in the source (both sources for pooled)."""
    return [r for r in table.rows if r["category"] in covered
            and (source == POOLED or r["source"] == source)]


def answer(decision: str, label_scores: Mapping[str, Any] | None) -> str | None:
    """The answer robustness judges: a VLM judge's prompt-0 verdict (``prompt0``: 1 unsafe,
    0 safe, 0.5 unsure; UnsafeBench unsafe_datasets.py uses ``detailed_predictions[0]``), else
    the decision; None when unsure (never right, so never part of a pool): the decision itself,
    or a VLM vote that was unsure before the unsure policy turned it into a label (kept in
    ``label_scores``)."""
    scores = label_scores or {}
    p0 = scores.get("prompt0")
    if p0 is not None:
        return {1.0: "unsafe", 0.0: "safe"}.get(float(p0))
    return None if decision == "unsure" or scores.get("unsure") else decision


def _right(table: PredictionTable, covered: Sequence[str],
           source: str | None) -> list[dict[str, Any]]:
    return [r for r in eligible(table, covered, source)
            if answer(r["decision"], r.get("label_scores")) == (
                "unsafe" if r["label"] == UNSAFE else "safe")]


def pool(table: PredictionTable, covered: Sequence[str],
         source: str | None) -> list[dict[str, Any]]:
    """The correctly classified :func:`eligible` images, in a stable (id) order."""
    return sorted(_right(table, covered, source), key=lambda r: r["id"])


def draw(rows: Sequence[dict[str, Any]], k: int, seed: int) -> list[dict[str, Any]]:
    import numpy as np

    if len(rows) <= k:
        return list(rows)
    picked = np.random.default_rng(seed).choice(len(rows), size=k, replace=False)
    return [rows[i] for i in sorted(picked)]


def row_index(archive_key: str) -> tuple[int, int] | None:
    """(split position, row index within the split) of a ``"<split>/<index>"`` archive key;
    None when the key does not carry a row index (a folder dataset, an ``id`` column)."""
    split, _, stem = archive_key.partition("/")
    if split not in SPLITS or not (stem.isascii() and stem.isdigit()):
        return None
    return SPLITS.index(split), int(stem)


def paper_pool(table: PredictionTable, covered: Sequence[str], source: str, classifier: str,
               archive_keys: Mapping[str, str]) -> tuple[list[dict[str, Any]], bool]:
    """The pool in the order the reference code builds it, and whether that order is exact.

    UnsafeBench unsafe_datasets.py (``random_draw_testing_adv_samples``) concatenates, per
    source (Laion5B then Lexica), the classifier's categories in its alignment's order
    (``align_unsafe_categories``), each category's train rows then its test rows in dataset
    order, and keeps the correctly classified ones. ``archive_keys`` maps image id to its
    ``"<split>/<row index>"``; without a row index for every image the order within a split
    falls back to the order the dataset was loaded in (exact = False: not the paper's draw).
    """
    rows = _right(table, covered, source)
    position = {r["id"]: i for i, r in enumerate(table.rows)}
    order = PAPER_CATEGORY_ORDER.get(classifier, CATEGORIES)
    indices = {r["id"]: row_index(archive_keys.get(r["id"], "")) for r in rows}
    exact = all(v is not None for v in indices.values())

    def key(r: dict[str, Any]) -> tuple[int, ...]:
        cat = r["category"]
        within = indices[r["id"]] if exact else (
            SPLITS.index(r["split"]) if r.get("split") in SPLITS else len(SPLITS),
            position[r["id"]])
        return (SOURCES.index(r["source"]),
                order.index(cat) if cat in order else len(order) + CATEGORIES.index(cat),
                *within)  # type: ignore[misc]

    return sorted(rows, key=key), exact


def paper_draw(rows: Sequence[dict[str, Any]], k: int, seed: int) -> list[dict[str, Any]]:
    """``random.seed(seed); random.sample(range(n), min(k, n))`` as in unsafe_datasets.py, on a
    private generator (same stream, global state untouched); the drawn order is kept."""
    import random

    picked = random.Random(seed).sample(range(len(rows)), min(k, len(rows)))
    return [rows[i] for i in picked]


@contextmanager
def exclusive(lock_dir: Path, *parts: str) -> Iterator[None]:
    """One process at a time per (classifier, condition); the others then hit the cache."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
    with (lock_dir / f"{name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _correct(rows: Sequence[dict[str, Any]], preds: dict[str, Prediction]) -> list[bool]:
    return [answer(preds[r["hash"]].decision, preds[r["hash"]].label_scores)
            == ("unsafe" if r["label"] == UNSAFE else "safe") for r in rows]


def perturbation_ra(clf: Classifier, samples: dict[int, list[dict[str, Any]]],
                    records: dict[str, Record], name: str, severity: float,
                    cache: PredictionCache, batch_size: int, max_pixels: int,
                    timeout: float | None = None,
                    progress: Callable[[int, int], None] | None = None) -> RAResult:
    """RA under a Pillow/numpy perturbation; predictions through the normal engine path."""
    from ..engine import run_pass
    from . import perturbations

    # The pool seeds choose the images; the perturbation's own randomness uses the first seed,
    # so an image drawn under several seeds is perturbed and classified once.
    spec = perturbations.PerturbationSpec(name, severity, next(iter(samples)))
    key = perturbations.cache_key(spec)  # a new pixel version misses the old predictions
    union = {r["id"]: records[r["id"]] for rows in samples.values() for r in rows}
    result = run_pass(list(union.values()), {clf.name: lambda: clf}, cache, condition=key,
                      batch_size=batch_size, max_pixels=max_pixels,
                      transform=lambda img, h: perturbations.apply(spec, img, h), timeout=timeout,
                      progress=progress)
    outcome = result.outcomes[clf.name]
    if outcome.error:
        from ..engine import ClassifierFault

        raise ClassifierFault(f"under {key}: {outcome.error}")
    per_seed = {}
    for seed, rows in samples.items():
        ok = _correct(rows, outcome.predictions)
        per_seed[seed] = sum(ok) / len(ok) if ok else float("nan")
    return _summary(per_seed, samples, str(spec), [key],
                    correct=_correct(_distinct(samples), outcome.predictions))


def attack_ra(clf: Classifier, samples: dict[int, list[dict[str, Any]]],
              records: dict[str, Record], name: str, rs: RobustnessSettings,
              cache: PredictionCache, batch_size: int,
              progress: Callable[[int, int], None] | None = None,
              timeout: float | None = None) -> RAResult:
    """RA under an adversarial attack on the model's input, in pixel space.

    The clean input is the classifier's own preprocessed tensor (``attack_input``) where it
    declares one, else a shortest-side resize and centre crop. Attacks use ``forward_pixels``
    (gradient-free ones under no_grad) where present, else the classifier's ``predict`` on
    8-bit images, one query per forward call. In paper mode (:func:`paper_setup`) the attack
    sees the model as the paper wrapped it, clips to the paper's box, and the classifier's own
    decision on the result says whether it stayed right. ``timeout``: seconds each model call
    on a batch gets (an attack makes many; None: no limit).
    """
    import torch

    from .attacks import logits_from_scores, run_attack

    size = int(getattr(clf, "input_size", None) or DEFAULT_INPUT_SIZE)
    std = getattr(clf, "input_std", None)
    pixels_forward = getattr(clf, "forward_pixels", None)  # not part of every Classifier
    if pixels_forward is not None:
        forward = pixels_forward
    else:
        def forward(x: torch.Tensor) -> torch.Tensor:
            preds = clf.predict(_to_images(x))
            return logits_from_scores([p.score for p in preds])
    forward = _guarded(forward, timeout, f"under the {name} attack")

    # As for perturbations: pool seeds pick images, the attack's randomness uses the first seed.
    spec = attack_spec(name, rs, next(iter(samples)))
    own_input = getattr(clf, "attack_input", None)
    if own_input is not None:  # the classifier's preprocessing: its code, held as forward is
        own_input = _guarded(own_input, timeout, f"under the {name} attack")
    key = f"attack:{spec}:" + ("own-input" if own_input is not None else f"crop{size}")
    attacked, box, units = forward, None, None
    if spec.mode == "paper":
        attacked, box, units = paper_setup(clf, forward, name)
        if attacked == getattr(clf, "paper_forward_pixels", None):  # its code, unguarded
            attacked = _guarded(attacked, timeout, f"under the {name} attack")
        key += f":{units}:box{_box_tag(box)}"
    union = _distinct(samples)
    cached = cache.get_predictions(clf.fingerprint, key, [r["hash"] for r in union])
    todo = [r for r in union if r["hash"] not in cached]
    for i in range(0, len(todo), batch_size):
        chunk = todo[i:i + batch_size]
        # Decoded under the cache's alpha rule: the rule the pool's clean predictions saw.
        images = [records[r["id"]].load_image(alpha=cache.alpha) for r in chunk]
        x = torch.stack([_as_tensor(own_input(img)) if own_input is not None
                         else _crop_tensor(img, size) for img in images])
        y = torch.tensor([int(r["label"] == UNSAFE) for r in chunk])
        with torch.no_grad():
            clean_pred = forward(x).argmax(1)
        res = run_attack(attacked, x, y, spec, pixel_std=std, box=box, decide=forward)
        with torch.no_grad():
            probs = torch.softmax(forward(res.x_adv).float(), dim=1)[:, 1]
        items = []
        for j, r in enumerate(chunk):
            raw = json.dumps({"linf": float(res.linf[j]), "l2": float(res.l2[j]),
                              "clean_correct": bool(clean_pred[j] == y[j]),
                              "queries": int(res.queries[j])})
            decision: Decision = "unsafe" if int(res.pred[j]) == 1 else "safe"
            items.append((r["hash"], Prediction(float(probs[j].clamp(0, 1)), decision, raw=raw)))
        cache.put_predictions(clf.fingerprint, key, items)
        cached.update(items)
        if progress:
            progress(i + len(chunk), len(todo))
    per_seed = {}
    for seed, rows in samples.items():
        ok = _correct(rows, cached)
        per_seed[seed] = sum(ok) / len(ok) if ok else float("nan")
    info = [json.loads(cached[r["hash"]].raw or "{}") for r in union]
    clean = [i["clean_correct"] for i in info if "clean_correct" in i]
    result = _summary(per_seed, samples, str(spec), [key], correct=_correct(union, cached))
    result.attack_input_accuracy = sum(clean) / len(clean) if clean else None
    result.units = units
    if info:
        linf = [i.get("linf", 0.0) for i in info]
        l2 = [i.get("l2", 0.0) for i in info]
        result.distances = {"linf_mean": sum(linf) / len(linf), "linf_max": max(linf),
                            "l2_mean": sum(l2) / len(l2), "l2_max": max(l2)}
    return result


def robust_accuracy(run: Run, classifier: str, condition: str, source: str,
                    severity: float | None = None) -> RAResult:
    """RA of a classifier of the run under an attack or perturbation: the pool drawn from the
    run's clean predictions, the perturbed predictions through the run's cache and executor.
    NotApplicable where there is nothing to attack; CannotRun when the classifier fails."""
    from .. import progress
    from ..engine import ClassifierFault
    from ..errors import CannotRun, NotApplicable
    from ..text import printable

    s = run.settings
    rs = s.robustness
    cs = run.classifier_state(classifier)
    records = run.records()
    n_eligible = len(eligible(run.table(classifier), cs.covered, source))
    if rs.mode == "paper":  # the reference code's pool order and random.sample draw
        rows, exact = paper_pool(run.table(classifier), cs.covered, source, classifier,
                                 {i: r.archive_key for i, r in records.items()})
        drawn, pool_draw = paper_draw, (POOL_PAPER if exact else POOL_PAPER_LOAD_ORDER)
    else:
        rows = pool(run.table(classifier), cs.covered, source)
        drawn, pool_draw = draw, POOL_SEEDED
    if not rows:
        raise NotApplicable(f"no correctly classified images of covered categories in {source}: "
                            "the robustness pool is empty")
    rows = [r | {"hash": records[r["id"]].content_hash} for r in rows]
    samples = {seed: drawn(rows, rs.pool_size, seed) for seed in rs.seeds}
    clf = run.classifier(classifier)
    is_attack = condition in rs.attacks
    if is_attack:
        try:
            from .attacks import GRADIENT_FREE
        except ImportError as exc:
            raise CannotRun(f"the {condition} attack needs torch ({exc}): install "
                            "'pytest-unsafebench[torch]', or leave attacks out with "
                            "[tool.unsafebench.robustness] attacks = []") from exc
        if condition not in GRADIENT_FREE and not cs.supports_gradients:
            raise NotApplicable(f"not attackable: {classifier} has no gradient path (no "
                                "forward_pixels); the gradient-free attacks "
                                f"({', '.join(sorted(GRADIENT_FREE))}) test it instead")
        if (attack_spec(condition, rs, rs.seeds[0]).mode == "paper"
                and getattr(clf, "input_std", None) is None):
            raise NotApplicable(
                f"paper mode: {condition}'s eps is in {classifier}'s normalised-input units, "
                f"but {classifier} declares no input_std (the per-channel std its "
                "preprocessing divides [0, 1] pixels by); set input_std = (r, g, b) on the "
                "classifier, or use [tool.unsafebench.robustness] mode = \"pixel\"")
    cache = run.open_cache()
    try:
        with exclusive(run.folder / "locks", classifier, condition, str(severity),
                       source), progress.step(
                "robustness", f"robustness {classifier} / {condition}"
                f"{'' if severity is None else f':{severity:g}'} / {source}",
                unit="images") as bar:
            if is_attack:
                result = attack_ra(clf, samples, records, condition, rs, cache, s.batch_size,
                                   progress=bar.update, timeout=s.timeout)
            else:
                with run.executor():
                    result = perturbation_ra(
                        clf, samples, records, condition,
                        severity if severity is not None else EVASION_STRENGTH,
                        cache, s.batch_size, s.max_image_pixels, timeout=s.timeout,
                        progress=bar.update)
    except ClassifierFault as exc:  # the classifier's own error: this test's, in one line
        fault: str | None = f"{classifier} failed {exc}"
    else:
        fault = None
    finally:
        cache.close()
    if fault is not None:  # outside the except: no chained traceback with raw text
        raise CannotRun(printable(fault))
    result.pool_size, result.eligible, result.pool_draw = len(rows), n_eligible, pool_draw
    return result


def _guarded(forward: Callable[[Any], Any], timeout: float | None,
             what: str) -> Callable[[Any], Any]:
    """``forward`` with each call held to ``timeout`` seconds and what it raises contained, as
    the prediction pass holds ``predict`` (engine.Guard): a hang or any error of the model's
    is a ClassifierFault saying ``what``, which fails this test only. The call may run in
    another thread, so it gets the caller's grad mode (thread-local)."""
    import torch

    from ..engine import ClassifierFault, Guard, describe

    def call(x: Any) -> Any:
        enabled = torch.is_grad_enabled()

        def run() -> Any:
            with torch.set_grad_enabled(enabled):
                return forward(x)
        try:
            return Guard(timeout)(run)
        except Exception as exc:  # the model's code: its error, whatever it raised
            fault = ClassifierFault(f"{what}: {describe(exc)}")
        raise fault  # outside the except: no chained traceback of the model's frames
    return call


# Classifiers whose attacked model paper mode reproduces (the wrappers of UnsafeBench
# classifiers.py); judges and any other model are attacked in paper units with our own loss.
PAPER_ATTACKED = frozenset({"q16", "multiheaded", "sd_filter", "nsfw_detector", "nudenet_v2"})
UNITS_PAPER = "paper units"
UNITS_PROJECT_LOSS = "paper units, project loss"


def paper_setup(clf: Classifier, forward: Callable[[Any], Any],
                name: str) -> tuple[Callable[[Any], Any], Any, str]:
    """(the model the attack sees, the clipping box in pixels, the units note) in paper mode.

    As assess_robustness.py: foolbox attacked each wrapper's softmax outputs as if they were
    logits (a classifier's ``paper_forward_pixels`` where its wrapper differs from the softmax
    of our logits, e.g. SD_Filter's un-rounded margin), within bounds (-3, 3) in normalised
    space (a classifier's ``paper_bounds``, NudeNet's (-1, 1)), mapped to pixels with its
    ``input_mean`` / ``input_std``. A classifier without ``input_mean`` keeps the [0, 1] box
    (its key says so). Judges, other models and the attacks the paper did not run are
    "paper units, project loss": the units are the paper's, the model and loss are ours.
    """
    import torch

    from ..report.paper import RA_ATTACKS
    from .attacks import PAPER_BOUNDS, paper_box

    paper_model = getattr(clf, "paper_forward_pixels", None)
    if paper_model is not None:
        attacked = paper_model
    else:
        def attacked(x: torch.Tensor) -> torch.Tensor:
            out = forward(x)
            out = out if isinstance(out, torch.Tensor) else torch.as_tensor(out)
            return torch.softmax(out.float(), dim=1)
    mean, std = getattr(clf, "input_mean", None), getattr(clf, "input_std", None)
    box = (None if mean is None or std is None
           else paper_box(mean, std, getattr(clf, "paper_bounds", PAPER_BOUNDS)))
    exact = clf.name in PAPER_ATTACKED and name in RA_ATTACKS
    return attacked, box, UNITS_PAPER if exact else UNITS_PROJECT_LOSS


def _box_tag(box: Any) -> str:
    if box is None:
        return "01"
    return "(" + ",".join(f"{v:.6g}" for side in box for v in side) + ")"


def _as_tensor(pixels: Any) -> Any:
    """A classifier's ``attack_input`` (3 x H x W floats in [0, 1], numpy or torch) as a tensor."""
    import torch

    return pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(pixels)


def _distinct(samples: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return list({r["hash"]: r for rows in samples.values() for r in rows}.values())


def _summary(per_seed: dict[int, float], samples: dict[int, list[dict[str, Any]]],
             spec: str, keys: list[str], correct: list[bool]) -> RAResult:
    values = [v for v in per_seed.values() if v == v]
    first = next(iter(samples.values()), [])
    return RAResult(ra=sum(values) / len(values) if values else float("nan"), per_seed=per_seed,
                    sample_size=len(first), spec=spec, conditions=keys, correct=correct)


def _crop_tensor(image: Image, size: int) -> Any:
    """Shortest side to ``size`` (bicubic), centre crop: the model's input, as [0, 1] CHW."""
    import numpy as np
    import torch
    from PIL import Image as PILImage

    w, h = image.size
    scale = size / min(w, h)
    resized = image.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                           PILImage.Resampling.BICUBIC)
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    crop = resized.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _to_images(x: Any) -> list[Image]:
    import numpy as np
    from PIL import Image as PILImage

    arr = (x.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [PILImage.fromarray(a, "RGB") for a in arr]

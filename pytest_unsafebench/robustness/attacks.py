"""Adversarial perturbations for the robustness tests (the paper's: UnsafeBench's
assess_robustness.py).

One entry point, :func:`run_attack`, runs an :class:`AttackSpec` against a ``forward`` callable:
an N x 3 x H x W float tensor in [0, 1] in, class scores (N, K) out, in the plugin's order
[safe, unsafe] for K = 2 (a classifier's ``forward_pixels``). All attacks are untargeted with
respect to the true label ``y``; ``success`` means the prediction on the returned image is not
``y`` (so an image that is already misclassified counts as a success with no perturbation;
the robustness pool holds only correctly classified images, as UnsafeBench's unsafe_datasets.py
``random_draw_testing_adv_samples`` draws it).

Attacks
-------
* ``gaussian``: N(0, I) noise rescaled to an L2 norm of exactly ``eps`` per image (not an
  L-inf bound: the paper's "Gaussian noise scaled to L2 = eps"), then clipped to [0, 1].
* ``fgsm``: one step of ``eps * sign(grad CE)``.
* ``pgd``: L-inf PGD (Madry et al.) on the cross-entropy of the logits, optional uniform random
  start, projection onto the eps ball and [0, 1] after every step, no early stopping.
* ``deepfool``: the L-inf DeepFool variant as in foolbox 3 (linearise ``logit_k - logit_y`` for
  the top ``candidates - 1`` other classes, step to the nearest boundary with ``overshoot``,
  stop per sample once it is misclassified, at most ``steps`` iterations). DeepFool is a
  minimal-perturbation attack; like foolbox with ``epsilons=`` we then project its result onto
  the eps ball and [0, 1] and report success on the projected image only.
* ``square``: the L-inf Square Attack (Andriushchenko et al., ECCV 2020), margin loss, random
  search with the paper's p schedule; forward calls only.
* ``spsa``: SPSA (Uesato et al., ICML 2018): finite-difference gradient estimates with Rademacher
  directions, Adam on the margin loss, projection after every step; forward calls only.

The black-box attacks (square, spsa) call ``forward`` under ``torch.no_grad`` and accept numpy
or torch outputs, so an ONNX classifier can be attacked through a wrapper that converts its
unsafe probability p into logits with :func:`logits_from_scores` (``[log(1 - p), log p]``).

Units and the paper's caveats
-----------------------------
``mode="pixel"`` (ours): ``eps`` bounds the L-inf distance in [0, 1] pixel space (L2 for
gaussian), with the model's resizing and normalisation inside ``forward``; we attack logits.

``mode="paper"``: the paper (foolbox 3.1.1, UnsafeBench assess_robustness.py) attacked each
model in its *normalised* input space, bounds (-3, 3), with its wrappers' softmax outputs fed to
foolbox as if they were logits, and judged success by the classifier's own decision on the
result. Paper mode keeps its units: ``eps`` (and PGD's step size, SPSA's rates) are in
normalised-input units and are converted per channel into pixel units with the model's
normalisation std (``pixel_eps_c = eps * std_c``; eps 0.01 is about 0.7/255 for CLIP's std),
which ``run_attack`` needs as ``pixel_std`` (a classifier declares it as ``input_std``). The
caller passes the model as the paper wrapped it as ``forward`` (robustness.attack_ra: the
softmax outputs), the paper's box as ``box`` (:func:`paper_box`) and the classifier's own
outputs as ``decide``.

Guarantees: every returned image is within its per-channel L-inf bound (``eps_pixel``) of the
input up to float rounding (1e-6) and inside the box ([0, 1] unless ``box`` says otherwise);
gaussian noise also has L2 <= eps (in the
mode's units). All randomness comes from a CPU ``torch.Generator`` seeded with ``spec.seed``
(never the global RNG), so results are the same on every device for the same inputs and batch.
The model's mode (``eval()``) is the caller's business; gradients are taken with
``torch.autograd.grad`` with respect to the input only, so no ``.grad`` is left on parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..options import DEFAULT_SEED
from .registries import ATTACKS

__all__ = [
    "ATTACKS", "AttackResult", "AttackSpec", "MODES", "logits_from_scores", "paper_box",
    "paper_spec", "run_attack",
]

MODES: tuple[str, ...] = ("pixel", "paper")
GRADIENT_FREE = frozenset({"gaussian", "square", "spsa"})  # run on models without gradients

PAPER_EPS = 0.01  # the paper's eps, in each model's normalised input units
SQUARE_P_INIT = 0.05  # Square Attack's initial fraction of pixels per square (its L-inf default)
SPSA_DELTA = 0.01  # SPSA finite-difference step (Uesato et al.), in the mode's units
_ADAM_BETAS = (0.9, 0.999)

Forward = Callable[[torch.Tensor], Any]  # tensor in, (N, K) scores out (torch or numpy)
Box = tuple[torch.Tensor, torch.Tensor]  # per-channel (low, high) pixel bounds, (1, 3, 1, 1)
PAPER_BOUNDS = (-3.0, 3.0)  # foolbox's bounds in normalised space (assess_robustness.py)

# Parameters that each attack reads, in canonical order, with their short keys in the string.
_PARAMS: dict[str, tuple[str, ...]] = {
    "gaussian": (),
    "fgsm": (),
    "pgd": ("steps", "step_size", "random_start"),
    "deepfool": ("steps", "overshoot", "candidates"),
    "square": ("queries",),
    "spsa": ("queries", "step_size", "samples"),
}
_KEYS: dict[str, str] = {"steps": "steps", "step_size": "ss", "random_start": "rs",
                         "overshoot": "os", "candidates": "cand", "queries": "q",
                         "samples": "n", "seed": "seed", "eps": "eps"}
_FIELD_OF_KEY = {v: k for k, v in _KEYS.items()}
_INT_FIELDS = frozenset({"steps", "candidates", "queries", "samples", "seed"})
_FLOAT_FIELDS = frozenset({"eps", "step_size", "overshoot"})


def _fmt_float(v: float) -> str:
    # repr is Python's shortest round-tripping form: canonical and exact (8/255 stays 8/255).
    return repr(float(v) + 0.0)  # + 0.0 turns -0.0 into 0.0


@dataclass(frozen=True)
class AttackSpec:
    """One attack condition; ``str(spec)`` is its canonical cache key, :meth:`parse` the inverse.

    Fields left at ``None`` are resolved to the attack's defaults on construction, so two
    specs that run the same attack compare (and print) equal. Setting a field the attack does
    not use is an error (it would silently do nothing). Defaults:

    * pgd: ``steps=10``, ``step_size = 2.5 * eps / steps`` (eps/4 at 10 steps) in pixel mode or
      ``eps / 30`` in paper mode (foolbox's default relative step), ``random_start=True``;
    * deepfool: ``steps=50``, ``overshoot=0.02``, ``candidates=2``;
    * square: ``queries=1000``; spsa: ``queries=1000``, ``step_size=0.01`` (Adam's learning
      rate), ``samples=8`` (Rademacher directions per step, 2 queries each);
    * ``seed=2023``, ``mode="pixel"``.

    ``eps`` is the L-inf bound for every attack but ``gaussian``, where it is the L2 norm of
    the noise (the paper's definition); both are in pixel units ([0, 1]) in ``pixel`` mode and
    in the model's normalised-input units in ``paper`` mode (see the module docstring).
    """

    name: str
    eps: float
    steps: int | None = None
    step_size: float | None = None
    random_start: bool | None = None
    overshoot: float | None = None
    candidates: int | None = None
    queries: int | None = None
    samples: int | None = None
    seed: int = DEFAULT_SEED
    mode: Literal["pixel", "paper"] = "pixel"

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise ValueError(f"unknown attack {self.name!r}; expected one of {', '.join(ATTACKS)}")
        if self.mode not in MODES:
            raise ValueError(f"attack mode {self.mode!r}: expected 'pixel' or 'paper'")
        uses = _PARAMS[self.name]
        for f in ("steps", "step_size", "random_start", "overshoot", "candidates", "queries",
                  "samples"):
            if f not in uses and getattr(self, f) is not None:
                raise ValueError(f"{self.name} does not use {f} (got {getattr(self, f)!r}); "
                                 f"its parameters are: {', '.join(uses) or 'eps only'}")
        eps = _check_float("eps", self.eps)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        if self.mode == "pixel" and self.name != "gaussian" and eps > 1:
            raise ValueError(f"eps {eps!r} is an L-inf bound in [0, 1] pixel units: must be <= 1")
        self._set("eps", eps)
        self._set("seed", _check_int("seed", self.seed, minimum=0))
        defaults: dict[str, Any] = {}
        if self.name == "pgd":
            steps = _check_int("steps", 10 if self.steps is None else self.steps, minimum=1)
            rel = (2.5 / steps) if self.mode == "pixel" else (0.01 / 0.3)
            defaults = {"steps": steps, "step_size": eps * rel, "random_start": True}
        elif self.name == "deepfool":
            defaults = {"steps": 50, "overshoot": 0.02, "candidates": 2}
        elif self.name == "square":
            defaults = {"queries": 1000}
        elif self.name == "spsa":
            defaults = {"queries": 1000, "step_size": 0.01, "samples": 8}
        for f, default in defaults.items():
            value = getattr(self, f)
            value = default if value is None else value
            if f in _INT_FIELDS:
                value = _check_int(f, value, minimum=1)
            elif f in _FLOAT_FIELDS:
                value = _check_float(f, value)
                if value < 0:
                    raise ValueError(f"{f} must be >= 0, got {value!r}")
            elif not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{f} must be a bool, got {value!r}")
            else:
                value = bool(value)
            self._set(f, value)
        if self.name == "deepfool" and self.candidates is not None and self.candidates < 2:
            raise ValueError(f"deepfool needs candidates >= 2 (the label and one other class), "
                             f"got {self.candidates}")
        if self.name == "square" and self.queries is not None and self.queries < 2:
            raise ValueError("square needs queries >= 2 (the clean check and the initialisation)")
        if self.name == "spsa" and self.queries is not None and self.samples is not None:
            need = 2 * self.samples + 2
            if self.queries < need:
                raise ValueError(f"spsa with samples={self.samples} needs queries >= {need} "
                                 "(the clean check, then 2 * samples + 1 per step)")

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: resolution happens only here

    @property
    def bound(self) -> Literal["linf", "l2"]:
        """The norm that ``eps`` bounds."""
        return "l2" if self.name == "gaussian" else "linf"

    def __str__(self) -> str:
        parts = [self.name, f"eps={_fmt_float(self.eps)}"]
        for f in _PARAMS[self.name]:
            v = getattr(self, f)
            text = (str(int(v)) if f == "random_start" else
                    _fmt_float(v) if f in _FLOAT_FIELDS else str(v))
            parts.append(f"{_KEYS[f]}={text}")
        parts += [f"seed={self.seed}", self.mode]
        return ":".join(parts)

    @classmethod
    def parse(cls, text: str) -> AttackSpec:
        """``name:eps=E[:key=value...][:seed=S][:pixel|paper]`` -> a spec.

        Keys: steps, ss (step size), rs (random start, 0/1), os (overshoot), cand
        (candidates), q (queries), n (SPSA samples), seed. Floats may be written as fractions
        (``eps=8/255``). Order does not matter here; ``str()`` writes the canonical order.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"attack spec must be a non-empty string, got {text!r}")
        parts = text.strip().split(":")
        name = parts[0].strip()
        if name not in ATTACKS:
            raise ValueError(f"attack spec {text!r}: unknown attack {name!r}; expected one of "
                             f"{', '.join(ATTACKS)}")
        kwargs: dict[str, Any] = {}
        mode: str | None = None
        for part in parts[1:]:
            part = part.strip()
            if "=" not in part:
                if part not in MODES:
                    raise ValueError(f"attack spec {text!r}: {part!r} is neither key=value nor "
                                     "a mode (pixel, paper)")
                if mode is not None:
                    raise ValueError(f"attack spec {text!r}: mode given twice")
                mode = part
                continue
            key, _, raw = part.partition("=")
            field = _FIELD_OF_KEY.get(key.strip())
            if field is None:
                raise ValueError(f"attack spec {text!r}: unknown key {key!r}; known keys: "
                                 f"{', '.join(_KEYS.values())}")
            if field in kwargs:
                raise ValueError(f"attack spec {text!r}: {key!r} given twice")
            try:
                kwargs[field] = _parse_value(field, raw.strip())
            except ValueError as exc:
                raise ValueError(f"attack spec {text!r}: bad value for {key!r}: {exc}") from None
        if "eps" not in kwargs:
            raise ValueError(f"attack spec {text!r}: eps=... is required")
        try:
            return cls(name=name, mode=mode or "pixel", **kwargs)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"attack spec {text!r}: {exc}") from None


def _parse_value(field: str, raw: str) -> Any:
    if field == "random_start":
        if raw.lower() in ("1", "true", "yes"):
            return True
        if raw.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"{raw!r} is not 0 or 1")
    if field in _INT_FIELDS:
        return int(raw)
    if "/" in raw:  # 8/255: exact rational, then one rounding to float
        try:
            return float(Fraction(raw))
        except ZeroDivisionError:
            raise ValueError(f"{field} = {raw!r} divides by zero") from None
    return float(raw)


def _check_float(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number, got {v!r}")
    number = float(v)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number!r}")
    return number + 0.0


def _check_int(name: str, v: Any, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


def paper_spec(name: str, seed: int = DEFAULT_SEED) -> AttackSpec:
    """The paper's setting for ``name`` (foolbox 3.1.1, eps 0.01 in normalised units).

    gaussian: L2 = eps; fgsm: one step; pgd: 100 steps of eps/30 (foolbox's default relative
    step) from a random start; deepfool: 100 steps, 2 candidates, overshoot 0.02. The paper ran
    no black-box attack, so square and spsa have no paper setting.
    """
    if name == "gaussian":
        return AttackSpec("gaussian", PAPER_EPS, seed=seed, mode="paper")
    if name == "fgsm":
        return AttackSpec("fgsm", PAPER_EPS, seed=seed, mode="paper")
    if name == "pgd":
        return AttackSpec("pgd", PAPER_EPS, steps=100, step_size=PAPER_EPS / 30,
                          random_start=True, seed=seed, mode="paper")
    if name == "deepfool":
        return AttackSpec("deepfool", PAPER_EPS, steps=100, overshoot=0.02, candidates=2,
                          seed=seed, mode="paper")
    if name in ATTACKS:
        raise ValueError(f"the paper ran no {name} attack; use AttackSpec({name!r}, eps, ...)")
    raise ValueError(f"unknown attack {name!r}; expected one of {', '.join(ATTACKS)}")


@dataclass
class AttackResult:
    """The outcome for a batch; per-sample tensors are on the input's device.

    ``linf``/``l2`` are the realised distances in pixel units; ``eps_pixel`` the per-channel
    L-inf bound in pixel units that every image satisfies (for gaussian the noise's L2 norm
    bound, which implies it); ``queries`` counts the forward evaluations that included each
    sample (a forward + backward counts as one), the quantity a black-box budget limits.
    """

    spec: AttackSpec
    x_adv: torch.Tensor
    y: torch.Tensor
    pred: torch.Tensor  # argmax class on x_adv
    success: torch.Tensor  # bool: pred != y
    linf: torch.Tensor
    l2: torch.Tensor
    queries: torch.Tensor  # int64
    eps_pixel: tuple[float, float, float]

    @property
    def robust(self) -> torch.Tensor:
        """Samples that stayed correctly classified."""
        return ~self.success


def logits_from_scores(scores: Any) -> torch.Tensor:
    """Unsafe probabilities p, shape (N,) or (N, 1), -> (N, 2) logits ``[log(1-p), log p]``.

    For classifiers that only expose scores (ONNX): softmax of the result is ``[1-p, p]``.
    Computed in float64 with p clipped to [1e-12, 1 - 1e-12] so saturated scores stay finite.
    """
    p = torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor) else scores)
    p = p.detach().to(torch.float64).reshape(-1).clamp(1e-12, 1 - 1e-12)
    return torch.stack([torch.log1p(-p), torch.log(p)], dim=1).float()


# --------------------------------------------------------------------------------- running
def run_attack(forward: Forward, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec,
               pixel_std: Sequence[float] | None = None,
               box: tuple[Sequence[float], Sequence[float]] | None = None,
               decide: Forward | None = None) -> AttackResult:
    """Attack the images ``x`` (N x 3 x H x W in [0, 1]) whose true classes are ``y`` (N,).

    ``forward`` maps images to (N, K) logits; white-box attacks (fgsm, pgd, deepfool) need it
    differentiable, the others call it under ``torch.no_grad`` and accept numpy output.
    ``pixel_std`` is the model's per-channel normalisation std, required in paper mode.
    ``box`` is the per-channel (low, high) range every image is clipped to, in pixel units
    ([0, 1] when None; :func:`paper_box` gives the paper's). ``decide`` gives the outputs whose
    argmax is the classifier's own decision on the final images (``forward`` when None): the
    paper attacked its wrappers' softmax outputs and judged success by the classifier's rule.
    """
    if not isinstance(spec, AttackSpec):
        raise TypeError(f"spec must be an AttackSpec, got {type(spec).__name__}")
    x = _check_images(x)
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    y = y.to(device=x.device, dtype=torch.long).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} labels for {x.shape[0]} images")
    if y.numel() and int(y.min()) < 0:
        raise ValueError("y must hold class indices >= 0 (0 safe, 1 unsafe)")
    units = _unit_scale(spec, pixel_std)
    scale = torch.tensor(units, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    bounds = _check_box(box, x)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(spec.seed)
    queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    if spec.name not in GRADIENT_FREE and torch.is_inference_mode_enabled():
        raise RuntimeError(f"{spec.name} needs gradients: call run_attack outside "
                           "torch.inference_mode()")

    pred: torch.Tensor | None
    if x.shape[0] == 0:
        x_adv, pred = x.clone(), y.clone()
    else:
        x_adv, pred = ATTACKS[spec.name](forward, x, y, spec, scale, gen, queries, bounds)

    # Belt and braces: every attack already stays in the box, this makes it a guarantee.
    eps_pix = spec.eps * scale
    x_adv = _project(x_adv.detach(), x, eps_pix, bounds)
    if decide is not None and x.shape[0]:  # the classifier's own rule, not the attacked model
        with torch.no_grad():
            pred = _scores(decide, x_adv).argmax(1)
    elif pred is None:  # black-box attacks know their final predictions without a new query
        with torch.no_grad():
            pred = _scores(forward, x_adv).argmax(1)
        queries += 1
    delta = (x_adv - x).flatten(1)
    return AttackResult(
        spec=spec, x_adv=x_adv, y=y, pred=pred, success=pred != y,
        linf=delta.abs().amax(1) if delta.shape[1] else delta.new_zeros(len(delta)),
        l2=delta.norm(dim=1), queries=queries,
        eps_pixel=(spec.eps * units[0], spec.eps * units[1], spec.eps * units[2]),
    )


def _check_images(x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be N x 3 x H x W, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must hold floats in [0, 1], got {x.dtype}")
    # Tensors made under inference_mode cannot join an autograd graph: work on a copy.
    pixels = x.detach().clone() if x.is_inference() else x.detach()
    if pixels.numel() and (not bool(torch.isfinite(pixels).all()) or float(pixels.min()) < 0
                           or float(pixels.max()) > 1):
        raise ValueError("x must hold finite pixel values in [0, 1] (normalisation belongs "
                         "inside forward)")
    return pixels


def paper_box(mean: Sequence[float], std: Sequence[float],
              bounds: tuple[float, float] = PAPER_BOUNDS) -> tuple[tuple[float, ...], ...]:
    """The paper's clipping range in pixel units: foolbox's ``bounds`` in the model's normalised
    input space, ``pixel = mean + bound * std`` per channel ((-3, 3) for the CLIP models is
    about [-0.33, 1.29]; NudeNet v2's (-1, 1) on its unnormalised input is [-1, 1])."""
    lo, hi = bounds
    return (tuple(m + lo * s for m, s in zip(mean, std)),
            tuple(m + hi * s for m, s in zip(mean, std)))


def _check_box(box: tuple[Sequence[float], Sequence[float]] | None, x: torch.Tensor) -> Box:
    lo_v: tuple[float, ...]
    hi_v: tuple[float, ...]
    if box is None:
        lo_v, hi_v = (0.0,) * 3, (1.0,) * 3
    else:
        try:
            lo_v, hi_v = (tuple(float(v) for v in side) for side in box)
        except (TypeError, ValueError):
            lo_v = hi_v = ()
        if (len(lo_v) != 3 or len(hi_v) != 3
                or not all(math.isfinite(a) and math.isfinite(b) and a <= 0.0 and b >= 1.0
                           for a, b in zip(lo_v, hi_v))):
            raise ValueError(f"box must be (low, high) with three finite numbers each, low <= 0 "
                             f"and high >= 1 (the clean images must lie inside), got {box!r}")
    low, high = (torch.tensor(v, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
                 for v in (lo_v, hi_v))
    return low, high


def _unit_scale(spec: AttackSpec, pixel_std: Sequence[float] | None) -> tuple[float, ...]:
    """Pixel units per attack unit, per channel."""
    if spec.mode == "pixel":
        return (1.0, 1.0, 1.0)
    if pixel_std is None:
        raise ValueError(f"paper-mode attack {spec}: eps is in the model's normalised-input "
                         "units, so the classifier must declare input_std (its per-channel "
                         "normalisation std) and run_attack needs it as pixel_std")
    try:
        std = tuple(float(s) for s in pixel_std)
    except (TypeError, ValueError):
        std = ()
    if len(std) != 3 or not all(math.isfinite(s) and s > 0 for s in std):
        raise ValueError(f"pixel_std must be three positive numbers, got {pixel_std!r}")
    return std


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps_pix: torch.Tensor,
             box: Box) -> torch.Tensor:
    """Onto the per-channel L-inf ball around x, then into the box (per channel)."""
    return torch.minimum(torch.maximum(x_adv, x - eps_pix), x + eps_pix).clamp_(*box)


def _scores(forward: Forward, x: torch.Tensor) -> torch.Tensor:
    """forward's output as an (N, K) float tensor on x's device (numpy accepted)."""
    out = forward(x)
    if not isinstance(out, torch.Tensor):
        out = torch.from_numpy(np.asarray(out, dtype=np.float32))
    if out.ndim != 2 or out.shape[0] != x.shape[0] or out.shape[1] < 2:
        raise ValueError(f"forward must return (N, K >= 2) logits for N = {x.shape[0]}, got "
                         f"shape {tuple(out.shape)} (wrap scores with logits_from_scores)")
    return out.to(device=x.device).float()


def _rand(gen: torch.Generator, shape: Sequence[int], like: torch.Tensor,
          kind: str) -> torch.Tensor:
    # Drawn on the CPU generator then moved: the same numbers on every device.
    if kind == "uniform":  # U(-1, 1)
        r = torch.rand(tuple(shape), generator=gen, dtype=torch.float32) * 2 - 1
    elif kind == "normal":
        r = torch.randn(tuple(shape), generator=gen, dtype=torch.float32)
    else:  # Rademacher +-1
        r = torch.randint(0, 2, tuple(shape), generator=gen, dtype=torch.int8).float() * 2 - 1
    return r.to(device=like.device, dtype=like.dtype)


def _input_grad(forward: Forward, x_adv: torch.Tensor,
                objective: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """d objective(logits).sum() / d x, without touching parameter .grad fields."""
    with torch.enable_grad():
        xa, logits = _logits_with_grad(forward, x_adv)
        (g,) = torch.autograd.grad(objective(logits).sum(), xa)
    return g


def _logits_with_grad(forward: Forward, x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A leaf copy of ``x_adv`` that requires grad, and the logits on it (under enable_grad)."""
    xa = x_adv.detach().requires_grad_(True)
    logits = _scores(forward, xa)
    if not logits.requires_grad:
        raise ValueError("forward returned logits without a gradient path to its input; "
                         "use a gradient-free attack (gaussian, square, spsa)")
    return xa, logits


# The attacks, registered by name in registries.ATTACKS: each takes (forward, x, y, spec, scale,
# gen, queries, box), counts its forward calls in ``queries``, and returns the adversarial
# images and, for the black-box attacks that know them without a new query, the predictions.
Attacked = tuple[torch.Tensor, torch.Tensor | None]


def gaussian(forward: Forward, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec,
             scale: torch.Tensor, gen: torch.Generator, queries: torch.Tensor,
             box: Box) -> Attacked:
    noise = _rand(gen, x.shape, x, "normal")
    norms = noise.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    # L2 = eps in the mode's units: in paper mode the noise lives in normalised space.
    return (x + noise * (spec.eps / norms) * scale).clamp_(*box), None


def _ce(y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda logits: F.cross_entropy(logits, y, reduction="none")


def fgsm(forward: Forward, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec,
         scale: torch.Tensor, gen: torch.Generator, queries: torch.Tensor, box: Box) -> Attacked:
    g = _input_grad(forward, x, _ce(y))
    queries += 1
    return _project(x + spec.eps * scale * g.sign(), x, spec.eps * scale, box), None


def pgd(forward: Forward, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec,
        scale: torch.Tensor, gen: torch.Generator, queries: torch.Tensor, box: Box) -> Attacked:
    assert spec.steps is not None and spec.step_size is not None
    eps_pix = spec.eps * scale
    step = spec.step_size * scale
    lo, hi = torch.maximum(x - eps_pix, box[0]), torch.minimum(x + eps_pix, box[1])
    if spec.random_start:
        x_adv = (x + _rand(gen, x.shape, x, "uniform") * eps_pix).clamp_(lo, hi)
    else:
        x_adv = x.clone()
    objective = _ce(y)
    for _ in range(spec.steps):
        g = _input_grad(forward, x_adv, objective)
        # Ball and box intersect in one box, so a single in-place clamp is the projection.
        x_adv.add_(g.sign_().mul_(step)).clamp_(lo, hi)
    queries += spec.steps
    return x_adv, None


def deepfool(forward: Forward, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec,
             scale: torch.Tensor, gen: torch.Generator, queries: torch.Tensor,
             box: Box) -> Attacked:
    assert spec.steps is not None and spec.overshoot is not None and spec.candidates is not None
    with torch.no_grad():
        logits0 = _scores(forward, x)
    queries += 1
    k = logits0.shape[1]
    n_cand = min(spec.candidates, k) - 1
    # The label is the reference class; candidates are the likeliest other classes.
    others = logits0.scatter(1, y[:, None], float("-inf"))
    cand = others.argsort(dim=1, descending=True)[:, :n_cand]
    x_adv = x.clone()
    p_total = torch.zeros_like(x)
    active = logits0.argmax(1) == y
    for _ in range(spec.steps):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa_sub, y_sub, c_sub = x_adv[idx], y[idx], cand[idx]
        with torch.enable_grad():
            xa, logits = _logits_with_grad(forward, xa_sub)
            queries[idx] += 1
            flipped = logits.detach().argmax(1) != y_sub
            ly = logits.gather(1, y_sub[:, None]).squeeze(1)
            best_dist = best_g = None
            for j in range(n_cand):
                f = logits.gather(1, c_sub[:, j:j + 1]).squeeze(1) - ly  # < 0 until flipped
                (g,) = torch.autograd.grad(f.sum(), xa, retain_graph=j < n_cand - 1)
                # L-inf DeepFool: distance to the linearised boundary is |f| / ||grad||_1,
                # measured in the mode's units (paper mode: normalised space, grad * std).
                dist = f.detach().abs() / ((g * scale).abs().flatten(1).sum(1) + 1e-8)
                if best_dist is None or best_g is None:  # the first candidate (both unset)
                    best_dist, best_g = dist, g
                else:
                    better = dist < best_dist
                    best_dist = torch.where(better, dist, best_dist)
                    best_g = torch.where(better.view(-1, 1, 1, 1), g, best_g)
        assert best_dist is not None and best_g is not None
        still = ~flipped  # samples flipped by the previous step stay where they are
        p_step = (best_dist + 1e-4).view(-1, 1, 1, 1) * scale * best_g.sign()
        upd = idx[still]
        p_total[upd] += p_step[still]
        x_adv[upd] = (x[upd] + (1.0 + spec.overshoot) * p_total[upd]).clamp_(*box)
        active[idx[flipped]] = False
    return x_adv, None


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logit_y - max_{k != y} logit_k: > 0 while correctly classified."""
    ly = logits.gather(1, y[:, None]).squeeze(1)
    return ly - logits.scatter(1, y[:, None], float("-inf")).amax(1)


def _p_selection(it: int, n_iters: int) -> float:
    """Square Attack's schedule for the square's share of pixels (rescaled to 10k queries)."""
    i = int(it / max(n_iters, 1) * 10000)
    halvings = sum(i > t for t in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return float(SQUARE_P_INIT / 2 ** halvings)  # (int ** int is typed Any)


def square(forward: Forward, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec,
           scale: torch.Tensor, gen: torch.Generator, queries: torch.Tensor,
           box: Box) -> Attacked:
    assert spec.queries is not None
    _, c, h, w = x.shape
    eps_pix = spec.eps * scale
    with torch.no_grad():
        logits = _scores(forward, x)
        queries += 1
        pred = logits.argmax(1)
        margin = _margin(logits, y)
        x_best = x.clone()
        todo = (pred == y).nonzero().squeeze(1)  # already misclassified: nothing to do
        if spec.eps == 0:  # nothing can move: spend no queries
            return x_best, pred
        if todo.numel():
            # Initialisation: vertical stripes of +-eps (the paper's L-inf init).
            stripes = _rand(gen, (todo.numel(), c, 1, w), x, "rademacher")
            x_init = (x[todo] + stripes * eps_pix).clamp_(*box)
            lg = _scores(forward, x_init)
            queries[todo] += 1
            x_best[todo], margin[todo], pred[todo] = x_init, _margin(lg, y[todo]), lg.argmax(1)
        n_iters = spec.queries - 2
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        for it in range(n_iters):
            idx = (pred == y).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            m = idx.numel()
            side = int(round(math.sqrt(_p_selection(it, n_iters) * h * w)))
            side = max(1, min(side, h - 1, w - 1)) if min(h, w) > 1 else 1
            top = torch.randint(0, h - side + 1, (m,), generator=gen).to(x.device)
            left = torch.randint(0, w - side + 1, (m,), generator=gen).to(x.device)
            mask = (((rows[None] >= top[:, None]) & (rows[None] < top[:, None] + side))[:, :, None]
                    & ((cols[None] >= left[:, None]) & (cols[None] < left[:, None] + side))
                    [:, None, :])[:, None]  # (m, 1, h, w)
            xc, xb = x[idx], x_best[idx]
            delta = xb - xc
            x_new = xb
            redo = torch.ones(m, dtype=torch.bool, device=x.device)
            # Resample the window's signs while they would not change the image (as the
            # reference code does), a bounded number of times: eps = 0 never changes it.
            for _ in range(10):
                signs = _rand(gen, (m, c, 1, 1), x, "rademacher")
                cand = (xc + torch.where(mask, signs * eps_pix, delta)).clamp_(*box)
                x_new = torch.where(redo.view(-1, 1, 1, 1), cand, x_new)
                redo = ((x_new - xb).abs() * mask).flatten(1).amax(1) < 1e-7
                if not bool(redo.any()):
                    break
            lg = _scores(forward, x_new)
            queries[idx] += 1
            m_new = _margin(lg, y[idx])
            better = m_new < margin[idx]
            if bool(better.any()):
                up = idx[better]
                x_best[up], margin[up], pred[up] = x_new[better], m_new[better], lg.argmax(1)[
                    better]
    return x_best, pred


def spsa(forward: Forward, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec,
         scale: torch.Tensor, gen: torch.Generator, queries: torch.Tensor,
         box: Box) -> Attacked:
    assert spec.queries is not None and spec.samples is not None and spec.step_size is not None
    eps_pix = spec.eps * scale
    d_pix = SPSA_DELTA * scale
    lr_pix = spec.step_size * scale
    b1, b2 = _ADAM_BETAS
    with torch.no_grad():
        pred = _scores(forward, x).argmax(1)
        queries += 1
        x_adv = x.clone()
        m1 = torch.zeros_like(x)
        m2 = torch.zeros_like(x)
        n_iters = (spec.queries - 1) // (2 * spec.samples + 1)
        for t in range(1, n_iters + 1):
            idx = (pred == y).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            m = idx.numel()
            xa, ya = x_adv[idx], y[idx]
            grad = torch.zeros_like(xa)
            # Directions in chunks so that one forward sees at most ~256 images.
            per = max(1, min(spec.samples, 128 // m))
            done = 0
            while done < spec.samples:
                k = min(per, spec.samples - done)
                v = _rand(gen, (k, m) + tuple(x.shape[1:]), x, "rademacher")
                # Both sides clipped to the box: forward's contract is pixel images.
                plus = (xa[None] + d_pix * v).clamp_(*box).flatten(0, 1)
                minus = (xa[None] - d_pix * v).clamp_(*box).flatten(0, 1)
                lg = _scores(forward, torch.cat([plus, minus]))
                marg = _margin(lg, ya.repeat(2 * k)).view(2, k, m)
                # Directional differences in the mode's units (divide by SPSA_DELTA).
                diff = (marg[0] - marg[1]) / (2 * SPSA_DELTA)
                grad += (diff.view(k, m, 1, 1, 1) * v).sum(0)
                done += k
            queries[idx] += 2 * spec.samples
            grad /= spec.samples
            # Adam on the margin (descending it flips the prediction), bias-corrected.
            m1[idx] = b1 * m1[idx] + (1 - b1) * grad
            m2[idx] = b2 * m2[idx] + (1 - b2) * grad * grad
            mhat = m1[idx] / (1 - b1 ** t)
            vhat = m2[idx] / (1 - b2 ** t)
            new = _project(xa - lr_pix * mhat / (vhat.sqrt() + 1e-8), x[idx], eps_pix, box)
            lg = _scores(forward, new)
            queries[idx] += 1
            x_adv[idx] = new
            pred[idx] = lg.argmax(1)
    return x_adv, pred

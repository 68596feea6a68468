"""The perturbation and attack registries: every name, in registry order (the order of test ids
and of fuzz shrinking), and where its code lives.

A perturbation is a :class:`Perturbation` record (its kind, perceptual budget and pixel version,
which checks and the fuzzer read) that names its function as ``module:function``, imported on
first use; an attack is its ``module:function`` until looked up. Importing this module imports
neither numpy, Pillow, OpenCV nor torch, so the configuration checks names with it before
anything heavy loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..registry import Registry, load_target

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image

KINDS: tuple[str, ...] = ("corruption", "evasion")
LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)

Kind = Literal["corruption", "evasion"]
Severity = int | float
# The generator is None for entries that are not ``random``: seeding one costs more than
# some colour corruptions do.
PerturbFn = Callable[["Image", float, "np.random.Generator | None"], "Image"]


@dataclass(frozen=True)
class Perturbation:
    """A registry entry: what the perturbation is, how strong it may get, where its code is."""

    name: str
    kind: Kind
    description: str
    target: str                     # "module:function", see fn
    random: bool                    # draws from rng: the seed and the key change its output
    max_fuzz_severity: Severity     # perceptual budget for fuzzing (perturbations' docstring)
    levels: tuple[int, ...] = LEVELS
    version: int = 1                # of its pixels: bumped whenever its output changes

    @property
    def fn(self) -> PerturbFn:
        """(RGB image, severity, rng) -> RGB image of the same size; imported on first use."""
        fn: PerturbFn = load_target(self.target)
        return fn


_PERTURBATIONS = "pytest_unsafebench.robustness.perturbations"


def _entry(name: str, kind: Kind, description: str, random: bool, budget: Severity,
           version: int = 1) -> tuple[str, Perturbation]:
    return name, Perturbation(name, kind, description, f"{_PERTURBATIONS}:{name}", random,
                              budget, version=version)


PERTURBATIONS: Registry[Perturbation] = Registry(dict([
    _entry("gaussian_noise", "corruption", "additive Gaussian noise (ImageNet-C)", True, 3),
    _entry("shot_noise", "corruption", "Poisson photon noise (ImageNet-C)", True, 3),
    _entry("impulse_noise", "corruption", "salt-and-pepper noise (ImageNet-C)", True, 2),
    _entry("gaussian_blur", "corruption", "Gaussian blur (ImageNet-C)", False, 2, version=2),
    _entry("motion_blur", "corruption", "one-sided motion trail at a random angle (ImageNet-C)",
           True, 2),
    _entry("brightness", "corruption", "HSV value raised (ImageNet-C)", False, 3, version=2),
    _entry("contrast", "corruption", "contrast reduced around channel means (ImageNet-C)",
           False, 2, version=2),
    _entry("saturate", "corruption", "HSV saturation scaled (ImageNet-C extra corruption)",
           False, 3, version=2),
    _entry("pixelate", "corruption", "box downsample and upsample (ImageNet-C)", False, 3,
           version=2),
    _entry("jpeg_compression", "corruption", "JPEG re-encoding at low quality (ImageNet-C)",
           False, 3),
    _entry("resize", "corruption", "bilinear downscale and upscale back", False, 3, version=2),
    _entry("crop_pad", "corruption", "borders cropped and padded back with black", True, 3),
    _entry("rotate", "corruption", "rotation about the centre, black corners", True, 3,
           version=2),
    _entry("text_overlay", "evasion", "lines of caption text drawn over the picture", True, 3),
    _entry("emoji_sticker", "evasion", "smiley stickers pasted over the middle", True, 2),
    _entry("meme_caption", "evasion", "picture shrunk into a white meme frame with captions",
           True, 5),
    _entry("screenshot_border", "evasion", "picture inside a phone screenshot of a post", True,
           5),
    _entry("grid_collage", "evasion", "picture as one tile of an n x n collage of benign tiles",
           True, 3),
]))


def perturbation_names(kind: str | None = None) -> list[str]:
    """Registered perturbation names (registry order), optionally of one kind."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown perturbation kind {kind!r}; expected one of {', '.join(KINDS)}")
    return [n for n, p in PERTURBATIONS.items() if kind is None or p.kind == kind]


# Each attack is a function of robustness.attacks (see run_attack): (forward, x, y, spec,
# scale, generator, queries, box) -> (adversarial images, final predictions or None).
_ATTACKS = "pytest_unsafebench.robustness.attacks"
ATTACKS: Registry[Callable[..., Any]] = Registry({
    name: f"{_ATTACKS}:{name}" for name in ("gaussian", "fgsm", "pgd", "deepfool", "square", "spsa")
})

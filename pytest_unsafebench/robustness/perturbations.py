"""Deterministic image perturbations for the robustness suite: common corruptions and evasions.

numpy, Pillow and OpenCV (opencv-python-headless; no torch, no ImageMagick). OpenCV does the
filters, warps and colour maths where Pillow and numpy are several times slower, and loads on the
first perturbation that needs it; the plugin imports this module only when a robustness or fuzz
run is requested.

Condition strings
-----------------
A :class:`PerturbationSpec` prints as ``name:severity:s<seed>``, e.g. ``gaussian_noise:3:s2023``
or ``text_overlay:2.5:s2024``; a :class:`Chain` joins its steps with ``+``, e.g.
``jpeg_compression:2:s2023+rotate:1:s2023``. The string is the label in reports and, with the
pixel version of each step's perturbation appended once past 1 (:func:`cache_key`, e.g.
``rotate:1:s2023@v2``), the prediction cache's *condition* key, so it is canonical: severities
print as integers when integral (``3.0`` -> ``3``) and otherwise as the shortest repr of the
value rounded to 4 decimals; the seed is always written. ``parse`` is the inverse (it also
accepts ``name:severity`` with the default seed). A one-step chain prints exactly like its
spec, and :func:`apply` gives both the same pixels.

Determinism
-----------
All randomness comes from ``numpy.random.default_rng`` seeded with the sha256 of
``(name, seed, key, position in the chain)``, never from global state: the same condition on
the same image and key always gives identical pixels, and ``key`` (the image's content hash)
gives each image its own noise. The severity is left out of the hash on purpose (common random
numbers): severities 1-5 of one image reuse the same noise field, angle or layout, so a
severity sweep is monotone per image instead of re-rolling the dice at every level. (It changes
nothing else: the condition string still holds the severity.)

Severities
----------
*Corruptions* take integer severities 1-5. Where the corruption is in ImageNet-C
(Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019, https://github.com/hendrycks/robustness) its severity table is
copied from the reference code (``make_imagenet_c.py``; ``saturate`` is one of the paper's
extra validation corruptions). ImageNet-C's spatial constants (blur sigma, motion-blur length,
pixelate size) are in pixels of a 224 x 224 image; classifiers resize their input to about that
size, so we multiply spatial constants by ``s = max(1, min(w, h) / 224)``: a 1024 px image gets a
~4.6x larger blur that looks the same once the model has resized it, and images up to 224 px get
the paper's constants unchanged. Intensity constants (noise levels, brightness, contrast, JPEG
quality) do not depend on size. Our outputs are rounded to uint8 where the reference truncates.

*Evasions* are the edits that content moderation meets in the wild (captions, stickers,
screenshots, collages). Their strength is any number in [1, 5]: the integers are the tabled
levels and fractional strengths interpolate between them (integer parameters are rounded).

Each perturbation declares ``max_fuzz_severity``, a perceptual budget: the strongest level at
which the content stays plainly recognisable to a person (the label should not change), so a
fuzzer can draw chains within it.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from functools import cache, lru_cache
from types import ModuleType

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..options import DEFAULT_SEED
from .registries import KINDS, LEVELS, PERTURBATIONS, Perturbation, Severity
from .registries import perturbation_names as names

__all__ = [
    "Chain", "DEFAULT_SEED", "KINDS", "LEVELS", "PERTURBATIONS", "Perturbation", "PerturbationSpec",
    "apply", "cache_key", "names", "parse", "perceptual_budget", "severities",
]

REFERENCE_SIDE = 224  # ImageNet-C's image side; spatial constants scale with min(w, h) / 224


# ---------------------------------------------------------------------------------------------
# Specs and chains
# ---------------------------------------------------------------------------------------------

_SEVERITY_DECIMALS = 4  # fractional strengths are rounded so that str/parse round-trip exactly


def _known() -> str:
    return ", ".join(PERTURBATIONS)


def _check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or name not in PERTURBATIONS:
        close = get_close_matches(str(name), list(PERTURBATIONS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{where}unknown perturbation {name!r}{hint}; known: {_known()}")
    return name


def _normalise_severity(name: str, severity: object, where: str) -> Severity:
    if isinstance(severity, bool) or not isinstance(severity, (int, float, np.integer,
                                                               np.floating)):
        raise ValueError(f"{where}severity of {name} must be a number, got {severity!r}")
    value = float(severity)
    if not math.isfinite(value):
        raise ValueError(f"{where}severity of {name} must be finite, got {severity!r}")
    kind = PERTURBATIONS[name].kind
    if kind == "corruption":
        if not value.is_integer() or not 1 <= value <= 5:
            raise ValueError(f"{where}{name} is a corruption: its severity must be an integer "
                             f"1-5 (the ImageNet-C levels), got {severity!r}")
        return int(value)
    value = round(value, _SEVERITY_DECIMALS) + 0.0  # + 0.0: no -0.0
    if not 1 <= value <= 5:
        raise ValueError(f"{where}{name} is an evasion: its strength must be a number in "
                         f"[1, 5], got {severity!r}")
    return int(value) if value.is_integer() else value


def _format_severity(severity: Severity) -> str:
    # repr is the shortest string that reads back as the same float: canonical and exact.
    return str(severity) if isinstance(severity, int) else repr(severity)


@dataclass(frozen=True)
class PerturbationSpec:
    """One perturbation at one severity: ``str(spec)`` is ``name:severity:s<seed>``."""

    name: str
    severity: Severity
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        _check_name(self.name, "")
        # Frozen: normalise here only, so equal conditions compare, hash and print equal.
        object.__setattr__(self, "severity", _normalise_severity(self.name, self.severity, ""))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def perturbation(self) -> Perturbation:
        return PERTURBATIONS[self.name]

    @property
    def within_budget(self) -> bool:
        """True when the severity is within the perturbation's declared perceptual budget."""
        return self.severity <= self.perturbation.max_fuzz_severity

    def __str__(self) -> str:
        return f"{self.name}:{_format_severity(self.severity)}:s{self.seed}"

    @classmethod
    def parse(cls, text: str) -> PerturbationSpec:
        """``name:severity[:s<seed>]`` -> a spec; ValueError naming the bad part otherwise."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"perturbation spec must be a non-empty string, got {text!r}")
        if "+" in text:
            raise ValueError(f"perturbation spec {text!r} is a chain ('+'): use Chain.parse")
        where = f"perturbation spec {text!r}: "
        parts = [p.strip() for p in text.strip().split(":")]
        if len(parts) not in (2, 3):
            raise ValueError(f"{where}expected name:severity[:s<seed>] (e.g. "
                             f"'gaussian_noise:3:s{DEFAULT_SEED}'), got {len(parts)} part(s)")
        name = _check_name(parts[0], where)
        # Plain ASCII decimals only (int() and float() would also take '3_0' or other scripts'
        # digits), and no more decimals than a strength keeps: what is written is what runs.
        number = re.fullmatch(rf"[0-9]+(\.[0-9]{{1,{_SEVERITY_DECIMALS}}})?", parts[1])
        if number is None:
            raise ValueError(f"{where}severity {parts[1]!r} must be a number such as 3 or 2.5 "
                             f"(at most {_SEVERITY_DECIMALS} decimals)")
        severity = _normalise_severity(
            name, float(parts[1]) if number.group(1) else int(parts[1]), where)
        seed = DEFAULT_SEED
        if len(parts) == 3:
            match = re.fullmatch(r"s([0-9]{1,19})", parts[2])
            if match is None or int(match.group(1)) >= 2**63:
                raise ValueError(f"{where}seed part {parts[2]!r} must look like "
                                 f"s<integer below 2**63>, e.g. s{DEFAULT_SEED}")
            seed = int(match.group(1))
        return cls(name, severity, seed)


@dataclass(frozen=True)
class Chain:
    """Perturbations applied in order; ``str(chain)`` joins the steps' strings with ``+``."""

    specs: tuple[PerturbationSpec, ...]

    def __post_init__(self) -> None:
        specs = tuple(self.specs)
        if not specs:
            raise ValueError("a chain needs at least one perturbation")
        for i, spec in enumerate(specs):
            if not isinstance(spec, PerturbationSpec):
                raise ValueError(f"chain step {i + 1} must be a PerturbationSpec, got {spec!r}")
        object.__setattr__(self, "specs", specs)

    def __iter__(self) -> Iterator[PerturbationSpec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    @property
    def within_budget(self) -> bool:
        return all(spec.within_budget for spec in self.specs)

    def __str__(self) -> str:
        return "+".join(str(spec) for spec in self.specs)

    @classmethod
    def parse(cls, text: str) -> Chain:
        """``spec+spec+...`` -> a chain (a single spec gives a one-step chain)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"perturbation chain must be a non-empty string, got {text!r}")
        parts = text.split("+")
        specs = []
        for i, part in enumerate(parts):
            if not part.strip():
                raise ValueError(f"perturbation chain {text!r}: step {i + 1} is empty")
            try:
                specs.append(PerturbationSpec.parse(part))
            except ValueError as exc:
                raise ValueError(f"perturbation chain {text!r}, step {i + 1}: {exc}") from None
        return cls(tuple(specs))


def cache_key(spec_or_chain: PerturbationSpec | Chain) -> str:
    """The prediction cache's condition for a spec or chain: its string, with ``@v<version>``
    after each step whose perturbation's pixels are past version 1 (``rotate:1:s2023@v2``).

    A perturbation whose output changes gets a new version, so predictions cached from its old
    pixels are never served for the new ones; version-1 steps add nothing, so the entries of
    perturbations that never changed stay valid.
    """
    specs = (spec_or_chain,) if isinstance(spec_or_chain, PerturbationSpec) \
        else spec_or_chain.specs
    return "+".join(f"{spec}@v{spec.perturbation.version}" if spec.perturbation.version > 1
                    else str(spec) for spec in specs)


def parse(text: str) -> PerturbationSpec | Chain:
    """A condition string -> a spec, or a chain when it has several ``+``-joined steps."""
    chain = Chain.parse(text)
    return chain.specs[0] if len(chain) == 1 else chain


def severities(name: str) -> tuple[int, ...]:
    """The tabled severity levels of a perturbation (1-5 for every entry)."""
    return PERTURBATIONS[_check_name(name, "")].levels


def perceptual_budget(name: str) -> Severity:
    """The largest severity a fuzzer should draw for ``name`` (its ``max_fuzz_severity``)."""
    return PERTURBATIONS[_check_name(name, "")].max_fuzz_severity


# ---------------------------------------------------------------------------------------------
# Application
# ---------------------------------------------------------------------------------------------

def _rng(spec: PerturbationSpec, key: str, index: int) -> np.random.Generator:
    # Severity left out on purpose: common random numbers across a sweep (module docstring).
    # The chain position keeps two identical steps of one chain from sharing their noise.
    text = f"{spec.name}|s{spec.seed}|{key}|{index}"
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big")
    return np.random.default_rng(seed)


def apply(spec_or_chain: PerturbationSpec | Chain | str, image: Image.Image,
          key: str = "") -> Image.Image:
    """Perturb ``image`` (converted to RGB); returns a new RGB image of the same size.

    ``key`` should identify the image (its content hash) so that each image gets its own noise;
    ``spec_or_chain`` may also be a condition string.
    """
    if isinstance(spec_or_chain, str):
        spec_or_chain = Chain.parse(spec_or_chain)
    if isinstance(spec_or_chain, PerturbationSpec):
        specs: tuple[PerturbationSpec, ...] = (spec_or_chain,)
    elif isinstance(spec_or_chain, Chain):
        specs = spec_or_chain.specs
    else:
        raise TypeError(f"expected a PerturbationSpec, Chain or condition string, "
                        f"got {type(spec_or_chain).__name__}")
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    out = image if image.mode == "RGB" else image.convert("RGB")
    size = out.size
    for index, spec in enumerate(specs):
        entry = PERTURBATIONS[spec.name]
        rng = _rng(spec, key, index) if entry.random else None
        out = entry.fn(out, float(spec.severity), rng)
        if out.size != size or out.mode != "RGB":  # guards the registry's contract
            raise AssertionError(f"{spec} returned {out.mode} {out.size}, expected RGB {size}")
    return out.copy() if out is image else out


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def _scale(img: Image.Image) -> float:
    """Factor for ImageNet-C's spatial constants (defined at 224 px): >= 1, see docstring."""
    return max(1.0, min(img.size) / REFERENCE_SIDE)


def _level(table: Sequence[float], severity: float) -> float:
    """The tabled value at an integer severity, linearly interpolated in between."""
    lo = min(int(math.floor(severity)), len(table))
    frac = severity - lo
    if frac <= 0 or lo >= len(table):
        return table[lo - 1]
    return table[lo - 1] + frac * (table[lo] - table[lo - 1])


def _uniform16(rng: np.random.Generator, n: int) -> np.ndarray:
    # Raw bytes are the cheapest draws numpy offers: n uniform 16-bit integers.
    return np.frombuffer(rng.bytes(2 * n), dtype=np.uint16)


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), "RGB")


# Pillow keeps RGB as 4 bytes a pixel: copying that layout out and back ("RGBX") costs a third
# of np.asarray + Image.fromarray, which repack to 3 bytes. Where OpenCV wants 3 channels,
# cvtColor drops and restores the padding byte faster than the repacking does.

def _rgbx(img: Image.Image) -> np.ndarray:
    """The pixels as a read-only (h, w, 4) uint8 array; the 4th byte is padding."""
    w, h = img.size
    return np.frombuffer(img.tobytes("raw", "RGBX"), np.uint8).reshape(h, w, 4)


def _from_rgbx(arr: np.ndarray) -> Image.Image:
    h, w = arr.shape[:2]
    return Image.frombytes("RGB", (w, h), np.ascontiguousarray(arr), "raw", "RGBX")


def _rgb(img: Image.Image) -> np.ndarray:
    """The pixels as a writable, contiguous (h, w, 3) uint8 array."""
    cv2 = _cv2()
    rgb: np.ndarray = cv2.cvtColor(_rgbx(img), cv2.COLOR_RGBA2RGB)
    return rgb


def _from_rgb(arr: np.ndarray) -> Image.Image:
    cv2 = _cv2()
    return _from_rgbx(cv2.cvtColor(arr, cv2.COLOR_RGB2RGBA))


def _cv2() -> ModuleType:
    # Imported on first use: the plugin must not pay for OpenCV unless perturbations run.
    import cv2

    return cv2


# ---------------------------------------------------------------------------------------------
# Corruptions (ImageNet-C tables unless noted)
# ---------------------------------------------------------------------------------------------

_GAUSSIAN_NOISE = [0.08, 0.12, 0.18, 0.26, 0.38]     # ImageNet-C: std in [0, 1] units
_SHOT_NOISE = [60, 25, 12, 5, 3]                     # ImageNet-C: photons at full intensity
_IMPULSE_NOISE = [0.03, 0.06, 0.09, 0.17, 0.27]      # ImageNet-C: s&p amount per value
_GAUSSIAN_BLUR = [1, 2, 3, 4, 6]                     # ImageNet-C: sigma in px at 224
_MOTION_BLUR = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)]  # ImageNet-C: (radius, sigma)
_BRIGHTNESS = [0.1, 0.2, 0.3, 0.4, 0.5]              # ImageNet-C: added to HSV value
_CONTRAST = [0.4, 0.3, 0.2, 0.1, 0.05]               # ImageNet-C: factor around channel means
_SATURATE = [(0.3, 0.0), (0.1, 0.0), (2, 0.0), (5, 0.1), (20, 0.2)]  # ImageNet-C: S*a + b
_PIXELATE = [0.6, 0.5, 0.4, 0.3, 0.25]               # ImageNet-C: BOX down/up factor at 224
_JPEG = [25, 18, 15, 10, 7]                          # ImageNet-C: JPEG quality
_RESIZE = [0.5, 0.4, 0.3, 0.2, 0.125]                # ours: bilinear down/up factor at 224
_CROP_PAD = [0.05, 0.1, 0.2, 0.3, 0.4]               # ours: share of each side cropped
_ROTATE = [5, 10, 15, 20, 30]                        # ours: degrees (direction drawn)

_QUANTILES = 1 << 16  # Gaussian noise: inverse-CDF table over 16-bit uniforms
_POISSON_BITS = 12    # shot noise: 4096 equiprobable quantiles per intensity


@lru_cache(maxsize=1)
def _normal_quantiles() -> np.ndarray:
    from statistics import NormalDist
    inv = NormalDist().inv_cdf
    return np.array([inv((j + 0.5) / _QUANTILES) for j in range(_QUANTILES)])


@cache
def _gaussian_table(std: float) -> np.ndarray:
    # Noise in grey levels, rounded: x + round(n) == round(x + n) for integer x.
    return np.clip(np.rint(_normal_quantiles() * std * 255), -255, 255).astype(np.int16)


def gaussian_noise(img: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    # N(0, c) per value, clipped: ImageNet-C. Sampled by inverse CDF from 16-bit uniforms
    # (65536 equiprobable quantiles, exact to well under a grey level) - 4x faster than
    # rng.normal, and the same uniforms scale with c across severities.
    x = np.asarray(img)
    table = _gaussian_table(_GAUSSIAN_NOISE[int(severity) - 1])
    y = x.astype(np.int16)
    y += table.take(_uniform16(rng, x.size).reshape(x.shape))
    np.clip(y, 0, 255, out=y)
    return _to_image(y)


@cache
def _poisson_table(photons: int) -> np.ndarray:
    """Output grey level for (intensity v, 12-bit uniform u): the Poisson inverse CDF."""
    lam = np.arange(256) * (photons / 255.0)
    # Only k < photons matters: clip(k / photons, 0, 1) saturates at 255 beyond.
    pmf = np.empty((256, photons))
    pmf[:, 0] = np.exp(-lam)
    for k in range(1, photons):
        pmf[:, k] = pmf[:, k - 1] * lam / k
    cdf = np.cumsum(pmf, axis=1)
    mids = (np.arange(1 << _POISSON_BITS) + 0.5) / (1 << _POISSON_BITS)
    values = np.rint(np.minimum(np.arange(photons + 1), photons) * (255.0 / photons))
    table = np.empty((256, 1 << _POISSON_BITS), np.uint8)
    for v in range(256):
        table[v] = values[np.searchsorted(cdf[v], mids, side="left")]
    return table.ravel()


def shot_noise(img: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    # Poisson(x * c) / c, clipped: ImageNet-C. Inverse-CDF lookup with 4096 equiprobable
    # quantiles per intensity (every outcome within 1/4096 of its Poisson probability):
    # ~30x faster than rng.poisson, which dominates otherwise.
    x = np.asarray(img)
    table = _poisson_table(_SHOT_NOISE[int(severity) - 1])
    u = _uniform16(rng, x.size) >> (16 - _POISSON_BITS)
    idx = (x.reshape(-1).astype(np.intp) << _POISSON_BITS) | u
    return _to_image(table.take(idx, mode="clip").reshape(x.shape))


def impulse_noise(img: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    # Salt and pepper on each channel value with probability c, half each: ImageNet-C
    # (skimage random_noise 's&p'). One uniform decides both, so severities nest.
    # Masks by arithmetic rather than boolean indexing: the cost does not grow with c.
    x = np.asarray(img)
    u = _uniform16(rng, x.size).reshape(x.shape)
    t = round(_IMPULSE_NOISE[int(severity) - 1] * 65536)
    keep = u >= t // 2               # below t / 2: pepper
    salt = (u < t) & keep            # between t / 2 and t: salt
    y = x * keep
    y |= salt.view(np.uint8) * np.uint8(255)
    return _to_image(y)


@cache
def _gaussian_kernel(sigma: float) -> np.ndarray:
    # Truncated at 3 sigma, OpenCV's own choice for 8-bit images: the tails beyond hold 0.27%
    # of the weight (at most 0.7 grey levels on a full-range edge), and skimage's 4 sigma
    # would cost a third more taps.
    radius = max(1, math.ceil(3 * sigma))
    i = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(i * i) / (2 * sigma * sigma))
    kernel: np.ndarray = (k / k.sum()).astype(np.float32).reshape(-1, 1)  # sum() is typed Any
    return kernel


def gaussian_blur(img: Image.Image, severity: float,
                  rng: np.random.Generator | None) -> Image.Image:
    # A true separable Gaussian of ImageNet-C's sigma (skimage's filter), edges replicated
    # as skimage's mode 'nearest' does.
    cv2 = _cv2()
    kernel = _gaussian_kernel(_GAUSSIAN_BLUR[int(severity) - 1] * _scale(img))
    out = cv2.sepFilter2D(_rgb(img), -1, kernel, kernel, borderType=cv2.BORDER_REPLICATE)
    return _from_rgb(out)


def _motion_taps(radius: int, sigma: float, angle: float) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """ImageMagick's MotionBlurImage kernel as ImageNet-C uses it (via Wand): a one-sided
    Gaussian-weighted trail of 2 * radius + 1 taps along ``angle``; returns weights and the
    (dy, dx) source offsets of each tap."""
    width = 2 * radius + 1
    i = np.arange(width)
    w = np.exp(-(i * i) / (2.0 * sigma * sigma))
    w /= w.sum()
    # Drop the tail that cannot move a pixel by half a grey level.
    tail = np.cumsum(w[::-1])[::-1]
    keep = max(1, int(np.searchsorted(-tail, -0.5 / 255.0)))
    w, i = w[:keep] / w[:keep].sum(), i[:keep]
    rad = math.radians(angle)
    oy = np.ceil(i * math.sin(rad) - 0.5).astype(int)
    ox = np.ceil(i * math.cos(rad) - 0.5).astype(int)
    return w.astype(np.float32), oy, ox


def motion_blur(img: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    radius, sigma = _MOTION_BLUR[int(severity) - 1]
    s = _scale(img)
    angle = rng.uniform(-45, 45)  # ImageNet-C's range
    w, oy, ox = _motion_taps(max(1, round(radius * s)), sigma * s, angle)
    x = np.asarray(img)
    h, wd = x.shape[:2]
    top, left = max(0, -oy.min()), max(0, -ox.min())
    pad = ((top, max(0, oy.max())), (left, max(0, ox.max())), (0, 0))
    # One pass per tap, or an FFT once the kernel is long (big images): measured crossover.
    if len(w) * h * wd > 3 * _fft_cost(h + pad[0][0] + pad[0][1], wd + pad[1][0] + pad[1][1]):
        return _to_image(_motion_fft(x, w, oy, ox, pad))
    p = np.pad(x, pad, mode="edge").astype(np.float32)  # edges replicate, as ImageMagick
    acc = p[top + oy[0]:top + oy[0] + h, left + ox[0]:left + ox[0] + wd] * w[0]
    tmp = np.empty_like(acc)
    for k in range(1, len(w)):
        y0, x0 = top + oy[k], left + ox[k]
        np.multiply(p[y0:y0 + h, x0:x0 + wd], w[k], out=tmp)
        acc += tmp
    acc += 0.5
    return _to_image(acc)  # a convex combination of uint8 values: already in range


def _fft_cost(h: int, w: int) -> float:
    return h * w * math.log2(max(h * w, 2))


def _fast_len(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: FFT sizes without large prime factors."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _motion_fft(x: np.ndarray, w: np.ndarray, oy: np.ndarray, ox: np.ndarray,
                pad: tuple[tuple[int, int], ...]) -> np.ndarray:
    # Long kernels (big images): convolve by FFT instead of one pass per tap.
    (top, _), (left, _), _ = pad
    p = np.pad(x, pad, mode="edge").astype(np.float32)
    kh, kw = oy.max() - oy.min() + 1, ox.max() - ox.min() + 1
    kernel = np.zeros((kh, kw), np.float32)
    np.add.at(kernel, (oy - oy.min(), ox - ox.min()), w)
    # Zero padding up to fast sizes is harmless: the valid region never reaches it.
    shape = (_fast_len(p.shape[0]), _fast_len(p.shape[1]))
    spec = np.fft.rfft2(p, s=shape, axes=(0, 1))
    spec *= np.fft.rfft2(kernel[::-1, ::-1], s=shape)[:, :, None]
    full = np.fft.irfft2(spec, s=shape, axes=(0, 1))
    h, wd = x.shape[:2]
    # Circular convolution is exact on the valid region, which starts at (kh - 1, kw - 1).
    y0 = kh - 1 + (top + oy.min())
    x0 = kw - 1 + (left + ox.min())
    return np.clip(full[y0:y0 + h, x0:x0 + wd] + 0.5, 0, 255)


def brightness(img: Image.Image, severity: float, rng: np.random.Generator | None) -> Image.Image:
    # ImageNet-C adds c to HSV value; done exactly (to rounding) without the float HSV round
    # trip. Hue and saturation kept means every channel scales by V' / V, with V = max(r, g, b)
    # and V' = min(V + k, 255), k = 255 c: x' = x + x k / V below the clip, x * 255 / V above
    # it, and the smaller of the two is the right one (one OpenCV divide each, x <= V keeps
    # both in range). A black pixel (V = 0, S = 0) becomes grey V' = k.
    cv2 = _cv2()
    k = _BRIGHTNESS[int(severity) - 1] * 255
    planes, v = _planes_and_value(img)
    out = [cv2.min(cv2.add(x, cv2.divide(x, v, scale=k)), cv2.divide(x, v, scale=255))
           for x in planes]  # cv2.divide gives 0 where V = 0 ...
    if cv2.countNonZero(v) < v.size:  # ... so black pixels get k added
        black = cv2.min(cv2.compare(v, 0, cv2.CMP_EQ), round(k))
        out = [cv2.max(x, black) for x in out]
    return _merge(out)


def _planes_and_value(img: Image.Image) -> tuple[list[np.ndarray], np.ndarray]:
    """The R, G and B planes and the HSV value plane V = max(r, g, b)."""
    cv2 = _cv2()
    r, g, b, _ = cv2.split(_rgbx(img))
    return [r, g, b], cv2.max(cv2.max(r, g), b)


def _merge(planes: list[np.ndarray]) -> Image.Image:
    h, w = planes[0].shape
    return Image.merge("RGB", [Image.frombuffer("L", (w, h), p, "raw", "L", 0, 1)
                               for p in planes])


def contrast(img: Image.Image, severity: float, rng: np.random.Generator | None) -> Image.Image:
    # (x - mean) * c + mean with per-channel means: ImageNet-C. One affine colour transform
    # (x * c + mean * (1 - c), rounded and clipped) in OpenCV.
    cv2 = _cv2()
    c = _CONTRAST[int(severity) - 1]
    x = _rgb(img)
    m = np.zeros((3, 4))
    m[:, :3] = np.eye(3) * c
    m[:, 3] = np.multiply(cv2.mean(x)[:3], 1 - c)
    return _from_rgb(cv2.transform(x, m))


def saturate(img: Image.Image, severity: float, rng: np.random.Generator | None) -> Image.Image:
    # HSV saturation S -> clip(S * a + b, 0, 1) with hue and value kept (ImageNet-C's extra
    # corruption; note its table first desaturates (x0.3, x0.1) then oversaturates (x2, x5,
    # x20), so on already saturated pixels level 2 can change more than level 3).
    # Done exactly (to rounding) without the float HSV round trip: with V = max(r, g, b) and
    # m = min(r, g, b), S = (V - m) / V, and keeping hue and value moves each channel's
    # distance below V, d = V - x, to d * S' / S. With S' = min(S a + b, 1) that factor is
    # q = min(a + b t, t), t = V / (V - m): a alone when a <= 1 and b = 0.
    cv2 = _cv2()
    a, b = _SATURATE[int(severity) - 1]
    planes = _rgb_planes(img)
    r, g, bl = planes
    v = np.maximum(np.maximum(r, g), bl)  # numpy beats OpenCV on these small uint8 steps
    if b == 0 and a <= 1:  # V - a (V - x) = a x + (1 - a) V
        return _from_planes([cv2.addWeighted(x, a, v, 1 - a, 0) for x in planes])
    spread = v - np.minimum(np.minimum(r, g), bl)  # V - m
    # Grey pixels (spread 0) have d = 0 on every channel, so only b moves them: their hue is 0
    # (red) in skimage's rgb2hsv, so S' = b tints them red as in the reference, green and blue
    # dropping to V (1 - b). vt is V with that drop, the base for the green and blue outputs.
    vt, nonzero = v, spread
    greys = spread.size - cv2.countNonZero(spread)
    if greys:
        grey = cv2.threshold(spread, 0, 1, cv2.THRESH_BINARY_INV)[1]  # 1 on grey pixels
        nonzero = spread + grey  # any finite t does for grey pixels
        if b > 0:
            vt = v - grey * cv2.convertScaleAbs(v, alpha=b)
        if greys == spread.size:  # a grey picture: nothing else to compute
            return img.copy() if b == 0 else _from_planes([v, vt, vt])
    if b == 0:  # q = min(a, t) = min(a (V - m), V) / (V - m), an integer over an integer
        q = cv2.divide(np.minimum(cv2.convertScaleAbs(spread, alpha=a), v), nonzero,
                       dtype=cv2.CV_32F)
    else:
        t = cv2.divide(v, nonzero, dtype=cv2.CV_32F)
        q = t * np.float32(b)
        q += np.float32(a)
        np.minimum(q, t, out=q)
    return _from_planes([cv2.subtract(base, cv2.multiply(v - x, q, dtype=cv2.CV_8U))
                         for base, x in zip((v, vt, vt), planes)])


def _rgb_planes(img: Image.Image) -> list[np.ndarray]:
    """The R, G and B planes, each (h, w) uint8 and read-only."""
    # Packing one band at a time beats tobytes("raw", "RGBX") + cv2.split by a third.
    w, h = img.size
    return [np.frombuffer(img.tobytes("raw", band), np.uint8).reshape(h, w) for band in "RGB"]


def _from_planes(planes: list[np.ndarray]) -> Image.Image:
    """An RGB image from its R, G and B planes: a quarter faster than ``_merge``."""
    cv2 = _cv2()
    h, w = planes[0].shape
    # Into numpy's aligned buffers cv2.merge writes past the cache (streaming stores): Pillow
    # then copies the result 3x slower. One byte off alignment keeps it in the cache.
    rgbx = np.empty(h * w * 4 + 1, np.uint8)[1:].reshape(h, w, 4)
    cv2.merge([*planes, planes[0]], dst=rgbx)  # the 4th byte is padding
    return Image.frombytes("RGB", (w, h), rgbx, "raw", "RGBX")


@lru_cache(maxsize=64)
def _box_upsample_index(n_in: int, n_out: int) -> np.ndarray:
    # Pillow's BOX filter when enlarging keeps exactly one source pixel per output pixel:
    # floor((i + 0.5) * n_in / n_out). Gathering those rows and columns is 10x faster.
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.intp), n_in - 1)


def pixelate(img: Image.Image, severity: float, rng: np.random.Generator | None) -> Image.Image:
    # BOX down then BOX up: ImageNet-C. The factor applies to the 224-px-equivalent size, and
    # the small side is truncated as the reference's int(224 * c) is (89 at severity 3, not 90).
    w, h = img.size
    f = _PIXELATE[int(severity) - 1] / _scale(img)
    small = _rgbx(img.resize((max(1, int(w * f)), max(1, int(h * f))),
                             Image.Resampling.BOX))
    words = small.view(np.uint32)[..., 0]  # a pixel is one 32-bit word: one gather, not three
    big = words.take(_box_upsample_index(words.shape[1], w), axis=1)
    big = big.take(_box_upsample_index(words.shape[0], h), axis=0)
    return _from_rgbx(big.view(np.uint8).reshape(h, w, 4))


def resize(img: Image.Image, severity: float, rng: np.random.Generator | None) -> Image.Image:
    # Not in ImageNet-C: the soft loss of detail of a thumbnail scaled back up, down to 28 px
    # at 224 for severity 5. Down: a box average over the integer part of the factor
    # (Image.reduce, the antialiasing), then bilinear for the remaining factor below 2; up:
    # bilinear (OpenCV; the same interpolation as Pillow's, several times faster).
    cv2 = _cv2()
    w, h = img.size
    f = _RESIZE[int(severity) - 1] / _scale(img)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    k = max(1, min(w // size[0], h // size[1]))
    small = cv2.resize(_rgbx(img.reduce(k) if k > 1 else img), size,
                       interpolation=cv2.INTER_LINEAR)
    return _from_rgbx(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))


def jpeg_compression(img: Image.Image, severity: float,
                     rng: np.random.Generator | None) -> Image.Image:
    # Pillow's default 4:2:0 chroma subsampling, like the reference's PIL save.
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=_JPEG[int(severity) - 1])
    buf.seek(0)
    out = Image.open(buf, formats=["JPEG"])
    out.load()  # decoded RGB; no probing of other formats, no extra copy
    return out


def crop_pad(img: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    # Not in ImageNet-C: crop a share of each dimension (split between the two sides at
    # random) and pad back to the original size with black, the content staying in place.
    w, h = img.size
    f = _CROP_PAD[int(severity) - 1]
    split = rng.random(2)  # drawn at every severity: the split is shared across the sweep
    cut_x = min(w - 1, max(1, round(f * w)))
    cut_y = min(h - 1, max(1, round(f * h)))
    left, top = round(split[0] * cut_x), round(split[1] * cut_y)
    box = (left, top, w - (cut_x - left), h - (cut_y - top))
    out = Image.new("RGB", (w, h))
    out.paste(img.crop(box), box[:2])
    return out


def rotate(img: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    # Not in ImageNet-C (ImageNet-P sweeps rotations): bilinear, same canvas, black corners.
    # Counter-clockwise for a positive angle, about the centre, as PIL's Image.rotate.
    cv2 = _cv2()
    sign = 1 if rng.random() < 0.5 else -1
    w, h = img.size
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), sign * _ROTATE[int(severity) - 1], 1)
    return _from_rgbx(cv2.warpAffine(_rgbx(img), m, (w, h), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0)))


# ---------------------------------------------------------------------------------------------
# Evasions
# ---------------------------------------------------------------------------------------------

_WORDS = (
    "when", "you", "finally", "the", "weekend", "monday", "mood", "me", "my", "friend", "cat",
    "coffee", "morning", "nobody", "literally", "every", "time", "vibes", "sale", "today",
    "new", "post", "follow", "for", "more", "like", "share", "lol", "best", "day", "ever",
    "link", "in", "bio", "dm", "us", "omg", "wait", "for", "it", "summer", "no", "way",
)
_TEXT_STYLES = (((255, 255, 255), (0, 0, 0)), ((255, 230, 0), (0, 0, 0)),
                ((0, 0, 0), (255, 255, 255)), ((255, 40, 40), (255, 255, 255)))
_STICKER_COLOURS = ((255, 204, 51), (255, 150, 190), (255, 140, 40), (120, 200, 255),
                    (140, 220, 120), (230, 60, 60))

_TEXT_OVERLAY = [(0.05, 0.05), (0.06, 0.10), (0.08, 0.20), (0.10, 0.30), (0.12, 0.45)]
_EMOJI = [(1, 0.10), (1, 0.15), (2, 0.18), (3, 0.20), (4, 0.24)]    # (count, radius / side)
_MEME_BAR = [0.10, 0.14, 0.18, 0.22, 0.28]        # caption bar height / image height, each
_SCREENSHOT = [0.06, 0.10, 0.14, 0.18, 0.24]      # UI chrome height / image height, top
_GRID = [2, 3, 4, 5, 6]                            # n x n collage; the image is one tile


@lru_cache(maxsize=64)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled default font; scalable when Pillow has FreeType, else its fixed bitmap.
    return ImageFont.load_default(size=px)


def _words(rng: np.random.Generator, font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
           width: float, max_words: int = 40) -> str:
    text = ""
    for _ in range(max_words):
        text = (text + " " if text else "") + _WORDS[int(rng.integers(len(_WORDS)))]
        if font.getlength(text) >= width:
            break
    return text


def _fit_font(text: str, px: int, width: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    font = _font(max(6, px))
    while px > 6 and font.getlength(text) > width:
        px = max(6, int(px * 0.85))
        font = _font(px)
    return font


def _paste_fitted(canvas: Image.Image, img: Image.Image,
                  box: tuple[int, int, int, int]) -> None:
    """Scale ``img`` to fit ``box`` (aspect kept) and paste it centred."""
    bw, bh = max(1, box[2] - box[0]), max(1, box[3] - box[1])
    f = min(bw / img.width, bh / img.height)
    w, h = max(1, round(img.width * f)), max(1, round(img.height * f))
    scaled = img.resize((w, h), Image.Resampling.BILINEAR)
    canvas.paste(scaled, (box[0] + (bw - w) // 2, box[1] + (bh - h) // 2))


def text_overlay(img: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    # Caption/watermark text drawn over the picture, the commonest in-the-wild edit. Strength
    # sets the font size (share of the short side) and the share of rows covered by text.
    font_frac, cover = (_level([t[0] for t in _TEXT_OVERLAY], severity),
                        _level([t[1] for t in _TEXT_OVERLAY], severity))
    w, h = img.size
    fill, stroke_fill = _TEXT_STYLES[int(rng.integers(len(_TEXT_STYLES)))]  # shared by levels
    px = max(6, round(font_frac * min(w, h)))
    font = _font(px)
    line = max(1, round(px * 1.25))
    slots = max(1, h // line)
    n = min(slots, max(1, round(cover * h / line)))
    rows = np.sort(rng.choice(slots, size=n, replace=False))
    out = img.copy()
    draw = ImageDraw.Draw(out)
    y0 = (h - slots * line) // 2
    for r in rows:
        x = int(rng.integers(0, max(1, px)))
        draw.text((x, y0 + int(r) * line), _words(rng, font, w - x), font=font, fill=fill,
                  stroke_width=max(1, round(px / 12)), stroke_fill=stroke_fill)
    return out


@lru_cache(maxsize=32)
def _sticker(radius: int, colour: int, mood: int) -> Image.Image:
    """An RGBA smiley disc, drawn up to 4x larger and downsampled for smooth edges."""
    ss = max(1, min(4, 512 // radius))  # bounded memory on very large images
    r = radius * ss
    im = Image.new("RGBA", (2 * r, 2 * r), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    fill = _STICKER_COLOURS[colour]
    dark = tuple(int(c * 0.55) for c in fill)
    d.ellipse((0, 0, 2 * r - 1, 2 * r - 1), fill=fill + (255,), outline=dark + (255,),
              width=max(1, r // 14))
    ink = (60, 35, 20, 255)
    ex, ey, ew, eh = 0.35 * r, 0.3 * r, 0.12 * r, 0.2 * r
    for side in (-1, 1):
        cx = r + side * ex
        if mood == 2 and side == 1:  # wink
            d.line((cx - ew, r - ey, cx + ew, r - ey), fill=ink, width=max(1, r // 12))
        else:
            d.ellipse((cx - ew, r - ey - eh, cx + ew, r - ey + eh), fill=ink)
    box = (r - 0.55 * r, r - 0.25 * r, r + 0.55 * r, r + 0.6 * r)
    if mood == 1:  # grin
        d.chord(box, 10, 170, fill=ink)
    else:
        d.arc(box, 20, 160, fill=ink, width=max(1, r // 10))
    return im.resize((2 * radius, 2 * radius), Image.Resampling.LANCZOS)


def emoji_sticker(img: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    # Smiley stickers pasted over the middle of the picture, as people censor (or dodge a
    # filter). Positions, colours and faces are drawn for all 5 possible stickers at every
    # strength, so stronger levels grow the same stickers and add new ones.
    count = round(_level([t[0] for t in _EMOJI], severity))
    radius = max(2, round(_level([t[1] for t in _EMOJI], severity) * min(img.size)))
    centres = rng.uniform(0.2, 0.8, size=(5, 2)) * np.array(img.size)
    colours = rng.integers(len(_STICKER_COLOURS), size=5)
    moods = rng.integers(3, size=5)
    out = img.copy()
    for i in range(count):
        patch = _sticker(radius, int(colours[i]), int(moods[i]))
        cx, cy = (int(round(v)) for v in centres[i])
        out.paste(patch, (cx - radius, cy - radius), patch)
    return out


def meme_caption(img: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    # The picture shrunk into a white meme frame with black captions above and below.
    w, h = img.size
    bar = max(1, round(_level(_MEME_BAR, severity) * h))
    margin = max(1, round(0.03 * min(w, h)))
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    _paste_fitted(canvas, img, (margin, bar, w - margin, h - bar))
    draw = ImageDraw.Draw(canvas)
    for y in (0, h - bar):
        n = int(rng.integers(2, 7))
        text = " ".join(_WORDS[int(i)] for i in rng.integers(len(_WORDS), size=n)).upper()
        font = _fit_font(text, round(bar * 0.5), w - 2 * margin)
        draw.text((w / 2, y + bar / 2), text, font=font, fill=(0, 0, 0), anchor="mm")
    return canvas


def screenshot_border(img: Image.Image, severity: float,
                      rng: np.random.Generator) -> Image.Image:
    # A phone screenshot of a social-media post: status bar, post header with avatar and
    # name, action bar below, side margins; the picture scaled into what is left.
    w, h = img.size
    top = max(2, round(_level(_SCREENSHOT, severity) * h))
    bottom = max(1, round(top * 0.6))
    side = round(top * 0.2)
    dark = bool(rng.random() < 0.5)
    bg, fg, muted = (((0, 0, 0), (255, 255, 255), (110, 118, 125)) if dark else
                     ((255, 255, 255), (15, 20, 25), (140, 150, 160)))
    canvas = Image.new("RGB", (w, h), bg)
    _paste_fitted(canvas, img, (side, top, w - side, h - bottom))
    d = ImageDraw.Draw(canvas)
    status = max(1, round(top * 0.35))
    clock = f"{int(rng.integers(1, 13))}:{int(rng.integers(60)):02d}"
    d.text((round(w * 0.04), status / 2), clock, font=_font(max(6, round(status * 0.7))),
           fill=fg, anchor="lm")
    bw, bh = max(3, round(status * 0.9)), max(2, round(status * 0.45))  # battery
    bx, by = w - round(w * 0.04) - bw, round((status - bh) / 2)
    d.rectangle((bx, by, bx + bw, by + bh), outline=fg, width=1)
    d.rectangle((bx + 1, by + 1, bx + 1 + round((bw - 2) * rng.uniform(0.2, 1)), by + bh - 1),
                fill=fg)
    for i in range(4):  # signal bars
        x0 = bx - round(status * (1.6 - 0.3 * i))
        d.rectangle((x0, by + bh - round(bh * (i + 1) / 4), x0 + max(1, status // 8), by + bh),
                    fill=fg)
    header = top - status
    if header >= 4:  # avatar and name lines
        r = max(1, round(header * 0.3))
        cy = status + header // 2
        avatar = tuple(int(v) for v in rng.integers(60, 230, size=3))
        d.ellipse((side + r // 2, cy - r, side + r // 2 + 2 * r, cy + r), fill=avatar)
        x0 = side + 3 * r
        lw = max(1, round(header * 0.12))
        d.rounded_rectangle((x0, cy - 2 * lw, x0 + round(w * rng.uniform(0.2, 0.4)), cy - lw),
                            radius=lw // 2, fill=fg)
        d.rounded_rectangle((x0, cy + lw, x0 + round(w * rng.uniform(0.15, 0.3)), cy + 2 * lw),
                            radius=lw // 2, fill=muted)
    icon = max(1, round(bottom * 0.25))
    cy = h - bottom // 2
    for i in range(4):  # like, comment, share, bookmark
        cx = round(w * (0.1 + 0.15 * i)) if i < 3 else round(w * 0.9)
        box = (cx - icon, cy - icon, cx + icon, cy + icon)
        if i % 2 == 0:
            d.ellipse(box, outline=muted, width=max(1, icon // 4))
        else:
            d.rectangle(box, outline=muted, width=max(1, icon // 4))
    return canvas


def _benign_tile(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A smooth colour field with a few flat shapes: generated, so identical everywhere."""
    # Muted colours around one random tone, like a blurred landscape or a product shot.
    tone = rng.uniform(60, 200, size=3)
    grid = np.clip(tone + rng.normal(0, 30, size=(3, 3, 3)), 0, 255).astype(np.uint8)
    tile = Image.fromarray(grid, "RGB").resize((max(1, w), max(1, h)),
                                               Image.Resampling.BICUBIC)
    d = ImageDraw.Draw(tile)
    for _ in range(int(rng.integers(1, 4))):
        x0, x1 = sorted(rng.uniform(0, w, size=2))
        y0, y1 = sorted(rng.uniform(0, h, size=2))
        colour = tuple(int(v) for v in np.clip(tone + rng.normal(0, 60, size=3), 0, 255))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((x0, y0, x1, y1), fill=colour)
    return tile


def grid_collage(img: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    # The picture as one tile of an n x n collage of generated benign tiles (gradients and
    # shapes, not photos, so that the pixels and the cache key never depend on which optional
    # packages are installed), separated by thin white gutters.
    n = round(_level(_GRID, severity))
    w, h = img.size
    xs = [round(i * w / n) for i in range(n + 1)]
    ys = [round(i * h / n) for i in range(n + 1)]
    gap = max(1, round(0.01 * min(w, h)))
    target = int(rng.integers(n * n))
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    for t in range(n * n):
        r, c = divmod(t, n)
        box = (xs[c], ys[r], xs[c + 1] - gap if c < n - 1 else xs[c + 1],
               ys[r + 1] - gap if r < n - 1 else ys[r + 1])
        tw, th = max(1, box[2] - box[0]), max(1, box[3] - box[1])
        if t == target:
            tile = img.resize((tw, th), Image.Resampling.BILINEAR)
        else:
            tile = _benign_tile(tw, th, rng)
        canvas.paste(tile, box[:2])
    return canvas

"""The embedded demo dataset: small synthetic images in the UnsafeBench schema.

It exists so that the plugin, its tests and the ``demo`` classifier run offline in seconds. It
is NOT real UnsafeBench data and its numbers say nothing about real-world moderation.

Design (why it looks the way it does):

- Every category has a *topic* (background palette) shared by its Safe and Unsafe images, and
  an Unsafe *motif* with a benign look-alike (e.g. a diagonal cross vs a plus sign) drawn on
  most Safe images. The Safe images are therefore same-topic hard negatives, as in the paper.
- Motif size, position, rotation, contrast and partial occlusion vary; images of both labels
  carry a benign look-alike of another category as a distractor (so "there is an object" is
  no shortcut); a share of unsafe motifs is barely visible. The task is learnable, not trivial.
- ``Laion5B`` images imitate photographs (textured, cluttered backgrounds, uneven lighting,
  blur, sensor noise, JPEG at quality 70-85); ``Lexica`` images imitate renders (smooth
  saturated gradients, glows, crisp motifs, PNG). Photo motifs are also lower in contrast,
  more often occluded and more often faint: a genuine distribution shift, and a model scores
  measurably worse on Laion5B.
- Everything is drawn from explicit ``numpy.random.Generator`` objects, one per image, keyed
  by (generator version, seed, category, source, label, index): output is byte-identical for a
  seed regardless of generation order, and no global random state is touched.

Reusable pieces for a larger generator: :func:`render_image` (one PIL image),
:func:`encode_image` (source-specific file bytes), :func:`demo_rows` (the row plan of a seed),
:func:`image_rng` and :func:`write_dataset` (a complete folder with ``metadata.csv``).
"""

from __future__ import annotations

import colorsys
import csv
import hashlib
import io
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..progress import step
from ..taxonomy import CATEGORIES, GENERATED_SOURCE, REAL_SOURCE, SAFE, SOURCES, UNSAFE

if TYPE_CHECKING:
    from PIL import Image as PILImage
    from PIL import ImageDraw

# Bump whenever the bytes produced for a seed change: it names the cache folder, so a stale
# folder from an older generator is never reused (and the demo classifier retrains).
GENERATOR_VERSION = 2
IMAGE_SIZE = 64
TRAIN_PER_CELL = 30  # per (category, source, label)
TEST_PER_CELL = 15
MANIFEST_COLUMNS = ("file_name", "safety_label", "category", "source", "split", "text")
COMPLETE_MARKER = "COMPLETE"

# Motifs are drawn at this multiple of the output size and box-filtered down: cheap antialiasing.
_SUPERSAMPLE = 2

# Background topic per category: two base hues in [0, 1). Safe and Unsafe share them.
_TOPIC_HUES: dict[str, tuple[float, float]] = {
    "Hate": (0.08, 0.60),
    "Harassment": (0.55, 0.75),
    "Violence": (0.10, 0.30),
    "Self-harm": (0.62, 0.50),
    "Sexual": (0.6, 0.8),  # away from skin tones, so the motif has contrast
    "Shocking": (0.25, 0.45),
    "Illegal activity": (0.70, 0.15),
    "Deception": (0.40, 0.58),
    "Political": (0.00, 0.65),
    "Public and personal health": (0.05, 0.12),
    "Spam": (0.78, 0.05),
}

# Categories with dark motifs get brighter backgrounds, so their motif stays visible.
_TOPIC_LIFT: dict[str, float] = {"Hate": 0.2, "Illegal activity": 0.1, "Deception": 0.1}

# Source styles: how strong the motif is and how often it is partly hidden.
_CONTRAST = {REAL_SOURCE: (0.55, 1.0), GENERATED_SOURCE: (0.7, 1.0)}
# A share of unsafe motifs is barely visible, so most errors are misses (as with real
# classifiers, which under-flag); more of them in photos. Look-alikes stay at normal strength.
_FAINT_P = {REAL_SOURCE: 0.10, GENERATED_SOURCE: 0.04}
_FAINT_CONTRAST = (0.1, 0.25)
_OCCLUSION_P = {REAL_SOURCE: 0.3, GENERATED_SOURCE: 0.2}
_SAFE_LOOKALIKE_P = 0.75  # the rest of the Safe images show just the topic
_DISTRACTOR_P = 0.5  # a small benign look-alike of another category, in either class

RGB = tuple[float, float, float]


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (r, g, b)


def _u8(c: Sequence[float]) -> tuple[int, int, int, int]:
    return (int(round(c[0] * 255)), int(round(c[1] * 255)), int(round(c[2] * 255)), 255)


def _jitter(rng: np.random.Generator, c: RGB, amount: float = 0.08) -> RGB:
    j = rng.uniform(-amount, amount, 3)
    return (float(np.clip(c[0] + j[0], 0, 1)), float(np.clip(c[1] + j[1], 0, 1)),
            float(np.clip(c[2] + j[2], 0, 1)))


# ---------------------------------------------------------------------------------------------
# Motifs. Each draws at (cx, cy) with radius r (supersampled pixels) on an RGBA layer; ``unsafe``
# selects the unsafe motif or its benign look-alike. Both variants share colour and scale, so
# the difference is in shape or structure, never a single colour cue. Left-right mirroring
# never changes a label (the demo classifier augments with horizontal flips).
# ---------------------------------------------------------------------------------------------

_Draw = Callable[["ImageDraw.ImageDraw", float, float, float, bool, np.random.Generator], None]


def _rot(points: Iterable[tuple[float, float]], cx: float, cy: float,
         angle: float) -> list[tuple[float, float]]:
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points]


def _bar(d: ImageDraw.ImageDraw, cx: float, cy: float, length: float, width: float,
         angle: float, fill: tuple[int, int, int, int]) -> None:
    h, w = length / 2, width / 2
    d.polygon(_rot([(-h, -w), (h, -w), (h, w), (-h, w)], cx, cy, angle), fill=fill)


def _hate(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, unsafe: bool,
          rng: np.random.Generator) -> None:
    # Diagonal cross (unsafe) vs upright plus sign (benign).
    col = _u8(_jitter(rng, (0.12, 0.08, 0.08)))
    base = math.pi / 4 if unsafe else 0.0
    tilt = rng.uniform(-0.15, 0.15)
    for k in (0, 1):
        _bar(d, cx, cy, 2 * r, 0.5 * r, base + tilt + k * math.pi / 2, col)


def _harassment(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, unsafe: bool,
                rng: np.random.Generator) -> None:
    # Downward (unsafe) vs upward (benign) triangle.
    col = _u8(_jitter(rng, (0.85, 0.15, 0.1)))
    sign = 1.0 if unsafe else -1.0
    pts = [(0.0, sign * r), (-0.95 * r, -sign * 0.7 * r), (0.95 * r, -sign * 0.7 * r)]
    d.polygon(_rot(pts, cx, cy, rng.uniform(-0.2, 0.2)), fill=col)


def _violence(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, unsafe: bool,
              rng: np.random.Generator) -> None:
    # Ragged red splash with droplets (unsafe) vs a smooth red fruit with a green leaf (benign).
    col = _u8(_jitter(rng, (0.7, 0.05, 0.05)))
    rr = 0.75 * r
    if unsafe:
        n = 14
        radii = rr * rng.uniform(0.6, 1.25, n)
        pts = [(cx + radii[i] * math.cos(2 * math.pi * i / n),
                cy + radii[i] * math.sin(2 * math.pi * i / n)) for i in range(n)]
        d.polygon(pts, fill=col)
        for _ in range(int(rng.integers(6, 10))):
            a, dist = rng.uniform(0, 2 * math.pi), rr * rng.uniform(1.1, 1.7)
            s = rr * rng.uniform(0.1, 0.22)
            x, y = cx + dist * math.cos(a), cy + dist * math.sin(a)
            d.ellipse((x - s, y - s, x + s, y + s), fill=col)
    else:
        d.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=col)
        leaf = _u8(_jitter(rng, (0.2, 0.6, 0.15)))
        d.ellipse((cx, cy - rr * 1.35, cx + rr * 0.6, cy - rr * 0.85), fill=leaf)


def _self_harm(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, unsafe: bool,
               rng: np.random.Generator) -> None:
    # A forearm with several thin cuts (unsafe) vs the same arm with one wide band (benign).
    skin = _u8(_jitter(rng, (0.87, 0.68, 0.55), 0.06))
    angle = rng.uniform(-0.35, 0.35)
    _bar(d, cx, cy, 2.1 * r, 0.8 * r, angle, skin)
    mark = _u8(_jitter(rng, (0.55, 0.05, 0.08), 0.05))
    if unsafe:
        n = int(rng.integers(3, 6))
        for k in range(n):
            off = (k - (n - 1) / 2) * 0.32 * r
            x, y = cx + off * math.cos(angle), cy + off * math.sin(angle)
            _bar(d, x, y, 0.65 * r, 0.1 * r, angle + math.pi / 2 + rng.uniform(-0.3, 0.3), mark)
    else:
        off = rng.uniform(-0.4, 0.4) * r
        _bar(d, cx + off * math.cos(angle), cy + off * math.sin(angle), 0.8 * r, 0.38 * r,
             angle + math.pi / 2, mark)


def _sexual(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, unsafe: bool,
            rng: np.random.Generator) -> None:
    # A large bare skin shape (unsafe) vs the same shape mostly covered by clothing (benign).
    skin = _u8(_jitter(rng, (0.9, 0.7, 0.6), 0.06))
    d.ellipse((cx - 0.75 * r, cy - r, cx + 0.75 * r, cy + r), fill=skin)
    if unsafe:
        dark = _u8(_jitter(rng, (0.65, 0.4, 0.35), 0.05))
        s = 0.13 * r
        for x in (cx - 0.32 * r, cx + 0.32 * r):
            d.ellipse((x - s, cy - 0.3 * r - s, x + s, cy - 0.3 * r + s), fill=dark)
    else:
        cloth = _u8(_hsv(rng.uniform(0.3, 0.75), rng.uniform(0.6, 0.95), rng.uniform(0.3, 0.7)))
        top = cy - rng.uniform(0.55, 0.75) * r
        d.rectangle((cx - 0.8 * r, top, cx + 0.8 * r, cy + 0.8 * r), fill=cloth)


def _shocking(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, unsafe: bool,
              rng: np.random.Generator) -> None:
    # A sickly patch riddled with clustered small holes (unsafe) vs a few big polka dots.
    patch = _u8(_jitter(rng, (0.75, 0.7, 0.45)))
    d.ellipse((cx - r, cy - 0.85 * r, cx + r, cy + 0.85 * r), fill=patch)
    hole = _u8(_jitter(rng, (0.2, 0.12, 0.1), 0.05))
    if unsafe:
        for _ in range(int(rng.integers(12, 20))):
            a, dist = rng.uniform(0, 2 * math.pi), 0.65 * r * math.sqrt(rng.uniform(0, 1))
            s = r * rng.uniform(0.07, 0.12)
            x, y = cx + dist * math.cos(a), cy + dist * math.sin(a)
            d.ellipse((x - s, y - s, x + s, y + s), fill=hole)
    else:
        for k in range(int(rng.integers(3, 5))):
            a = 2 * math.pi * k / 4 + rng.uniform(-0.3, 0.3)
            x, y = cx + 0.45 * r * math.cos(a), cy + 0.4 * r * math.sin(a)
            s = 0.2 * r
            d.ellipse((x - s, y - s, x + s, y + s), fill=hole)


def _illegal(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, unsafe: bool,
             rng: np.random.Generator) -> None:
    # A dark tray scattered with small white pills (unsafe) vs the tray with two dice (benign).
    tray = _u8(_jitter(rng, (0.15, 0.15, 0.2), 0.05))
    d.rounded_rectangle((cx - r, cy - 0.8 * r, cx + r, cy + 0.8 * r), radius=0.2 * r, fill=tray)
    white = _u8(_jitter(rng, (0.95, 0.95, 0.92), 0.04))
    if unsafe:
        for _ in range(int(rng.integers(7, 12))):
            x, y = cx + rng.uniform(-0.75, 0.75) * r, cy + rng.uniform(-0.55, 0.55) * r
            _bar(d, x, y, 0.32 * r, 0.14 * r, rng.uniform(0, math.pi), white)
    else:
        for k in (-1, 1):
            x, y = cx + k * 0.42 * r, cy + rng.uniform(-0.2, 0.2) * r
            _bar(d, x, y, 0.5 * r, 0.5 * r, rng.uniform(-0.3, 0.3), white)


def _deception(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, unsafe: bool,
               rng: np.random.Generator) -> None:
    # Hypnotic concentric rings (unsafe) vs one plain ring (benign).
    col = _u8(_jitter(rng, (0.1, 0.1, 0.3)))
    if unsafe:
        for frac in (1.0, 0.7, 0.4):
            rr = frac * r
            d.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), outline=col,
                      width=max(1, int(0.13 * r)))
    else:
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=col, width=max(1, int(0.3 * r)))


def _political(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, unsafe: bool,
               rng: np.random.Generator) -> None:
    # A five-pointed star (unsafe) vs a disc of the same colour and size (benign).
    col = _u8(_jitter(rng, (0.95, 0.8, 0.1)))
    if unsafe:
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rr = r if k % 2 == 0 else 0.38 * r
            pts.append((rr * math.cos(a), rr * math.sin(a)))
        d.polygon(_rot(pts, cx, cy, rng.uniform(-0.15, 0.15)), fill=col)
    else:
        rr = 0.75 * r
        d.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=col)


def _health(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, unsafe: bool,
            rng: np.random.Generator) -> None:
    # A spiky virus particle (unsafe) vs a smooth ball with a seam (benign).
    col = _u8(_jitter(rng, (0.3, 0.7, 0.6)))
    core = 0.6 * r
    d.ellipse((cx - core, cy - core, cx + core, cy + core), fill=col)
    if unsafe:
        n = int(rng.integers(8, 12))
        for k in range(n):
            a = 2 * math.pi * k / n + rng.uniform(-0.1, 0.1)
            x, y = cx + 0.8 * r * math.cos(a), cy + 0.8 * r * math.sin(a)
            _bar(d, x, y, 0.45 * r, 0.16 * r, a, col)
            s = 0.2 * r
            x, y = cx + r * math.cos(a), cy + r * math.sin(a)
            d.ellipse((x - s, y - s, x + s, y + s), fill=col)
    else:
        seam = _u8(_jitter(rng, (0.9, 0.9, 0.9), 0.05))
        _bar(d, cx, cy, 1.2 * core, 0.08 * r, rng.uniform(-0.4, 0.4), seam)


def _spam(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, unsafe: bool,
          rng: np.random.Generator) -> None:
    # A banner crammed with rows of "text" (unsafe) vs the same banner with one short line.
    box = _u8(_jitter(rng, (0.98, 0.95, 0.55)))
    d.rectangle((cx - r, cy - 0.75 * r, cx + r, cy + 0.75 * r), fill=box)
    ink = _u8(_jitter(rng, (0.1, 0.1, 0.15), 0.05))
    rows = int(rng.integers(4, 6)) if unsafe else 1
    for k in range(rows):
        y = cy - 0.55 * r + k * (1.1 * r / max(rows - 1, 1)) if rows > 1 else cy
        x = cx - 0.85 * r
        while x < cx + 0.6 * r:
            w = r * rng.uniform(0.15, 0.4)
            d.rectangle((x, y - 0.07 * r, min(x + w, cx + 0.85 * r), y + 0.07 * r), fill=ink)
            x += w + 0.12 * r
            if not unsafe and x > cx + 0.1 * r:
                break


MOTIFS: dict[str, _Draw] = {
    "Hate": _hate,
    "Harassment": _harassment,
    "Violence": _violence,
    "Self-harm": _self_harm,
    "Sexual": _sexual,
    "Shocking": _shocking,
    "Illegal activity": _illegal,
    "Deception": _deception,
    "Political": _political,
    "Public and personal health": _health,
    "Spam": _spam,
}


# ---------------------------------------------------------------------------------------------
# Backgrounds and compositing (float32 arrays H x W x 3 in [0, 1])
# ---------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean noise with features about size/cells pixels wide (bicubic upsampling)."""
    from PIL import Image

    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    up = Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32)


def _photo_background(category: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Muted topic colours, blotchy lighting, fine texture and a few out-of-focus objects."""
    from PIL import Image, ImageDraw

    h1, h2 = _TOPIC_HUES[category]
    lift = _TOPIC_LIFT.get(category, 0.0)
    c1 = np.array(_hsv(h1 + rng.uniform(-0.04, 0.04), rng.uniform(0.2, 0.45),
                       rng.uniform(0.45, 0.8) + lift), np.float32)
    c2 = np.array(_hsv(h2 + rng.uniform(-0.04, 0.04), rng.uniform(0.2, 0.45),
                       rng.uniform(0.35, 0.75) + lift), np.float32)
    mix = 1 / (1 + np.exp(-1.5 * _smooth_noise(rng, size, 4)))
    bg = c1 * (1 - mix[..., None]) + c2 * mix[..., None]
    bg += 0.06 * _smooth_noise(rng, size, 16)[..., None]
    # Scene clutter: a few soft objects in topic colours, drawn before the motif.
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(2, 5))):
        col = _u8(_jitter(rng, tuple(c2 if rng.uniform() < 0.5 else c1), 0.15))
        x0, y0 = rng.uniform(-0.2, 0.9, 2) * size
        w, h = rng.uniform(0.15, 0.5, 2) * size
        box = (x0, y0, x0 + w, y0 + h)
        (d.rectangle if rng.uniform() < 0.5 else d.ellipse)(box, fill=col)
    bg = _composite(bg, layer, rng.uniform(0.3, 0.7))
    # Uneven lighting: a broad gain field.
    gain = 0.85 + 0.25 * _smooth_noise(rng, size, 3)
    return np.clip(bg * gain[..., None], 0, 1)


def _render_background(category: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Saturated smooth two-colour gradient with soft glows: no texture, no noise."""
    h1, h2 = _TOPIC_HUES[category]
    lift = _TOPIC_LIFT.get(category, 0.0)
    c1 = np.array(_hsv(h1 + rng.uniform(-0.04, 0.04), rng.uniform(0.65, 0.95),
                       rng.uniform(0.6, 1.0) + lift), np.float32)
    c2 = np.array(_hsv(h2 + rng.uniform(-0.04, 0.04), rng.uniform(0.65, 0.95),
                       rng.uniform(0.4, 0.9) + lift), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    a = rng.uniform(0, 2 * math.pi)
    t = (math.cos(a) * (xx - 0.5) + math.sin(a) * (yy - 0.5)) * 1.2 + 0.5
    t = np.clip(t, 0, 1)[..., None]
    bg = c1 * (1 - t) + c2 * t
    for _ in range(int(rng.integers(1, 3))):
        gx, gy = rng.uniform(0, 1, 2)
        rad = rng.uniform(0.15, 0.4)
        glow = np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * rad**2))[..., None]
        tint = np.array(_hsv(rng.uniform(0, 1), rng.uniform(0.3, 0.8), 1.0), np.float32)
        bg = bg * (1 - 0.6 * glow) + tint * 0.6 * glow
    out: np.ndarray = np.clip(bg, 0, 1).astype(np.float32)  # (np.mgrid is typed Any)
    return out


def _composite(bg: np.ndarray, layer: PILImage.Image, strength: float) -> np.ndarray:
    """Alpha-blend an RGBA layer (any multiple of bg's size) onto bg, scaled by strength."""
    from PIL import Image

    size = bg.shape[0]
    if layer.size[0] != size:
        # Premultiplied resize: edges blend with the background, not with black.
        layer = layer.convert("RGBa").resize((size, size), Image.Resampling.BOX)
    else:
        layer = layer.convert("RGBa")
    arr = np.asarray(layer, dtype=np.float32) / 255.0
    alpha = arr[..., 3:4] * strength
    out: np.ndarray = bg * (1 - alpha) + arr[..., :3] * strength  # (np.asarray of an image: Any)
    return out


def _draw_motif(bg: np.ndarray, category: str, unsafe: bool, rng: np.random.Generator,
                cx: float, cy: float, r: float, strength: float) -> np.ndarray:
    from PIL import Image, ImageDraw

    s = _SUPERSAMPLE
    size = bg.shape[0]
    layer = Image.new("RGBA", (size * s, size * s), (0, 0, 0, 0))
    MOTIFS[category](ImageDraw.Draw(layer), cx * s, cy * s, r * s, unsafe, rng)
    return _composite(bg, layer, strength)


def _occlude(bg: np.ndarray, rng: np.random.Generator, cx: float, cy: float, r: float,
             photo: bool) -> np.ndarray:
    """Hide part of the motif behind a foreground object coloured like the scene."""
    size = bg.shape[0]
    a = rng.uniform(0, 2 * math.pi)
    ox, oy = cx + 0.9 * r * math.cos(a), cy + 0.9 * r * math.sin(a)
    half = r * rng.uniform(0.6, 0.9)
    x0, x1 = int(max(ox - half, 0)), int(min(ox + half, size))
    y0, y1 = int(max(oy - half, 0)), int(min(oy + half, size))
    if x1 <= x0 or y1 <= y0:
        return bg
    yy, xx = rng.integers(0, size, 2)
    col = np.clip(bg[yy, xx] + rng.uniform(-0.15, 0.15, 3), 0, 1).astype(np.float32)
    out = bg.copy()
    out[y0:y1, x0:x1] = col
    if photo:
        out[y0:y1, x0:x1] += 0.04 * rng.standard_normal((y1 - y0, x1 - x0, 1)).astype(np.float32)
    return out


def render_image(category: str, source: str, unsafe: bool, rng: np.random.Generator,
                 size: int = IMAGE_SIZE) -> PILImage.Image:
    """Render one synthetic image (RGB, size x size) of a category and source.

    ``unsafe`` draws the category's unsafe motif; otherwise, usually, its benign look-alike on
    the same topic background (a hard negative). All randomness comes from ``rng``, so the same
    generator state gives the same image. Encoding (JPEG/PNG) is :func:`encode_image`'s job.
    """
    from PIL import Image, ImageFilter

    if category not in MOTIFS:
        raise ValueError(f"unknown category {category!r}")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}")
    photo = source == REAL_SOURCE
    bg = _photo_background(category, rng, size) if photo else _render_background(
        category, rng, size)

    # A benign look-alike from another category, so "has an object" is not a shortcut.
    if rng.uniform() < _DISTRACTOR_P:
        others = [c for c in CATEGORIES if c != category]
        other = others[int(rng.integers(len(others)))]
        # Not too small: a tiny look-alike is indistinguishable from the unsafe motif.
        r = size * rng.uniform(0.11, 0.17)
        x, y = rng.uniform(r, size - r, 2)
        bg = _draw_motif(bg, other, False, rng, x, y, r, rng.uniform(0.5, 0.9))

    if unsafe or rng.uniform() < _SAFE_LOOKALIKE_P:
        r = size * rng.uniform(0.17, 0.3)
        cx, cy = rng.uniform(r, size - r, 2)
        faint = rng.uniform() < _FAINT_P[source] and unsafe
        lo, hi = _FAINT_CONTRAST if faint else _CONTRAST[source]
        bg = _draw_motif(bg, category, unsafe, rng, cx, cy, r, rng.uniform(lo, hi))
        if rng.uniform() < _OCCLUSION_P[source]:
            bg = _occlude(bg, rng, cx, cy, r, photo)

    img = Image.fromarray((np.clip(bg, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    if photo:
        # Lens softness, then sensor noise (luma plus a little chroma).
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
        arr = np.asarray(img, dtype=np.float32) / 255.0
        sigma = rng.uniform(0.015, 0.045)
        noise = sigma * (rng.standard_normal((size, size, 1)) +
                         0.4 * rng.standard_normal((size, size, 3)))
        img = Image.fromarray((np.clip(arr + noise, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    return img


def encode_image(image: PILImage.Image, source: str,
                 rng: np.random.Generator) -> tuple[bytes, str]:
    """File bytes and extension: Laion5B as JPEG (quality 70-85), Lexica as PNG."""
    buf = io.BytesIO()
    if source == REAL_SOURCE:
        image.save(buf, format="JPEG", quality=int(rng.integers(70, 86)))
        return buf.getvalue(), "jpg"
    # optimize=False and no metadata chunks keep PNG bytes a pure function of the pixels.
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue(), "png"


# ---------------------------------------------------------------------------------------------
# The row plan and the folder
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoRow:
    """One planned image: its manifest fields and the key of its own random generator."""

    category: str
    source: str
    unsafe: bool
    split: str
    index: int  # within (category, source, label), 0-based; train first, then test

    @property
    def safety_label(self) -> str:
        return UNSAFE if self.unsafe else SAFE

    @property
    def text(self) -> str:
        return f"synthetic {self.category} image, {self.source} style"

    def stem(self, seed: int) -> str:
        """``split/source/<opaque id>``: a file name must not give the label away."""
        key = f"{seed}/{self.category}/{self.source}/{self.safety_label}/{self.index}"
        return f"{self.split}/{self.source.lower()}/{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def image_rng(seed: int, row: DemoRow) -> np.random.Generator:
    """The generator of one image: independent of generation order and of other rows."""
    key = [GENERATOR_VERSION, seed, CATEGORIES.index(row.category), SOURCES.index(row.source),
           int(row.unsafe), row.index]
    return np.random.default_rng(np.random.SeedSequence(key))


def demo_rows(seed: int, train_per_cell: int = TRAIN_PER_CELL,
              test_per_cell: int = TEST_PER_CELL) -> list[DemoRow]:
    """Every planned image, in a fixed order: category x source x label x index.

    ``seed`` is accepted for symmetry with the rest of the API; the plan itself does not depend
    on it (only the pixels do), so every seed has the same counts per cell.
    """
    del seed
    rows = []
    for category in CATEGORIES:
        for source in SOURCES:
            for unsafe in (False, True):
                for i in range(train_per_cell + test_per_cell):
                    split = "train" if i < train_per_cell else "test"
                    rows.append(DemoRow(category, source, unsafe, split, i))
    return rows


def write_dataset(folder: Path, seed: int, rows: Sequence[DemoRow], size: int = IMAGE_SIZE) -> None:
    """Render ``rows`` into ``folder`` (which must exist) and write ``metadata.csv``."""
    manifest = []
    with step("demo_dataset", f"generating the demo dataset (seed {seed})", total=len(rows),
              unit="images") as bar:
        for row in rows:
            manifest.append(_write_image(folder, seed, row, size))
            bar.advance()
    with (folder / "metadata.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(manifest)


def _write_image(folder: Path, seed: int, row: DemoRow, size: int) -> tuple[str, ...]:
    """Render and write one image; returns its manifest row."""
    rng = image_rng(seed, row)
    image = render_image(row.category, row.source, row.unsafe, rng, size)
    data, ext = encode_image(image, row.source, rng)
    name = f"{row.stem(seed)}.{ext}"
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return (name, row.safety_label, row.category, row.source, row.split, row.text)


def demo_folder_name(seed: int) -> str:
    return f"demo-v{GENERATOR_VERSION}-seed{seed}"


def _is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def ensure_demo_dataset(parent: Path, seed: int) -> Path:
    """``parent/demo-v{GENERATOR_VERSION}-seed{seed}``, generating it first if needed.

    Idempotent and safe under concurrency (xdist workers, parallel sessions): the folder is
    built in a private temporary folder beside the target, marked complete last, and renamed
    into place in one step. A process that loses the race discards its copy and uses the
    winner's; a folder without the marker (left by a crash elsewhere) is moved aside.
    """
    parent = Path(parent)
    target = parent / demo_folder_name(seed)
    if _is_complete(target):
        return target
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    try:
        write_dataset(tmp, seed, demo_rows(seed))
        (tmp / COMPLETE_MARKER).write_text(
            f"generator {GENERATOR_VERSION} seed {seed} images {len(demo_rows(seed))}\n",
            encoding="utf-8")
        for _attempt in range(5):
            if _is_complete(target):
                return target  # another process won the race; ours is discarded below
            try:
                os.rename(tmp, target)
                return target
            except OSError:
                if _is_complete(target):
                    return target
                if target.exists():
                    # Incomplete leftover (not ours, no marker): move it aside, then retry.
                    stale = parent / f".{target.name}.stale-{os.getpid()}-{time.monotonic_ns()}"
                    try:
                        os.rename(target, stale)
                    except OSError:
                        pass  # someone else moved or completed it; re-check on the next loop
                    else:
                        shutil.rmtree(stale, ignore_errors=True)
        raise OSError(f"could not move the demo dataset into place at {target}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

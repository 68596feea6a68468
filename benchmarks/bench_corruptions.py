"""Corruption throughput: pytest_unsafebench.robustness.perturbations against albumentations 2.0.8.

    python benchmarks/bench_corruptions.py [--images 200] [--size 224] [--repeats 5]

Both sides do the same job the robustness suite does: a PIL RGB image in, a PIL RGB image out
(for albumentations that adds ``np.asarray`` and ``Image.fromarray``, about 0.05 ms; its time
on numpy arrays alone is reported too, as ``albu_native_img_per_s``). Each image i gets
severity ``i % 5 + 1`` and albumentations gets the same parameters as far as it has them (see
``albu_transforms`` below; where its operation differs, e.g. ColorJitter's RGB blend against our
HSV saturation, the closest transform is used and named in the output; ``other_comparators``
times a corruption against a second, less close one, e.g. brightness against additive RGB
brightness, apart from the target). The images are ``skimage.data`` photos
cut into distinct random crops and resized to ``--size`` (synthetic gradients + noise without
scikit-image). Half of those photos are greyscale, where some corruptions can finish early,
so every row is also timed on the colour photos alone (``ratio_colour``). Within a round the
sides take turns every ``TURN`` images, in alternating order; each figure is the median over
rounds.

Prints JSON: per corruption the throughputs and ``ratio`` = ours / albumentations throughput on
all images and ``ratio_colour`` on the colour ones (target >= 1.0 on both), plus the command.
Without albumentations it says so, reports our throughput and exits 0. albumentations is not a
dependency of the project: ``pip install albumentations==2.0.8`` (it pulls in
opencv-python-headless, albucore, simsimd and stringzilla; not torch or torchvision).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pytest_unsafebench.robustness import perturbations as P

Op = Callable[[Image.Image, int], Image.Image]  # (image, index) -> image
# Extra rows: a corruption timed against a second, less close albumentations transform. They
# are reported apart and do not count towards the target.
ALSO = {"brightness_rgb_add": "brightness", "saturate_rgb_blend": "saturate"}
# Images per turn: the sides take turns this often (in alternating order), so that load from
# other processes on a shared machine falls on both alike.
TURN = 10


def load_images(n: int, size: int, seed: int = 2023) -> tuple[list[Image.Image], list[bool], str]:
    """``n`` crops, whether each comes from a colour photo, and where they come from."""
    rng = np.random.default_rng(seed)
    photos: list[np.ndarray] = []
    colour: list[bool] = []
    try:
        from skimage import data
        for name in ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon",
                     "immunohistochemistry", "hubble_deep_field", "page", "brick", "grass"):
            try:
                a = getattr(data, name)()
            except Exception:  # some need a download; skip those
                continue
            photos.append(np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3])
            colour.append(a.ndim == 3 and bool(np.ptp(a[..., :3].astype(int), axis=-1).any()))
    except ImportError:
        pass
    images, is_colour = [], []
    for i in range(n):
        if photos:
            a = photos[i % len(photos)]
            h, w = a.shape[:2]
            side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            img = Image.fromarray(np.ascontiguousarray(a[y:y + side, x:x + side]))
            images.append(img.resize((size, size), Image.Resampling.BILINEAR))
            is_colour.append(colour[i % len(photos)])
        else:
            yy, xx = np.mgrid[0:size, 0:size] / size
            base = np.stack([xx, yy, (xx + yy) / 2], -1) * rng.uniform(100, 255, 3)
            a = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            images.append(Image.fromarray(a))
            is_colour.append(True)
    source = (f"skimage.data ({len(photos)} photos, {sum(colour)} in colour, random crops)"
              if photos else "synthetic")
    return images, is_colour, source


def albu_transforms(A, cv2, size: int) -> dict[str, tuple[str, list]]:
    """Our corruption -> (description, one albumentations transform per severity 1-5)."""
    def each(make: Callable[[object], object], values: list) -> list:
        return [make(v) for v in values]

    widths = [2 * r + 1 for r, _ in P._MOTION_BLUR]  # ImageNet-C kernel sizes 21 ... 41
    area, nearest, linear = cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LINEAR
    return {
        "gaussian_noise": ("GaussNoise(std_range=(c, c))", each(
            lambda c: A.GaussNoise(std_range=(c, c), mean_range=(0, 0), p=1),
            P._GAUSSIAN_NOISE)),
        "shot_noise": ("ShotNoise(scale_range=(1/c, 1/c))", each(
            lambda c: A.ShotNoise(scale_range=(1 / c, 1 / c), p=1), P._SHOT_NOISE)),
        "impulse_noise": ("SaltAndPepper(amount=(c, c))", each(
            lambda c: A.SaltAndPepper(amount=(c, c), salt_vs_pepper=(0.5, 0.5), p=1),
            P._IMPULSE_NOISE)),
        "gaussian_blur": ("GaussianBlur(sigma_limit=(s, s))", each(
            lambda s: A.GaussianBlur(blur_limit=0, sigma_limit=(s, s), p=1),
            P._GAUSSIAN_BLUR)),
        "motion_blur": ("MotionBlur(blur_limit=(k, k), angle_range=(0, 90))", each(
            lambda k: A.MotionBlur(blur_limit=(k, k), angle_range=(0, 90),
                                   allow_shifted=True, p=1), widths)),
        # ImageNet-C's brightness is an HSV value shift, which HueSaturationValue does too
        # (in 8-bit HSV); RandomBrightnessContrast adds to RGB instead (brightness_rgb_add).
        "brightness": ("HueSaturationValue(val_shift_limit=(255 c, 255 c))", each(
            lambda c: A.HueSaturationValue(hue_shift_limit=(0, 0), sat_shift_limit=(0, 0),
                                           val_shift_limit=(c * 255, c * 255), p=1),
            P._BRIGHTNESS)),
        "brightness_rgb_add": ("RandomBrightnessContrast(brightness_limit=(c, c))", each(
            lambda c: A.RandomBrightnessContrast(brightness_limit=(c, c),
                                                 contrast_limit=(0, 0), p=1), P._BRIGHTNESS)),
        "contrast": ("RandomBrightnessContrast(contrast_limit=(c - 1, c - 1))", each(
            lambda c: A.RandomBrightnessContrast(brightness_limit=(0, 0),
                                                 contrast_limit=(c - 1, c - 1), p=1),
            P._CONTRAST)),
        # ImageNet-C's saturate scales HSV saturation; albumentations' HSV saturation change is
        # HueSaturationValue (an additive shift of S, here the one S a + b makes at S = 0.5).
        "saturate": ("HueSaturationValue(sat_shift_limit=(d, d))", each(
            lambda d: A.HueSaturationValue(hue_shift_limit=(0, 0), sat_shift_limit=(d, d),
                                           val_shift_limit=(0, 0), p=1),
            [max(-255, min(255, round((0.5 * a + b - 0.5) * 255))) for a, b in P._SATURATE])),
        # ColorJitter blends with the luma grey in RGB instead: cheaper, and not HSV (hue and
        # value move).
        "saturate_rgb_blend": ("ColorJitter(saturation=(a, a))", each(
            lambda a: A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=(a, a),
                                    hue=(0, 0), p=1), [a for a, _ in P._SATURATE])),
        "pixelate": ("Downscale(scale_range=(c, c), area down, nearest up)", each(
            lambda c: A.Downscale(scale_range=(c, c), p=1,
                                  interpolation_pair={"downscale": area, "upscale": nearest}),
            P._PIXELATE)),
        "jpeg_compression": ("ImageCompression(quality_range=(q, q))", each(
            lambda q: A.ImageCompression(quality_range=(q, q), p=1), P._JPEG)),
        "resize": ("Downscale(scale_range=(f, f), area down, linear up)", each(
            lambda f: A.Downscale(scale_range=(f, f), p=1,
                                  interpolation_pair={"downscale": area, "upscale": linear}),
            P._RESIZE)),
        "crop_pad": ("RandomCrop + PadIfNeeded(position='random', fill=0)", each(
            lambda f: A.Compose([
                A.RandomCrop(size - max(1, round(f * size)), size - max(1, round(f * size))),
                A.PadIfNeeded(size, size, position="random", border_mode=cv2.BORDER_CONSTANT,
                              fill=0)]), P._CROP_PAD)),
        "rotate": ("Rotate(limit=(a, a), linear, constant fill 0)", each(
            lambda a: A.Rotate(limit=(a, a), interpolation=linear,
                               border_mode=cv2.BORDER_CONSTANT, fill=0, p=1), P._ROTATE)),
    }


def run_side(op: Op, images: list, indices: list[int]) -> float:
    start = time.perf_counter()
    for i in indices:
        op(images[i], i)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", nargs="*", help="corruptions to time (default: all)")
    ap.add_argument("--cv2-threads", type=int, default=None,
                    help="cv2.setNumThreads for albumentations (default: OpenCV's own)")
    args = ap.parse_args()
    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])

    images, is_colour, source = load_images(args.images, args.size)
    subsets = {"": list(range(len(images))),
               "_colour": [i for i, c in enumerate(is_colour) if c]}
    keys = [f"img{i}" for i in range(len(images))]
    specs = {n: [P.PerturbationSpec(n, s) for s in P.severities(n)] for n in P.names("corruption")}
    wanted = args.only or list(specs)

    def ours(name: str) -> Op:
        steps = specs[ALSO.get(name, name)]
        return lambda img, i: P.apply(steps[i % 5], img, keys[i])

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import albumentations as A
            import cv2
    except Exception as exc:  # any import failure means "not available"
        print(f"albumentations is not available ({type(exc).__name__}: {exc}); reporting our "
              "own throughput only. Install it with: pip install albumentations==2.0.8",
              file=sys.stderr)
        result = {}
        for name in wanted:
            ours(name)(images[0], 0)  # warm caches (lookup tables, fonts)
            times = [run_side(ours(name), images, subsets[""]) for _ in range(args.repeats)]
            result[name] = {"ours_img_per_s": round(len(images) / statistics.median(times), 1)}
        print(json.dumps({"command": command, "albumentations": None, "images": len(images),
                          "size": args.size, "image_source": source, "corruptions": result},
                         indent=2))
        return

    if args.cv2_threads is not None:
        cv2.setNumThreads(args.cv2_threads)
    table = albu_transforms(A, cv2, args.size)
    arrays = [np.asarray(img) for img in images]

    def albu(name: str) -> Op:
        transforms = table[name][1]
        return lambda img, i: Image.fromarray(transforms[i % 5](image=np.asarray(img))["image"])

    def albu_native(name: str) -> Callable[[np.ndarray, int], np.ndarray]:
        transforms = table[name][1]
        return lambda a, i: transforms[i % 5](image=a)["image"]

    def time_sides(name: str, indices: list[int]) -> list[float]:
        """Images per second of ours, albumentations (PIL in and out) and its numpy-only run."""
        totals: list[list[float]] = [[], [], []]
        sides = [(ours(name), images), (albu(name), images), (albu_native(name), arrays)]
        for r in range(args.repeats):
            spent = [0.0, 0.0, 0.0]
            for c, lo in enumerate(range(0, len(indices), TURN)):
                for k in (0, 1, 2) if (r + c) % 2 == 0 else (2, 1, 0):
                    op, data = sides[k]
                    spent[k] += run_side(op, data, indices[lo:lo + TURN])  # type: ignore[arg-type]
            for sink, total in zip(totals, spent):
                sink.append(total)
        return [len(indices) / statistics.median(t) for t in totals]

    result: dict[str, dict] = {}
    for name in [*wanted, *(k for k, v in ALSO.items() if v in wanted)]:
        for i in range(5):  # warm both sides: lookup tables, fonts, albumentations' first call
            ours(name)(images[i], i)
            albu(name)(images[i], i)
        row: dict = {"albumentations": table[name][0]}
        for suffix, indices in subsets.items():
            if not indices:
                continue
            ours_ips, albu_ips, native_ips = time_sides(name, indices)
            row |= {f"ours_img_per_s{suffix}": round(ours_ips, 1),
                    f"albu_img_per_s{suffix}": round(albu_ips, 1),
                    f"albu_native_img_per_s{suffix}": round(native_ips, 1),
                    f"ratio{suffix}": round(ours_ips / albu_ips, 2)}
        result[name] = row
        print(f"{name:18s} ours {row['ours_img_per_s']:8.1f}/s  albumentations "
              f"{row['albu_img_per_s']:8.1f}/s  ratio {row['ratio']:5.2f}  colour photos "
              f"{row.get('ratio_colour', float('nan')):5.2f}", file=sys.stderr)
    also = {k: result.pop(k) for k in ALSO if k in result}

    def geomean(key: str) -> float | None:
        ratios = [v[key] for v in result.values() if key in v]
        return round(math.exp(statistics.fmean(math.log(r) for r in ratios)), 2) if ratios else None

    print(json.dumps({
        "command": command,
        "albumentations": A.__version__, "opencv": cv2.__version__,
        "cv2_threads": cv2.getNumThreads(), "numpy": np.__version__,
        "pillow": Image.__version__, "python": platform.python_version(),
        "images": len(images), "colour_images": len(subsets["_colour"]),
        "size": args.size, "image_source": source, "repeats": args.repeats,
        "severities": "image i gets severity i % 5 + 1",
        "ratio": "ours / albumentations throughput, PIL in and PIL out on both sides",
        "target": 1.0,
        "geomean_ratio": geomean("ratio"), "geomean_ratio_colour": geomean("ratio_colour"),
        "below_target": [f"{k} ({r})" for k, v in result.items() for r in ("ratio", "ratio_colour")
                         if v.get(r, 1.0) < 1.0],
        "corruptions": result,
        "other_comparators": also,
    }, indent=2))


if __name__ == "__main__":
    main()

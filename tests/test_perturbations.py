"""Perturbations: shape and range, determinism, canonical condition strings, severity order."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pytest_unsafebench.robustness import perturbations as P
from pytest_unsafebench.robustness.perturbations import Chain, PerturbationSpec, apply

ALL = P.names()
CORRUPTIONS = P.names("corruption")
EVASIONS = P.names("evasion")
RANDOM = [n for n in ALL if P.PERTURBATIONS[n].random]
FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))


def natural(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    """Smooth gradients plus mild texture: closer to a photo than white noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([xx / w * 200 + 20, yy / h * 180 + 40, (xx + yy) / (w + h) * 150 + 60], -1)
    noise = np.random.default_rng(seed).normal(0, 20, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def flat(colour: tuple[int, int, int], w: int = 64, h: int = 48) -> Image.Image:
    return Image.new("RGB", (w, h), colour)


def arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.float64)


def strengths(name: str) -> st.SearchStrategy[int | float]:
    ints = st.sampled_from(P.severities(name))
    if P.PERTURBATIONS[name].kind == "corruption":
        return ints
    return st.one_of(ints, st.floats(1, 5, allow_nan=False))


@st.composite
def specs(draw: st.DrawFn, name: str | None = None) -> PerturbationSpec:
    name = name or draw(st.sampled_from(ALL))
    return PerturbationSpec(name, draw(strengths(name)), draw(st.integers(0, 2**40)))


images = st.builds(rgb, st.integers(8, 64), st.integers(8, 64), st.integers(0, 2**16))

# ImageNet-C's published severity constants, written here by hand from Hendrycks' reference
# (hendrycks/robustness: ImageNet-C/create_c/make_imagenet_c.py), never read from the code under
# test: a typo in perturbations.py's tables then changes the pixels and fails the fidelity tests
# below. Mutation check: changing _CONTRAST[0] to 0.5 or _JPEG[2] to 16 fails them.
IMAGENET_C = {
    "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
    "shot_noise": [60, 25, 12, 5, 3],
    "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],
    "gaussian_blur": [1, 2, 3, 4, 6],
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
    "saturate": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    "jpeg_compression": [25, 18, 15, 10, 7],
}


# --- registry ---------------------------------------------------------------------------------

def test_registry_covers_the_catalogue() -> None:
    assert set(CORRUPTIONS) == {
        "gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur", "motion_blur",
        "brightness", "contrast", "saturate", "pixelate", "jpeg_compression", "resize",
        "crop_pad", "rotate"}
    assert set(EVASIONS) == {"text_overlay", "emoji_sticker", "meme_caption",
                             "screenshot_border", "grid_collage"}
    assert ALL == CORRUPTIONS + EVASIONS
    for name, p in P.PERTURBATIONS.items():
        assert p.name == name and p.kind in P.KINDS
        assert p.description and "\n" not in p.description
        assert P.severities(name) == (1, 2, 3, 4, 5)
        assert 1 <= p.max_fuzz_severity <= 5 and P.perceptual_budget(name) == p.max_fuzz_severity
    with pytest.raises(ValueError, match="unknown perturbation kind 'attack'"):
        P.names("attack")
    with pytest.raises(ValueError, match="known: gaussian_noise"):
        P.severities("nope")


def test_budget_flags() -> None:
    assert PerturbationSpec("gaussian_noise", 3).within_budget
    assert not PerturbationSpec("gaussian_noise", 4).within_budget
    assert not Chain((PerturbationSpec("rotate", 1), PerturbationSpec("impulse_noise", 5))
                     ).within_budget


# --- output contract and determinism ------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
@FAST
@given(data=st.data(), img=images, key=st.text(max_size=8))
def test_output_is_same_size_rgb_and_deterministic(name: str, data: st.DataObject,
                                                    img: Image.Image, key: str) -> None:
    spec = data.draw(specs(name))
    before = img.tobytes()
    out = apply(spec, img, key)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == img.size
    assert np.asarray(out).dtype == np.uint8
    assert img.tobytes() == before, "the input image was modified"
    again = apply(PerturbationSpec.parse(str(spec)), img.copy(), key)
    assert again.tobytes() == out.tobytes()


@pytest.mark.parametrize("name", ALL)
def test_large_and_odd_images_keep_their_size(name: str) -> None:
    # >= 224 px exercises the size-scaled constants (and motion blur's FFT path).
    for img in (rgb(300, 241, 1), rgb(1, 9, 2), rgb(97, 5, 3)):
        out = apply(PerturbationSpec(name, 5), img, "k")
        assert out.mode == "RGB" and out.size == img.size


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "I;16"])
def test_non_rgb_input_is_converted(mode: str) -> None:
    img = rgb(20, 16).convert(mode) if mode != "I;16" else Image.new("I;16", (20, 16), 300)
    for name in ("gaussian_noise", "contrast", "meme_caption"):
        assert apply(PerturbationSpec(name, 2), img).mode == "RGB"


@pytest.mark.parametrize("name", RANDOM)
def test_seed_and_key_change_random_perturbations(name: str) -> None:
    img = natural()
    base = apply(PerturbationSpec(name, 3), img, "a").tobytes()
    by_seed = {apply(PerturbationSpec(name, 3, seed), img, "a").tobytes()
               for seed in range(2024, 2028)}
    by_key = {apply(PerturbationSpec(name, 3), img, key).tobytes() for key in "bcde"}
    assert by_seed - {base}, "the seed does not change the output"
    assert by_key - {base}, "the key does not change the output"


@pytest.mark.parametrize("name", [n for n in ALL if n not in RANDOM])
def test_deterministic_perturbations_ignore_seed_and_key(name: str) -> None:
    img = natural()
    outs = {apply(PerturbationSpec(name, 3, seed), img, key).tobytes()
            for seed, key in [(2023, "a"), (7, "b")]}
    assert len(outs) == 1


def test_global_random_state_untouched() -> None:
    np_state, py_state = np.random.get_state(), random.getstate()
    img = natural()
    for name in ALL:
        apply(PerturbationSpec(name, 4), img, "x")
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(np_state, after))
    assert random.getstate() == py_state


def test_chain_applies_steps_in_order() -> None:
    img = natural()
    noise = PerturbationSpec("gaussian_noise", 2)
    jpeg = PerturbationSpec("jpeg_compression", 3)
    chained = apply(Chain((noise, jpeg)), img, "k")
    assert chained.tobytes() == apply(jpeg, apply(noise, img, "k")).tobytes()
    assert chained.tobytes() != apply(Chain((jpeg, noise)), img, "k").tobytes()
    # A one-step chain is the same condition as its spec: same string, same pixels.
    assert str(Chain((noise,))) == str(noise)
    assert apply(Chain((noise,)), img, "k").tobytes() == apply(noise, img, "k").tobytes()
    assert apply(str(noise), img, "k").tobytes() == apply(noise, img, "k").tobytes()
    # Repeating a random step draws fresh noise rather than doubling the same field.
    twice = arr(apply(Chain((noise, noise)), flat((128, 128, 128)), "k")) - 128
    once = arr(apply(noise, flat((128, 128, 128)), "k")) - 128
    assert np.std(twice) > 1.2 * np.std(once) and np.std(twice) < 1.6 * np.std(once)


# --- condition strings ------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(spec=specs())
def test_spec_round_trip(spec: PerturbationSpec) -> None:
    text = str(spec)
    assert PerturbationSpec.parse(text) == spec
    assert str(PerturbationSpec.parse(text)) == text
    assert P.parse(text) == spec
    assert PerturbationSpec(spec.name, spec.severity, spec.seed) == spec
    assert hash(PerturbationSpec.parse(text)) == hash(spec)


@settings(max_examples=100, deadline=None)
@given(chain=st.lists(specs(), min_size=1, max_size=4).map(lambda s: Chain(tuple(s))))
def test_chain_round_trip(chain: Chain) -> None:
    text = str(chain)
    assert Chain.parse(text) == chain and str(Chain.parse(text)) == text
    assert text.count("+") == len(chain) - 1
    assert P.parse(text) == (chain.specs[0] if len(chain) == 1 else chain)


def test_canonical_strings() -> None:
    assert str(PerturbationSpec("gaussian_noise", 3)) == "gaussian_noise:3:s2023"
    assert str(PerturbationSpec("gaussian_noise", 3.0)) == "gaussian_noise:3:s2023"
    assert str(PerturbationSpec("gaussian_noise", np.int64(3), np.int64(7))) == \
        "gaussian_noise:3:s7"
    assert PerturbationSpec("gaussian_noise", 3.0) == PerturbationSpec("gaussian_noise", 3)
    assert str(PerturbationSpec("text_overlay", 2.50)) == "text_overlay:2.5:s2023"
    assert str(PerturbationSpec("text_overlay", 2.000001)) == "text_overlay:2:s2023"
    assert str(PerturbationSpec("text_overlay", 1 / 3 + 1)) == "text_overlay:1.3333:s2023"
    for text in ("gaussian_noise:3", " gaussian_noise : 3.0 : s2023 ", "gaussian_noise:03:s2023"):
        assert str(PerturbationSpec.parse(text)) == "gaussian_noise:3:s2023"
    assert str(Chain.parse("rotate:1+jpeg_compression:5.0:s9")) == \
        "rotate:1:s2023+jpeg_compression:5:s9"


@pytest.mark.parametrize("text, message", [
    ("gausian_noise:3", r"unknown perturbation 'gausian_noise' \(did you mean "
                        r"'gaussian_noise'\?\); known: gaussian_noise, shot_noise"),
    ("gaussian_noise", r"expected name:severity\[:s<seed>\].*1 part"),
    ("gaussian_noise:3:s1:x", r"4 part"),
    ("gaussian_noise:high", r"severity 'high' must be a number such as 3 or 2.5"),
    ("gaussian_noise:7", r"corruption: its severity must be an integer 1-5.*got 7"),
    ("gaussian_noise:2.5", r"integer 1-5.*got 2.5"),
    ("gaussian_noise:nan", r"severity 'nan' must be a number"),
    ("text_overlay:5.5", r"evasion: its strength must be a number in \[1, 5\], got 5.5"),
    ("text_overlay:0", r"\[1, 5\], got 0"),
    # what runs is what is written: no silent rounding, digit separators or other scripts
    ("text_overlay:5.00004", r"severity '5.00004' must be a number .*at most 4 decimals"),
    ("gaussian_noise:3_0", r"severity '3_0' must be a number"),
    ("gaussian_noise:\u0663", r"must be a number"),
    ("text_overlay:1e0", r"severity '1e0' must be a number"),
    ("gaussian_noise:3:2023", r"seed part '2023' must look like s<integer"),
    ("gaussian_noise:3:s-1", r"seed part 's-1'"),
    ("gaussian_noise:3:s" + "9" * 20, r"s<integer below 2\*\*63>"),
    ("", r"non-empty string"),
    ("rotate:1+jpeg_compression:2", r"is a chain \('\+'\): use Chain.parse"),
])
def test_spec_parse_errors_are_clear(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PerturbationSpec.parse(text)


def test_chain_and_constructor_errors() -> None:
    with pytest.raises(ValueError, match=r"step 2 is empty"):
        Chain.parse("rotate:1++jpeg_compression:2")
    with pytest.raises(ValueError, match=r"step 2: .*unknown perturbation 'jpeg'"):
        Chain.parse("rotate:1+jpeg:2")
    with pytest.raises(ValueError, match="at least one"):
        Chain(())
    with pytest.raises(ValueError, match="must be a PerturbationSpec"):
        Chain(("rotate:1",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be a number"):
        PerturbationSpec("rotate", True)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
        PerturbationSpec("rotate", 1, -1)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
        PerturbationSpec("rotate", 1, 2**63)
    with pytest.raises(ValueError, match="unknown perturbation 'fog'; known:"):
        PerturbationSpec("fog", 1)
    with pytest.raises(TypeError, match="PIL image"):
        apply(PerturbationSpec("rotate", 1), np.zeros((4, 4, 3), np.uint8))  # type: ignore


# --- severity order -----------------------------------------------------------------------------

def mean_abs_change(img: Image.Image):
    return lambda out: np.abs(arr(out) - arr(img)).mean()


def blur_amount(out: Image.Image) -> float:
    a = arr(out)  # minus the high-frequency energy: rises as detail is lost
    return -(np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean())


def hsv_saturation(a: np.ndarray) -> np.ndarray:
    v, m = a.max(axis=2), a.min(axis=2)
    return np.where(v > 0, (v - m) / np.maximum(v, 1e-9), 0)


def share_equal_to(colour: tuple[int, int, int]):
    return lambda out: -np.all(arr(out) == colour, axis=2).mean()  # minus: the image shrinks


PASTEL = Image.fromarray(np.clip(np.random.default_rng(5).normal(170, 8, (48, 64, 3)), 0, 255)
                         .astype(np.uint8))
GREEN = (10, 200, 30)

# name -> (image, measure that must not decrease from severity 1 to 5)
MEASURES = {
    "gaussian_noise": (flat((128, 128, 128)), mean_abs_change(flat((128, 128, 128)))),
    "shot_noise": (natural(), mean_abs_change(natural())),
    "impulse_noise": (rgb(64, 48), mean_abs_change(rgb(64, 48))),
    "gaussian_blur": (rgb(64, 48), blur_amount),
    "motion_blur": (natural(), blur_amount),
    "resize": (natural(), blur_amount),
    "brightness": (natural(), lambda out: arr(out).mean()),
    "contrast": (natural(), lambda out: -arr(out).std(axis=(0, 1)).mean()),
    # ImageNet-C's saturate table desaturates then oversaturates: its change is monotone on
    # low-saturation content (on saturated pixels level 2, x0.1, can beat level 3, x2).
    "saturate": (PASTEL, lambda out: np.abs(hsv_saturation(arr(out))
                                            - hsv_saturation(arr(PASTEL))).mean()),
    "pixelate": (rgb(64, 48), lambda out: -len(np.unique(np.asarray(out).reshape(-1, 3),
                                                         axis=0))),
    "jpeg_compression": (natural(), lambda out: ((arr(out) - arr(natural())) ** 2).mean()),
    "crop_pad": (flat((200, 90, 40)), lambda out: np.all(arr(out) == 0, axis=2).mean()),
    "rotate": (flat((200, 200, 200)), lambda out: (arr(out).sum(axis=2) < 300).mean()),
    "text_overlay": (flat((128, 128, 128), 160, 120),
                     mean_abs_change(flat((128, 128, 128), 160, 120))),
    "emoji_sticker": (flat((128, 128, 128), 160, 120),
                      lambda out: np.any(arr(out) != 128, axis=2).mean()),
    "meme_caption": (flat(GREEN, 160, 120), share_equal_to(GREEN)),
    "screenshot_border": (flat(GREEN, 160, 120), share_equal_to(GREEN)),
    "grid_collage": (flat(GREEN, 160, 120), share_equal_to(GREEN)),
}


def test_every_perturbation_has_a_measure() -> None:
    assert set(MEASURES) == set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_severity_is_monotone_in_its_measure(name: str) -> None:
    img, measure = MEASURES[name]
    for key in ("k1", "k2"):
        values = [measure(apply(PerturbationSpec(name, s), img, key)) for s in P.severities(name)]
        assert all(b >= a for a, b in zip(values, values[1:])), (key, values)
        assert values[-1] > values[0], (key, values)


@pytest.mark.parametrize("name", EVASIONS)
def test_fractional_strengths_fall_between_levels(name: str) -> None:
    img, measure = MEASURES[name]
    lo, mid, hi = (measure(apply(PerturbationSpec(name, s), img, "k")) for s in (2, 2.5, 3))
    assert lo - 1e-3 <= mid <= hi + 1e-3, (lo, mid, hi)


# --- fidelity to the references -----------------------------------------------------------------

def test_colour_corruptions_match_skimage_hsv() -> None:
    color = pytest.importorskip("skimage.color")
    img = rgb(40, 30, 9)
    x = arr(img) / 255
    x[0, :4] = 0  # black and grey pixels: the HSV edge cases
    x[1, :4] = 0.5
    img = Image.fromarray(np.rint(x * 255).astype(np.uint8))
    x = arr(img) / 255
    rng = np.random.default_rng(0)
    for s, c in enumerate(IMAGENET_C["brightness"], 1):
        hsv = color.rgb2hsv(x)
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        ref = np.clip(color.hsv2rgb(hsv), 0, 1) * 255
        assert np.abs(arr(P.brightness(img, s, rng)) - ref).max() <= 0.5 + 1e-6
    for s, (a, b) in enumerate(IMAGENET_C["saturate"], 1):
        hsv = color.rgb2hsv(x)
        hsv[..., 1] = np.clip(hsv[..., 1] * a + b, 0, 1)
        ref = np.clip(color.hsv2rgb(hsv), 0, 1) * 255
        assert np.abs(arr(P.saturate(img, s, rng)) - ref).max() <= 0.5 + 1e-6


@pytest.mark.parametrize("picture", ["grey", "no_grey_pixel", "every_v_and_m"])
def test_saturate_matches_skimage_hsv_on_grey_and_colour_pictures(picture: str) -> None:
    # saturate takes shortcuts for a wholly grey picture and for one without grey pixels; the
    # last holds every (V, m) pair once, its middle channel at random, channels shuffled.
    color = pytest.importorskip("skimage.color")
    rng = np.random.default_rng(3)
    if picture == "grey":
        x = np.repeat(rng.integers(0, 256, (30, 40, 1), np.uint8), 3, axis=2)
    elif picture == "no_grey_pixel":
        x = rng.integers(0, 256, (30, 40, 3), np.uint8)
        x[..., 0] = np.maximum(x[..., 1:].max(axis=2), 1)  # red highest ...
        x[..., 2] = np.minimum(x[..., 2], x[..., 0] - 1)   # ... blue below it
    else:
        v, m = np.nonzero(np.tril(np.ones((256, 256), bool)))  # m <= v
        mid = m + (rng.random(v.size) * (v - m + 1)).astype(int)
        x = rng.permuted(np.stack([v, mid, m], 1), axis=1).reshape(128, 257, 3)
    img = Image.fromarray(x.astype(np.uint8))
    x = arr(img) / 255
    for s, (a, b) in enumerate(IMAGENET_C["saturate"], 1):
        hsv = color.rgb2hsv(x)
        hsv[..., 1] = np.clip(hsv[..., 1] * a + b, 0, 1)
        ref = np.clip(color.hsv2rgb(hsv), 0, 1) * 255
        out = P.saturate(img, s, None)
        assert out.mode == "RGB" and out.size == img.size and out is not img
        assert np.abs(arr(out) - ref).max() <= 0.5 + 1e-6, s


def test_contrast_is_imagenet_c_around_channel_means() -> None:
    img = natural(40, 30, 2)
    x = arr(img)
    for s, c in enumerate(IMAGENET_C["contrast"], 1):
        means = x.mean(axis=(0, 1))
        ref = np.clip((x - means) * c + means, 0, 255)
        assert np.abs(arr(P.contrast(img, s, None)) - ref).max() <= 0.5 + 1e-3


def test_gaussian_blur_matches_skimage_gaussian() -> None:
    # ImageNet-C blurs with skimage (scipy, kernel to 4 sigma, mode 'nearest'); ours stops at
    # 3 sigma and rounds: within a grey level even on white noise, the hardest case.
    filters = pytest.importorskip("skimage.filters")
    img = rgb(64, 48, 3)
    for s, sigma in enumerate(IMAGENET_C["gaussian_blur"], 1):
        ref = filters.gaussian(arr(img), sigma=sigma, mode="nearest", truncate=4.0,
                               channel_axis=-1, preserve_range=True)
        assert np.abs(arr(P.gaussian_blur(img, s, None)) - ref).max() <= 1.0


def test_rotate_matches_pillow_rotate_inside_the_picture() -> None:
    # Same centre and direction as Image.rotate (counter-clockwise for a positive angle); only
    # the one-pixel rim where the picture meets the black corners is blended differently.
    img = rgb(64, 48, 4)
    for s, angle in enumerate(P._ROTATE, 1):
        spec = PerturbationSpec("rotate", s, 11)
        sign = 1 if P._rng(spec, "k", 0).random() < 0.5 else -1
        ref = arr(img.rotate(sign * angle, Image.Resampling.BILINEAR))
        inside = np.asarray(flat((255, 255, 255)).rotate(sign * angle)).min(axis=2) == 255
        inside[1:-1, 1:-1] &= (inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2]
                               & inside[1:-1, 2:])
        inside[[0, -1], :] = inside[:, [0, -1]] = False
        diff = np.abs(arr(apply(spec, img, "k")) - ref).max(axis=2)
        assert inside.mean() > 0.6 and diff[inside].max() <= 1, (s, diff[inside].max())


def test_noise_statistics_match_imagenet_c() -> None:
    grey = flat((128, 128, 128), 128, 128)
    for s, c in enumerate(IMAGENET_C["gaussian_noise"][:3], 1):  # unclipped levels: std is c
        out = arr(apply(PerturbationSpec("gaussian_noise", s), grey, "k")) / 255
        assert abs(out.std() - c) < 0.01 and abs(out.mean() - 128 / 255) < 0.01
    for s, photons in enumerate(IMAGENET_C["shot_noise"], 1):
        out = arr(apply(PerturbationSpec("shot_noise", s), grey, "k")) / 255
        ref = np.clip(np.random.default_rng(s).poisson(128 / 255 * photons, 200_000) / photons,
                      0, 1)
        assert abs(out.mean() - ref.mean()) < 0.01 and abs(out.std() - ref.std()) < 0.01
    for s, amount in enumerate(IMAGENET_C["impulse_noise"], 1):
        out = arr(apply(PerturbationSpec("impulse_noise", s), grey, "k"))
        assert abs((out == 0).mean() - amount / 2) < 0.01
        assert abs((out == 255).mean() - amount / 2) < 0.01


def test_motion_blur_fft_path_matches_direct_sum() -> None:
    x = np.asarray(rgb(50, 40, 4))
    for angle in (-45.0, -12.5, 0.0, 30.0):
        w, oy, ox = P._motion_taps(15, 8, angle)
        top, left = max(0, -oy.min()), max(0, -ox.min())
        pad = ((top, max(0, oy.max())), (left, max(0, ox.max())), (0, 0))
        p = np.pad(x, pad, mode="edge").astype(np.float64)
        direct = sum(w[k] * p[top + oy[k]:top + oy[k] + 40, left + ox[k]:left + ox[k] + 50]
                     for k in range(len(w)))
        assert np.abs(P._motion_fft(x, w, oy, ox, pad) - 0.5 - direct).max() < 1e-3


@settings(max_examples=40, deadline=None)
@given(img=images, severity=st.sampled_from(P.LEVELS))
def test_pixelate_is_imagenet_c_box_down_box_up(img: Image.Image, severity: int) -> None:
    # Our gather-based upsampling must equal Pillow's BOX resize that ImageNet-C uses, and the
    # small size is ImageNet-C's int(side * c), truncated (224 * 0.4 -> 89, not 90).
    c = IMAGENET_C["pixelate"][severity - 1]
    w, h = img.size
    ref = img.resize((max(1, int(w * c)), max(1, int(h * c))), Image.Resampling.BOX)
    ref = ref.resize((w, h), Image.Resampling.BOX)
    assert apply(PerturbationSpec("pixelate", severity), img).tobytes() == ref.tobytes()


def test_pixelate_at_224_truncates_like_imagenet_c() -> None:
    # ImageNet-C: x.resize((int(224 * c), int(224 * c)), BOX) then back up with BOX. Severity 3
    # is the case where rounding and truncation differ (89.6): 89 blocks, not 90.
    img = rgb(224, 224, 5)
    for s, c in enumerate(IMAGENET_C["pixelate"], 1):
        ref = img.resize((int(224 * c), int(224 * c)), Image.Resampling.BOX)
        ref = ref.resize((224, 224), Image.Resampling.BOX)
        assert apply(PerturbationSpec("pixelate", s), img).tobytes() == ref.tobytes(), s


def test_jpeg_compression_uses_imagenet_c_qualities() -> None:
    # ImageNet-C saves with PIL at quality c and decodes: byte for byte the same pixels.
    import io

    img = natural(64, 48, 1)
    for s, q in enumerate(IMAGENET_C["jpeg_compression"], 1):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=q)
        ref = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        assert apply(PerturbationSpec("jpeg_compression", s), img).tobytes() == ref.tobytes(), s


def test_motion_blur_uses_imagenet_c_radius_and_sigma(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel is built from (radius, sigma) of the published table at 224 px.
    seen: list[tuple[int, float]] = []
    real = P._motion_taps

    def spy(radius: int, sigma: float, angle: float):  # the spied helper's type
        seen.append((radius, sigma))
        return real(radius, sigma, angle)

    monkeypatch.setattr(P, "_motion_taps", spy)
    img = rgb(224, 224, 2)
    for s in P.LEVELS:
        apply(PerturbationSpec("motion_blur", s), img, "k")
    assert seen == [(r, float(sg)) for r, sg in IMAGENET_C["motion_blur"]]


def test_spatial_constants_scale_with_image_size() -> None:
    # ImageNet-C's constants hold at 224 px; a 448 px image gets them doubled, so both look
    # the same once a model has resized them to 224.
    small = rgb(224, 224, 7)
    big = small.resize((448, 448), Image.Resampling.NEAREST)
    for img, side in ((small, 224), (big, 448)):
        out = np.asarray(apply(PerturbationSpec("pixelate", 5), img))
        assert len(np.unique(out[:, 0], axis=0)) == 56  # 224 * 0.25 blocks down each side
        assert out.shape[:2] == (side, side)
    assert P._scale(small) == 1 and P._scale(big) == 2 and P._scale(rgb(100, 30)) == 1

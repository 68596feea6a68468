"""Safe image decoding: every way an image file can be bad becomes a named ImageProblem.

Unusual but decodable images are converted to RGB by fixed rules (alpha over white, first frame
of an animation, 16-bit scaled to 8-bit) and the conversion is reported, never hidden.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image

# Pillow's own default guard; the project default keeps the same order of magnitude.
DEFAULT_MAX_PIXELS = 89_478_485


class ImageProblem(Exception):
    """An image that cannot be used; ``kind`` is one of the finding kinds in records.py."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def decode_image(data: bytes, max_pixels: int | None = None) -> tuple[Image, str | None]:
    """Decode encoded bytes to an RGB image; returns (image, conversion note or None)."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    limit = max_pixels or DEFAULT_MAX_PIXELS
    if not data:
        raise ImageProblem("empty-file", "the file has zero bytes")
    with warnings.catch_warnings():
        # The size check below enforces ``limit``; escalating Pillow's own warning (at its
        # default of ~89 MP) would refuse images a raised ``max_image_pixels`` allows.
        warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
        try:
            img = PILImage.open(io.BytesIO(data))
            width, height = img.size
            if width * height > limit:
                raise ImageProblem(
                    "decompression-bomb",
                    f"{width}x{height} = {width * height} pixels exceeds the limit of {limit} "
                    "(raise max_image_pixels in [tool.unsafebench] if the image is genuine)",
                )
            img.load()
        except ImageProblem:
            raise
        except PILImage.DecompressionBombError as exc:
            raise ImageProblem("decompression-bomb", str(exc)) from None
        except UnidentifiedImageError:
            raise ImageProblem("unreadable", "not a recognised image format") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            kind = "truncated" if "truncated" in str(exc).lower() else "unreadable"
            raise ImageProblem(kind, f"decoding failed: {exc}") from None
    return _to_rgb(img)


def _to_rgb(img: Image) -> tuple[Image, str | None]:
    from PIL import Image as PILImage

    notes = []
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        notes.append(f"animated ({frames} frames); the first frame is used")
        img.seek(0)
    mode = img.mode
    if mode == "RGB":
        out = img
    elif mode in ("L", "1"):
        out = img.convert("RGB")
    elif mode.startswith("I") or mode == "F":
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        out = PILImage.fromarray(arr8, "L").convert("RGB")
        notes.append(f"{mode} (high bit depth) scaled to 8-bit")
    else:
        has_alpha = "A" in mode or (mode == "P" and "transparency" in img.info)
        if has_alpha:
            rgba = img.convert("RGBA")
            background = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
            out = PILImage.alpha_composite(background, rgba).convert("RGB")
            if rgba.getextrema()[3][0] < 255:
                notes.append(f"{mode} with transparency composited over white")
        else:
            out = img.convert("RGB")
            if mode not in ("P",):
                notes.append(f"{mode} converted to RGB")
    return out, ("; ".join(notes) or None)

"""Safe image decoding: every way an image file can be bad becomes a named ImageProblem.

Unusual but decodable images are converted to RGB by fixed rules (alpha over white, or dropped
under ``alpha = "drop"``; first frame of an animation; 16-bit scaled to 8-bit) and the
conversion is reported, never hidden.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..options import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from PIL.Image import Image

# The largest encoding of an image within the pixel limit: 16-bit RGBA stored uncompressed is 8
# bytes a pixel, one more covers row filters and block headers; metadata (EXIF, ICC, XMP,
# embedded thumbnails) gets a fixed allowance. A bigger file is refused before it is read.
FILE_BYTES_PER_PIXEL = 9
METADATA_BYTES = 16 * 1024 * 1024
# What a transparent image decodes to: "white" composites it over white (what it looks like);
# "drop" keeps each pixel's colour and discards alpha, as the official loader's
# ``image.convert("RGB")`` (UnsafeBench unsafe_datasets.py: UnsafeBenchDataset._download_and_save,
# decode_base64_to_image). Opaque images decode to the same pixels under both.
ALPHA_RULES = ("white", "drop")
DEFAULT_ALPHA = "white"


class ImageProblem(Exception):
    """An image that cannot be used; ``kind`` is one of the finding kinds in records.py."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def max_file_bytes(max_pixels: int | None) -> int:
    return (max_pixels or DEFAULT_MAX_PIXELS) * FILE_BYTES_PER_PIXEL + METADATA_BYTES


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words, for findings."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Path) -> io.BufferedReader:
    """Open a regular file for reading; a FIFO, socket, device or directory is an ImageProblem
    (reading a FIFO would block the run), checked without blocking."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ImageProblem("not-a-regular-file", f"{path} is {file_kind(st.st_mode)}, not an "
                           "image file")
    # O_NONBLOCK: should the path become a FIFO after the check, opening it cannot hang.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    fh = os.fdopen(fd, "rb")
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        fh.close()
        raise ImageProblem("not-a-regular-file", f"{path} is {file_kind(mode)}, not an image "
                           "file")
    return fh


def read_file(path: Path, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file (see :func:`open_regular`) of at most ``max_bytes``,
    checked before reading: an oversized file would be read whole before the pixel limit
    could refuse it."""
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        _check_size(path, size, max_bytes)
        data = fh.read(size)  # read(n) allocates n bytes up front: never more than the file
        if len(data) != size or fh.read(1):
            raise ImageProblem("unreadable", f"{path} changed size while it was read")
    return data


def _check_size(what: Path | str, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise ImageProblem(
            "file-too-large",
            f"{what}: {size} bytes is more than any image within the pixel limit needs "
            f"({max_bytes} bytes); raise max_image_pixels in [tool.unsafebench] if it is genuine")


def check_size(data: bytes, max_bytes: int | None) -> bytes:
    """For bytes that are already in memory (parquet, hub): the same size rule as files."""
    _check_size("the image", len(data), max_bytes)
    return data


def open_image(data: bytes, max_pixels: int | None = None) -> Image:
    """Identify encoded bytes and check the pixel limit, without decoding the pixels: the
    image's size is known here, so the pass can budget memory before :func:`finish_decode`."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    limit = max_pixels or DEFAULT_MAX_PIXELS
    if not data:
        raise ImageProblem("empty-file", "the file has zero bytes")
    _one_pixel_limit(limit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
        try:
            img = PILImage.open(io.BytesIO(data))
            width, height = img.size
        except PILImage.DecompressionBombError as exc:
            raise ImageProblem("decompression-bomb", str(exc)) from None
        except UnidentifiedImageError:
            raise ImageProblem("unreadable", "not a recognised image format") from None
        except Exception as exc:  # any failure of one file is that file's finding
            raise _problem(exc) from None
    if width * height > limit:
        raise ImageProblem(
            "decompression-bomb",
            f"{width}x{height} = {width * height} pixels exceeds the limit of {limit} "
            "(raise max_image_pixels in [tool.unsafebench] if the image is genuine)",
        )
    return img


def finish_decode(img: Image, alpha: str = DEFAULT_ALPHA) -> tuple[Image, str | None]:
    """Decode an :func:`open_image` result to RGB; returns (image, conversion note or None).
    Every exception of a malformed file (Pillow raises IndexError, TypeError,
    NotImplementedError... as well as OSError) becomes an ImageProblem."""
    from PIL import Image as PILImage

    if alpha not in ALPHA_RULES:  # the caller's mistake, not the file's: never a finding
        raise ValueError(f"alpha rule {alpha!r} is not one of {', '.join(ALPHA_RULES)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
        try:
            img.load()
            return _to_rgb(img, alpha)
        except PILImage.DecompressionBombError as exc:  # e.g. a GIF frame larger than its canvas
            raise ImageProblem("decompression-bomb", str(exc)) from None
        except Exception as exc:  # any failure of one file is that file's finding
            raise _problem(exc) from None


def decode_image(data: bytes, max_pixels: int | None = None,
                 alpha: str = DEFAULT_ALPHA) -> tuple[Image, str | None]:
    """Decode encoded bytes to an RGB image; returns (image, conversion note or None)."""
    return finish_decode(open_image(data, max_pixels), alpha)


def _problem(exc: Exception) -> ImageProblem:
    text = f"{type(exc).__name__}: {exc}"
    kind = "truncated" if "truncated" in str(exc).lower() else "unreadable"
    return ImageProblem(kind, f"decoding failed: {text}")


def _one_pixel_limit(limit: int) -> None:
    """Make ``limit`` the one limit that applies: Pillow refuses images above twice its own
    ``MAX_IMAGE_PIXELS`` in open() and in GIF frames, whatever a raised max_image_pixels allows.
    Only ever raised (the pixel check above enforces the run's limit); a process-wide setting,
    as Pillow offers no per-call one."""
    from PIL import Image as PILImage

    if PILImage.MAX_IMAGE_PIXELS is not None and PILImage.MAX_IMAGE_PIXELS < limit:
        PILImage.MAX_IMAGE_PIXELS = limit


def readonly_view(image: Image) -> Image:
    """An image object of its own over the same pixels, which cannot write them: PIL's
    in-place operations (draw, paste, putpixel, frombytes) copy first, ``thumbnail`` replaces
    only this object's pixels, and pixel-access writes raise. Costs no pixel copy, so every
    classifier (and every perturbation) gets one instead of a shared, writable image."""
    image.load()
    if image.mode in ("P", "PA"):  # a palette is Python-side state: copy instead
        return image.copy()
    view = _readonly_class()()
    view.im = image.im
    view._mode = image.mode
    view._size = image.size
    view.info = dict(image.info)
    view.readonly = 1
    return view


@functools.cache  # PIL is imported on first use, not with this module
def _readonly_class() -> type[Image]:
    from PIL import Image as PILImage

    class ReadOnlyImage(PILImage.Image):
        def frombytes(self, *args: Any, **kwargs: Any) -> None:
            self._ensure_mutable()  # Pillow's frombytes writes the shared pixels in place
            super().frombytes(*args, **kwargs)

    return ReadOnlyImage


def _to_rgb(img: Image, alpha: str) -> tuple[Image, str | None]:
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
            # An RGBA image: one (min, max) pair per band (Pillow types it for one band too).
            bands = cast("tuple[tuple[int, int], ...]", rgba.getextrema())
            transparent = bands[3][0] < 255
            if alpha == "drop":
                out = img.convert("RGB")
                if transparent:
                    notes.append(f"{mode} with transparency: alpha dropped (alpha = \"drop\")")
            else:
                background = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
                out = PILImage.alpha_composite(background, rgba).convert("RGB")
                if transparent:
                    notes.append(f"{mode} with transparency composited over white")
        else:
            out = img.convert("RGB")
            if mode not in ("P",):
                notes.append(f"{mode} converted to RGB")
    return out, ("; ".join(notes) or None)

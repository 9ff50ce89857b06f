"""Decode one image file into a fully loaded RGB PIL image, or say in one line why it cannot be used.

Benchmark folders hold a long tail of odd files: palette GIFs, CMYK JPEGs, 16-bit PNGs, rotated phone
photos, truncated downloads, stray text files. :func:`load_image` turns each into the RGB image that
torchvision's ImageFolder loader would give (plus EXIF orientation and a true 16-bit rescale), or raises
:class:`DecodeError`, which the dataset stream records as a skip instead of crashing a run hours in.
:func:`image_format` is the cheap check before that: whether a file is an image at all, by its first bytes.
"""

from __future__ import annotations

import os
import re
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 178_956_970
"""Default decompression-bomb limit: 2x PIL's default MAX_IMAGE_PIXELS, where PIL's own open() refuses."""

# What torchvision's ImageFolder reads (by extension: jpg, png, ppm/pgm, bmp, tif, webp), plus GIF, whose
# first frame load_image decodes: the formats a class folder's image may be in, whatever its name.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")

_WARNINGS_LOCK = threading.Lock()  # catch_warnings swaps process-wide filters: keep our threads from racing


class DecodeError(ValueError):
    """Why one image could not be used; str(e) is one line: '<path>: <reason>'."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fsdecode(path)
        self.reason = " ".join(reason.split())  # library messages may span lines; a skip log wants one
        super().__init__(f"{self.path}: {self.reason}")


def image_format(path: str | os.PathLike) -> str | None:
    """The format of the file by content, or None: not an image, empty, or unreadable.

    Pillow's own signature check for each of IMAGE_FORMATS, on the 16 bytes Image.open reads to choose a
    decoder; nothing is decoded, so it is cheap enough for every file of a 50k-image tree. A PNG named
    .jpg is "PNG"; a text file named .jpg is None. A format this Pillow cannot decode (WebP without
    libwebp) is None too.
    """
    try:
        with open(path, "rb") as file:
            prefix = file.read(16)
    except OSError:
        return None
    Image.init()  # registers every plugin once (TIFF, WebP); Image.open does the same
    for name in IMAGE_FORMATS:
        accept = Image.OPEN.get(name, (None, None))[1]
        if accept is not None and accept(prefix) is True:  # a str means "known, but unsupported here"
            return name
    return None


def load_image(path: str | os.PathLike, min_side: int | None = None,
               max_pixels: int | None = None) -> Image.Image:
    """Return the image at ``path`` as a fully loaded mode-"RGB" image, its file closed, upright per EXIF.

    Alpha is dropped by ``convert("RGB")``, not composited on a background, exactly as torchvision's
    ImageFolder loader does, so features match the reference code. 16-bit and float grayscale are
    rescaled, not clipped (see :func:`_to_rgb`).

    ``min_side``: the caller needs at least this many pixels on the shorter side, e.g. 792 so that a
    random crop keeping only 8% of the area still has 224 real pixels (224 / sqrt(0.08)). For JPEGs the
    decoder then skips detail by a power of two (up to 8x) via ``Image.draft``, which makes huge photos
    cheap; it never goes below ``min_side`` and never upscales. Other formats decode at full size.

    ``max_pixels`` (default :data:`MAX_PIXELS`): width * height above it is refused from the header,
    before any pixel is decoded. PIL refuses above 2 * ``Image.MAX_IMAGE_PIXELS`` in ``open`` itself,
    reporting only a pixel count; that gets the same "image too large" reason.

    Raises :class:`DecodeError` for anything unusable: missing, unreadable, empty, not an image, too
    large, truncated or corrupt (never a partially grey image: PIL's LOAD_TRUNCATED_IMAGES stays False).
    """
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        file = open(path, "rb")  # closed by `with file` below; opened apart to name each failure
    except FileNotFoundError:
        raise DecodeError(path, "no such file") from None
    except PermissionError:
        raise DecodeError(path, "permission denied") from None
    except IsADirectoryError:
        raise DecodeError(path, "is a directory, not a file") from None
    except OSError as e:
        raise DecodeError(path, f"cannot open file ({e.strerror or e})") from None
    with file:
        if os.fstat(file.fileno()).st_size == 0:
            raise DecodeError(path, "empty file")
        try:
            with _WARNINGS_LOCK, warnings.catch_warnings():  # we apply our own limit just below
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(file)  # lazy: reads the header only
        except UnidentifiedImageError:
            raise DecodeError(path, "not an image file") from None
        except Image.DecompressionBombError as e:  # PIL's message carries the pixel count, not W x H
            pixels = re.search(r"\((\d+) pixels\)", str(e))
            cap = min(limit, 2 * (Image.MAX_IMAGE_PIXELS or limit))  # whichever limit refused it
            count = pixels[1] if pixels else "?"
            raise DecodeError(path, f"image too large: {count} pixels, limit {cap}") from None
        except Exception as e:
            raise DecodeError(path, f"truncated or corrupt image ({_why(e)})") from None
        width, height = image.size
        if width * height > limit:
            raise DecodeError(path, f"image too large: {width} x {height} pixels, limit {limit}")
        try:
            if min_side and image.format in ("JPEG", "MPO"):  # MPO: the JPEG variant many cameras write
                image.draft("RGB", (min_side, min_side))  # square request: holds for either orientation
            image.load()  # here, inside the try, so truncation surfaces now rather than in a worker later
            ImageOps.exif_transpose(image, in_place=True)
            return _to_rgb(image)
        except Exception as e:
            raise DecodeError(path, f"truncated or corrupt image ({_why(e)})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB via PIL's convert, except where it would destroy the content.

    PIL converts 16-bit grayscale ("I;16*", "I") to 8 bits by clipping, so 300 and 40000 both become
    255: we rescale by 255 / 65535 instead (values outside 0..65535 saturate). Float ("F") has no fixed
    range: its own finite min..max is stretched to 0..255 (NaN -> 0, a constant image -> 0). 16-bit
    RGB/RGBA/LA PNGs need nothing: Pillow already decodes them to 8 bits (high byte; within 1 of rounding).
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):
        values = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        gray = (values * 255 + 32767) // 65535  # rounded
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        scaled = (values - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(values)
        gray = np.rint(np.nan_to_num(np.clip(scaled, 0, 255)))
    else:
        image.info.pop("transparency", None)  # dropped by convert anyway; spares PIL's bytes-tRNS warning
        return image.convert("RGB")
    return Image.fromarray(gray.astype(np.uint8)).convert("RGB")


def _why(error: Exception) -> str:
    return str(error) or type(error).__name__

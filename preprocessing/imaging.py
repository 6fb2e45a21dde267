"""Decode one source image once and render it at every requested size.

Policy for odd inputs (documented here because the shards depend on it):

* Every image goes through ``convert("RGB")`` like the Chrabaszcz et al. reference: CMYK and
  grayscale are converted, an alpha channel is *dropped* (not composited), palette transparency
  is ignored. 16-bit grayscale is scaled to 8 bit first (``convert`` would clip it to white).
* EXIF orientation is ignored unless ``exif_transpose=True`` (the reference ignores it too).
* ``Image.draft`` (JPEG DCT-domain downscaling) is NOT used: it changes the pixels, and the box
  result must equal the full-decode Pillow reference exactly.
* Empty, truncated (``LOAD_TRUNCATED_IMAGES`` stays False), non-image and decompression-bomb
  files raise :class:`SkipImage` with a short reason; the build lists them in the manifest.
"""

from __future__ import annotations

import io
import warnings
from typing import Dict, Iterable, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

RESIZE_METHODS = ("box", "center-crop")
# Fixed PNG settings: the bytes (and so the shard hashes) depend on them and on the zlib version.
PNG_COMPRESS_LEVEL = 6
MIN_SIZE, MAX_SIZE = 8, 256


class SkipImage(Exception):
    """This input cannot become a sample; ``str(exc)`` is the reason recorded in the manifest."""


def decode(data, exif_transpose: bool = False) -> Tuple[Image.Image, Tuple[int, int]]:
    """bytes (an encoded file) or a uint8 HxWx3 array -> (RGB image, original (w, h))."""
    if isinstance(data, np.ndarray):
        img = Image.fromarray(np.ascontiguousarray(data, dtype=np.uint8), "RGB")
        return img, img.size
    if not data:
        raise SkipImage("empty file")
    try:
        with warnings.catch_warnings():
            # Large-but-allowed images and odd metadata only warn; the error cases still raise.
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            img.load()
            orig = img.size
            if exif_transpose:
                img = ImageOps.exif_transpose(img)
            img = to_rgb(img)
    except Image.DecompressionBombError as e:
        raise SkipImage(f"image too large: {e}") from None
    except UnidentifiedImageError:
        raise SkipImage("not an image (format not recognised)") from None
    except SkipImage:
        raise
    except Exception as e:  # truncated, corrupt, unsupported mode...: never crash the job
        raise SkipImage(f"cannot decode: {type(e).__name__}: {e}") from None
    return img, orig


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB, as ``convert("RGB")`` does except for 16/32-bit grayscale."""
    if img.mode == "RGB":
        return img  # convert() would only copy
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def resize(img: Image.Image, size: int, method: str = "box") -> Image.Image:
    """Squash (box) or centre-crop-then-box to size x size; BOX filter either way."""
    if method == "box":
        return img.resize((size, size), Image.Resampling.BOX)
    if method == "center-crop":
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        # crop() then resize(), not resize(box=...): the latter lets the filter read pixels just
        # outside the square and gives different results.
        return img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BOX)
    raise ValueError(f"unknown resize method {method!r}")


def encode_png(img: Image.Image) -> bytes:
    """Lossless PNG with fixed settings and no ancillary chunks (ICC, EXIF, dpi...)."""
    img.info = {}  # resize() copies the source's info (e.g. an ICC profile) which PNG save would embed
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def render(data, sizes: Iterable[int], method: str = "box",
           exif_transpose: bool = False) -> Tuple[Dict[int, bytes], Tuple[int, int]]:
    """Decode once, then one PNG per size. Raises SkipImage for unusable input."""
    img, orig = decode(data, exif_transpose)
    out = {}
    for size in sizes:
        if img.size == (size, size) and method in RESIZE_METHODS:
            small = img.copy()  # already the right size (CIFAR, npz): taken as is
        else:
            small = resize(img, size, method)
        out[size] = encode_png(small)
    return out, orig

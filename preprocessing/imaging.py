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

PNG encoding goes through libpng (imagecodecs) with one fixed filter (Paeth) and zlib's RLE
strategy instead of Pillow's encoder: the pixels are the same (PNG is lossless), the files are as
small (within 1%), and it is about 3x faster, because Pillow tries all five filters on every row.
That is the one per-image step that can get cheaper without changing a pixel: decode and the BOX
resize must stay Pillow's to match the reference data exactly.
"""

from __future__ import annotations

import io
import warnings
from typing import Dict, Iterable, Optional, Sequence, Tuple

import imagecodecs
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

RESIZE_METHODS = ("box", "center-crop")
# Fixed PNG settings: the bytes (and so the shard hashes) depend on them and on the libpng/zlib
# versions, all recorded by `png_encoder()` in the manifest.
PNG_LEVEL = 6
PNG_FILTER = imagecodecs.PNG.FILTER.PAETH
PNG_STRATEGY = imagecodecs.PNG.STRATEGY.RLE
MIN_SIZE, MAX_SIZE = 8, 256


class SkipImage(Exception):
    """This input cannot become a sample; ``str(exc)`` is the reason recorded in the manifest."""


def decode(data, exif_transpose: bool = False) -> Tuple[Image.Image, Tuple[int, int]]:
    """bytes (an encoded file) or a uint8 HxWx3 array -> (RGB image, original (w, h)); a uint8 HxW
    array (a grayscale source, e.g. MNIST) -> (mode L image, (w, h))."""
    if isinstance(data, np.ndarray):
        img = Image.fromarray(np.ascontiguousarray(data, dtype=np.uint8), "L" if data.ndim == 2 else "RGB")
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
    """Lossless 8-bit PNG with fixed settings: IHDR, IDAT, IEND only (no ICC, EXIF, dpi...); grayscale
    for a mode L image (a 1-channel source), RGB for anything else."""
    arr = np.asarray(img if img.mode in ("L", "RGB") else img.convert("RGB"))
    return imagecodecs.png_encode(np.ascontiguousarray(arr), level=PNG_LEVEL, filter=PNG_FILTER,
                                  strategy=PNG_STRATEGY)


def png_encoder() -> str:
    """What made the PNG bytes, for the manifest and the resume check (bytes differ across versions)."""
    return (f"imagecodecs {imagecodecs.__version__} ({imagecodecs.png_version()}, "
            f"{imagecodecs.zlib_version()}), filter=paeth, strategy=rle, level={PNG_LEVEL}")


BINARIZE_METHODS = ("threshold", "stochastic")
THRESHOLD = 127   # threshold binarization: v > 127 is 1


def binarize(img: Image.Image, method: str, seed: Sequence[int]) -> Image.Image:
    """A mode L image -> its binarization, stored as 0/255 (shardformat, levels=2). threshold: v > 127;
    stochastic: Bernoulli(v / 255) drawn from default_rng(seed), `seed` naming the sample (and size), so
    the result does not depend on which worker renders it."""
    v = np.asarray(img)
    if method == "threshold":
        bits = v > THRESHOLD
    elif method == "stochastic":
        bits = np.random.default_rng(list(seed)).random(v.shape) < v / 255.0
    else:
        raise ValueError(f"unknown binarization {method!r}")
    return Image.fromarray(bits.astype(np.uint8) * 255, "L")


def render(data, sizes: Iterable[int], method: str = "box", exif_transpose: bool = False,
           binarization: Optional[Tuple[str, Sequence[int]]] = None) -> Tuple[Dict[int, bytes], Tuple[int, int]]:
    """Decode once, then one PNG per size, binarized after the resize with `binarization` = (method, seed).
    Raises SkipImage for unusable input."""
    img, orig = decode(data, exif_transpose)
    out = {}
    for size in sizes:
        if img.size == (size, size) and method in RESIZE_METHODS:
            small = img.copy()  # already the right size (CIFAR, npz, MNIST): taken as is
        else:
            small = resize(img, size, method)
        if binarization is not None:
            small = binarize(small, binarization[0], (*binarization[1], size))
        out[size] = encode_png(small)
    return out, orig

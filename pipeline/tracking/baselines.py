"""Classical lossless codecs as baselines: PNG, WebP lossless and JPEG XL lossless file sizes in bits/dim.

bits/dim of a file = its bytes * 8 / (C * H * W): the whole file (headers included), as a person
storing the image would pay. PNG is Pillow's encoder with `optimize=True` (the smallest zlib output
Pillow finds): RGB, mode L for one channel, a 1-bit PNG for a binary image (levels=2). WebP lossless is
Pillow's libwebp with `lossless=True, quality=100, method=6` (the slowest, smallest setting), where this
Pillow was built with WebP (`PIL.features.check("webp")`); WebP has no grayscale mode, so one channel is
replicated to RGB. JPEG XL lossless is imagecodecs' libjxl, `jpegxl_encode(a, lossless=True, effort=9)`,
given a 2-D array for one channel. Images with fewer than 256 levels are encoded as their PNG in the shards
holds them (v * (255 // (levels - 1)), shardformat), the bytes a person would store.
"""
from __future__ import annotations

import io
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import imagecodecs
import numpy as np
import torch
import torch.distributed as dist
from PIL import Image, features

from pipeline.data.shards import load_shard_set, split_batches
from shardformat import png_step


def _pil(image: np.ndarray) -> Image.Image:
    """HxW (grayscale) or HxWx3 uint8 -> a Pillow image."""
    return Image.fromarray(image, "L" if image.ndim == 2 else "RGB")


def png_bytes(image: np.ndarray, levels: int = 256) -> int:
    """Size in bytes of one HxWx3 or HxW uint8 image as a PNG (Pillow, optimize=True); a 1-bit PNG for levels=2."""
    buf = io.BytesIO()
    img = _pil(image)
    if levels == 2 and image.ndim == 2:
        img = img.convert("1", dither=Image.Dither.NONE)   # values are 0/255 already: no dithering to do
    img.save(buf, format="PNG", optimize=True)
    return buf.tell()


def webp_bytes(image: np.ndarray, levels: int = 256) -> int:
    """Size in bytes of one image as a lossless WebP (Pillow, method 6); one channel is replicated to RGB."""
    buf = io.BytesIO()
    _pil(image).convert("RGB").save(buf, format="WEBP", lossless=True, quality=100, method=6)
    return buf.tell()


def jpegxl_bytes(image: np.ndarray, levels: int = 256) -> int:
    """Size in bytes of one image as a lossless JPEG XL (imagecodecs' libjxl, effort 9)."""
    return len(imagecodecs.jpegxl_encode(np.ascontiguousarray(image), lossless=True, effort=9))


def webp_available() -> bool:
    """Whether this Pillow can write WebP."""
    return bool(features.check("webp"))


CODECS: Dict[str, Callable[..., int]] = {"png": png_bytes, "webp": webp_bytes, "jpegxl": jpegxl_bytes}


def codec_bits_per_dim(batches: Iterable[torch.Tensor], codecs: Optional[Iterable[str]] = None,
                       levels: int = 256) -> Dict[str, float]:
    """Mean file bits/dim of each codec over uint8 batches [B, C, H, W] (C = 1 or 3) of values 0..levels-1:
    {"png": ..., "webp": ..., "jpegxl": ..., "images": n}.

    Every image is encoded on its own (one file each). WebP is left out where Pillow lacks it."""
    names = _names(codecs)
    bits, dims, images = _bit_sums(batches, names, levels)
    return _per_dim(names, bits, dims, images)


def _names(codecs: Optional[Iterable[str]]) -> List[str]:
    return [c for c in (codecs or CODECS) if c != "webp" or webp_available()]


def _bit_sums(batches: Iterable[torch.Tensor], names: List[str], levels: int, rank: int = 0,
              world: int = 1) -> Tuple[Dict[str, int], int, int]:
    """({codec: file bits}, sub-pixels, images) over the images whose index in the stream is rank mod world."""
    bits = {c: 0 for c in names}
    dims, images, index = 0, 0, 0
    step = png_step(levels)
    for x in batches:
        arr = (x.permute(0, 2, 3, 1) * step).to(torch.uint8).contiguous().numpy()
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
        for img in arr:
            if index % world == rank:
                for c in names:
                    bits[c] += 8 * CODECS[c](img, levels)
                dims += img.size
                images += 1
            index += 1
    return bits, dims, images


def _per_dim(names: List[str], bits: Dict[str, int], dims: int, images: int) -> Dict[str, float]:
    if images == 0:
        raise ValueError("no images to measure the codecs on")
    return {**{c: bits[c] / dims for c in names}, "images": images}


def split_codec_bits_per_dim(root, size: int, split: str, batch_size: int = 64) -> Dict[str, float]:
    """`codec_bits_per_dim` over a whole shard split (`<root>/<size>/<split>-*.tar`), at its manifest's levels."""
    levels = load_shard_set(root, size, split).levels
    return codec_bits_per_dim(split_batches(root, size, split, batch_size), levels=levels)


def codec_baselines(root, size: int, split: str, is_main: bool, world_size: int, prefix: str = "") -> Dict[str, float]:
    """Training's end-of-run baselines (tracking.codec_baselines): `png_bits_per_dim`, `webp_bits_per_dim`
    and `jpegxl_bits_per_dim` of one whole split (keys after `prefix`: the trainer's data.test_splits get
    `<split>_`), the same on every rank (the run's summary is).

    Each rank encodes every world_size-th image and the integer bit counts are summed (all_reduce, float64:
    exact below 2**53 bits), so the figures equal `split_codec_bits_per_dim`'s while JPEG XL's effort 9 (about
    8 ms an image) is shared: 10,000 images stay well inside train.collective_timeout_s. `is_main` is unused
    (every rank takes part); it stays for the trainer's call."""
    names = _names(None)
    levels = load_shard_set(root, size, split).levels
    rank = dist.get_rank() if world_size > 1 else 0
    bits, dims, images = _bit_sums(split_batches(root, size, split, 64), names, levels, rank, world_size)
    if world_size > 1:
        total = torch.tensor([float(bits[c]) for c in names] + [float(dims), float(images)], dtype=torch.float64)
        dist.all_reduce(total)
        bits = {c: int(v) for c, v in zip(names, total[:len(names)].tolist())}
        dims, images = int(total[-2]), int(total[-1])
    r = _per_dim(names, bits, dims, images)
    return {f"{prefix}{c}_bits_per_dim": r[c] for c in names}

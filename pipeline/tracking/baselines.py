"""Classical lossless codecs as baselines: PNG and WebP lossless file sizes in bits/dim.

bits/dim of a file = its bytes * 8 / (3 * H * W): the whole file (headers included), as a person
storing the image would pay. PNG is Pillow's encoder with `optimize=True` (the smallest zlib output
Pillow finds); WebP lossless is Pillow's libwebp with `lossless=True, quality=100, method=6` (the
slowest, smallest setting), where this Pillow was built with WebP (`PIL.features.check("webp")`).
"""
from __future__ import annotations

import io
from typing import Callable, Dict, Iterable, Optional

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image, features

from pipeline.data.shards import split_batches


def png_bytes(image: np.ndarray) -> int:
    """Size in bytes of one HxWx3 uint8 image as a PNG (Pillow, optimize=True)."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", optimize=True)
    return buf.tell()


def webp_bytes(image: np.ndarray) -> int:
    """Size in bytes of one HxWx3 uint8 image as a lossless WebP (Pillow, method 6)."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="WEBP", lossless=True, quality=100, method=6)
    return buf.tell()


def webp_available() -> bool:
    """Whether this Pillow can write WebP."""
    return bool(features.check("webp"))


CODECS: Dict[str, Callable[[np.ndarray], int]] = {"png": png_bytes, "webp": webp_bytes}


def codec_bits_per_dim(batches: Iterable[torch.Tensor], codecs: Optional[Iterable[str]] = None) -> Dict[str, float]:
    """Mean file bits/dim of each codec over uint8 batches [B, 3, H, W]: {"png": ..., "webp": ..., "images": n}.

    Every image is encoded on its own (one file each). WebP is left out where Pillow lacks it."""
    names = [c for c in (codecs or CODECS) if c != "webp" or webp_available()]
    bits = {c: 0 for c in names}
    dims, images = 0, 0
    for x in batches:
        arr = x.permute(0, 2, 3, 1).contiguous().numpy()
        for img in arr:
            for c in names:
                bits[c] += 8 * CODECS[c](img)
        dims += x[0].numel() * x.shape[0]
        images += x.shape[0]
    if images == 0:
        raise ValueError("no images to measure the codecs on")
    return {**{c: bits[c] / dims for c in names}, "images": images}


def split_codec_bits_per_dim(root, size: int, split: str, batch_size: int = 64) -> Dict[str, float]:
    """`codec_bits_per_dim` over a whole shard split (`<root>/<size>/<split>-*.tar`)."""
    return codec_bits_per_dim(split_batches(root, size, split, batch_size))


def codec_baselines(root, size: int, split: str, is_main: bool, world_size: int) -> Dict[str, float]:
    """Training's end-of-run baselines (tracking.codec_baselines): `png_bits_per_dim` and
    `webp_bits_per_dim` of the validation split, measured on rank 0 and shared with every rank (the run's
    summary is the same everywhere)."""
    values: Dict[str, float] = {}
    if is_main:
        r = split_codec_bits_per_dim(root, size, split)
        values = {f"{c}_bits_per_dim": r[c] for c in CODECS if c in r}
    if world_size > 1:
        box = [values]
        dist.broadcast_object_list(box, src=0)
        values = box[0]
    return values

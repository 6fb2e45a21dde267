"""Sample grids and image completion from a trained model.

`python -m pipeline.tools.sample --checkpoint RUN/checkpoints --n 64 --out grid.png`
`python -m pipeline.tools.sample --checkpoint RUN/checkpoints --complete-from DATA_ROOT --n 16 --out completion.png`
(completion: the top half of validation images is kept, the bottom half sampled; the grid shows
originals above completions).
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

from pipeline.fsutil import atomic_write_bytes


def image_grid(images: torch.Tensor, nrow: int = 0, pad: int = 2, scale: int = 1, levels: int = 256) -> Image.Image:
    """uint8 [N, 3 or 1, H, W] with values 0..levels-1 -> one RGB image, `nrow` images per row (default:
    square), white padding. Grayscale is replicated to RGB, and fewer levels are stretched to 0..255 as the
    shards store them (v * (255 // (levels - 1)): a binary image shows black and white)."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if levels < 256:
        images = images.to(torch.uint8) * (255 // (levels - 1))
    n, _, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, dtype=np.uint8)
    arr = images.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for i in range(n):
        r, c = divmod(i, nrow)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = arr[i]
    img = Image.fromarray(canvas)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def save_grid(images: torch.Tensor, path, nrow: int = 0, levels: int = 256) -> None:
    """Write a PNG grid atomically; small images are enlarged so a person can see them."""
    scale = max(1, 128 // images.shape[-1])
    buf = io.BytesIO()
    image_grid(images, nrow, scale=scale, levels=levels).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())

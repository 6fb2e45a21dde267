"""Sample grids and image completion from a trained model.

`python -m pipeline.sample --checkpoint RUN/checkpoints --n 64 --out grid.png`
`python -m pipeline.sample --checkpoint RUN/checkpoints --complete-from DATA_ROOT --n 16 --out completion.png`
(completion: the top half of validation images is kept, the bottom half sampled; the grid shows
originals above completions).
"""
from __future__ import annotations

import argparse
import io
import math
import sys
import time

import numpy as np
import torch
from PIL import Image

from pipeline.fsutil import atomic_write_bytes


def image_grid(images: torch.Tensor, nrow: int = 0, pad: int = 2, scale: int = 1) -> Image.Image:
    """uint8 [N, 3, H, W] -> one RGB image, `nrow` images per row (default: square), white padding."""
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


def save_grid(images: torch.Tensor, path, nrow: int = 0) -> None:
    """Write a PNG grid atomically; small images are enlarged so a person can see them."""
    scale = max(1, 128 // images.shape[-1])
    buf = io.BytesIO()
    image_grid(images, nrow, scale=scale).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def main(argv=None) -> int:
    from pipeline.data import split_batches
    from pipeline.distributed import resolve_device
    from pipeline.export import load_checkpoint_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a run's checkpoints folder, one tag folder, or an exported .pt")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--complete-from", help="shard root: complete the lower half of validation images")
    p.add_argument("--split", default="val")
    p.add_argument("--device", default="auto", help="cuda, cpu, or auto: cuda when a GPU is visible")
    args = p.parse_args(argv)
    model = load_checkpoint_model(args.checkpoint, resolve_device(args.device)).eval()
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    with torch.no_grad():
        if args.complete_from:
            size = model.config["image_size"]
            x = next(split_batches(args.complete_from, size, args.split, args.n))
            done = model.complete(x, known_rows=size // 2, generator=g)
            save_grid(torch.cat([x, done.cpu()]), args.out, nrow=x.shape[0])
        else:
            save_grid(model.sample(args.n, generator=g), args.out)
    dt = time.time() - t0
    print(f"wrote {args.out} ({args.n} images in {dt:.1f} s, {args.n / dt:.2f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

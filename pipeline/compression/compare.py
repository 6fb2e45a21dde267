"""`python -m pipeline.compression compare`: bits/dim of PNG, WebP lossless, JPEG XL lossless and the model's coder
on one split.

One run measures all of them on the same images: PNG, WebP and JPEG XL files of each image
(pipeline/tracking/baselines.py),
the model's bits/dim (its whole-image forward, as training's validation reports it), and a real round
trip through the coder (encode to one .prc file, decode it, compare every pixel). Prints a Markdown table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from pipeline.compression.codec import decode_file, encode_images, load_model
from pipeline.data.shards import load_shard_set, split_batches
from pipeline.fsutil import atomic_write_bytes
from pipeline.tracking.baselines import codec_bits_per_dim, webp_available


def split_images(root: str, size: int, split: str) -> torch.Tensor:
    """Every image of a shard split, uint8 [N, channels, size, size], in shard order."""
    return torch.cat(list(split_batches(root, size, split, 256)))


@torch.no_grad()
def model_bits_per_dim(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 64) -> float:
    """Mean bits/dim of the whole-image forward (float32), as `pipeline.train.evaluate` computes it."""
    return torch.cat([model.bits_per_dim(x[i:i + batch_size]).double()
                      for i in range(0, len(x), batch_size)]).mean().item()


def compare(checkpoint: str, root: str, split: str = "val", batch_size: int = 64, threads: int = 1,
            out: Optional[str] = None, progress: bool = True) -> str:
    """The table (Markdown) and the round trip's figures, as text."""
    torch.set_num_threads(threads)
    model, sha = load_model(checkpoint)
    size = model.image_size
    x = split_images(root, size, split)
    n = len(x)
    codecs = codec_bits_per_dim([x], levels=load_shard_set(root, size, split).levels)
    forward = model_bits_per_dim(model, x, batch_size)
    data, enc = encode_images(model, sha, x, None, str(Path(checkpoint).resolve()), batch_size, "float32",
                              threads, progress)
    if out:
        atomic_write_bytes(out, data)
    y, _, dec = decode_file(data, checkpoint, out or "the .prc", progress)
    exact = torch.equal(x, y)
    png = codecs["png"]
    rows = [("PNG (Pillow, optimize=True)", png)]
    if webp_available():
        rows.append(("WebP lossless (Pillow, method 6)", codecs["webp"]))
    rows.append(("JPEG XL lossless (libjxl, effort 9)", codecs["jpegxl"]))
    dims = n * x[0].numel()   # sub-pixels: channels x size x size per image (1 or 3 channels)
    rows += [(f".prc file, this coder ({n} images in one file, header included)", enc["file_bits"] / dims),
             ("range-coded payload alone", enc["payload_bits"] / dims),
             ("model: sum of -log2 p (incremental pass, float32)", enc["ideal_bits"] / dims),
             ("model: bits/dim of the whole-image forward (as validation)", forward)]
    lines = [f"{split} split of {root}: {n} images {size}x{size}, model {model.config['name']} "
             f"({checkpoint})", "", "| codec | bits/dim | vs PNG |", "|---|---|---|"]
    lines += [f"| {what} | {bpd:.4f} | {100 * (bpd / png - 1):+.1f} % |" for what, bpd in rows]
    lines += ["", f"round trip exact: {'yes' if exact else 'NO'} ({n} images); file {len(data)} bytes, header "
              f"{enc['header_bytes']} bytes; payload / sum(-log2 p) = {enc['payload_bits'] / enc['ideal_bits']:.5f}",
              f"encode {n / enc['seconds']:.2f} images/s, decode {n / dec['seconds']:.2f} images/s "
              f"(batch {batch_size}, {threads} thread(s), float32)"]
    if not exact:
        raise AssertionError("\n".join(lines))
    return "\n".join(lines)

"""Sample grids and image completion from a trained model.

`python -m pipeline.tools.sample --checkpoint RUN/checkpoints --n 64 --out grid.png`
`python -m pipeline.tools.sample --checkpoint RUN/checkpoints --complete-from DATA_ROOT --n 16 --out completion.png`
(completion: the top half of validation images is kept, the bottom half sampled; the grid shows
originals above completions).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from pipeline.data.shards import split_batches
from pipeline.tracking.figures import save_grid
from pipeline.train.distributed import resolve_device
from pipeline.train.weights import load_checkpoint_model


def main(argv=None) -> int:
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
            save_grid(torch.cat([x, done.cpu()]), args.out, nrow=x.shape[0], levels=model.levels)
        else:
            save_grid(model.sample(args.n, generator=g), args.out, levels=model.levels)
    dt = time.time() - t0
    print(f"wrote {args.out} ({args.n} images in {dt:.1f} s, {args.n / dt:.2f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate a saved checkpoint in one process, without DeepSpeed:

    python -m pipeline.tools.evaluate --checkpoint RUN/checkpoints --data ROOT [--split val] [--split train]
        [--baselines]

--baselines adds PNG, WebP and JPEG XL lossless bits/dim of the same images (pipeline.tracking.baselines) to each
split's result, e.g. photos32's source never trained on: `--data data/photos32 --split heldout --baselines`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from pipeline.data.shards import load_shard_set
from pipeline.tracking.baselines import split_codec_bits_per_dim
from pipeline.train.distributed import resolve_device
from pipeline.train.evaluate import evaluate_bits_per_dim
from pipeline.train.weights import load_checkpoint_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a run's checkpoints folder, a tag folder in it, or an exported .pt")
    p.add_argument("--data", required=True, help="shard root (data.root of the experiment)")
    p.add_argument("--split", action="append", help="split(s) to evaluate (default: val)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-batches", type=int, default=0)
    p.add_argument("--device", default="auto", help="cuda, cpu, or auto: cuda when a GPU is visible")
    p.add_argument("--baselines", action="store_true",
                   help="also PNG / WebP / JPEG XL lossless bits/dim of each split's images (the whole split)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    model = load_checkpoint_model(args.checkpoint, device).eval()
    size = model.config["image_size"]
    results = {}
    for split in args.split or ["val"]:
        shards = load_shard_set(args.data, size, split)
        t0 = time.time()
        r = evaluate_bits_per_dim(model.bits_per_dim, shards, 0, 1, args.batch_size, device, args.max_batches)
        results[split] = dict(r, seconds=round(time.time() - t0, 2))
        print(f"{split}: {r['bits_per_dim']:.4f} bits/dim over {r['samples']} images", file=sys.stderr)
        if args.baselines:
            codecs = split_codec_bits_per_dim(args.data, size, split)
            results[split].update({f"{c}_bits_per_dim": v for c, v in codecs.items() if c != "images"})
            print(f"{split} as files: " + ", ".join(f"{c} {v:.4f}" for c, v in codecs.items() if c != "images")
                  + f" bits/dim over {codecs['images']} images", file=sys.stderr)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

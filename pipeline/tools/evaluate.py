"""Evaluate a saved checkpoint in one process, without DeepSpeed:

    python -m pipeline.tools.evaluate --checkpoint RUN/checkpoints --data ROOT [--split val] [--split train]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from pipeline.data.shards import load_shard_set
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
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Bits/dim over a whole split, each sample counted exactly once across all ranks.

`python -m pipeline.evaluate --checkpoint RUN/checkpoints --data ROOT [--split val] [--split train]`
evaluates a saved checkpoint in one process, without DeepSpeed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable, Dict

import torch
import torch.distributed as dist

from pipeline.data import ShardSet, eval_batches, iterate_eval, to_device


@torch.no_grad()
def evaluate_bits_per_dim(bits_fn: Callable[[torch.Tensor], torch.Tensor], shards: ShardSet, rank: int,
                          world: int, batch_size: int, device: str, max_batches: int = 0) -> Dict[str, float]:
    """Mean bits/dim of the split: (sum over samples, reduced) / (count, reduced).

    `bits_fn` maps a uint8 batch to per-sample bits/dim. Ranks own disjoint shards; all ranks run the
    same number of forward passes (a rank that runs out repeats a batch and discards it) because under
    ZeRO-3 every forward is a collective.
    """
    paths, n_local = eval_batches(shards, rank, world, batch_size, max_batches)
    # Reduced tensors live on the model's device: NCCL reduces CUDA tensors only.
    n_steps = torch.tensor([n_local], dtype=torch.long, device=device)
    if world > 1:
        dist.all_reduce(n_steps, op=dist.ReduceOp.MAX)
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of bits/dim, samples]
    batches = iterate_eval(paths, shards.size, batch_size, max_batches)
    filler = torch.zeros(1, 3, shards.size, shards.size, dtype=torch.uint8)
    for _ in range(int(n_steps.item())):
        x = next(batches, None)
        bpd = bits_fn(to_device(filler if x is None else x, device))
        if x is not None:  # summed on the device: no wait for the GPU per batch
            total[0] += bpd.double().sum()
            total[1] += x.shape[0]
    if world > 1:
        dist.all_reduce(total)
    return {"bits_per_dim": (total[0] / total[1]).item(), "samples": int(total[1].item())}


def main(argv=None) -> int:
    from pipeline.data import load_shard_set
    from pipeline.distributed import resolve_device
    from pipeline.export import load_checkpoint_model

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

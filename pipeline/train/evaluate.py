"""Bits/dim over a whole split, each sample counted exactly once across all ranks.

`python -m pipeline.tools.evaluate --checkpoint RUN/checkpoints --data ROOT [--split val] [--split train]`
evaluates a saved checkpoint in one process, without DeepSpeed.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.distributed as dist

from pipeline.data.plan import EvalPlan
from pipeline.data.shards import ShardSet, eval_batches
from pipeline.data.stream import to_device


@torch.no_grad()
def evaluate_bits_per_dim(bits_fn: Callable[[torch.Tensor], torch.Tensor], shards: ShardSet, rank: int,
                          world: int, batch_size: int, device: str, max_batches: int = 0) -> Dict[str, float]:
    """Mean bits/dim of the split: (sum over samples, reduced) / (count, reduced).

    `bits_fn` maps a uint8 batch to per-sample bits/dim. Ranks own contiguous near-equal ranges of the
    split (`EvalPlan`: within one sample of each other, readers may start mid-shard); all ranks run the
    same number of forward passes, known to every rank from the plan (a rank that runs out runs a filler
    batch and discards it), because under ZeRO-3 every forward is a collective.
    """
    plan = EvalPlan(tuple(n for _, n in shards.shards), world, batch_size, max_batches)
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of bits/dim, samples]
    batches = eval_batches(shards, plan.spans(rank), batch_size)
    filler = torch.zeros(1, 3, shards.size, shards.size, dtype=torch.uint8)
    for _ in range(plan.steps):
        x = next(batches, None)
        bpd = bits_fn(to_device(filler if x is None else x, device))
        if x is not None:  # summed on the device: no wait for the GPU per batch
            total[0] += bpd.double().sum()
            total[1] += x.shape[0]
    if world > 1:
        # Reduced tensors live on the model's device: NCCL reduces CUDA tensors only.
        dist.all_reduce(total)
    return {"bits_per_dim": (total[0] / total[1]).item(), "samples": int(total[1].item())}

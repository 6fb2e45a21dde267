"""The data plan: which samples every reader reads in an epoch, and which validation samples every rank
evaluates, as pure functions of the manifests' sample counts. Torch-free: `slurm/submit.py` prints the
plan before anything runs, and a test evaluates it for 64 ranks without 64 processes.

Training (`TrainPlan`): a reader is one (rank, loader worker), `world × workers` of them. Each epoch the
shards are permuted with the seed and all samples laid out as one sequence in that order; the sequence is
cut into `readers` contiguous pieces of equal length, a whole number of micro-batches each, so a reader
reads one or a few spans (a span: samples [first, end) of one shard, possibly part of it). At most
`readers × micro_batch − 1` samples (the tail of that epoch's sequence) are left out, so every epoch uses
nearly all of the split, each sample at most once, and every rank gets the same number of batches
(unequal counts hang collective operations). The readers' pieces are disjoint whatever the shard sizes,
so a layout with fewer shards than readers works too: readers then share a shard by sample ranges.

Validation (`EvalPlan`): the samples in manifest order, cut into `world` contiguous near-equal ranges, so
every rank's count is within one sample (one micro-batch) of every other's and each sample is evaluated
exactly once.
"""
from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass
from typing import List, Sequence, Tuple

Span = Tuple[int, int, int]   # (shard index, first sample, end sample): samples [first, end) of the shard


def epoch_order(num_shards: int, seed: int, epoch: int) -> List[int]:
    """The shards' order in `epoch`: a permutation drawn from (seed, epoch), the same on every rank."""
    order = list(range(num_shards))
    random.Random(f"{seed}/{epoch}").shuffle(order)
    return order


def cut(counts: Sequence[int], order: Sequence[int], start: int, stop: int) -> List[Span]:
    """Samples [start, stop) of the sequence that lays the shards out in `order`, as spans of shards."""
    ends = list(itertools.accumulate(counts[i] for i in order))   # where each shard's samples end
    spans: List[Span] = []
    k = bisect.bisect_right(ends, start)
    while start < stop:
        begin = ends[k] - counts[order[k]]
        end = min(stop, ends[k])
        if end > start:
            spans.append((order[k], start - begin, end - begin))
        start, k = end, k + 1
    return spans


@dataclass(frozen=True)
class TrainPlan:
    """One epoch's share of every reader, from the train split's shard counts (manifest order)."""
    counts: Tuple[int, ...]
    seed: int
    world: int
    workers: int
    micro_batch: int

    @property
    def readers(self) -> int:
        return self.world * self.workers

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def batches_per_reader(self) -> int:
        return self.total // (self.readers * self.micro_batch)

    @property
    def samples_per_reader(self) -> int:
        return self.batches_per_reader * self.micro_batch

    @property
    def batches_per_rank(self) -> int:
        return self.batches_per_reader * self.workers

    @property
    def samples_per_epoch(self) -> int:
        return self.samples_per_reader * self.readers

    @property
    def fraction(self) -> float:
        """The share of the split an epoch uses."""
        return self.samples_per_epoch / self.total

    def reader(self, rank: int, worker: int) -> int:
        return rank * self.workers + worker

    def spans(self, epoch: int, reader: int) -> List[Span]:
        """The samples `reader` reads in `epoch`, in reading order (its shuffle buffer mixes them)."""
        order = epoch_order(len(self.counts), self.seed, epoch)
        n = self.samples_per_reader
        return cut(self.counts, order, reader * n, (reader + 1) * n)


@dataclass(frozen=True)
class EvalPlan:
    """Every rank's contiguous share of the validation split and its number of batches."""
    counts: Tuple[int, ...]
    world: int
    batch_size: int
    max_batches: int = 0   # per rank; 0: the whole split

    @property
    def total(self) -> int:
        return sum(self.counts)

    def _range(self, rank: int) -> Tuple[int, int]:
        start, stop = rank * self.total // self.world, (rank + 1) * self.total // self.world
        if self.max_batches:
            stop = min(stop, start + self.max_batches * self.batch_size)
        return start, stop

    def samples(self, rank: int) -> int:
        start, stop = self._range(rank)
        return stop - start

    def batches(self, rank: int) -> int:
        """This rank's batches (the last may be short)."""
        return -(-self.samples(rank) // self.batch_size)

    @property
    def steps(self) -> int:
        """Forward passes every rank runs: the most any rank needs (under ZeRO-3 a forward is a collective,
        so a rank with fewer batches runs filler forwards)."""
        return max(self.batches(r) for r in range(self.world))

    @property
    def images(self) -> int:
        """Validation images evaluated, over all ranks."""
        return sum(self.samples(r) for r in range(self.world))

    @property
    def ranks_used(self) -> int:
        """Ranks that evaluate at least one image."""
        return sum(1 for r in range(self.world) if self.samples(r))

    def spans(self, rank: int) -> List[Span]:
        """The samples `rank` evaluates, in manifest order."""
        return cut(self.counts, range(len(self.counts)), *self._range(rank))


def percent(train: TrainPlan) -> str:
    """The share of the train split an epoch uses, rounded down (100.00 % means every image)."""
    return f"{10000 * train.samples_per_epoch // train.total / 100:.2f}"


def plan_line(train: TrainPlan, val: EvalPlan, accumulation: int) -> str:
    """The one line that says what a run will read, printed by the launcher before anything runs and logged
    by the trainer: `data plan: N of M train images per epoch (P %), S steps per epoch, B batches per rank;
    validation: V images on R ranks, at most K batches per rank`."""
    steps = train.batches_per_rank // accumulation
    return (f"data plan: {train.samples_per_epoch:,} of {train.total:,} train images per epoch "
            f"({percent(train)} %), {steps:,} steps per epoch, {train.batches_per_rank:,} batches per "
            f"rank; validation: {val.images:,} images on {val.ranks_used} ranks, at most {val.steps:,} batches "
            f"per rank")

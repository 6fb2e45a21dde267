"""The training stream: an endless, deterministic, evenly split sequence of uint8 batches per rank.

Batches are deterministic functions of (seed, epoch, rank, world size, workers): each epoch the shard list
is permuted with the seed, split by node (every world-th shard) and then by worker — the split
`wds.split_by_node` / `wds.split_by_worker` make, computed here from the manifest so that every rank knows
every other rank's share. Every (rank, worker) then yields exactly the same number of batches per epoch
(the smallest share decides; unequal counts hang collective operations), so the data position is one
integer, the number of batches consumed, and a resumed run sees exactly the batches the uninterrupted run
would have seen.
"""
from __future__ import annotations

import logging
import random
import signal
from typing import Iterator, List

import torch
import webdataset as wds

from pipeline.data.shards import ShardError, ShardSet, decode_sample, raising_handler, skipping_handler
from shardformat import IMAGE, LABEL

log = logging.getLogger(__name__)


class TrainStream(torch.utils.data.IterableDataset):
    """Endless, deterministic, evenly split stream of uint8 training batches for one rank.

    Batch `i` of an epoch comes from logical worker `i % W`; DataLoader visits its workers round-robin,
    so physical worker `p` plays logical worker `(p + start) % W` and the stream resumes mid-epoch at
    batch `start` exactly.
    """

    def __init__(self, shards: ShardSet, micro_batch: int, seed: int, rank: int, world: int,
                 num_workers: int, shuffle_buffer: int = 1000, on_corrupt: str = "error"):
        super().__init__()
        self.shards, self.micro_batch, self.seed = shards, micro_batch, seed
        self.rank, self.world, self.workers = rank, world, max(1, num_workers)
        self.shuffle_buffer, self.on_corrupt = shuffle_buffer, on_corrupt
        self.start = 0  # batches already consumed (the data position)
        slots = world * self.workers
        if len(shards.shards) < slots:
            raise ShardError(
                f"{len(shards.shards)} {shards.split} shards in {shards.directory} cannot feed {world} ranks × "
                f"{self.workers} loader workers ({slots} readers): write smaller shards (--shard-size) "
                f"or lower data.num_workers")
        # Whatever the permutation, a reader gets at least q = S // slots shards; the q smallest bound
        # its share from below, so every epoch gives every reader this many batches.
        counts = sorted(n for _, n in shards.shards)
        per_slot = sum(counts[:len(counts) // slots])
        self.batches_per_worker = per_slot // micro_batch
        if self.batches_per_worker < 1:
            raise ShardError(f"a loader worker's share ({per_slot} samples) is less than one micro-batch "
                             f"({micro_batch}): lower train.micro_batch_size or data.num_workers")

    @property
    def batches_per_epoch(self) -> int:
        return self.batches_per_worker * self.workers

    def _plan(self, epoch: int) -> List[int]:
        order = list(range(len(self.shards.shards)))
        random.Random(f"{self.seed}/{epoch}").shuffle(order)
        return order

    def _slot_shards(self, epoch: int, slot: int) -> List[int]:
        rank, worker = divmod(slot, self.workers)
        return self._plan(epoch)[rank::self.world][worker::self.workers]

    def _worker_batches(self, epoch: int, logical: int) -> Iterator[torch.Tensor]:
        slot = self.rank * self.workers + logical
        urls = [{"url": str(self.shards.shards[i][0])} for i in self._slot_shards(epoch, slot)]
        handler = raising_handler if self.on_corrupt == "error" else skipping_handler
        rng = random.Random(f"{self.seed}/{epoch}/{slot}")

        # Only the image and the label are read from the tar (the json metadata is not needed here).
        read = wds.tarfile_to_samples(handler=handler, select_files=lambda f: f.endswith((f".{IMAGE}", f".{LABEL}")))

        def samples():
            yield from read(iter(urls))
            # Only skipped (corrupt) samples can leave a share short of its batches: then cycle it.
            while self.on_corrupt == "skip":
                yield from read(iter(urls))

        stream = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(samples())
        # Skip what an earlier run consumed before decoding anything (resume is cheap).
        first_epoch = self.start // self.batches_per_epoch
        skip = 0
        if epoch == first_epoch:
            k0 = self.start % self.batches_per_epoch
            skip = len([j for j in range(self.batches_per_worker) if j * self.workers + logical < k0])
        for j in range(self.batches_per_worker):
            raw = [next(stream) for _ in range(self.micro_batch)]
            if j < skip:
                continue
            images = []
            for s in raw:
                try:
                    images.append(decode_sample(s, self.shards.size)[0])
                except ShardError:
                    if self.on_corrupt == "error":
                        raise
                    log.warning("skipping undecodable sample %s of %s", s.get("__key__"), s.get("__url__"))
                    images.append(images[-1] if images else torch.zeros(3, self.shards.size, self.shards.size,
                                                                        dtype=torch.uint8))
            yield torch.stack(images)

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = torch.utils.data.get_worker_info()
        physical = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError("TrainStream must be read by a DataLoader with exactly its num_workers")
        logical = (physical + self.start) % self.workers
        epoch = self.start // self.batches_per_epoch
        while True:
            yield from self._worker_batches(epoch, logical)
            epoch += 1


def _ignore_stop_signals(_worker_id: int) -> None:
    # SLURM sends USR2 to every process of a job step before a time-out. The rank decides when to stop and
    # checkpoints first; its loader workers must not die of the signal before it does. (SIGTERM keeps its
    # default: multiprocessing ends workers with it when the rank exits.)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def train_loader(stream: TrainStream, start: int = 0) -> Iterator[torch.Tensor]:
    """An endless iterator of uint8 [micro_batch, 3, H, W] batches beginning at data position `start`."""
    stream.start = start
    if stream.workers == 1:
        # A single reader needs no subprocess; the stream is the same either way.
        return iter(stream)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=stream.workers,
                                         prefetch_factor=4, persistent_workers=False,
                                         worker_init_fn=_ignore_stop_signals)
    return iter(loader)


def to_device(x: torch.Tensor, device: str) -> torch.Tensor:
    """A host batch on `device`. To a GPU through pinned memory and an asynchronous copy: a copy from
    ordinary memory first waits for all queued GPU work, so the next forward could not be queued while
    the previous backward still runs."""
    if device == "cpu":
        return x
    return x.pin_memory().to(device, non_blocking=True)

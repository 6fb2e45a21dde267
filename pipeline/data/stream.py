"""The training stream: an endless, deterministic, evenly split sequence of uint8 batches per rank.

Which samples each (rank, loader worker) reads in an epoch is the data plan's (`plan.py`: a pure function
of the shard counts, seed, epoch, world size, workers and micro-batch); every reader yields the same
number of batches per epoch, so the data position is one integer, the number of batches consumed, and a
resumed run sees exactly the batches the uninterrupted run would have seen.
"""
from __future__ import annotations

import itertools
import logging
import random
import signal
from typing import Iterator

import torch
import webdataset as wds

from pipeline.data.plan import TrainPlan
from pipeline.data.shards import (ShardError, ShardSet, raising_handler, read_spans,
                                     skipping_handler)
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
        self.plan = TrainPlan(tuple(n for _, n in shards.shards), seed, world, self.workers, micro_batch)
        self.batches_per_worker = self.plan.batches_per_reader
        if self.batches_per_worker < 1:
            raise ShardError(f"{shards.num_samples} {shards.split} samples in {shards.directory} give "
                             f"{self.plan.readers} readers ({world} ranks × {self.workers} loader workers) less "
                             f"than one micro-batch ({micro_batch}) each: lower train.micro_batch_size or "
                             f"data.num_workers")

    @property
    def batches_per_epoch(self) -> int:
        return self.batches_per_worker * self.workers

    def _worker_batches(self, epoch: int, logical: int) -> Iterator[torch.Tensor]:
        reader = self.plan.reader(self.rank, logical)
        spans = self.plan.spans(epoch, reader)
        handler = raising_handler if self.on_corrupt == "error" else skipping_handler
        rng = random.Random(f"{self.seed}/{epoch}/{reader}")

        # Only the image and the label are read from the tar (the json metadata is not needed here).
        def samples():
            while True:  # only skipped (corrupt) samples can leave a share short of its batches: then cycle it
                yield from read_spans(self.shards, spans, handler, select_files=_image_and_label)
                if self.on_corrupt != "skip":
                    return

        stream = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(samples())
        # Skip what an earlier run consumed before decoding anything (resume is cheap).
        first_epoch = self.start // self.batches_per_epoch
        skip = 0
        if epoch == first_epoch:
            k0 = self.start % self.batches_per_epoch
            skip = len([j for j in range(self.batches_per_worker) if j * self.workers + logical < k0])
        for j in range(self.batches_per_worker):
            raw = list(itertools.islice(stream, self.micro_batch))
            if len(raw) < self.micro_batch:  # read_spans names a short shard; this is a last guard
                raise ShardError(f"reader {reader} of epoch {epoch} ran out of samples at batch {j}")
            if j < skip:
                continue
            images = []
            for s in raw:
                try:
                    images.append(self.shards.decode(s)[0])
                except ShardError:
                    if self.on_corrupt == "error":
                        raise
                    log.warning("skipping undecodable sample %s of %s", s.get("__key__"), s.get("__url__"))
                    size = self.shards.size
                    images.append(images[-1] if images else torch.zeros(self.shards.channels, size, size,
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


def _image_and_label(name: str) -> bool:
    return name.endswith((f".{IMAGE}", f".{LABEL}"))


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

"""Streaming input from the webdataset shards written by `preprocessing`, in the format both sides import
from `shardformat`: `<root>/<size>/<split>-000000.tar`, each sample `png` (size×size RGB), `cls`, `json`,
and a manifest `<root>/<size>/<split>.json` listing every shard with its sample count and sha256.

Training batches are deterministic functions of (seed, epoch, rank, world size, workers): each epoch the
shard list is permuted with the seed, split by node (every world-th shard) and then by worker — the
split `wds.split_by_node` / `wds.split_by_worker` make, computed here from the manifest so that every
rank knows every other rank's share. Every (rank, worker) then yields exactly the same number of batches
per epoch (the smallest share decides; unequal counts hang collective operations), so the data position
is one integer, the number of batches consumed, and a resumed run sees exactly the batches the
uninterrupted run would have seen.

Only the `png` and `cls` keys are decoded, by Pillow and int(): no pickle decoder is ever reached.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from shardformat import IMAGE, LABEL, FormatError, check_manifest, manifest_path, size_dir

log = logging.getLogger(__name__)


class ShardError(RuntimeError):
    """A shard is missing, truncated or holds a sample that cannot be decoded; the message names it."""


@dataclass
class ShardSet:
    """One split at one size, as the manifest describes it."""
    directory: Path
    split: str
    size: int
    shards: List[Tuple[Path, int]]   # (path, sample count)
    classes: List[str]
    manifest: Dict
    manifest_sha256: str

    @property
    def num_samples(self) -> int:
        return sum(n for _, n in self.shards)


def load_shard_set(root: str | Path, size: int, split: str) -> ShardSet:
    """Read and check `<root>/<size>/<split>.json`; every shard it lists must exist and be non-empty."""
    directory, mpath = size_dir(root, size), manifest_path(root, size, split)
    if not mpath.exists():
        hint = f"; data.root {root} does not exist" if not Path(root).exists() else ""
        raise ShardError(f"no manifest {mpath}: build the shards with `python -m preprocessing build`"
                         f" (data.root={root}, split={split}, size={size}){hint}")
    raw = mpath.read_bytes()
    try:
        manifest = check_manifest(json.loads(raw), size)
    except json.JSONDecodeError as e:
        raise ShardError(f"manifest {mpath} is not valid JSON: {e}") from None
    except FormatError as e:
        raise ShardError(f"manifest {mpath}: {e}") from None
    shards = []
    for entry in manifest["shards"]:
        path = directory / entry["name"]
        if not path.exists():
            raise ShardError(f"shard {path} is listed in {mpath.name} but missing")
        if path.stat().st_size == 0:
            raise ShardError(f"shard {path} is empty")
        shards.append((path, int(entry["count"])))
    return ShardSet(directory, split, size, shards, list(manifest["classes"]), manifest,
                    hashlib.sha256(raw).hexdigest())


def decode_sample(sample: Dict, size: int) -> Tuple[torch.Tensor, int]:
    """png bytes -> uint8 [3, size, size]; cls -> int. Raises ShardError naming the shard and key."""
    where = f"sample {sample.get('__key__')!r} of shard {sample.get('__url__')}"
    try:
        img = Image.open(io.BytesIO(sample[IMAGE]))
        img.load()
        arr = np.asarray(img.convert("RGB"))
        label = int(sample[LABEL])
    except Exception as e:  # PIL raises many types for damaged data
        raise ShardError(f"cannot decode {where}: {type(e).__name__}: {e}") from None
    if arr.shape != (size, size, 3):
        raise ShardError(f"{where} is {arr.shape[1]}×{arr.shape[0]}, expected {size}×{size}")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous(), label


def _raising_handler(exn: Exception) -> bool:
    # webdataset appends the shard url to exn.args; put it first in the message.
    urls = [a for a in exn.args if isinstance(a, str) and a.endswith(".tar")]
    raise ShardError(f"corrupt shard {urls[-1] if urls else '?'}: {type(exn).__name__}: {exn.args[0] if exn.args else exn}")


def _skipping_handler(exn: Exception) -> bool:
    log.warning("skipping corrupt data (data.on_corrupt=skip): %s", exn)
    return True


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
        handler = _raising_handler if self.on_corrupt == "error" else _skipping_handler
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


def eval_batches(shards: ShardSet, rank: int, world: int, batch_size: int,
                 max_batches: int = 0) -> Tuple[List[Path], int]:
    """This rank's validation shards (every world-th, in order) and its number of batches; each sample
    of the split belongs to exactly one rank."""
    mine = shards.shards[rank::world]
    n = sum(c for _, c in mine)
    batches = -(-n // batch_size)
    if max_batches:
        batches = min(batches, max_batches)
    return [p for p, _ in mine], batches


def split_batches(root: str | Path, size: int, split: str, batch_size: int) -> Iterator[torch.Tensor]:
    """uint8 batches of a whole split in shard order (the last may be short), on one process: what the
    tools that look at a split outside training read (sampling, figures, codec baselines, compare)."""
    shards = load_shard_set(root, size, split)
    return iterate_eval([p for p, _ in shards.shards], size, batch_size)


def iterate_eval(paths: List[Path], size: int, batch_size: int, max_batches: int = 0) -> Iterator[torch.Tensor]:
    """uint8 batches of the given shards in order (the last may be short)."""
    samples = wds.tarfile_to_samples(handler=_raising_handler)(iter({"url": str(p)} for p in paths))
    batch: List[torch.Tensor] = []
    count = 0
    for s in samples:
        batch.append(decode_sample(s, size)[0])
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch, count = [], count + 1
            if max_batches and count >= max_batches:
                return
    if batch:
        yield torch.stack(batch)

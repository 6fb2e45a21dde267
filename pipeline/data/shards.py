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


def raising_handler(exn: Exception) -> bool:
    # webdataset appends the shard url to exn.args; put it first in the message.
    urls = [a for a in exn.args if isinstance(a, str) and a.endswith(".tar")]
    raise ShardError(f"corrupt shard {urls[-1] if urls else '?'}: {type(exn).__name__}: {exn.args[0] if exn.args else exn}")


def skipping_handler(exn: Exception) -> bool:
    log.warning("skipping corrupt data (data.on_corrupt=skip): %s", exn)
    return True


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
    samples = wds.tarfile_to_samples(handler=raising_handler)(iter({"url": str(p)} for p in paths))
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

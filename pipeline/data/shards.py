"""Streaming input from the webdataset shards written by `preprocessing`, in the format both sides import
from `shardformat`: `<root>/<size>/<split>-000000.tar`, each sample `png` (size×size, RGB or grayscale), `cls`,
`json`, and a manifest `<root>/<size>/<split>.json` listing every shard with its sample count and sha256, and
the images' `channels` (1 or 3) and `levels` (2..256; the PNG holds v * (255 // (levels - 1))).

Which samples a reader reads is the data plan's (`plan.py`); this module reads them: a split as its
manifest describes it, decoding, samples [first, end) of a shard, whole-split iteration (the tools).

Only the `png` and `cls` keys are decoded, by Pillow and int(): no pickle decoder is ever reached.
"""
from __future__ import annotations

import io
import itertools
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from pipeline.data.manifest import ShardError, read_manifest
from pipeline.data.plan import Span
from shardformat import (DEFAULT_CHANNELS, DEFAULT_LEVELS, IMAGE, LABEL, channels_of, levels_of, manifest_path,
                         png_step, size_dir)

log = logging.getLogger(__name__)


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

    @property
    def channels(self) -> int:
        """1 (grayscale) or 3 (RGB), from the manifest."""
        return channels_of(self.manifest)

    @property
    def levels(self) -> int:
        """Values per sub-pixel (2..256), from the manifest: decoded images hold 0..levels-1."""
        return levels_of(self.manifest)

    def decode(self, sample: Dict) -> Tuple[torch.Tensor, int]:
        """`decode_sample` with this split's size, channels and levels."""
        return decode_sample(sample, self.size, self.channels, self.levels)


def load_shard_set(root: str | Path, size: int, split: str) -> ShardSet:
    """Read and check `<root>/<size>/<split>.json`; every shard it lists must exist and be non-empty."""
    directory, mpath = size_dir(root, size), manifest_path(root, size, split)
    manifest, digest = read_manifest(root, size, split)
    shards = []
    for entry in manifest["shards"]:
        path = directory / entry["name"]
        if not path.exists():
            raise ShardError(f"shard {path} is listed in {mpath.name} but missing")
        if path.stat().st_size == 0:
            raise ShardError(f"shard {path} is empty")
        shards.append((path, int(entry["count"])))
    return ShardSet(directory, split, size, shards, list(manifest["classes"]), manifest, digest)


def decode_sample(sample: Dict, size: int, channels: int = DEFAULT_CHANNELS,
                  levels: int = DEFAULT_LEVELS) -> Tuple[torch.Tensor, int]:
    """png bytes -> uint8 [channels, size, size] with values 0..levels-1 (the PNG's v // (255 // (levels - 1)));
    cls -> int. Raises ShardError naming the shard and key, also for a value that is not a level's."""
    where = f"sample {sample.get('__key__')!r} of shard {sample.get('__url__')}"
    try:
        img = Image.open(io.BytesIO(sample[IMAGE]))
        img.load()
        arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
        label = int(sample[LABEL])
    except Exception as e:  # PIL raises many types for damaged data
        raise ShardError(f"cannot decode {where}: {type(e).__name__}: {e}") from None
    if arr.shape[:2] != (size, size):
        raise ShardError(f"{where} is {arr.shape[1]}×{arr.shape[0]}, expected {size}×{size}")
    if levels < 256:
        step = png_step(levels)
        values, rest = np.divmod(arr, step)
        if rest.any() or values.max(initial=0) >= levels:
            raise ShardError(f"{where} holds values that are not multiples of {step} in 0..255: not a "
                             f"{levels}-level image")
        arr = values.astype(np.uint8)
    t = torch.from_numpy(arr.copy())
    return (t.unsqueeze(0) if channels == 1 else t.permute(2, 0, 1)).contiguous(), label


def raising_handler(exn: Exception) -> bool:
    # webdataset appends the shard url to exn.args; put it first in the message.
    urls = [a for a in exn.args if isinstance(a, str) and a.endswith(".tar")]
    raise ShardError(f"corrupt shard {urls[-1] if urls else '?'}: {type(exn).__name__}: {exn.args[0] if exn.args else exn}")


def skipping_handler(exn: Exception) -> bool:
    log.warning("skipping corrupt data (data.on_corrupt=skip): %s", exn)
    return True


def read_spans(shards: ShardSet, spans: Iterable[Span], handler: Callable[[Exception], bool] = raising_handler,
               select_files: Optional[Callable[[str], bool]] = None) -> Iterator[Dict]:
    """The raw samples of `spans` (samples [first, end) of a shard, see `plan.py`), in order, read through
    webdataset's tar expander and grouping. With the raising handler a shard that ends before its span
    does (fewer samples than its manifest lists) is a ShardError; the skipping handler may leave a span short."""
    for shard, first, end in spans:
        path = shards.shards[shard][0]
        got = first
        with open(path, "rb") as f:
            try:
                got = _seek_to_sample(f, first)
            except (tarfile.TarError, OSError) as e:
                if handler(ShardError(f"{type(e).__name__}: {e}", str(path))):
                    continue
            files = tar_file_expander(iter([{"url": str(path), "stream": f}]), handler=handler,
                                      select_files=select_files)
            for sample in itertools.islice(group_by_keys(files, handler=handler), end - got):
                yield sample
                got += 1
        if got < end and handler is raising_handler:
            raise ShardError(f"shard {path} ends after {got} samples; {shards.directory / (shards.split + '.json')} "
                             f"lists {shards.shards[shard][1]}")


def _seek_to_sample(f: BinaryIO, first: int) -> int:
    """Position the open tar `f` at the header of sample `first` (its first member) and return `first`, or
    the number of samples the tar holds if fewer. Only the 512-byte headers are read, the members' data is
    seeked over: starting mid-shard costs about a tenth of what reading the samples before it would."""
    if first == 0:
        return 0
    start, keys, last = f.tell(), 0, None
    while True:
        offset, header = f.tell(), f.read(tarfile.BLOCKSIZE)
        if len(header) < tarfile.BLOCKSIZE or not header.strip(b"\0"):
            return keys   # the end of the archive
        try:
            if header[156:157] not in (b"0", b"\0"):   # not a plain file (a GNU long name, pax): tarfile's job
                raise ValueError(header[156:157])
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            f.seek(start)
            return _seek_with_tarfile(f, first)
        key, _ = base_plus_ext(header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape"))
        if key != last:   # webdataset's grouping rule: a new key starts a new sample
            if keys == first:
                f.seek(offset)
                return first
            keys, last = keys + 1, key
        f.seek(offset + tarfile.BLOCKSIZE + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)


def _seek_with_tarfile(f: BinaryIO, first: int) -> int:
    """`_seek_to_sample` for any tar tarfile reads (its headers parsed in full; a damaged one raises)."""
    keys, last = 0, None
    for info in tarfile.open(fileobj=f, mode="r:"):
        key, _ = base_plus_ext(info.name)
        if key != last:
            if keys == first:
                f.seek(info.offset)
                return first
            keys, last = keys + 1, key
    return keys


def eval_batches(shards: ShardSet, spans: Iterable[Span], batch_size: int) -> Iterator[torch.Tensor]:
    """uint8 batches of the samples of `spans` in order (the last may be short): one rank's share of an
    evaluation (`EvalPlan.spans`), or a whole split (`split_batches`)."""
    batch: List[torch.Tensor] = []
    for s in read_spans(shards, spans):
        batch.append(shards.decode(s)[0])
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def split_batches(root: str | Path, size: int, split: str, batch_size: int) -> Iterator[torch.Tensor]:
    """uint8 batches of a whole split in shard order (the last may be short), on one process: what the
    tools that look at a split outside training read (sampling, figures, codec baselines, compare)."""
    shards = load_shard_set(root, size, split)
    return eval_batches(shards, [(i, 0, n) for i, (_, n) in enumerate(shards.shards)], batch_size)

"""Shard files on disk: naming, per-block parts, and splicing parts into final shards.

Why parts: shard j must hold exactly samples j*S..(j+1)*S-1 of the *valid* samples in the
shuffled order, but which inputs are undecodable is only known after decoding. So the build
(possibly K array tasks) renders input block b = shuffled inputs b*S..(b+1)*S-1 into a part
(`.parts/<split>-<b>.tar`, itself a valid tar) plus a summary (`.parts/<split>-<b>.json`:
the byte length of every valid sample's record, and the skipped inputs). Finalize then lays the
valid samples out into shards. With nothing skipped, shard j *is* part j and is moved there by a
rename (no copy); after a skip, the shards from there on are spliced from part byte ranges.

Everything is written to a temporary name and renamed when complete, so a crash never leaves a
half-written file under a final name, and a rerun only redoes what is missing.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from shardformat import shard_name, size_dir

from .fsutil import atomic_write_json, read_json, tmp_name
from .tario import trailer

# ---------------------------------------------------------------- naming (final names: shardformat)

def part_path(out: Path, size: int, split: str, block: int) -> Path:
    return size_dir(out, size) / ".parts" / f"{split}-{block:06d}.tar"


def summary_path(out: Path, size: int, split: str, block: int) -> Path:
    return size_dir(out, size) / ".parts" / f"{split}-{block:06d}.json"


def temp_files(out: Path, size: int, split: str) -> List[Path]:
    """Leftover temporaries of this split (from a crash or kill -9)."""
    d = size_dir(out, size)
    found = []
    for folder in (d, d / ".parts"):
        if folder.is_dir():
            found += [p for p in folder.iterdir()
                      if p.name.startswith(f".{split}-") and ".tmp-" in p.name]
    return found


# ---------------------------------------------------------------- parts
class PartWriter:
    """Streams one block's sample records to a temporary file; `commit` renames it into place."""

    def __init__(self, out: Path, size: int, split: str, block: int):
        self.final = part_path(out, size, split, block)
        self.summary = summary_path(out, size, split, block)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp_name(self.final)
        self.file = open(self.tmp, "wb")
        self.hash = hashlib.sha256()
        self.lengths: List[int] = []
        self.block = block

    def add(self, records: bytes, lengths: List[int]) -> None:
        """Append consecutive sample records (joined) whose byte lengths are `lengths`."""
        self.file.write(records)
        self.hash.update(records)
        self.lengths.extend(lengths)

    def commit(self, skipped: List[dict]) -> None:
        """Finish the tar, then publish part and summary (summary last: it marks the block done)."""
        length = sum(self.lengths)
        end = trailer(length)
        self.file.write(end)
        self.hash.update(end)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.final)
        atomic_write_json(self.summary, {
            "block": self.block, "lengths": self.lengths, "skipped": skipped,
            "records_bytes": length, "sha256": self.hash.hexdigest()})

    def abort(self) -> None:
        try:
            self.file.close()  # may fail again on a full disk; the temporary file goes regardless
        except OSError:
            pass
        finally:
            self.tmp.unlink(missing_ok=True)


def load_summaries(out: Path, size: int, split: str, num_blocks: int) -> Tuple[Dict[int, dict], List[int]]:
    """(summaries by block, missing block ids)."""
    found, missing = {}, []
    for b in range(num_blocks):
        p = summary_path(out, size, split, b)
        try:
            found[b] = read_json(p)
        except FileNotFoundError:
            missing.append(b)
    return found, missing


# ---------------------------------------------------------------- layout
@dataclass
class ShardPlan:
    """Shard `index` is the concatenation of `segments` = (block, start byte, end byte) of parts."""
    index: int
    count: int
    segments: List[Tuple[int, int, int]]


def layout(summaries: Dict[int, dict], num_blocks: int, shard_size: int) -> List[ShardPlan]:
    """Cut the valid samples (blocks in order) into shards of exactly `shard_size` (last shorter)."""
    plans: List[ShardPlan] = []
    cur: Optional[ShardPlan] = None
    for b in range(num_blocks):
        offset = 0
        for length in summaries[b]["lengths"]:
            if cur is None or cur.count == shard_size:
                cur = ShardPlan(len(plans), 0, [])
                plans.append(cur)
            if cur.segments and cur.segments[-1][0] == b and cur.segments[-1][2] == offset:
                blk, start, _ = cur.segments[-1]
                cur.segments[-1] = (blk, start, offset + length)
            else:
                cur.segments.append((b, offset, offset + length))
            cur.count += 1
            offset += length
    return plans


def blocks_of(plan: ShardPlan) -> List[int]:
    return sorted({seg[0] for seg in plan.segments})


def is_whole_part(plan: ShardPlan, summaries: Dict[int, dict]) -> bool:
    """True when the shard is exactly one part: then it can be moved instead of copied."""
    if len(plan.segments) != 1:
        return False
    b, start, end = plan.segments[0]
    return start == 0 and end == summaries[b]["records_bytes"]


def write_shard(out: Path, size: int, split: str, plan: ShardPlan,
                summaries: Dict[int, dict]) -> str:
    """Create shard `plan.index` from its parts (rename or splice); returns its sha256."""
    final = size_dir(out, size) / shard_name(split, plan.index)
    if is_whole_part(plan, summaries):
        b = plan.segments[0][0]
        os.replace(part_path(out, size, split, b), final)
        return summaries[b]["sha256"]
    h = hashlib.sha256()
    tmp = tmp_name(final)
    total = 0
    with open(tmp, "wb") as dst:
        for b, start, end in plan.segments:
            with open(part_path(out, size, split, b), "rb") as src:
                src.seek(start)
                remaining = end - start
                while remaining:
                    chunk = src.read(min(remaining, 1 << 20))
                    if not chunk:
                        raise IOError(f"part {b} of {split} at size {size} is shorter than its summary")
                    dst.write(chunk)
                    h.update(chunk)
                    remaining -= len(chunk)
            total += end - start
        end_bytes = trailer(total)
        dst.write(end_bytes)
        h.update(end_bytes)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, final)
    return h.hexdigest()

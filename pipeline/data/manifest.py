"""A split's manifest, read and checked without torch: what `shards.py` loads before reading any shard, and
what `slurm/submit.py` computes the data plan from before anything runs."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, List, Tuple

from shardformat import FormatError, check_manifest, manifest_path


class ShardError(RuntimeError):
    """A shard is missing, truncated or holds a sample that cannot be decoded; the message names it."""


def read_manifest(root: str | Path, size: int, split: str) -> Tuple[Dict, str]:
    """`<root>/<size>/<split>.json`, checked against the shard format, and the sha256 of its bytes."""
    mpath = manifest_path(root, size, split)
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
    return manifest, hashlib.sha256(raw).hexdigest()


def shard_counts(manifest: Dict) -> List[int]:
    """The sample count of every shard, in the manifest's order."""
    return [int(entry["count"]) for entry in manifest["shards"]]

"""The listing of a tar source, kept beside the output so that K array tasks list it once.

Listing ILSVRC2012_img_train.tar reads 1.28M tar headers spread over 138 GB: tens of seconds of
random reads per task, repeated by every one of K array tasks on the same shared filesystem. The
first task to finish listing writes `<out>/.listing/<split>-<key>.json.gz` (atomically; tasks that
race write identical bytes); the others, and reruns, read it instead. `key` hashes everything the
listing depends on: the source file's resolved path, size and mtime, the same for the labels file
and class map (a val tar's labels), the split and this format's version. A changed source gets a new
key, so a stale listing is never used. JSON, never pickle.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Optional

from .fsutil import atomic_write_bytes
from .source_types import Item, OffsetReader, Source

VERSION = 1
TAR_KINDS = ("imagenet-train-tar", "imagefolder-tar", "imagenet-val-tar")


def _stat(path) -> Optional[list]:
    if not path:
        return None
    p = Path(path).resolve()
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def cache_path(cache_dir: Path, source, split: str, val_labels=None, class_map=None) -> Path:
    parts = [VERSION, split, _stat(source), _stat(val_labels), _stat(class_map)]
    key = hashlib.sha256(json.dumps(parts).encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return Path(cache_dir) / f"{split}-{key}.json.gz"


def load(path: Path, source) -> Optional[Source]:
    """The cached Source, or None when there is none (or it cannot be read: then it is listed again)."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError):
        return None  # truncated or corrupt (e.g. a full disk): listing again is always correct
    if d.get("version") != VERSION or d.get("kind") not in TAR_KINDS:
        return None
    items = [Item(tuple(ref), src, cls, stem) for ref, src, cls, stem in d["items"]]
    return Source(d["kind"], d["classes"], items, OffsetReader(Path(source)))


def save(path: Path, src: Source) -> None:
    """Write the listing atomically; a failure (read-only or full output) only costs the next task a listing."""
    if src.kind not in TAR_KINDS:
        return
    d = {"version": VERSION, "kind": src.kind, "classes": src.classes,
         "items": [[list(it.ref), it.source, it.cls, it.stem] for it in src.items]}
    data = gzip.compress(json.dumps(d, separators=(",", ":")).encode("utf-8", "surrogateescape"), 6, mtime=0)
    try:
        atomic_write_bytes(path, data)
    except OSError:
        pass

"""What every source reader produces: a list of items and a picklable reader for their bytes."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, NamedTuple


class Item(NamedTuple):
    """One input sample. `ref` is what the reader needs (a path, an offset, an array row)."""
    ref: Any
    source: str   # path inside the folder / archive, as recorded in the sample json
    cls: str      # class name (wnid for ImageNet)
    stem: str     # file stem, becomes the webdataset key


@dataclass
class Source:
    kind: str                 # e.g. "imagenet-train-tar"; recorded in the manifest
    classes: List[str]        # label order: label i is classes[i] (sorted names)
    items: List[Item]
    reader: Callable[[Any], Any]   # ref -> bytes, HxWx3 or HxW (grayscale) uint8 array; must pickle to workers
    channels: int = 3         # 1: the reader gives HxW arrays, written as mode-L PNGs (shardformat)
    levels: int = 256         # 2: a binary source (values 0/255)
    variant: str = ""         # the data variant recorded in the manifest, e.g. "fashion-mnist/grayscale"

    def fingerprint(self) -> str:
        """Hash of the class list and every (class, source path): detects a changed source on resume."""
        h = hashlib.sha256()
        h.update("\n".join(self.classes).encode("utf-8", "surrogateescape"))
        for it in sorted(self.items, key=lambda i: (i.cls, i.source)):
            h.update(f"\n{it.cls}\t{it.source}".encode("utf-8", "surrogateescape"))
        return h.hexdigest()


class FileReader:
    """Reads whole files below a root folder."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __call__(self, rel: str) -> bytes:
        with open(self.root / rel, "rb") as f:
            return f.read()


class OffsetReader:
    """Reads (offset, size) byte ranges of one big uncompressed tar: random access into the
    archive without extracting it. The file handle is opened lazily per process."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = None
        self._pid = None

    def __getstate__(self):
        return {"path": self.path, "_f": None, "_pid": None}

    def __call__(self, ref) -> bytes:
        if self._f is None or self._pid != os.getpid():
            self._f, self._pid = open(self.path, "rb"), os.getpid()
        offset, size = ref
        self._f.seek(offset)
        return self._f.read(size)


_KEY_BAD = re.compile(r"[.\s/\\]")


def make_keys(items: List[Item]) -> List[str]:
    """Webdataset keys: the stem with dots (and separators) replaced by '_', made unique.

    Dots must go because webdataset splits `key.ext` at the first dot. If two inputs share a stem
    (same name in two class folders, a.png + a.jpg), both get `<class>_<stem>` and, if that still
    collides, a `_<n>` suffix in source order: deterministic for a given source listing.
    """
    base = [_KEY_BAD.sub("_", it.stem) for it in items]
    counts: dict = {}
    for k in base:
        counts[k] = counts.get(k, 0) + 1
    keys, seen = [], set()
    for it, k in zip(items, base):
        if counts[k] > 1:
            k = _KEY_BAD.sub("_", f"{it.cls}_{it.stem}")
        cand, n = k, 1
        while cand in seen:
            cand = f"{k}_{n}"
            n += 1
        seen.add(cand)
        keys.append(cand)
    return keys

"""Small filesystem helpers: atomic writes, temporary names, JSON files."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path


def tmp_name(path: Path) -> Path:
    """Hidden temporary sibling of `path`, unique per process and host (array tasks on several
    nodes may share a pid): `.<name>.tmp-<host>-<pid>`."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = False) -> None:
    """Write via a temporary file + os.replace: readers see the old or the new file, never half.

    No fsync by default: the small JSON files written this way (state, block summaries, manifest)
    are written only after the data they describe was fsynced, so losing one in a node crash just
    means that step is redone; an fsync costs ~10 ms each on network filesystems."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or an interrupt mid-write leaves no half file behind
        raise


def dump_json(obj) -> bytes:
    """Canonical, human-readable JSON (sorted keys) so equal content gives equal bytes."""
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8")


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, dump_json(obj))


def read_json(path: Path):
    with open(path, "rb") as f:
        return json.loads(f.read())


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()

"""Atomic file writes: a temporary name in the same folder, then a rename, so readers never see half a file."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write `data` to `path` atomically (fsync, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    """Text version of `atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode())

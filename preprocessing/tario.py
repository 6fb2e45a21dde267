"""Deterministic tar serialisation: fixed header fields, so equal samples give equal bytes.

We write the records ourselves (``TarInfo.tobuf``) instead of going through ``tarfile.TarFile``
because the build first writes per-block *parts* and later splices sample records from several
parts into one shard; a record is self-contained (header + data + padding to 512 bytes), so a
shard is just its samples' records followed by :func:`trailer`. The result is an ordinary tar,
byte-identical to what ``tarfile`` would write with the same headers.
"""

from __future__ import annotations

import json
import tarfile
from typing import Dict

from shardformat import IMAGE, LABEL, META

BLOCK = tarfile.BLOCKSIZE          # 512
RECORD = tarfile.RECORDSIZE        # 10240: tarfile pads the archive end to a multiple of this
MTIME = 0                          # fixed metadata: no clock, user or umask leaks into the bytes
MODE = 0o444


def _tarfile_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = MTIME
    info.mode = MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


_TEMPLATE = _tarfile_header("x", 0)


def header(name: str, size: int) -> bytes:
    """The header ``tarfile`` writes for these fields, built from a template (about 5x faster:
    it is ~6 headers per image). Long names (GNU longname extension) go through tarfile."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) >= 100 or size >= 8 ** 11:
        return _tarfile_header(name, size)
    h = bytearray(_TEMPLATE)
    h[0:100] = raw.ljust(100, b"\0")
    h[124:136] = b"%011o\0" % size
    h[148:156] = b" " * 8                  # checksum is computed with its own field as spaces
    h[148:155] = b"%06o\0" % sum(h)
    return bytes(h)


def member(name: str, data: bytes) -> bytes:
    """One regular-file member: header, data, NUL padding."""
    return header(name, len(data)) + data + b"\0" * (-len(data) % BLOCK)


def sample_records(key: str, label: int, meta: dict, pngs: Dict[int, bytes]) -> Dict[int, bytes]:
    """{size: the members of one webdataset sample}, in shardformat's MEMBER_ORDER: cls, json, png.
    The cls and json members are the same at every size, so they are made once."""
    meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8")
    head = member(f"{key}.{LABEL}", str(label).encode("ascii")) + member(f"{key}.{META}", meta_bytes)
    return {size: head + member(f"{key}.{IMAGE}", png) for size, png in pngs.items()}


def trailer(length: int) -> bytes:
    """End-of-archive marker (two zero blocks) plus padding, for an archive of `length` bytes."""
    end = 2 * BLOCK
    return b"\0" * (end + (-(length + end) % RECORD))

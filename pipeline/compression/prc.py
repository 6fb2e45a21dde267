"""The `.prc` file format of `pipeline.compression`: a checked header, then range-coded chunks.

    offset  size  what
    0       4     magic b"PRC\\x89" (the \\x89 catches a text-mode transfer, as in PNG)
    4       1     format version (FORMAT_VERSION)
    5       4     n, the header's length in bytes (uint32, little endian)
    9       n     header: zlib-compressed UTF-8 JSON (see `encode_header`)
    9+n     4     CRC-32 of the n header bytes (uint32, little endian)
    13+n    ...   the chunks' payloads, back to back (constriction's uint32 words, little endian)

The header holds what the decoder needs and what it must refuse on: the coder (constriction's
version, the stream and model used, 24-bit precision), the model (its config and the sha256 of its
weights), how the probabilities were computed (dtype, thread count, torch version, CPU kernels), the
image size and names, and per chunk its image count, payload length and checksum, and the checksum
of its decoded pixels (sha256 cut to 128 bits). So a corrupted or truncated file fails with an error
naming the problem, a file decoded with another model or coder version is refused, and a decode whose
probabilities differed from the encoder's (another machine's kernels) is caught by the pixel checksum:
never silently wrong. The header is about 0.5 KB (zlib-compressed), plus the names.
"""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from typing import Any, Dict, List, Tuple

import torch

MAGIC = b"PRC\x89"
# Version 2 added the probe: `compute.probe_sha256` (a checksum of the model's probabilities on a fixed
# probe input, checked before any chunk is decoded) and `compute.blas`, both required. Version 1 files
# (without them) are still decoded: without the early check, the pixel checksum still refuses a decode
# whose probabilities differed. Version 3 has the same fields and a cheaper probe input (a few network
# steps on a tiny extent instead of 96 on full-size images: pipeline/compression/probe.py); a version-2
# file is checked with its own, slower probe.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
_PREFIX = struct.Struct("<4sBI")  # magic, version, header length
_CRC = struct.Struct("<I")


class PrcError(ValueError):
    """A .prc file that cannot be decoded (or must not be): the message names the problem."""


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 of the model's parameters and buffers as float32 bytes, in sorted key order (with names,
    dtypes and shapes): equal for a DeepSpeed checkpoint and its exported model.pt."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().to("cpu", torch.float32).contiguous() if value.is_floating_point() else value.cpu()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def digest(data: bytes) -> str:
    """The chunks' checksums: sha256 cut to 128 bits (32 hex digits), plenty against corruption."""
    return hashlib.sha256(data).hexdigest()[:32]


def pixels_sha256(x: torch.Tensor) -> str:
    """`digest` of uint8 images [B, 3, H, W] in C order."""
    return digest(x.to(torch.uint8).contiguous().numpy().tobytes())


def encode_header(header: Dict[str, Any]) -> bytes:
    """Magic, version, length, compressed canonical JSON, CRC-32: everything before the payloads.
    (zlib roughly halves the JSON: it is most of a small file's overhead.)"""
    body = zlib.compress(json.dumps(header, sort_keys=True, separators=(",", ":")).encode(), 9)
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(body)) + body + _CRC.pack(zlib.crc32(body))


def pack(header: Dict[str, Any], payloads: List[bytes]) -> bytes:
    """The whole file. `header["chunks"]` must list the payloads in order."""
    return encode_header(header) + b"".join(payloads)


# What the decoder reads from a header: section -> its keys (each chunk: CHUNK_FIELDS).
FIELDS = {"coder": ("name", "version", "model", "precision_bits"),
          "compute": ("dtype", "threads", "torch", "cpu_capability"),
          "model": ("config", "weights_sha256", "checkpoint"), "images": ("count", "size", "names")}
CHUNK_FIELDS = ("images", "payload_bytes", "payload_sha256", "pixels_sha256")
FIELDS_SINCE = {2: {"compute": ("blas", "probe_sha256")}}  # fields a version added, required from it on


def _missing_fields(header: Any, version: int = FORMAT_VERSION) -> List[str]:
    if not isinstance(header, dict):
        return ["everything (it is not a JSON object)"]
    fields = {sec: list(keys) for sec, keys in FIELDS.items()}
    for since, added in FIELDS_SINCE.items():
        for sec, keys in added.items():
            fields[sec] += list(keys) if version >= since else []
    missing = [f"{sec}.{key}" for sec, keys in fields.items() for key in keys
               if not isinstance(header.get(sec), dict) or key not in header[sec]]
    chunks = header.get("chunks")
    if not isinstance(chunks, list) or not chunks:
        return missing + ["chunks"]
    missing += sorted({f"chunks[].{key}" for c in chunks for key in CHUNK_FIELDS
                       if not isinstance(c, dict) or key not in c})
    if not missing and sum(int(c["images"]) for c in chunks) != int(header["images"]["count"]):
        missing.append("chunks whose image counts add up to images.count")
    return missing


def unpack(data: bytes, name: str = "file") -> Tuple[Dict[str, Any], List[bytes], int]:
    """(header, chunk payloads, header bytes) of a .prc file, every length and checksum checked."""
    if len(data) < _PREFIX.size:
        raise PrcError(f"{name} is truncated: {len(data)} bytes, shorter than the {_PREFIX.size}-byte prefix")
    magic, version, n = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise PrcError(f"{name} is not a .prc file (starts with {magic!r}, expected {MAGIC!r})")
    if version not in READABLE_VERSIONS:
        raise PrcError(f"{name} has format version {version}; this program reads versions "
                       f"{', '.join(map(str, READABLE_VERSIONS))}")
    end = _PREFIX.size + n + _CRC.size
    if len(data) < end:
        raise PrcError(f"{name} is truncated: its header needs {end} bytes, the file has {len(data)}")
    body = data[_PREFIX.size:_PREFIX.size + n]
    (crc,) = _CRC.unpack_from(data, _PREFIX.size + n)
    if zlib.crc32(body) != crc:
        raise PrcError(f"{name}: the header is corrupted (CRC-32 {zlib.crc32(body):08x}, recorded {crc:08x})")
    try:
        header = json.loads(zlib.decompress(body))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PrcError(f"{name}: the header is not valid JSON ({e})") from None
    missing = _missing_fields(header, version)
    if missing:
        raise PrcError(f"{name}: the header lacks {', '.join(missing)} (not written by this program?)")
    sizes = [int(c["payload_bytes"]) for c in header["chunks"]]
    if len(data) != end + sum(sizes):
        what = "truncated" if len(data) < end + sum(sizes) else "longer than its header says"
        raise PrcError(f"{name} is {what}: header + payloads are {end + sum(sizes)} bytes, the file has "
                       f"{len(data)}")
    payloads, at = [], end
    for k, (chunk, size) in enumerate(zip(header["chunks"], sizes)):
        payload = data[at:at + size]
        if digest(payload) != chunk["payload_sha256"]:
            raise PrcError(f"{name}: the payload of chunk {k} (bytes {at}..{at + size - 1}) is corrupted "
                           f"(checksum mismatch)")
        payloads.append(payload)
        at += size
    return header, payloads, end


def format_version(data: bytes) -> int:
    """The format version of a .prc file that `unpack` accepted."""
    return _PREFIX.unpack_from(data)[1]

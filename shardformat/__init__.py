"""The shard format: the one contract between `preprocessing` (which writes shards) and `pipeline`
(which reads them). Both import it; neither imports the other.

Layout (under a data root, one folder per image size)::

    <root>/<size>/<split>-000000.tar   webdataset shards: uncompressed tars of samples
    <root>/<size>/<split>.json         the manifest, written last (atomically): a split exists once it does

A sample is three tar members sharing one key, in this order (sorted extensions)::

    <key>.cls    the label: ASCII decimal, an index into the manifest's `classes`
    <key>.json   {"class": name, "source": where the image came from, "orig_size": [w, h]}
    <key>.png    the size x size 8-bit RGB image

A key never contains a dot: webdataset splits `key.ext` at the first dot.

Manifest fields (`MANIFEST_FIELDS`): `format` (`FORMAT`), `split`, `size`, `num_samples`, `shard_size`,
`shards` (one `{"name", "count", "sha256"}` per shard, in order), `classes` (label i is classes[i]),
`num_classes`, `skipped` (inputs left out, with the reason), `params` (everything that decided the
bytes), `versions` (of the libraries that wrote them), `source_kind`.

This module imports nothing beyond the standard library.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Union

FORMAT = "pixelrnn-shards/1"

IMAGE, LABEL, META = "png", "cls", "json"       # member extensions
MEMBER_ORDER = (LABEL, META, IMAGE)
MANIFEST_FIELDS = ("format", "split", "size", "num_samples", "shard_size", "shards", "classes", "num_classes",
                   "skipped", "params", "versions", "source_kind")
SHARD_FIELDS = ("name", "count", "sha256")

PathLike = Union[str, Path]


class FormatError(ValueError):
    """A manifest that does not follow this format; the message says which field is wrong."""


def size_dir(root: PathLike, size: int) -> Path:
    """`<root>/<size>`: every split of one image size."""
    return Path(root) / str(size)


def shard_name(split: str, index: int) -> str:
    """`<split>-NNNNNN.tar`."""
    return f"{split}-{index:06d}.tar"


def shard_glob(split: str) -> str:
    """A glob matching every shard of `split` inside a size folder."""
    return f"{split}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"


def manifest_path(root: PathLike, size: int, split: str) -> Path:
    """`<root>/<size>/<split>.json`."""
    return size_dir(root, size) / f"{split}.json"


def check_manifest(manifest: Any, size: int = 0) -> Dict[str, Any]:
    """Raise FormatError unless `manifest` is a manifest of this format (for image size `size`, if given).
    Returns it, so that callers can write `m = check_manifest(json.loads(raw), size)`."""
    if not isinstance(manifest, dict):
        raise FormatError(f"a manifest is a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise FormatError(f"format is {manifest.get('format')!r}, expected {FORMAT!r}")
    missing = [k for k in MANIFEST_FIELDS if k not in manifest]
    if missing:
        raise FormatError(f"fields missing: {', '.join(missing)}")
    if size and int(manifest["size"]) != size:
        raise FormatError(f"it is for size {manifest['size']}, expected {size}")
    shards: List[Any] = manifest["shards"]
    if not isinstance(shards, list) or not all(isinstance(s, dict) and all(k in s for k in SHARD_FIELDS)
                                               for s in shards):
        raise FormatError(f"'shards' must be a list of {{{', '.join(SHARD_FIELDS)}}} objects")
    if not shards:
        raise FormatError("it lists no shards")
    return manifest


__all__ = ["FORMAT", "IMAGE", "LABEL", "META", "MEMBER_ORDER", "MANIFEST_FIELDS", "SHARD_FIELDS", "FormatError",
           "size_dir", "shard_name", "shard_glob", "manifest_path", "check_manifest"]

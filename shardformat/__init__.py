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

Optional fields: `channels` (1 or 3; absent = 3) and `levels` (2..256 values per sub-pixel; absent = 256),
so every older shard set stays valid; `variant` (e.g. `fashion-mnist/binarized-threshold127`). A sample's
PNG is mode "L" for 1 channel, "RGB" for 3; for levels < 256 it holds v * (255 // (levels - 1)) for the
value v in 0..levels-1 (binary: 0 and 255, so people can look at it): see :func:`png_step`.

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
CHANNELS = (1, 3)                               # grayscale or RGB
DEFAULT_CHANNELS, DEFAULT_LEVELS = 3, 256       # what a manifest without the fields holds
MIN_LEVELS, MAX_LEVELS = 2, 256

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
    channels, levels = manifest.get("channels", DEFAULT_CHANNELS), manifest.get("levels", DEFAULT_LEVELS)
    if type(channels) is not int or channels not in CHANNELS:
        raise FormatError(f"'channels' is {channels!r}, expected one of {', '.join(map(str, CHANNELS))}")
    if type(levels) is not int or not MIN_LEVELS <= levels <= MAX_LEVELS:
        raise FormatError(f"'levels' is {levels!r}, expected an integer in {MIN_LEVELS}..{MAX_LEVELS}")
    return manifest


def channels_of(manifest: Dict[str, Any]) -> int:
    """The manifest's image channels: 1 (mode L PNGs) or 3 (RGB, also when the field is absent)."""
    return int(manifest.get("channels", DEFAULT_CHANNELS))


def levels_of(manifest: Dict[str, Any]) -> int:
    """The manifest's values per sub-pixel, 2..256 (256 when the field is absent)."""
    return int(manifest.get("levels", DEFAULT_LEVELS))


def png_step(levels: int) -> int:
    """The PNG holds value v (0..levels-1) as v * png_step(levels): 255 for binary, 1 for 256 levels."""
    if not MIN_LEVELS <= levels <= MAX_LEVELS:
        raise FormatError(f"levels {levels!r} outside {MIN_LEVELS}..{MAX_LEVELS}")
    return 255 // (levels - 1)


__all__ = ["FORMAT", "IMAGE", "LABEL", "META", "MEMBER_ORDER", "MANIFEST_FIELDS", "SHARD_FIELDS", "FormatError",
           "CHANNELS", "DEFAULT_CHANNELS", "DEFAULT_LEVELS", "MIN_LEVELS", "MAX_LEVELS", "channels_of", "levels_of",
           "png_step",
           "size_dir", "shard_name", "shard_glob", "manifest_path", "check_manifest"]

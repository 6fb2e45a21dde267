"""Real photographs (`photo_sources`: wheels' sample photos and Debian's wallpaper packages) -> an
ImageFolder tree of size x size crops in three splits.

The split is by scene and by source: the photos of a held-out source (`heldout_sources`, by default the
whole of lomiri-wallpapers, never trained on) go to `heldout_split`; of the other sources' scenes,
`val_scenes` go to `val_split` (held-out scenes of the training sources) and the rest to `train_split`.
Every crop of a photo lands in its photo's split, so no photo, scene or held-out source is in two splits
(`check_split`).

Crops: each photo is resized (Pillow BOX, downscaling only) so that its shorter side is each of
`SCALES` in turn, and `density * area / size^2` crops are cut at positions drawn from a generator
seeded by (seed, photo), each flipped left-right with probability 1/2 (train_density for training,
val_density for validation and the held-out source). Output:

    OUT/<split>/<scene>/<stem>_s<scale>_<k>.png     (size x size RGB)
    OUT/photos.json                                   (the record: photos, sources, hashes, versions, counts)

written into a temporary folder and renamed, so OUT is complete or absent. Build shards from
OUT/<split> with `preprocessing.build` like any ImageFolder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from .errors import PreprocessError
from .fsutil import atomic_write_json, read_json
from .photo_sources import PHOTOS, SKIPPED, Photo, installed_version, locate, sources

__all__ = ["PHOTOS", "Photo", "locate", "scenes", "crop_boxes", "make_photo_crops", "check_split",
           "DEFAULT_VAL", "DEFAULT_HELDOUT", "HELDOUT_SPLIT"]

RECORD = "photos.json"
FORMAT = "pixelrnn-photos/2"
SCALES = (32, 48, 64, 96, 128, 192, 256)  # shorter side of the resized photo, before cropping
# Held-out scenes of three training sources: two wheel photos, one mate and one plasma wallpaper.
DEFAULT_VAL = ("chelsea", "coffee", "ladybird", "bythewater")
# The source never trained on: lomiri-wallpapers' 14 photos (indoor and outdoor, people's pets, mountains),
# unlike any one training source. pipeline.tracking.baselines measures a split of this name when present.
DEFAULT_HELDOUT = ("lomiri-wallpapers",)
HELDOUT_SPLIT = "heldout"


def scenes(photos: Sequence[Photo] = PHOTOS) -> List[str]:
    """The scene names, sorted (what `val_scenes` may name)."""
    return sorted({p.scene for p in photos})


def crop_boxes(width: int, height: int, size: int, density: float, rng: np.random.Generator) -> List[tuple]:
    """(scale, left, top, flip) of every crop of one photo of width x height (see module docstring)."""
    boxes = []
    for scale in SCALES:
        if scale < size or scale > min(width, height):  # downscaling only: an enlarged photo is not a real photo
            continue
        w, h = _scaled(width, height, scale)
        count = max(1, int(round(density * w * h / size ** 2)))
        for _ in range(count):
            left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
            boxes.append((scale, left, top, bool(rng.random() < 0.5)))
    return boxes


def _scaled(width: int, height: int, shorter: int) -> tuple:
    """Size with the shorter side `shorter`, the aspect ratio kept (rounded)."""
    if width <= height:
        return shorter, max(shorter, int(round(height * shorter / width)))
    return max(shorter, int(round(width * shorter / height))), shorter


def _table_sha256(photos: Sequence[Photo]) -> str:
    """One hash of the photo table: a record made from another table is not reused."""
    rows = sorted([p.source, p.package, p.path, p.sha256, p.scene, p.kind] for p in photos)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _split_of(photo: Photo, val_scenes: Sequence[str], heldout_sources: Sequence[str], names: Dict[str, str]) -> str:
    if photo.source in heldout_sources:
        return names["heldout"]
    return names["val"] if photo.scene in val_scenes else names["train"]


def _check_args(photos: Sequence[Photo], size: int, val_scenes: Sequence[str], heldout_sources: Sequence[str],
                train_density: float, val_density: float, names: Dict[str, str]) -> None:
    known, known_sources = scenes(photos), sources(photos)
    unknown = sorted(set(val_scenes) - set(known))
    if unknown or not val_scenes:
        raise PreprocessError(f"val scenes {unknown or list(val_scenes)} are not photos here; choose "
                              f"one or more of {', '.join(known)}")
    bad_sources = sorted(set(heldout_sources) - set(known_sources))
    if bad_sources:
        raise PreprocessError(f"held-out sources {bad_sources} are not sources here; choose from "
                              f"{', '.join(known_sources)}")
    in_heldout = sorted({p.scene for p in photos if p.source in heldout_sources} & set(val_scenes))
    if in_heldout:
        raise PreprocessError(f"val scenes {in_heldout} belong to a held-out source ({', '.join(heldout_sources)}): "
                              f"validation scenes come from the training sources")
    if not any(_split_of(p, val_scenes, heldout_sources, names) == names["train"] for p in photos):
        raise PreprocessError("no scene is left for training: hold out fewer scenes or sources")
    if len(set(names.values())) < 3:
        raise PreprocessError(f"the split names must differ, got {names}")
    if not 8 <= size <= SCALES[-1]:
        raise PreprocessError(f"unsupported crop size {size}: crops are 8..{SCALES[-1]} px")
    if min(train_density, val_density) <= 0:
        raise PreprocessError(f"densities must be positive, got train {train_density}, val {val_density}")


def make_photo_crops(out, size: int = 32, seed: int = 0, val_scenes: Sequence[str] = DEFAULT_VAL,
                     train_density: float = 4.0, val_density: float = 1.0, train_split: str = "train",
                     val_split: str = "val", heldout_sources: Sequence[str] = DEFAULT_HELDOUT,
                     heldout_split: str = HELDOUT_SPLIT, photos: Sequence[Photo] = PHOTOS) -> Dict:
    """Write OUT/<split>/<scene>/*.png and OUT/photos.json (see module docstring); return the record.

    With no `heldout_sources` there is no held-out split. A complete OUT made with the same parameters
    and photo table is reused as it is; one made with others is refused (remove it first). Crops of a
    photo depend only on (seed, that photo, size, density)."""
    out = Path(out)
    names = {"train": train_split, "val": val_split, "heldout": heldout_split}
    _check_args(photos, size, val_scenes, heldout_sources, train_density, val_density, names)
    params = {"size": size, "seed": seed, "val_scenes": sorted(val_scenes), "scales": list(SCALES),
              "train_density": train_density, "val_density": val_density,
              "heldout_sources": sorted(heldout_sources), "splits": names, "photo_table": _table_sha256(photos)}
    if (out / RECORD).exists():
        record = read_json(out / RECORD)
        if record.get("params") != params:
            raise PreprocessError(f"{out} holds photo crops made with other parameters or photos "
                                  f"({record.get('params')}); remove it to make them with {params}")
        return record
    splits = [_split_of(p, val_scenes, heldout_sources, names) for p in photos]
    # A scene or file shared across splits (two sources shipping one photo, a scene name reused) is refused
    # before anything is cut.
    problem = check_split({"params": params, "photos": [
        {"file": p.path, "sha256": p.sha256, "scene": p.scene, "source": p.source, "split": s}
        for p, s in zip(photos, splits)]})
    if problem:
        raise PreprocessError(f"the photo table does not split cleanly: {problem}")
    paths = [locate(p) for p in photos]  # every file checked before anything is written
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a half-made tree from an interrupted run
    rows = [_crop_photo(photo, path, tmp, size, seed, split, train_density if split == train_split else val_density)
            for photo, path, split in zip(photos, paths, splits)]
    used = [train_split, val_split] + ([heldout_split] if heldout_sources else [])
    counts = {s: sum(p["crops"] for p in rows if p["split"] == s) for s in used}
    record = {"format": FORMAT, "params": params, "photos": rows, "counts": counts,
              "skipped": [dict(s) for s in SKIPPED]}
    atomic_write_json(tmp / RECORD, record)
    if out.exists():  # an empty or stray folder without a record
        shutil.rmtree(out)
    tmp.rename(out)
    return record


def _crop_photo(photo: Photo, path: Path, tmp: Path, size: int, seed: int, split: str, density: float) -> Dict:
    """Cut one photo's crops into tmp/<split>/<scene>/; return its row of the record."""
    with Image.open(path) as im:
        im.load()
        # Pixels only: the sources' ICC profiles and EXIF would otherwise be copied into every crop.
        mode, rgb = im.mode, Image.fromarray(np.asarray(im.convert("RGB")))
    # One generator per photo, seeded by (seed, file): adding or removing a photo changes no other's crops.
    rng = np.random.default_rng([seed, zlib.crc32(photo.path.encode())])
    boxes = crop_boxes(rgb.width, rgb.height, size, density, rng)
    folder = tmp / split / photo.scene
    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(photo.path).stem
    resized: Dict[int, Image.Image] = {}
    for k, (scale, left, top, flip) in enumerate(boxes):
        if scale not in resized:
            resized[scale] = rgb.resize(_scaled(rgb.width, rgb.height, scale), Image.BOX)
        crop = resized[scale].crop((left, top, left + size, top + size))
        if flip:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crop.save(folder / f"{stem}_s{scale}_{k:04d}.png", compress_level=6)
    return {"source": photo.source, "package": photo.package, "kind": photo.kind,
            "version": installed_version(photo), "file": photo.path, "sha256": photo.sha256,
            "scene": photo.scene, "split": split, "mode": mode, "width": rgb.width, "height": rgb.height,
            "crops": len(boxes)}


def check_split(record: Dict) -> Optional[str]:
    """None when no photo file (by path or sha256), scene or held-out source is in two splits, else a
    message naming them."""
    by_split: Dict[str, set] = {}
    for p in record["photos"]:
        by_split.setdefault(p["split"], set()).update({("file", p["file"]), ("sha256", p["sha256"]),
                                                       ("scene", p["scene"]), ("source", p["source"])})
    heldout = set(record["params"].get("heldout_sources", ()))
    both = set()
    names = sorted(by_split)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = by_split[a] & by_split[b]
            # train and val share their sources by design; a held-out source may share none
            both |= {x for x in shared if x[0] != "source" or x[1] in heldout}
    return f"in two splits: {sorted(both)}" if both else None

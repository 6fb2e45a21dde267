"""Real photographs that ship inside installed wheels -> an ImageFolder tree of size x size crops.

Nothing is downloaded: the photos are the sample images that scikit-image, matplotlib and
scikit-learn put in their wheels (scikit-image fetches a few more with pooch at run time; those are
not used). Which files really ship was checked in the installed wheels (scikit-image 0.26.0,
matplotlib 3.11.2, scikit-learn 1.9.1):

* used, the RGB photographs: scikit-image's astronaut, chelsea, coffee, hubble_deep_field, ihc,
  motorcycle_left + motorcycle_right (one stereo pair: one scene), retina, rocket; matplotlib's
  grace_hopper; scikit-learn's china and flower (`load_sample_images`);
* skipped, the grayscale photographs (camera, coins, moon, brick, grass, gravel, clock_motion, cell,
  page, text): converted to RGB they would have R = G = B, a different distribution from colour
  photos that a model learns to exploit ("copy red"), which would blur what the bits/dim say about
  colour images; they are listed in the record with that reason;
* not photographs (color, horse, logo, chessboard_*, phantom, microaneurysms, ...): not considered.

Each file is checked against the sha256 recorded here, so the crops are the same bytes wherever
they are made (a wheel with a changed photo is refused, naming the file). The split is by scene:
every crop of a photo lands in the split of its scene, so no photo is in both (`val_scenes`).

Crops: each photo is resized (Pillow BOX, downscaling only) so that its shorter side is each of
`SCALES` in turn, and `density * area / size^2` crops are cut at positions drawn from a generator
seeded by (seed, photo), each flipped left-right with probability 1/2. Output:

    OUT/<split>/<scene>/<scene>_s<scale>_<k>.png     (size x size RGB)
    OUT/photos.json                                    (the record: photos, hashes, versions, counts)

written into a temporary folder and renamed, so OUT is complete or absent. Build shards from
OUT/<split> with `preprocessing.build` like any ImageFolder.
"""

from __future__ import annotations

import importlib.util
import shutil
import zlib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from .errors import PreprocessError
from .fsutil import atomic_write_json, read_json, sha256_file

RECORD = "photos.json"
FORMAT = "pixelrnn-photos/1"
SCALES = (32, 48, 64, 96, 128, 192, 256)  # shorter side of the resized photo, before cropping
DEFAULT_VAL = ("chelsea", "coffee")


@dataclass(frozen=True)
class Photo:
    """One packaged photo: where it is (distribution, import package, path inside it) and its hash."""
    dist: str
    package: str
    path: str
    sha256: str
    scene: str  # the photos of one scene are one unit of the split


_SK, _MPL, _SKL = ("scikit-image", "skimage"), ("matplotlib", "matplotlib"), ("scikit-learn", "sklearn")
PHOTOS = (
    Photo(*_SK, "data/astronaut.png", "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5", "astronaut"),
    Photo(*_SK, "data/chelsea.png", "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb", "chelsea"),
    Photo(*_SK, "data/coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7", "coffee"),
    Photo(*_SK, "data/hubble_deep_field.jpg", "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
          "hubble_deep_field"),
    Photo(*_SK, "data/ihc.png", "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef", "ihc"),
    Photo(*_SK, "data/motorcycle_left.png", "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
          "motorcycle"),
    Photo(*_SK, "data/motorcycle_right.png", "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797",
          "motorcycle"),
    Photo(*_SK, "data/retina.jpg", "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6", "retina"),
    Photo(*_SK, "data/rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c", "rocket"),
    Photo(*_MPL, "mpl-data/sample_data/grace_hopper.jpg",
          "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130", "grace_hopper"),
    Photo(*_SKL, "datasets/images/china.jpg", "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
          "china"),
    Photo(*_SKL, "datasets/images/flower.jpg", "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
          "flower"),
)
SKIPPED_GRAYSCALE = tuple(f"data/{n}.png" for n in (
    "camera", "coins", "moon", "brick", "grass", "gravel", "clock_motion", "cell", "page", "text"))


def scenes() -> List[str]:
    """The scene names, sorted (what `val_scenes` may name)."""
    return sorted({p.scene for p in PHOTOS})


def locate(photo: Photo) -> Path:
    """The photo's file inside its installed package, checked against its sha256.

    The package is found without importing it. PreprocessError names the package and the fix when it
    is missing, and the file, both hashes and the installed version when the bytes differ."""
    spec = importlib.util.find_spec(photo.package)
    if spec is None or not spec.submodule_search_locations:
        raise PreprocessError(f"the photos come from the {photo.dist} wheel, which is not installed: "
                              f"pip install {photo.dist}")
    path = Path(list(spec.submodule_search_locations)[0]) / photo.path
    if not path.is_file():
        raise PreprocessError(f"{photo.dist} {_version(photo.dist)} does not ship {photo.path} (looked for "
                              f"{path}); the photo list was checked against scikit-image 0.26.0, "
                              f"matplotlib 3.11.2 and scikit-learn 1.9.1")
    digest = sha256_file(path)
    if digest != photo.sha256:
        raise PreprocessError(f"{path} ({photo.dist} {_version(photo.dist)}) has sha256 {digest}, expected "
                              f"{photo.sha256}: this wheel ships a different photo, so the crops would "
                              f"not be the recorded ones")
    return path


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "(not installed)"


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


def make_photo_crops(out, size: int = 32, seed: int = 0, val_scenes: Sequence[str] = DEFAULT_VAL,
                     train_density: float = 4.0, val_density: float = 1.0, train_split: str = "train",
                     val_split: str = "val") -> Dict:
    """Write OUT/<split>/<scene>/*.png and OUT/photos.json (see module docstring); return the record.

    A complete OUT made with the same parameters is reused as it is; one made with others is refused
    (remove it first). Crops of a photo depend only on (seed, that photo, size, density)."""
    out = Path(out)
    known = scenes()
    unknown = sorted(set(val_scenes) - set(known))
    if unknown or not val_scenes:
        raise PreprocessError(f"val scenes {unknown or list(val_scenes)} are not photos here; choose "
                              f"one or more of {', '.join(known)}")
    if set(val_scenes) == set(known):
        raise PreprocessError("every scene is a validation scene: leave at least one for training")
    if not 8 <= size <= SCALES[-1]:
        raise PreprocessError(f"unsupported crop size {size}: crops are 8..{SCALES[-1]} px")
    if min(train_density, val_density) <= 0:
        raise PreprocessError(f"densities must be positive, got train {train_density}, val {val_density}")
    params = {"size": size, "seed": seed, "val_scenes": sorted(val_scenes), "scales": list(SCALES),
              "train_density": train_density, "val_density": val_density,
              "splits": {"train": train_split, "val": val_split}}
    if (out / RECORD).exists():
        record = read_json(out / RECORD)
        if record.get("params") != params:
            raise PreprocessError(f"{out} holds photo crops made with other parameters ({record.get('params')}); "
                                  f"remove it to make them with {params}")
        return record
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a half-made tree from an interrupted run
    photos = []
    for photo in PHOTOS:
        path = locate(photo)
        val = photo.scene in val_scenes
        split = val_split if val else train_split
        with Image.open(path) as im:
            im.load()
            # Pixels only: the sources' ICC profiles and EXIF would otherwise be copied into every crop.
            mode, rgb = im.mode, Image.fromarray(np.asarray(im.convert("RGB")))
        # One generator per photo, seeded by (seed, file): adding or removing a photo changes no other's crops.
        rng = np.random.default_rng([seed, zlib.crc32(photo.path.encode())])
        boxes = crop_boxes(rgb.width, rgb.height, size, val_density if val else train_density, rng)
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
        photos.append({"dist": photo.dist, "version": _version(photo.dist), "file": photo.path,
                       "sha256": photo.sha256, "scene": photo.scene, "split": split, "mode": mode,
                       "width": rgb.width, "height": rgb.height, "crops": len(boxes)})
    counts = {s: sum(p["crops"] for p in photos if p["split"] == s) for s in (train_split, val_split)}
    record = {"format": FORMAT, "params": params, "photos": photos, "counts": counts,
              "skipped": [{"dist": "scikit-image", "file": f, "reason": "grayscale photograph (R = G = B)"}
                          for f in SKIPPED_GRAYSCALE]}
    atomic_write_json(tmp / RECORD, record)
    if out.exists():  # an empty or stray folder without a record
        shutil.rmtree(out)
    tmp.rename(out)
    return record


def check_split(record: Dict) -> Optional[str]:
    """None when no photo file or scene is in both splits, else a message naming them."""
    by_split: Dict[str, set] = {}
    for p in record["photos"]:
        by_split.setdefault(p["split"], set()).update({p["file"], p["scene"]})
    sets = list(by_split.values())
    both = set.intersection(*sets) if len(sets) > 1 else set()
    return f"in both splits: {sorted(both)}" if both else None

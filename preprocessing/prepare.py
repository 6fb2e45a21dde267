"""Ready-made small datasets for local runs and tests, built with the real build code (`data.prepare`).

    prepare_synthetic(root, 8, train_images=256, val_images=64, classes=4)
    prepare_photos(root, 32, val_scenes=["chelsea", "coffee"])   # crops of packaged photos (wheels, apt)
    prepare_fashion_mnist(root, 28, binarize="threshold")        # Debian's dataset-fashion-mnist (apt)
    -> <root>/<size>/train-*.tar + train.json, <root>/<size>/val-*.tar + val.json (photos: and heldout-*.tar +
    heldout.json, a source never trained on); nothing is done when every split exists

The launcher calls these before it submits a job whose config asks for them (`data.prepare: synthetic`),
so the job reads ordinary shards like any other.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Sequence

from shardformat import manifest_path

from .builder import build
from .errors import PreprocessError
from .photos import DEFAULT_HELDOUT, HELDOUT_SPLIT, make_photo_crops
from .synthetic import make_synthetic


def _ready(root: Path, size: int, splits: Sequence[str]) -> bool:
    return all(manifest_path(root, size, s).exists() for s in splits)


def prepare_synthetic(root, size: int, train_images: int, val_images: int, classes: int, shard_size: int = 16,
                      seed: int = 0, train_split: str = "train", val_split: str = "val") -> bool:
    """Generate one pool of images (one palette per class), hold its tail out for validation, and build both
    splits at `size`. Returns False when the shards were already there. A run interrupted at any point
    is finished by the next call."""
    root = Path(root)
    if _ready(root, size, (train_split, val_split)):
        return False
    pool, splits = root / "_images", root / "_splits"
    if not splits.exists():
        shutil.rmtree(pool, ignore_errors=True)  # a half-made pool from an interrupted run
        staging = pool.with_name("_splits.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        make_synthetic(pool, num_images=train_images + val_images, classes=classes, seed=seed)
        for path in sorted(pool.glob("*/*.*")):
            index = int(path.stem.rsplit("_", 1)[1])
            split = train_split if index < train_images else val_split
            target = staging / split / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
        staging.rename(splits)  # the split trees appear whole, or not at all
    for split in (train_split, val_split):
        build(splits / split, split, [size], root, shard_size=shard_size, seed=seed)
        print(f"prepared synthetic {split} shards in {root / str(size)}")
    return True


def prepare_photos(root, size: int, val_scenes: Sequence[str], shard_size: int = 256, seed: int = 0,
                   train_split: str = "train", val_split: str = "val",
                   heldout_sources: Sequence[str] = DEFAULT_HELDOUT, heldout_split: str = HELDOUT_SPLIT) -> bool:
    """Crops of the packaged photos (`photos.make_photo_crops`: `<root>/_photos/<split>/<scene>/*.png` and
    the record `<root>/_photos/photos.json`; split by scene, and a whole held-out source in `heldout_split`),
    each split built into shards like any ImageFolder. Returns False when the shards were already there."""
    root = Path(root)
    splits = [train_split, val_split] + ([heldout_split] if heldout_sources else [])
    if _ready(root, size, splits):
        return False
    tree = root / "_photos"
    try:
        record = make_photo_crops(tree, size=size, seed=seed, val_scenes=list(val_scenes), train_split=train_split,
                                  val_split=val_split, heldout_sources=list(heldout_sources),
                                  heldout_split=heldout_split)
    except PreprocessError as e:
        if "other parameters" not in str(e):
            raise
        # The crops and the shards built from them go together: an older corpus is rebuilt as a whole.
        raise PreprocessError(f"{root} holds photo data made with other parameters or another photo list (an "
                              f"older corpus): remove {root} to rebuild it") from e
    for split in splits:
        build(tree / split, split, [size], root, shard_size=shard_size, seed=seed, progress=False)
        print(f"prepared {record['counts'][split]} photo crops ({split}) as shards in {root / str(size)}")
    print(f"  photos and split: {tree / 'photos.json'}")
    return True


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")   # where `apt-get install dataset-fashion-mnist` puts it


def prepare_fashion_mnist(root, size: int = 28, binarize: Optional[str] = None, shard_size: int = 2500,
                          seed: int = 0, train_split: str = "train", val_split: str = "val",
                          source: Path = FASHION_MNIST) -> bool:
    """Fashion-MNIST from Debian's package: the 60,000 train images -> `train_split`, the 10,000 t10k (test)
    images -> `val_split`, 1-channel shards at `size` (28: as they are), binarized with `binarize`
    ("threshold": v > 127; "stochastic", seeded by `seed`) when given. Returns False when both were there."""
    root = Path(root)
    if _ready(root, size, (train_split, val_split)):
        return False
    source = Path(source)
    if not (source / "train-images-idx3-ubyte.gz").is_file():
        raise PreprocessError(f"Fashion-MNIST is not installed ({source} has no train-images-idx3-ubyte.gz): "
                              "run `apt-get install dataset-fashion-mnist`")
    for split in (train_split, val_split):
        # the IDX folder gives train-* for the split named "train", t10k-* for any other name
        files = source / ("train-images-idx3-ubyte.gz" if split == train_split else "t10k-images-idx3-ubyte.gz")
        m = build(files, split, [size], root, shard_size=shard_size, seed=seed, binarize=binarize,
                  progress=False)[size]
        print(f"prepared {m['num_samples']} Fashion-MNIST images ({split}, {m['variant']}) as shards in "
              f"{root / str(size)}")
    return True

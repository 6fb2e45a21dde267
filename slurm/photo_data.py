"""`data.prepare: photos`: crops of the photos shipped in installed wheels -> shards, with the real code.

`preprocessing.make_photo_crops` writes `<root>/_photos/<split>/<scene>/*.png` and the record
`<root>/_photos/photos.json` (photo list, sha256s, versions, counts; split by scene), then each split
is built into shards by `preprocessing.build` like any ImageFolder (its manifest records the rest).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.config import ExperimentConfig


def prepare_photos(cfg: ExperimentConfig) -> None:
    """Make the crops and shards of cfg.data.root unless both splits' manifests exist already."""
    d, size = cfg.data, cfg.model.image_size
    root = Path(d.root)
    if all((root / str(size) / f"{s}.json").exists() for s in (d.train_split, d.val_split)):
        return
    import preprocessing
    tree = root / "_photos"
    record = preprocessing.make_photo_crops(tree, size=size, seed=cfg.train.seed, val_scenes=d.photo_val_scenes,
                                            train_split=d.train_split, val_split=d.val_split)
    for split in (d.train_split, d.val_split):
        preprocessing.build(tree / split, split, [size], root, shard_size=d.shard_size, seed=cfg.train.seed,
                            progress=False)
        print(f"prepared {record['counts'][split]} photo crops ({split}) as shards in {root / str(size)}")
    print(f"  photos and split: {tree / 'photos.json'}")

"""The real-photo data step: packaged photos -> 32x32 crops split by scene -> shards (photos32's data)."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from preprocessing import PreprocessError
from preprocessing.cli import main as cli_main
from preprocessing.fsutil import sha256_file
from preprocessing.photos import PHOTOS, check_split, locate, make_photo_crops

LOW = dict(train_density=0.05, val_density=0.05)  # one or two crops per scale: seconds, same code


def tree_digest(root):
    """sha256 over every file's relative path and bytes."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def test_packaged_photos_are_on_disk_with_their_recorded_hashes():
    for photo in PHOTOS:
        assert sha256_file(locate(photo)) == photo.sha256


def test_split_by_photo_deterministic_32x32_rgb(tmp_path):
    rec = make_photo_crops(tmp_path / "a", seed=3, val_scenes=["chelsea", "rocket"], **LOW)
    assert check_split(rec) is None
    val = {p["file"] for p in rec["photos"] if p["split"] == "val"}
    train = {p["file"] for p in rec["photos"] if p["split"] == "train"}
    assert val == {"data/chelsea.png", "data/rocket.jpg"} and not val & train and len(train) == 10
    # the stereo pair is one scene: both halves on the same side
    assert {p["split"] for p in rec["photos"] if p["scene"] == "motorcycle"} == {"train"}
    for split in ("train", "val"):
        files = sorted((tmp_path / "a" / split).glob("*/*.png"))
        assert len(files) == rec["counts"][split] > 0
        scenes = {f.parent.name for f in files}
        assert scenes == {p["scene"] for p in rec["photos"] if p["split"] == split}
        for f in files[:: max(1, len(files) // 20)]:
            with Image.open(f) as im:
                assert im.mode == "RGB" and im.size == (32, 32) and "icc_profile" not in im.info
    assert json.loads((tmp_path / "a" / "photos.json").read_text()) == rec
    assert {s["file"] for s in rec["skipped"]} >= {"data/camera.png", "data/moon.png"}
    # a fixed seed gives the same bytes; another seed other crops
    make_photo_crops(tmp_path / "b", seed=3, val_scenes=["rocket", "chelsea"], **LOW)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    make_photo_crops(tmp_path / "c", seed=4, val_scenes=["chelsea", "rocket"], **LOW)
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_flips_and_scales_give_variety(tmp_path):
    rec = make_photo_crops(tmp_path / "v", seed=0, train_density=0.5, val_density=0.5)
    crops = sorted((tmp_path / "v" / "train" / "astronaut").glob("*.png"))
    scales = {f.stem.split("_s")[1].split("_")[0] for f in crops}
    assert scales == {"32", "48", "64", "96", "128", "192", "256"}
    arrays = [np.asarray(Image.open(f)) for f in crops]
    assert len({a.tobytes() for a in arrays}) == len(arrays)  # no two crops alike
    assert rec["counts"]["train"] > 2 * rec["counts"]["val"] > 0  # 10 photos vs 2 at the same density


def test_refusals(tmp_path):
    with pytest.raises(PreprocessError, match="not photos here"):
        make_photo_crops(tmp_path / "x", val_scenes=["lena"])
    make_photo_crops(tmp_path / "y", seed=0, **LOW)
    with pytest.raises(PreprocessError, match="other parameters"):
        make_photo_crops(tmp_path / "y", seed=1, **LOW)
    assert cli_main(["photos", "--out", str(tmp_path / "z"), "--size", "300"]) == 2


def test_prepare_photos_builds_shards_for_training(tmp_path):
    """data.prepare: photos (photos32's data step): crops -> shards with the manifest, loadable by training."""
    from pipeline.config import load_config
    from pipeline.data.shards import load_shard_set, split_batches
    from slurm.submit import prepare_data
    cfg = load_config("photos32", [f"data.root={tmp_path}"])
    prepare_data(cfg)
    rec = json.loads((tmp_path / "_photos" / "photos.json").read_text())
    for split in ("train", "val"):
        shards = load_shard_set(tmp_path, 32, split)
        assert shards.num_samples == rec["counts"][split]
        assert set(shards.classes) == {p["scene"] for p in rec["photos"] if p["split"] == split}
    x = next(split_batches(tmp_path, 32, "val", 8))
    assert x.shape == (8, 3, 32, 32)

"""The real-photo data step: packaged photos (wheels, Debian wallpapers) -> 32x32 crops split by scene, with a
whole source held out -> shards (photos32's data)."""

import functools
import hashlib
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from preprocessing import PreprocessError
from preprocessing.cli import main as cli_main
from preprocessing.fsutil import sha256_file
from preprocessing.photo_sources import (DEB, DEB_PACKAGES, PHOTOS, WALLPAPER_PHOTOS, Photo, apt_command,
                                         locate)
from preprocessing.photos import (DEFAULT_HELDOUT, DEFAULT_VAL, HELDOUT_SPLIT, check_split, crop_boxes,
                                  make_photo_crops, scenes)

REPO = Path(__file__).resolve().parents[2]
LOW = dict(train_density=0.05, val_density=0.05)  # one or two crops per scale: seconds, same code


def tree_digest(root):
    """sha256 over every file's relative path and bytes."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _photo_file(path, seed, size=(300, 200)):
    """A generated RGB 'photo' (smooth gradients plus noise: crops differ), saved as PNG."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _table(tmp_path):
    """Three sources of generated photos: A (3 scenes, one of two files), B (2 scenes), C (2 scenes)."""
    rows = [("A", "a1", "sA"), ("A", "a2", "sA"), ("A", "a3", "sB"), ("A", "a4", "sC"),
            ("B", "b1", "sD"), ("B", "b2", "sE"), ("C", "c1", "sF"), ("C", "c2", "sG")]
    photos = []
    for k, (source, name, scene) in enumerate(rows):
        f = _photo_file(tmp_path / "src" / source / f"{name}.png", k)
        photos.append(Photo(source, f"pkg-{source.lower()}", str(f), sha256_file(f), scene, DEB))
    return tuple(photos)


def test_installed_packages_hold_every_photo_with_its_recorded_hash():
    """Reads the wheels and Debian's wallpaper packages (make datasets installs them: this test fails, never
    skips, when they are missing, naming the apt command)."""
    for photo in PHOTOS:
        assert sha256_file(locate(photo)) == photo.sha256
    with Image.open(locate(WALLPAPER_PHOTOS[0])) as im:
        assert im.mode == "RGB" and min(im.size) >= 1000
    assert len(WALLPAPER_PHOTOS) >= 30 and len(PHOTOS) == len({p.sha256 for p in PHOTOS})


def test_the_table_splits_cleanly_and_make_installs_its_packages():
    assert len(scenes()) == len({(p.scene, p.source) for p in PHOTOS})  # no scene name shared by two sources
    heldout = [p for p in PHOTOS if p.source in DEFAULT_HELDOUT]
    assert len(heldout) >= 10 and not {p.scene for p in heldout} & set(DEFAULT_VAL)
    assert {p.source for p in PHOTOS if p.scene in DEFAULT_VAL} >= {"scikit-image", "mate-backgrounds"}
    make = (REPO / "Makefile").read_text()
    assert tuple(re.search(r"^WALLPAPERS := (.*)$", make, re.M).group(1).split()) == DEB_PACKAGES
    assert "$(WALLPAPERS)" in make.split("datasets:", 1)[1].split("\n\n")[0]


def test_split_by_scene_and_source_deterministic_32x32_rgb(tmp_path):
    photos = _table(tmp_path)
    kw = dict(val_scenes=["sB", "sD"], heldout_sources=["C"], photos=photos, **LOW)
    rec = make_photo_crops(tmp_path / "a", seed=3, **kw)
    assert check_split(rec) is None
    split = {p["file"]: p["split"] for p in rec["photos"]}
    by = {s: {Path(f).stem for f, v in split.items() if v == s} for s in ("train", "val", HELDOUT_SPLIT)}
    assert by == {"train": {"a1", "a2", "a4", "b2"}, "val": {"a3", "b1"}, HELDOUT_SPLIT: {"c1", "c2"}}
    # the held-out source shares no sha256 and no scene with the training or validation crops
    held = [p for p in rec["photos"] if p["split"] == HELDOUT_SPLIT]
    rest = [p for p in rec["photos"] if p["split"] != HELDOUT_SPLIT]
    assert not {p["sha256"] for p in held} & {p["sha256"] for p in rest}
    assert not {p["scene"] for p in held} & {p["scene"] for p in rest} and {p["source"] for p in held} == {"C"}
    for s in ("train", "val", HELDOUT_SPLIT):
        files = sorted((tmp_path / "a" / s).glob("*/*.png"))
        assert len(files) == rec["counts"][s] > 0
        assert {f.parent.name for f in files} == {p["scene"] for p in rec["photos"] if p["split"] == s}
        for f in files:
            with Image.open(f) as im:
                assert im.mode == "RGB" and im.size == (32, 32) and "icc_profile" not in im.info
    held_pixels = {np.asarray(Image.open(f)).tobytes() for f in (tmp_path / "a" / HELDOUT_SPLIT).rglob("*.png")}
    assert not held_pixels & {np.asarray(Image.open(f)).tobytes() for f in (tmp_path / "a" / "train").rglob("*.png")}
    assert json.loads((tmp_path / "a" / "photos.json").read_text()) == rec
    # a fixed seed gives the same bytes; another seed other crops
    make_photo_crops(tmp_path / "b", seed=3, **kw)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    make_photo_crops(tmp_path / "c", seed=4, **kw)
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")
    # no held-out source: two splits, as before
    rec2 = make_photo_crops(tmp_path / "d", seed=3, val_scenes=["sB"], heldout_sources=[], photos=photos, **LOW)
    assert set(rec2["counts"]) == {"train", "val"} and not (tmp_path / "d" / HELDOUT_SPLIT).exists()


def test_a_changed_or_missing_file_is_refused_naming_it(tmp_path):
    photos = _table(tmp_path)
    changed = Path(photos[6].path)
    _photo_file(changed, 99)  # same name, other pixels
    with pytest.raises(PreprocessError, match=rf"{re.escape(str(changed))} .*has sha256 .*expected {photos[6].sha256}"):
        make_photo_crops(tmp_path / "x", val_scenes=["sB"], heldout_sources=["C"], photos=photos, **LOW)
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.tmp").exists()  # checked before anything is cut
    gone = Photo("mate-backgrounds", "mate-backgrounds", str(tmp_path / "nope.jpg"), "0" * 64, "nope", DEB)
    with pytest.raises(PreprocessError, match=re.escape(f"run `{apt_command()}`")):
        locate(gone)


def test_flips_and_scales_give_variety(tmp_path):
    big = _photo_file(tmp_path / "big.png", 0, (400, 300))
    photo = Photo("A", "pkg-a", str(big), sha256_file(big), "big", DEB)
    other = Photo("A", "pkg-a", str(_photo_file(tmp_path / "o.png", 1)), sha256_file(tmp_path / "o.png"), "o", DEB)
    rec = make_photo_crops(tmp_path / "v", seed=0, val_scenes=["o"], heldout_sources=[], photos=(photo, other),
                           train_density=0.5, val_density=0.5)
    crops = sorted((tmp_path / "v" / "train" / "big").glob("*.png"))
    assert {f.stem.split("_s")[1].split("_")[0] for f in crops} == {"32", "48", "64", "96", "128", "192", "256"}
    arrays = [np.asarray(Image.open(f)) for f in crops]
    # positions are drawn with replacement: as many distinct crops as distinct (scale, left, top, flip) boxes
    boxes = crop_boxes(400, 300, 32, 0.5, np.random.default_rng([0, zlib.crc32(str(big).encode())]))
    assert len(boxes) == len(arrays) and len({a.tobytes() for a in arrays}) == len(set(boxes))
    assert {flip for *_, flip in boxes} == {True, False}
    assert rec["counts"]["train"] > rec["counts"]["val"] > 0


def test_refusals(tmp_path):
    photos = _table(tmp_path)
    kw = dict(photos=photos, **LOW)
    with pytest.raises(PreprocessError, match="not photos here"):
        make_photo_crops(tmp_path / "x", val_scenes=["lena"], **kw)
    with pytest.raises(PreprocessError, match="not sources here"):
        make_photo_crops(tmp_path / "x", val_scenes=["sB"], heldout_sources=["Z"], **kw)
    with pytest.raises(PreprocessError, match="belong to a held-out source"):
        make_photo_crops(tmp_path / "x", val_scenes=["sF"], heldout_sources=["C"], **kw)
    with pytest.raises(PreprocessError, match="no scene is left for training"):
        make_photo_crops(tmp_path / "x", val_scenes=["sA", "sB", "sC"], heldout_sources=["B", "C"], **kw)
    # one scene name in a held-out and a training source, or one file shipped by two sources: refused
    twin = Photo("C", "pkg-c", photos[0].path, photos[0].sha256, "sX", DEB)
    with pytest.raises(PreprocessError, match="does not split cleanly.*sha256"):
        make_photo_crops(tmp_path / "x", val_scenes=["sB"], heldout_sources=["C"], photos=photos + (twin,), **LOW)
    clash = Photo("C", "pkg-c", photos[6].path, photos[6].sha256, "sA", DEB)
    with pytest.raises(PreprocessError, match="does not split cleanly.*'scene', 'sA'"):
        make_photo_crops(tmp_path / "x", val_scenes=["sB"], heldout_sources=["C"], photos=photos[:6] + (clash,), **LOW)
    make_photo_crops(tmp_path / "y", seed=0, val_scenes=["sB"], heldout_sources=["C"], **kw)
    with pytest.raises(PreprocessError, match="other parameters"):
        make_photo_crops(tmp_path / "y", seed=1, val_scenes=["sB"], heldout_sources=["C"], **kw)
    assert cli_main(["photos", "--out", str(tmp_path / "z"), "--size", "300"]) == 2


def test_prepare_photos_builds_three_splits_of_shards_for_training(tmp_path, monkeypatch):
    """data.prepare: photos (photos32's data step) on the installed photos, at a low crop density: crops ->
    train, val and heldout shards with their manifests, loadable by training; photos32 names the held-out
    source in data.test_splits, and the end-of-run codec baselines measure it under its prefix."""
    import preprocessing.prepare as prepare
    from pipeline.config import load_config
    from pipeline.data.shards import load_shard_set, split_batches
    from pipeline.tracking.baselines import codec_baselines, split_codec_bits_per_dim
    from slurm.submit import prepare_data
    monkeypatch.setattr(prepare, "make_photo_crops", functools.partial(make_photo_crops, **LOW))
    cfg = load_config("photos32", [f"data.root={tmp_path}"])
    assert cfg.data.test_splits == [HELDOUT_SPLIT]  # the run evaluates the split preprocessing writes
    prepare_data(cfg)
    rec = json.loads((tmp_path / "_photos" / "photos.json").read_text())
    assert rec["params"]["heldout_sources"] == ["lomiri-wallpapers"] and check_split(rec) is None
    for split in ("train", "val", HELDOUT_SPLIT):
        shards = load_shard_set(tmp_path, 32, split)
        assert shards.num_samples == rec["counts"][split] > 0
        assert set(shards.classes) == {p["scene"] for p in rec["photos"] if p["split"] == split}
    x = next(split_batches(tmp_path, 32, HELDOUT_SPLIT, 8))
    assert x.shape == (8, 3, 32, 32)
    base = codec_baselines(tmp_path, 32, HELDOUT_SPLIT, True, 1, prefix=f"{HELDOUT_SPLIT}_")
    held = split_codec_bits_per_dim(tmp_path, 32, HELDOUT_SPLIT)
    assert held["images"] == rec["counts"][HELDOUT_SPLIT]
    assert base == {f"{HELDOUT_SPLIT}_{c}_bits_per_dim": held[c] for c in held if c != "images"}
    # an older corpus in the data root is refused as a whole, naming the root
    (tmp_path / "32" / f"{HELDOUT_SPLIT}.json").unlink()
    monkeypatch.setattr(prepare, "make_photo_crops", functools.partial(make_photo_crops, train_density=0.1,
                                                                       val_density=0.05))
    with pytest.raises(PreprocessError, match=f"remove {re.escape(str(tmp_path))} to rebuild it"):
        prepare_data(cfg)

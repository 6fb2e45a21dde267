"""Turn image sources into 32x32 / 64x64 webdataset shards for PixelRNN training.

Python API::

    from preprocessing import build, finalize, verify, info, make_synthetic, make_photo_crops
    manifests = build("data/train", "train", [32, 64], "shards", workers=8)
    prepare_synthetic("data/smoke", 8, train_images=256, val_images=64, classes=4)   # local datasets
    prepare_photos("data/photos32", 32, val_scenes=["chelsea", "coffee"])   # + split heldout: lomiri-wallpapers
    prepare_fashion_mnist("data/fashion_mnist", 28)       # after `apt-get install dataset-fashion-mnist`

CLI: ``python -m preprocessing {build,finalize,verify,info,synthetic,photos}`` (console script
``pixelrnn-preprocess`` -> ``preprocessing.cli:main``). Format: the ``shardformat`` package (shared with ``pipeline``).
"""

from shardformat import FORMAT

from .builder import DEFAULT_SHARD_SIZE, build, finalize
from .errors import PreprocessError
from .manifest import info, verify
from .photos import make_photo_crops
from .prepare import prepare_fashion_mnist, prepare_photos, prepare_synthetic
from .synthetic import make_synthetic

__all__ = ["build", "finalize", "verify", "info", "make_synthetic", "make_photo_crops", "prepare_synthetic",
           "prepare_photos", "prepare_fashion_mnist", "PreprocessError",
           "FORMAT", "DEFAULT_SHARD_SIZE"]

"""Turn image sources into 32x32 / 64x64 webdataset shards for PixelRNN training.

Python API::

    from preprocessing import build, finalize, verify, info, make_synthetic, prepare_synthetic
    manifests = build("data/train", "train", [32, 64], "shards", workers=8)
    prepare_synthetic("data/smoke", 8, train_images=256, val_images=64, classes=4)   # a local dataset

CLI: ``python -m preprocessing {build,finalize,verify,info,synthetic}`` (console script
``pixelrnn-preprocess`` -> ``preprocessing.cli:main``). Format: the ``shardformat`` package (shared with ``pipeline``).
"""

from shardformat import FORMAT

from .builder import DEFAULT_SHARD_SIZE, build, finalize
from .errors import PreprocessError
from .manifest import info, verify
from .prepare import prepare_synthetic
from .synthetic import make_synthetic

__all__ = ["build", "finalize", "verify", "info", "make_synthetic", "prepare_synthetic", "PreprocessError",
           "FORMAT", "DEFAULT_SHARD_SIZE"]

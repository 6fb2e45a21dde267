"""Turn image sources into 32x32 / 64x64 webdataset shards for PixelRNN training.

Python API::

    from preprocessing import build, finalize, verify, info, make_synthetic, make_photo_crops
    manifests = build("data/train", "train", [32, 64], "shards", workers=8)

CLI: ``python -m preprocessing {build,finalize,verify,info,synthetic,photos}`` (console script
``pixelrnn-preprocess`` -> ``preprocessing.cli:main``). Format: see ``shards.py`` / ``manifest.py``.
"""

from .builder import DEFAULT_SHARD_SIZE, build, finalize
from .errors import PreprocessError
from .manifest import FORMAT, info, verify
from .photos import make_photo_crops
from .synthetic import make_synthetic

__all__ = ["build", "finalize", "verify", "info", "make_synthetic", "make_photo_crops", "PreprocessError",
           "FORMAT", "DEFAULT_SHARD_SIZE"]

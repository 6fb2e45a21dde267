"""Lossless codecs' bits/dim on a shard split (PNG, WebP, JPEG XL: pipeline/tracking/baselines.py), each image
its own file, at the split's levels (a 1-bit PNG for binary shards). Builds Fashion-MNIST's test split from
Debian's package first when asked (`--fashion-mnist`, `--binarize threshold` for the binary variant).

    python bench/codec_baselines.py --fashion-mnist --data /tmp/fm          # the 10,000 test images
    python bench/codec_baselines.py --data data/photos32 --size 32 --split val
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.data.shards import load_shard_set  # noqa: E402
from pipeline.tracking.baselines import split_codec_bits_per_dim  # noqa: E402
from preprocessing import prepare_fashion_mnist  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="shard root (<data>/<size>/<split>.json)")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--split", default="val")
    p.add_argument("--fashion-mnist", action="store_true", help="build <data> from dataset-fashion-mnist first")
    p.add_argument("--binarize", choices=("threshold", "stochastic"))
    args = p.parse_args()
    if args.fashion_mnist:
        prepare_fashion_mnist(args.data, args.size, binarize=args.binarize)
    shards = load_shard_set(args.data, args.size, args.split)
    start = time.perf_counter()
    r = split_codec_bits_per_dim(args.data, args.size, args.split)
    dims = shards.channels * args.size ** 2
    variant = shards.manifest.get("variant", "-")
    print(f"{args.split} of {args.data}: {r['images']} images {args.size}x{args.size}, {shards.channels} channel(s), "
          f"{shards.levels} levels, variant {variant} ({time.perf_counter() - start:.0f} s)")
    print("| codec | bits/dim | nats/image |\n|---|---|---|")
    for name in ("png", "webp", "jpegxl"):
        if name in r:
            print(f"| {name} | {r[name]:.4f} | {r[name] * dims * 0.6931471805599453:.1f} |")


if __name__ == "__main__":
    main()

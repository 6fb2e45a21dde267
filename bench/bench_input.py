"""Input pipeline: the training loader vs a bare tar-read + PNG-decode loop (the practical limit).

Shards: generated 32×32 images built by the real preprocessing code (`make_synthetic` + `build`),
cached under $PIXELRNN_BENCH_CACHE (default /tmp/pixelrnn-bench-cache).

* bare: one process, `tarfile` reads each shard, Pillow decodes each PNG, numpy stacks batches of
  uint8 [B, 3, 32, 32] tensors: nothing but the unavoidable work (the practical limit per core);
* loader, W workers: `pipeline.data.TrainStream` + `train_loader` exactly as training uses them
  (seeded shard plan, webdataset tar reading, shuffle buffer, decode with checks, batching; W=1 reads
  in-process, W>=2 through a DataLoader with W worker processes), timed in steady state (after
  warm-up batches; a W>=2 loader is started afresh each round so its workers never run in the
  background while another contender is timed).

The contenders are interleaved in short chunks, order reversed every other round; per-worker
efficiency = (loader images/s / W) / (bare images/s of the same round), median over rounds (best/best
printed beside it); the last line is the headline for W=1 (target >= 0.8). W=2 on a 2-core machine also competes with the consuming process and with
everything else running on the machine, so it is reported beside it (--workers 1 2).

Usage: python bench/bench_input.py [--quick] [--images 4096] [--batches 40] [--repeats 20] [--workers 1 2]
"""
from __future__ import annotations

import argparse
import io
import itertools
import statistics
import tarfile
import time

import numpy as np
import torch
from PIL import Image

from common import header, interleave, result_line, synthetic_shards

from pipeline.data.stream import TrainStream, train_loader  # noqa: E402  (common set the path)
from pipeline.data.shards import load_shard_set

TARGET = 0.8


def bare_batches(paths, batch: int):
    """Endless uint8 [batch, 3, H, W] batches: tarfile + Pillow + numpy, nothing else."""
    buf = []
    for path in itertools.cycle(paths):
        with tarfile.open(path) as tar:
            for m in tar:
                if not m.name.endswith(".png"):
                    continue
                data = tar.extractfile(m).read()
                buf.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1))
                if len(buf) == batch:
                    # numpy's stack writes the channel-first copy (a torch permute().contiguous() of the
                    # batch would start torch's intra-op thread pool: 10 ms a batch on a busy machine)
                    yield torch.from_numpy(np.stack(buf))
                    buf = []


def timed(it, warmup: int, n: int, batch: int):
    for _ in range(warmup):
        next(it)
    t = time.perf_counter()
    for _ in range(n):
        x = next(it)
    dt = time.perf_counter() - t
    assert x.dtype == torch.uint8 and x.shape[0] == batch, (x.dtype, x.shape)
    return n * batch, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer batches and rounds")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16, help="micro-batch (the configs' 8..16)")
    ap.add_argument("--batches", type=int, default=40, help="timed batches per contender per round")
    ap.add_argument("--repeats", type=int, default=20, help="rounds")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    if args.quick:
        args.batches, args.repeats = 30, 8
    header("input pipeline")
    root = synthetic_shards(args.size, args.images, args.shard_size)
    shards = load_shard_set(root, args.size, "train")
    paths = [p for p, _ in shards.shards]
    print(f"{shards.num_samples} images {args.size}x{args.size} in {len(paths)} shards; batch {args.batch}, "
          f"{args.batches} timed batches per contender per round, {args.repeats} rounds (ABBA, paired)", flush=True)

    # In-process contenders (bare, W=1) are endless generators made once; a W>=2 loader is made fresh each
    # round (its worker processes would otherwise keep decoding in the background while the others are
    # timed) and warmed up before its chunk is timed. Rounds alternate order (ABBA); each round's loader
    # rate is divided by the bare rate of the same round, and the median of these paired ratios is kept:
    # on a shared machine the load changes by the second, so only adjacent measurements compare.
    persistent = {"bare": bare_batches(paths, args.batch)}
    for w in args.workers:
        if w == 1:
            persistent["loader_w1"] = train_loader(
                TrainStream(shards, args.batch, seed=0, rank=0, world=1, num_workers=1, shuffle_buffer=1000), 0)
    for it in persistent.values():
        for _ in range(3):
            next(it)

    def contender(name, w):
        def run():
            if name in persistent:
                return timed(persistent[name], 0, args.batches, args.batch)
            stream = TrainStream(shards, args.batch, seed=0, rank=0, world=1, num_workers=w, shuffle_buffer=1000)
            it = train_loader(stream, start=0)
            try:
                return timed(it, 2 * w, args.batches, args.batch)
            finally:
                del it  # a DataLoader iterator shuts its workers down when collected
        return run

    contenders = {"bare": contender("bare", 0)}
    for w in args.workers:
        contenders[f"loader_w{w}"] = contender(f"loader_w{w}", w)
    rates = interleave(contenders, args.repeats, verbose=False)
    eff, best_eff = {}, {}
    print(f"bare tar+PNG decode loop, 1 process       : best {max(rates['bare']):6.0f}, "
          f"median {statistics.median(rates['bare']):6.0f} images/s")
    for w in args.workers:
        r = rates[f"loader_w{w}"]
        eff[w] = statistics.median([a / w / b for a, b in zip(r, rates["bare"])])
        best_eff[w] = max(r) / w / max(rates["bare"])
        print(f"TrainStream+train_loader, {w} worker(s)    : best {max(r):6.0f}, median {statistics.median(r):6.0f} "
              f"images/s; per worker / bare: median of paired rounds {eff[w]:.2f}, best/best {best_eff[w]:.2f}")
    for w in args.workers[1:]:
        print(f"loader per-worker efficiency, {w} workers: {eff[w]:.3f} (target >= {TARGET}; shares 2 cores "
              f"with the consumer and other jobs)")
    w0 = args.workers[0]
    print(result_line(f"loader per-worker efficiency, {w0} worker(s) (of the bare limit)", eff[w0], TARGET))


if __name__ == "__main__":
    main()

"""What a reader pays for starting mid-shard: skipping samples vs reading and decoding them.

The data plan (pipeline/data/plan.py) lets a reader read samples [first, end) of a shard; webdataset reads
a tar front to back, so reaching `first` reads the members before it (tar headers and PNG bytes) without
decoding them. Contenders, interleaved round by round on one shard of generated images built by the real
preprocessing code (cached under $PIXELRNN_BENCH_CACHE):

* skip: `read_spans` over one span that starts at the shard's last sample (every sample before it skipped);
* read: `read_spans` over the whole shard, each sample decoded (`decode_sample`), as the training stream does.

Headline: the epoch's extra cost for the real ImageNet layout at 64 GPUs × 4 loader workers, micro-batch 4
= (samples skipped per sample read, from the plan) × (skip cost / read-and-decode cost per sample).

Usage: python bench/bench_skip.py [--quick] [--size 64] [--shard-size 2000] [--repeats 10]
"""
from __future__ import annotations

import argparse
import statistics
import time

from common import header, interleave, result_line, synthetic_shards

from pipeline.data.plan import TrainPlan  # noqa: E402  (common set the path)
from pipeline.data.shards import decode_sample, load_shard_set, read_spans

TARGET = 0.10   # at most 10 % more loader work per epoch
IMAGENET_TRAIN = (5000,) * 256 + (1167,)


def skipped_per_read(plan: TrainPlan) -> float:
    """Samples a reader passes over to reach its spans' starts, per sample it reads, over one epoch."""
    skipped = sum(first for r in range(plan.readers) for _, first, _ in plan.spans(0, r))
    return skipped / plan.samples_per_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    if args.quick:
        args.repeats = 4
    header("skipping into a shard")
    shards = load_shard_set(synthetic_shards(args.size, args.shard_size, args.shard_size), args.size, "train")
    n = shards.shards[0][1]
    select = lambda name: name.endswith((".png", ".cls"))  # noqa: E731  (what the training stream reads)

    def skip():
        t = time.perf_counter()
        got = list(read_spans(shards, [(0, n - 1, n)], select_files=select))
        assert len(got) == 1
        return n - 1, time.perf_counter() - t

    def read():
        t = time.perf_counter()
        count = sum(1 for s in read_spans(shards, [(0, 0, n)], select_files=select) if decode_sample(s, args.size))
        assert count == n
        return n, time.perf_counter() - t

    rates = interleave({"skip": skip, "read": read}, args.repeats, verbose=False)
    ratio = statistics.median([r / s for s, r in zip(rates["skip"], rates["read"])])   # cost ratio, paired rounds
    plan = TrainPlan(IMAGENET_TRAIN, seed=0, world=64, workers=4, micro_batch=4)
    per_read = skipped_per_read(plan)
    print(f"{n} images {args.size}x{args.size} in one shard, {args.repeats} rounds (ABBA, paired)")
    print(f"skip {statistics.median(rates['skip']):8.0f} samples/s, read+decode {statistics.median(rates['read']):6.0f}"
          f" samples/s (medians): skipping a sample costs {ratio:.3f} of reading and decoding it")
    print(f"ImageNet plan at 64 GPUs x 4 workers, micro-batch 4: {per_read:.3f} samples skipped per sample read")
    print(result_line("extra loader work per epoch from starting mid-shard (64 GPUs)", per_read * ratio, TARGET,
                      higher_is_better=False))


if __name__ == "__main__":
    main()

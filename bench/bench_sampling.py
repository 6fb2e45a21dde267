"""Incremental (cached) vs plain sampling of a 12-layer Diagonal BiLSTM at 32x32.

Both samplers consume the generator identically, so they must return the same images.
The plain sampler re-runs the whole network once per sub-pixel (3 n^2 passes, each of the
same cost). If that would exceed --plain-budget seconds, the plain sampler is run only on
the last --plain-rows rows (via `complete` of the incremental sample with the same seed,
whose output must equal the incremental sample) and its total time is EXTRAPOLATED from
the measured per-sub-pixel time; the output says so. Prints the speed-up last.

    python bench/bench_sampling.py           # 32x32, 12 layers, h=16, batch 2
    python bench/bench_sampling.py --quick   # 8x8, 4 layers
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.models import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    ap.add_argument("--model", default="diagonal_bilstm")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--out-maps", type=int, default=64, help="output-head width (paper: 1024)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--plain-budget", type=float, default=150.0, help="max seconds for a full plain run")
    ap.add_argument("--plain-rows", type=int, default=2, help="rows timed when extrapolating")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.size, args.layers = 8, 4
    n = args.size
    torch.manual_seed(0)
    model = build_model(args.model, image_size=n, layers=args.layers, hidden=args.hidden,
                        out_maps=args.out_maps).eval()
    print(f"# {args.model}, {n}x{n}, {args.layers} layers, h={args.hidden}, out_maps={args.out_maps}, "
          f"batch {args.batch}, float32, {torch.get_num_threads()} threads")

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(args.seed)

    t = time.perf_counter()
    fast = model.sample(args.batch, generator=gen())
    t_fast = time.perf_counter() - t
    print(f"incremental: {t_fast:.2f} s for {args.batch} images ({3 * n * n} sub-pixels each)")

    x = torch.randint(0, 256, (args.batch, 3, n, n), dtype=torch.uint8)
    with torch.no_grad():
        model(x)
        t = time.perf_counter()
        model(x)
        t_pass = time.perf_counter() - t
    steps = 3 * n * n
    if steps * t_pass <= args.plain_budget:
        t = time.perf_counter()
        slow = model.sample(args.batch, generator=gen(), incremental=False)
        t_slow = time.perf_counter() - t
        assert torch.equal(fast, slow), "incremental and plain samples differ"
        print(f"plain:       {t_slow:.2f} s (measured, full run); images identical")
    else:
        rows = min(args.plain_rows, n)
        t = time.perf_counter()
        tail = model.complete(fast, known_rows=n - rows, generator=gen(), incremental=False)
        t_rows = time.perf_counter() - t
        assert torch.equal(fast, tail), "incremental and plain samples differ"
        t_slow = t_rows * steps / (3 * rows * n)
        print(f"plain:       {t_rows:.2f} s measured for the last {rows} rows ({3 * rows * n} sub-pixel "
              f"passes, identical to the incremental sample there); EXTRAPOLATED to {steps} passes: "
              f"{t_slow:.1f} s (full plain run estimated from one pass: {steps * t_pass:.0f} s > budget)")
    print(f"speed-up incremental vs plain: {t_slow / t_fast:.1f}x (target >= 20x)")


if __name__ == "__main__":
    main()

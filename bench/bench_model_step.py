"""Training-step throughput: Diagonal BiLSTM and Row LSTM vs a PixelCNN of the same width.

Times forward + backward of `model.bits_per_dim(x).mean()` (the training loss) at 32x32,
counts the step's FLOPs analytically (functions below), and reports achieved FLOP/s, also
relative to this machine's measured dense matmul FLOP/s. Target: the Diagonal BiLSTM
achieves >= 0.5 of the PixelCNN's FLOP/s. Prints the ratio last.

    python bench/bench_model_step.py            # 12 layers, h=128, batch 8 (a few minutes)
    python bench/bench_model_step.py --quick    # tiny sizes, seconds
    python bench/bench_model_step.py --vs-reference   # issue 21: scan vs reference path, 4 layers h=32,
                                                      # batch 16, 2 threads, forward + backward + Adam
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.models import build_model, count_parameters  # noqa: E402
from pipeline.models.reference import use_reference  # noqa: E402

# ---- analytic FLOPs: 2 per multiply-add, convs counted dense (masked taps are computed),
# ---- elementwise ops ignored; per image, forward only. Backward = 2x forward.


def skip(h: int) -> int:
    """Multiply-adds per pixel of one layer's learnable skip connection (1x1 mask-B, 2h -> 2h)."""
    return 2 * h * 2 * h


def flops_common(n: int, h: int, out_maps: int, first: int = 7) -> int:
    """7x7 mask-A input conv (3 -> 2h) and the output head (2h -> out_maps -> 3*256)."""
    return 2 * n * n * (3 * first * first * 2 * h + 2 * h * out_maps + out_maps * 768)


def flops_pixelcnn(n: int, layers: int, h: int, out_maps: int = 1024, k: int = 3) -> int:
    """Residual blocks: 1x1 2h->h, kxk h->h, 1x1 h->2h; plus each block's skip connection."""
    return flops_common(n, h, out_maps) + layers * 2 * n * n * (2 * h * h + k * k * h * h + h * 2 * h + skip(h))


def flops_row_lstm(n: int, layers: int, h: int, out_maps: int = 1024, k: int = 3) -> int:
    """Input-to-state 1 x k 2h->4h, state-to-state k-wide h->4h, residual 1x1 h->2h, skip connection."""
    return flops_common(n, h, out_maps) + layers * 2 * n * n * (2 * h * k * 4 * h + h * k * 4 * h + h * 2 * h
                                                                 + skip(h))


def flops_diagonal_bilstm(n: int, layers: int, h: int, out_maps: int = 1024, scan: bool = False) -> int:
    """Per direction: input-to-state 1x1 2h->4h, state-to-state 2x1 h->4h over the n x n image cells (the
    reference path, CPU's default); residual 1x1 h->2h; skip connection. scan: as the fixed-height scan
    computes it (pipeline/models/scan.py): the state-to-state over its (2n - 1) x n cells, plus the learned
    initial state's constant gate terms (per batch, not per image: under 0.5 % of a layer at 32x32)."""
    per_pixel = 2 * (2 * h * 4 * h) + h * 2 * h + skip(h)
    cells = 2 * (2 * n - 1 + (n == 1) if scan else n) * n * (2 * h * 4 * h)
    initial = 2 * 2 * h * 4 * h + n * n * 2 * 2 * 4 * h if scan else 0
    return flops_common(n, h, out_maps) + layers * 2 * (n * n * per_pixel + cells + initial)


FLOPS: Dict[str, Callable[..., int]] = {
    "pixelcnn": flops_pixelcnn, "row_lstm": flops_row_lstm, "diagonal_bilstm": flops_diagonal_bilstm}


def matmul_flops(size: int = 1024, repeats: int = 10) -> float:
    """Best-of-`repeats` float32 dense matmul FLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size ** 3 / best


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def vs_reference(n: int, layers: int, h: int, bsz: int, steps: int) -> None:
    """Issue 21: a training step (forward + backward + Adam) of the default scan path against the
    reference path (the code before issue 21), same weights, interleaved step by step (scan, reference,
    reference, scan, ...), median of `steps` steps each; achieved FLOP/s against this run's GEMM rate."""
    print(f"load average {_load():.1f}; GEMM rate: dense 1024^3 matmul, timed in every round between the steps")
    x = torch.randint(0, 256, (bsz, 3, n, n), dtype=torch.uint8)
    print(f"{'model':16s} {'path':9s} {'s/step':>8s} {'GFLOP/s':>8s} {'of matmul':>9s} {'speed-up':>8s}")
    speedups = {}
    for name in ("diagonal_bilstm", "row_lstm"):
        torch.manual_seed(0)
        paths = {impl: build_model(name, image_size=n, layers=layers, hidden=h, out_maps=4 * h)
                 for impl in ("scan", "reference")}
        paths["reference"].load_state_dict(paths["scan"].state_dict())
        use_reference(paths["reference"])
        use_reference(paths["scan"], "scan")
        optims = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in paths.items()}

        def train_step(impl: str) -> float:
            m, opt = paths[impl], optims[impl]
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            m.bits_per_dim(x).mean().backward()
            opt.step()
            return time.perf_counter() - t

        times = {k: [] for k in paths}
        gemm = []  # the machine's GEMM rate in the same rounds (its load changes during the run)
        for k in paths:  # warm-up
            train_step(k)
        for r in range(steps):
            for k in (paths if r % 2 == 0 else list(paths)[::-1]):
                times[k].append(train_step(k))
            gemm.append(matmul_flops(repeats=3))
        med = {k: statistics.median(v) for k, v in times.items()}
        peak = statistics.median(gemm)
        print(f"{name}: GEMM {peak / 1e9:.1f} GFLOP/s (median of the rounds; min {min(gemm) / 1e9:.1f}, "
              f"max {max(gemm) / 1e9:.1f})")
        flops = 3 * bsz * (flops_diagonal_bilstm(n, layers, h, 4 * h) if name == "diagonal_bilstm"
                           else flops_row_lstm(n, layers, h, 4 * h))
        speedups[name] = med["reference"] / med["scan"]
        for k in paths:
            rate = flops / med[k]
            extra = f"{speedups[name]:>7.2f}x" if k == "scan" else ""
            print(f"{name:16s} {k:9s} {med[k]:>8.3f} {rate / 1e9:>8.1f} {rate / peak:>9.3f} {extra:>8s}", flush=True)
    frozen = flops_diagonal_bilstm(n, layers, h, 4 * h, scan=True) / flops_diagonal_bilstm(n, layers, h, 4 * h)
    print(f"(FLOP/s: the model's FLOPs, image cells only, for both paths; the Diagonal BiLSTM's scan also computes "
          f"its frozen cells: {frozen:.2f}x the FLOPs; load average {_load():.1f} at the end)")
    print(f"row_lstm training step, scan vs reference: {speedups['row_lstm']:.2f}x (target >= 1.5x)")
    print(f"diagonal_bilstm training step, scan vs reference: {speedups['diagonal_bilstm']:.2f}x (target >= 1.5x)")


def _load() -> float:
    """1-minute load average of the machine (the benchmarks share it)."""
    return os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--vs-reference", action="store_true",
                    help="issue 21: scan vs reference training step (defaults: 4 layers, h=32, batch 16, 2 threads)")
    args = ap.parse_args()
    if args.vs_reference:
        torch.set_num_threads(args.threads or 2)
        n, layers, h, bsz, steps = (8, 2, 16, 4, 3) if args.quick else (args.size, 4, 32, 16, 2 * args.repeats + 1)
        print(f"# scan vs reference path: {n}x{n}, {layers} layers, h={h}, out_maps={4 * h}, batch {bsz}, float32, "
              f"{torch.get_num_threads()} threads, Adam, median of {steps} interleaved steps")
        vs_reference(n, layers, h, bsz, steps)
        return
    if args.quick:
        args.size, args.layers, args.hidden, args.batch, args.repeats = 8, 2, 16, 2, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, layers, h, bsz = args.size, args.layers, args.hidden, args.batch
    print(f"# {n}x{n}, {layers} layers, h={h}, batch {bsz}, float32, {torch.get_num_threads()} threads")
    peak = matmul_flops()
    print(f"machine: dense 1024^3 matmul {peak / 1e9:.1f} GFLOP/s")

    names = ["pixelcnn", "row_lstm", "diagonal_bilstm"]
    models = {k: build_model(k, image_size=n, layers=layers, hidden=h) for k in names}
    x = torch.randint(0, 256, (bsz, 3, n, n), dtype=torch.uint8)

    def step(m: torch.nn.Module) -> None:
        m.zero_grad(set_to_none=True)
        m.bits_per_dim(x).mean().backward()

    for m in models.values():  # warm-up
        step(m)
    best = {k: float("inf") for k in names}
    for _ in range(args.repeats):  # interleaved, so background load hits all models alike
        for k, m in models.items():
            best[k] = min(best[k], _timed(lambda: step(m)))

    rate = {}
    print(f"{'model':16s} {'params':>10s} {'GFLOP/step':>11s} {'s/step':>8s} {'GFLOP/s':>8s} {'of matmul':>9s}")
    for k in names:
        flops = 3 * bsz * FLOPS[k](n, layers, h)  # forward + backward (2x)
        rate[k] = flops / best[k]
        print(f"{k:16s} {count_parameters(models[k]):>10,d} {flops / 1e9:>11.1f} {best[k]:>8.3f} "
              f"{rate[k] / 1e9:>8.1f} {rate[k] / peak:>9.2f}")
    print(f"row_lstm / pixelcnn achieved FLOP/s: {rate['row_lstm'] / rate['pixelcnn']:.2f}")
    print(f"diagonal_bilstm / pixelcnn step time: {best['diagonal_bilstm'] / best['pixelcnn']:.2f}x")
    print(f"diagonal_bilstm / pixelcnn achieved FLOP/s: {rate['diagonal_bilstm'] / rate['pixelcnn']:.2f} "
          f"(target >= 0.5)")


if __name__ == "__main__":
    main()

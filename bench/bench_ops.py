"""Operator calls of one training step: what sets a recurrent layer's speed on a GPU (issue 21).

Counts the top-level aten operators (an aten op with no aten op above it in torch.profiler's tree: what
Python or the autograd engine dispatches, i.e. one launch or more on a GPU) of one forward + backward of
`model.bits_per_dim(x).mean()` of the model as `build_model` makes it, eager, 32x32, batch 2, for the
12-layer Diagonal BiLSTM, the 12-layer Row LSTM and the 15-layer PixelCNN, for the scan (`layer.impl =
"scan"`, what a GPU runs by default) and for the reference path (`"reference"`, the code before issue 21,
the CPU default); the count is also taken at
batch 3 to show that it does not depend on the batch size (nor on h: h=16 here). A device-independent
figure: it holds for GPUs too. Prints the ratio of the Diagonal BiLSTM's count to its target last.

    python bench/bench_ops.py            # 32x32, ~1 min
    python bench/bench_ops.py --quick    # 8x8 (targets scaled by the number of steps), seconds
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.models import build_model  # noqa: E402
from pipeline.models.reference import use_reference  # noqa: E402

LAYERS = {"diagonal_bilstm": 12, "row_lstm": 12, "pixelcnn": 15}
# Measured with this script's method on the code before issue 21 (commit 2b9625f), 32x32, batch 2.
BEFORE = {"diagonal_bilstm": 43_640, "row_lstm": 11_612, "pixelcnn": 545}
TARGET = {"diagonal_bilstm": 8_000, "row_lstm": 3_000}


def top_level_aten_ops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Top-level aten calls of one forward + backward of the training loss (after one warm-up step)."""
    model.bits_per_dim(x).mean().backward()  # warm-up: lazy caches (diagonal orders) are built once
    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model.bits_per_dim(x).mean().backward()

    def top(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return False
            parent = parent.cpu_parent
        return True

    return sum(1 for e in prof.events() if e.name.startswith("aten::") and top(e))


def count(name: str, size: int, batch: int, reference: bool, hidden: int = 16) -> int:
    """Operator calls of `name` (LAYERS[name] layers) at size x size, batch images."""
    torch.manual_seed(0)
    model = build_model(name, image_size=size, layers=LAYERS[name], hidden=hidden)
    use_reference(model, "reference" if reference else "scan")
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    return top_level_aten_ops(model, x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8x8 instead of 32x32")
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args()
    n = 8 if args.quick else args.size
    torch.set_num_threads(1)
    print(f"# top-level aten ops of one forward + backward, eager, {n}x{n}, h=16 (the count does not depend on h)")
    print(f"{'model':16s} {'layers':>6s} {'before (2b9625f)':>17s} {'reference b=2':>14s} "
          f"{'scan b=2':>8s} {'scan b=3':>8s} {'ratio':>6s}")
    new: Dict[str, int] = {}
    for name, layers in LAYERS.items():
        ref = count(name, n, 2, reference=True)
        new[name] = count(name, n, 2, reference=False)
        other = count(name, n, 3, reference=False)
        before = f"{BEFORE[name]:,d}" if n == 32 else "-"
        print(f"{name:16s} {layers:>6d} {before:>17s} {ref:>14,d} {new[name]:>8,d} {other:>8,d} "
              f"{ref / new[name]:>5.1f}x", flush=True)
        if other != new[name]:
            print(f"  {name}: the count depends on the batch size ({new[name]} at 2, {other} at 3)")
    # The recurrent layers' steps scale with n (Row LSTM: n rows; Diagonal BiLSTM: 2n - 1 diagonals).
    row_target = TARGET["row_lstm"] * n / 32
    diag_target = TARGET["diagonal_bilstm"] * (2 * n - 1) / 63
    print(f"row_lstm ops / target: {new['row_lstm'] / row_target:.2f} (target <= 1) "
          f"{'MET' if new['row_lstm'] <= row_target else 'NOT MET'}")
    print(f"diagonal_bilstm ops / target: {new['diagonal_bilstm'] / diag_target:.2f} (target <= 1) "
          f"{'MET' if new['diagonal_bilstm'] <= diag_target else 'NOT MET'}")


if __name__ == "__main__":
    main()

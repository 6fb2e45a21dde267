"""Time of one training micro-batch (8 images, forward + backward + Adam, one thread) of the 28x28 grayscale
models of the fashion_mnist_* experiments, measured side by side, as a ratio to fashion_mnist_pixelcnn: what
their train.max_steps are sized from, so that all of them get the same time budget (issue 22; README,
"Fashion-MNIST"). The PixelCNN's measured run (3600 steps on 2 CPU ranks) took PIXELCNN_MIN of steps, so a
ratio r gives about PIXELCNN_MIN * r * steps / 3600.

    python bench/step_time_mnist28.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's pipeline, not an installed one
from pipeline.config import load_config  # noqa: E402
from pipeline.models import build_model  # noqa: E402

EXPERIMENTS = ["fashion_mnist_pixelcnn", "fashion_mnist_row_lstm", "fashion_mnist_diagonal_bilstm",
               "fashion_mnist_multiscale", "fashion_mnist_binarized_diagonal_bilstm"]


def step_time(name: str, batch: int = 8, warmup: int = 2, steps: int = 4) -> float:
    """Mean seconds per micro-batch after `warmup` steps (random images, the experiment's model)."""
    cfg = load_config(name)
    torch.manual_seed(0)
    m = build_model(cfg.model)
    opt = torch.optim.Adam(m.parameters())
    size, c = cfg.model.image_size, cfg.model.channels
    x = torch.randint(0, cfg.model.levels, (batch, c, size, size), dtype=torch.uint8)
    for k in range(warmup + steps):
        if k == warmup:
            t0 = time.perf_counter()
        loss = m.bits_per_dim(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


# Measured: fashion_mnist_pixelcnn's training steps on 2 CPU ranks (README, "Fashion-MNIST"), evaluations excluded.
PIXELCNN_MIN, PIXELCNN_STEPS = 22.6, 3600  # 24.5 min from first to last step, less two 57 s evaluations


def main() -> None:
    torch.set_num_threads(1)
    times = {name: step_time(name) for name in EXPERIMENTS}  # side by side, one run
    for name in EXPERIMENTS:
        ratio = times[name] / times["fashion_mnist_pixelcnn"]
        steps = load_config(name).train.max_steps
        minutes = PIXELCNN_MIN * ratio * steps / PIXELCNN_STEPS
        print(f"{name}: {times[name]:.3f} s per micro-batch of 8, {ratio:.2f} x the PixelCNN; max_steps {steps} -> "
              f"about {minutes:.0f} min of steps on 2 CPU ranks")


if __name__ == "__main__":
    main()

"""A finished run's figures for the docs: its learning curve and a grid of samples and completions.

    python -m pipeline.tools.run_figures --run runs/photos32 --out-dir docs --prefix photos32 [--data data/photos32]

Writes <prefix>_curve.png (training bits/dim per step from metrics.jsonl, its moving average, validation
bits/dim from the run's MLflow history, and the PNG / WebP / JPEG XL lossless baselines of the same
validation images when the run logged them; nats per image on the right-hand axis) and
<prefix>_samples.png (16 samples from the final weights; with --data also 8 validation images above
their completions from the top half). Small PNGs, written atomically.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from matplotlib.figure import Figure  # without pyplot: drawn by Agg, no display or backend needed

from pipeline.config import from_yaml_text
from pipeline.data.shards import split_batches
from pipeline.fsutil import atomic_write_bytes
from pipeline.run_dir import RunDir
from pipeline.tracking.figures import save_grid
from pipeline.tracking.tracker import recorded_run
from pipeline.train.weights import load_checkpoint_model


def val_history(run: RunDir) -> List[Tuple[int, float]]:
    """(step, val_bits_per_dim) of the run, from its MLflow store."""
    from mlflow import MlflowClient  # mlflow's import costs about a second: only where a figure needs it

    run_id, store = recorded_run(run)
    if store is None:  # a run from before the store was recorded: the one its config names
        store = from_yaml_text(run.config.read_text()).tracking.tracking_uri or None
    client = MlflowClient(tracking_uri=store)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val_bits_per_dim"))


# The codec baselines a run logs (tracking.codec_baselines) and how the curve draws them.
BASELINES = (("png_bits_per_dim", "PNG", "0.25"), ("webp_bits_per_dim", "WebP lossless", "0.45"),
             ("jpegxl_bits_per_dim", "JPEG XL lossless", "0.65"))
SMOOTH = 25  # steps in the training curve's moving average


def curve_series(run: RunDir) -> Dict[str, Any]:
    """What the learning curve shows, read from the run: training bits/dim per step and its moving
    average, validation bits/dim per evaluation (MLflow), the codec baselines of the same validation
    images (final_metrics.json), and the sub-pixels per image (for the nats-per-image axis)."""
    train = [json.loads(line) for line in run.metrics.read_text().splitlines() if line]
    values = [m["train_bits_per_dim"] for m in train]
    smooth = [sum(values[max(0, i - SMOOTH + 1):i + 1]) / len(values[max(0, i - SMOOTH + 1):i + 1])
              for i in range(len(values))]
    final = json.loads(run.final_metrics.read_text())
    cfg = from_yaml_text(run.config.read_text())
    return {"steps": [m["step"] for m in train], "train": values, "smooth": smooth, "val": val_history(run),
            "baselines": {label: (final[key], colour) for key, label, colour in BASELINES if key in final},
            "dims": cfg.model.channels * cfg.model.image_size ** 2, "split": cfg.data.val_split}


def plot_curve(run: RunDir, path: Path, title: str) -> None:
    """The learning curve in bits/dim (left) and nats per image (right, the unit of the paper's MNIST
    results), with the codec baselines as horizontal lines."""
    c = curve_series(run)
    fig = Figure(figsize=(7, 4.2), dpi=100)
    ax = fig.subplots()
    ax.plot(c["steps"], c["train"], color="tab:blue", alpha=0.25, linewidth=0.6)
    ax.plot(c["steps"], c["smooth"], color="tab:blue", label=f"train (moving average of {SMOOTH} steps)")
    val = c["val"]
    ax.plot([s for s, _ in val], [v for _, v in val], "o-", color="tab:red", markersize=4,
            label=f"validation ({c['split']} split), final {val[-1][1]:.3f}")
    for label, (value, colour) in c["baselines"].items():
        ax.axhline(value, color=colour, linestyle="--", linewidth=1)
        # at the left, where the curves are still far above the baselines
        ax.annotate(f"{label} {value:.2f}", xy=(0.01, value), xycoords=("axes fraction", "data"),
                    xytext=(0, 3), textcoords="offset points", ha="left", fontsize=8, color=colour)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("bits/dim")
    # From the lowest line drawn to a little above the highest baseline (or the late training curve):
    # the first steps' bits/dim (about 8) would flatten everything that matters.
    low = min(min(c["smooth"]), min(v for _, v in val), *(v for v, _ in c["baselines"].values()))
    tail = c["smooth"][len(c["smooth"]) // 10:] or c["smooth"]
    high = max(max(tail), *(v for v, _ in c["baselines"].values()), val[-1][1])
    pad = 0.08 * (high - low) + 0.02
    ax.set_ylim(max(0.0, low - pad), high + 2 * pad)
    nats = c["dims"] * math.log(2)
    right = ax.secondary_yaxis("right", functions=(lambda b: b * nats, lambda n: n / nats))
    right.set_ylabel("nats per image")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def sample_grid(run: RunDir, path: Path, data: Optional[str], seed: int = 0) -> None:
    """Samples (top rows) and, with `data`, validation images above their completions."""
    final = json.loads(run.final_metrics.read_text())
    model = load_checkpoint_model(final["checkpoint"]).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rows = [model.sample(16, generator=g)]
        if data:
            size = model.config["image_size"]
            x = next(split_batches(data, size, "val", 64))[::8][:8]
            rows += [x, model.complete(x, known_rows=size // 2, generator=g)]
    grid = torch.cat([rows[0]] + [torch.cat(rows[1:], 0)] if data else rows)
    save_grid(grid, path, nrow=8, levels=model.levels)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="the run's output_dir (runs/NAME)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--data", help="shard root: add validation images and their completions")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    run, out = RunDir(args.run), Path(args.out_dir)
    plot_curve(run, out / f"{args.prefix}_curve.png", args.title or f"{run.root.name}: bits/dim per step")
    sample_grid(run, out / f"{args.prefix}_samples.png", args.data)
    print(f"wrote {out / (args.prefix + '_curve.png')} and {out / (args.prefix + '_samples.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

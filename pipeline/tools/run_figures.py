"""A finished run's figures for the docs: its learning curve and a grid of samples and completions.

    python -m pipeline.tools.run_figures --run runs/photos32 --out-dir docs --prefix photos32 [--data data/photos32]

Writes <prefix>_curve.png (training bits/dim per step from metrics.jsonl, its moving average, validation
bits/dim from the run's MLflow history, and the PNG / WebP baselines of the same validation images when
the run logged them) and <prefix>_samples.png (16 samples from the final weights; with --data also 8
validation images above their completions from the top half). Small PNGs, written atomically.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import List, Optional, Tuple

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


def plot_curve(run: RunDir, path: Path, title: str) -> None:
    """The learning curve with the codec baselines as horizontal lines."""
    train = [json.loads(line) for line in run.metrics.read_text().splitlines() if line]
    steps = [m["step"] for m in train]
    values = [m["train_bits_per_dim"] for m in train]
    k = 25
    smooth = [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]
    final = json.loads(run.final_metrics.read_text())
    fig = Figure(figsize=(7, 4.2), dpi=100)
    ax = fig.subplots()
    ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.6)
    ax.plot(steps, smooth, color="tab:blue", label=f"train (moving average of {k} steps)")
    val = val_history(run)
    ax.plot([s for s, _ in val], [v for _, v in val], "o-", color="tab:red", markersize=4,
            label=f"validation (held-out photos), final {val[-1][1]:.3f}")
    for key, label, colour in (("png_bits_per_dim", "PNG", "0.3"), ("webp_bits_per_dim", "WebP lossless", "0.55")):
        if key in final:
            ax.axhline(final[key], color=colour, linestyle="--", linewidth=1)
            # at the left, where the curves are still far above the baselines
            ax.annotate(f"{label} {final[key]:.2f}", xy=(0.01, final[key]), xycoords=("axes fraction", "data"),
                        xytext=(0, 3), textcoords="offset points", ha="left", fontsize=8, color=colour)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("bits/dim")
    ax.set_ylim(min(min(smooth), val[-1][1]) - 0.5, max(9.0, final.get("png_bits_per_dim", 0) + 0.5))
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

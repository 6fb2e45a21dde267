"""The report's figure: validation bits/dim (or nats per image) against optimizer step and against device-hours."""
from __future__ import annotations

import io
from pathlib import Path
from typing import List, Sequence

from matplotlib.figure import Figure  # without pyplot: drawn by Agg, no display or backend needed

from pipeline.fsutil import atomic_write_bytes

LINESTYLES = ("-", "--", ":", "-.")


def plot_runs(runs: Sequence, published: List[dict], title: str, path: Path, key: str = "test_bits_per_dim",
              ylabel: str = "validation bits/dim") -> None:
    """One PNG, two panels; one line per run (`RunSummary`), one line style per data group, the
    published numbers as grey horizontal lines. Written atomically."""
    fig = Figure(figsize=(12, 4.8), dpi=100)
    ax_step, ax_hours = fig.subplots(1, 2, sharey=True)
    groups = sorted({r.data_key for r in runs})
    for r in runs:
        style = LINESTYLES[groups.index(r.data_key) % len(LINESTYLES)]
        label = r.name if len(groups) == 1 else f"{r.name} [data {groups.index(r.data_key) + 1}]"
        steps = [s for s, _ in r.val_history]
        vals = [v for _, v in r.val_history]
        line, = ax_step.plot(steps, vals, style, marker="o", markersize=3, label=label)
        hours = r.val_device_hours()
        if hours:
            ax_hours.plot(hours, vals, style, marker="o", markersize=3, color=line.get_color(), label=label)
    for p in published:
        for ax in (ax_step, ax_hours):
            ax.axhline(p[key], color="0.6", linewidth=0.8, linestyle=":")
        ax_hours.annotate(f'{p["label"]} {p[key]:.2f}', xy=(1.0, p[key]),
                          xycoords=("axes fraction", "data"), xytext=(3, 0), textcoords="offset points",
                          fontsize=7, color="0.4", va="center")
    ax_step.set_xlabel("optimizer step")
    ax_hours.set_xlabel("device-hours (accelerator-hours, cumulative)")
    ax_step.set_ylabel(ylabel)
    for ax in (ax_step, ax_hours):
        ax.grid(True, alpha=0.3)
    ax_step.legend(fontsize=7, loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())

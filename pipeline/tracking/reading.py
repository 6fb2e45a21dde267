"""Reading runs back from the MLflow store for the reports: one training run as a `RunSummary`, and the
published numbers (`configs/benchmarks.yaml`). Shared by the benchmark report (`report.py`) and the sweep
report (`sweep_report.py`)."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import yaml

from pipeline.config import REPO_ROOT
from pipeline.tracking.tracker import DATA_TAGS

BENCHMARKS_FILE = REPO_ROOT / "configs" / "benchmarks.yaml"
VAL, TRAIN, HOURS, RATE = "val_bits_per_dim", "train_bits_per_dim", "device_hours", "images_per_s"


class ReportError(Exception):
    """A request the report cannot serve (unknown experiment or sweep, unreadable benchmarks file)."""


@dataclass
class RunSummary:
    run_id: str
    name: str
    status: str
    model: str
    tags: Dict[str, str]
    params: Dict[str, str]
    val: float
    train: Optional[float]
    steps: int
    images_per_s: Optional[float]
    device_hours: Optional[float]
    val_history: List[Tuple[int, float]] = field(default_factory=list)
    hours_history: List[Tuple[int, float]] = field(default_factory=list)

    @property
    def data_key(self) -> Tuple[str, ...]:
        """What makes two runs' bits/dim comparable: the same data, made the same way."""
        return tuple(self.tags.get(k, "unknown") for k in DATA_TAGS)

    def val_device_hours(self) -> List[float]:
        """Device-hours at each evaluation step (interpolated from the logged device_hours)."""
        if not self.hours_history:
            return []
        s, h = zip(*self.hours_history)
        return [float(x) for x in np.interp([st for st, _ in self.val_history], s, h, left=0.0)]


def load_benchmarks(path: Path = BENCHMARKS_FILE) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ReportError(f"cannot read benchmarks file {path}: {e}") from None
    if not isinstance(data.get("benchmarks"), dict):
        raise ReportError(f"{path}: no 'benchmarks' mapping")
    return data


def history(client, run_id: str, key: str) -> List[Tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def summarise(client, run, val_key: str = VAL) -> RunSummary:
    """A training run that has a validation result (`val_key` in its metrics: bits/dim, or the nats per
    image of a benchmark published in nats), with its metric histories."""
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    rid = run.info.run_id
    val_hist, train_hist = history(client, rid, val_key), history(client, rid, TRAIN)
    rates = [v for _, v in history(client, rid, RATE)]
    return RunSummary(
        run_id=rid, name=run.info.run_name or rid[:8], status=run.info.status,
        model=tags.get("model") or params.get("model") or params.get("model.name") or "unknown",
        tags=dict(tags), params=dict(params), val=metrics[val_key], train=metrics.get(TRAIN),
        steps=max([s for s, _ in val_hist + train_hist] or [0]),
        images_per_s=statistics.median(rates) if rates else None,  # median: robust to warm-up
        device_hours=metrics.get(HOURS), val_history=val_hist, hours_history=history(client, rid, HOURS))

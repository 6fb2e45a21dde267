"""The run folder (`output_dir`, e.g. `runs/<name>/`): every path in it has one name, here.

    runs/<name>/
      config.yaml, deepspeed.json   the effective experiment config and the DeepSpeed JSON derived from it
      metrics.jsonl                 one line per optimizer step (rank 0): step, train bits/dim, its exact hex
      final_metrics.json            the summary of a finished run (what `submit.py` and the tools read back)
      checkpoints/                  DeepSpeed checkpoints and `latest` (pipeline/train/checkpoint.py)
      ranks/rank<r>.json            every rank's heartbeat (pipeline/train/heartbeat.py)
      samples/step<NNNNNNNN>.png    the sample grid of each evaluation
      mlflow_run_id, mlflow_store   the MLflow run this run logs to, and its store (pipeline/tracking/tracker.py)
      submitit/<stamp>/             the launcher's job folders (slurm/submit.py)

Torch-free: the launcher reads it before it submits anything.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union


@dataclass(frozen=True)
class RunDir:
    """The paths of one run folder (nothing is created by asking for a path)."""

    root: Path

    def __init__(self, root: Union[str, Path]):
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def deepspeed_config(self) -> Path:
        return self.root / "deepspeed.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def final_metrics(self) -> Path:
        return self.root / "final_metrics.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def ranks(self) -> Path:
        return self.root / "ranks"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    def sample_grid(self, step: int) -> Path:
        """The sample grid written at the evaluation of `step`."""
        return self.samples / f"step{step:08d}.png"

    @property
    def mlflow_run_id(self) -> Path:
        return self.root / "mlflow_run_id"

    @property
    def mlflow_store(self) -> Path:
        return self.root / "mlflow_store"

    @property
    def submitit(self) -> Path:
        return self.root / "submitit"

    def read_final(self) -> Optional[Dict[str, Any]]:
        """The finished run's summary, or None while there is none (or it cannot be read)."""
        try:
            return json.loads(self.final_metrics.read_text())
        except (OSError, ValueError):
            return None

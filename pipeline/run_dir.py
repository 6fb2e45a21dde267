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
from pathlib import Path
from typing import Any, Dict, Optional, Union


class _Entry:
    """A fixed name inside the run folder: `RunDir(...).metrics` is `<root>/metrics.jsonl`."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, run: "RunDir", owner: type) -> Path:
        return run.root / self.name


class RunDir:
    """The paths of one run folder (asking for a path creates nothing)."""

    config = _Entry("config.yaml")
    deepspeed_config = _Entry("deepspeed.json")
    metrics = _Entry("metrics.jsonl")
    final_metrics = _Entry("final_metrics.json")
    checkpoints = _Entry("checkpoints")
    ranks = _Entry("ranks")
    samples = _Entry("samples")
    mlflow_run_id = _Entry("mlflow_run_id")
    mlflow_store = _Entry("mlflow_store")
    submitit = _Entry("submitit")

    def __init__(self, root: Union[str, Path]):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def sample_grid(self, step: int) -> Path:
        """The sample grid written at the evaluation of `step`."""
        return self.samples / f"step{step:08d}.png"

    def read_final(self) -> Optional[Dict[str, Any]]:
        """The finished run's summary, or None while there is none (or it cannot be read)."""
        try:
            return json.loads(self.final_metrics.read_text())
        except (OSError, ValueError):
            return None

"""A real MLflow store with two finished smoke runs, shared by the report and MLflow UI tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import mlflow

from .launch import REPO, mlflow_store

SMOKE_RUNS = {  # run name -> overrides; both 10 steps, evaluated at 5 and 10
    "row_lstm-2x16-8px-bf16-zero2": [],
    "pixelcnn-2x16-8px-fp32-zero2": ["model.name=pixelcnn", "train.precision=fp32"],
}
COMMON = ["train.max_steps=10", "train.eval_every=5", "train.log_every=5", "train.sample_every_eval=0",
          "checkpoint.every=1000", "data.prepare=none"]
_STORES: Dict[Path, Path] = {}


def make_smoke_store(base: Path, data: Path) -> Path:
    """Two finished smoke runs in `<base>/mlflow.db` (artifacts under `<base>/artifacts`); made once per
    base folder, so test modules that call it with the session's base temp share it."""
    if base in _STORES:
        return _STORES[base]
    base.mkdir(parents=True, exist_ok=True)
    uri = mlflow_store(base / "mlflow.db")
    # Create the store and the experiment first, with its artifacts in the temp folder (not ./mlruns).
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.create_experiment("smoke", artifact_location=(base / "artifacts").as_uri())
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    for name, overrides in SMOKE_RUNS.items():
        out = base / name
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.train", "--exp", "smoke", f"output_dir={out}", f"data.root={data}",
             f"tracking.tracking_uri={uri}", *COMMON, *overrides],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    _STORES[base] = base / "mlflow.db"
    return _STORES[base]

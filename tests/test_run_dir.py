"""RunDir: the one owner of the run folder's names (the layout docs/architecture.md shows)."""
from __future__ import annotations

import json

from pipeline.run_dir import RunDir


def test_every_path_of_a_run_folder_has_its_documented_name(tmp_path):
    run = RunDir(tmp_path / "runs" / "smoke")
    names = {k: str(getattr(run, k).relative_to(run.root)) for k in (
        "config", "deepspeed_config", "metrics", "final_metrics", "checkpoints", "ranks", "samples",
        "mlflow_run_id", "mlflow_store", "submitit")}
    assert names == {"config": "config.yaml", "deepspeed_config": "deepspeed.json", "metrics": "metrics.jsonl",
                     "final_metrics": "final_metrics.json", "checkpoints": "checkpoints", "ranks": "ranks",
                     "samples": "samples", "mlflow_run_id": "mlflow_run_id", "mlflow_store": "mlflow_store",
                     "submitit": "submitit"}
    assert run.sample_grid(40) == run.root / "samples" / "step00000040.png"
    assert not run.root.exists()  # asking for paths creates nothing


def test_the_final_summary_reads_back_or_is_none(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_final() is None
    run.final_metrics.write_text("{not json")
    assert run.read_final() is None
    run.final_metrics.write_text(json.dumps({"val_bits_per_dim": 6.5, "steps": 40}))
    assert run.read_final() == {"val_bits_per_dim": 6.5, "steps": 40}

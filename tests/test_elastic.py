"""Elastic resume: a checkpoint written by 2 ranks resumes on 1 and the reverse, converted through
DeepSpeed's universal checkpoint automatically, for RMSprop (the paper's) and Adam, exactly."""
from __future__ import annotations

import json

import mlflow
import pytest
from helpers import metrics, train_2ranks

pytestmark = pytest.mark.slow  # 2-rank DeepSpeed launches

CASES = {
    # name: (ranks before, ranks after, overrides)
    "rmsprop-zero2-bf16-2to1": (2, 1, ["optim.name=rmsprop", "train.zero_stage=2", "train.precision=bf16"]),
    "adam-zero3-fp32-1to2": (1, 2, ["optim.name=adam", "train.zero_stage=3", "train.precision=fp32",
                                    "train.zero3_persistence_threshold=0"]),
}
COMMON = ["train.eval_every=100", "checkpoint.every=5", "train.log_every=1", "train.sample_every_eval=0",
          "data.num_workers=1"]


@pytest.fixture(scope="module", params=sorted(CASES))
def elastic(request, smoke_data, tmp_path_factory):
    before, after, overrides = CASES[request.param]
    base = tmp_path_factory.mktemp(request.param)
    run = base / "run"
    first = train_2ranks(run, smoke_data, COMMON + overrides + ["train.max_steps=10"], nproc=before)
    assert first.returncode == 0, first.stdout[-3000:]
    check = train_2ranks(base / "check", smoke_data, [], nproc=after, program=[
        "tests/elastic_check.py", str(run / "checkpoints"), *COMMON, *overrides,
        f"data.root={smoke_data}", "data.prepare=none"])
    assert check.returncode == 0, check.stdout[-3000:]
    report = json.loads([l for l in check.stdout.splitlines() if l.startswith("{")][-1])
    resumed = train_2ranks(run, smoke_data, COMMON + overrides + ["train.max_steps=13"], nproc=after)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    return before, after, run, report, resumed.stdout


def test_weights_and_optimizer_state_load_exactly_at_the_new_world_size(elastic):
    before, after, _, report, _ = elastic
    assert report["world_size"] == after and report["params"] > 0
    assert report["weights_equal"], "fp32 weights differ from the source checkpoint"
    assert report["state_equal"] and report["state_nonzero"], "optimizer state not carried over"
    assert report["global_steps"] == report["client_step"] == 10


def test_training_continues_from_the_checkpoint(elastic):
    before, after, run, _, log = elastic
    assert "at step 10 (data position" in log and f"world size {before} -> {after}" in log
    steps = [m["step"] for m in metrics(run)]
    assert steps == list(range(1, 14))
    assert all(0 < m["train_bits_per_dim"] < 8.5 for m in metrics(run))
    assert (run / "checkpoints" / "latest").read_text() == "step00000013"
    meta = json.loads((run / "checkpoints" / "step00000013" / "meta.json").read_text())
    assert meta["world_size"] == after
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run.parent / 'run.db'}")
    (one,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert one.info.status == "FINISHED"

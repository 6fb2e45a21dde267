"""`python slurm/submit.py`: the smoke slice through submitit's local executor, plus --list and --dry-run.
(Through the real SLURM cluster, on 1 node x 2 tasks and on 2 nodes x 1 task, compared bit for bit:
tests/test_multinode.py.)"""
from __future__ import annotations

import math
import subprocess
import sys

import mlflow
import pytest
from helpers import REPO, mlflow_store


def submit(*args, timeout=600):
    return subprocess.run([sys.executable, "slurm/submit.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def smoke_args(tmp_path, data):
    return ["--exp", "smoke", f"output_dir={tmp_path / 'run'}", f"data.root={data}",
            f"tracking.tracking_uri={mlflow_store(tmp_path / 'mlflow.db')}"]


def assert_smoke_result(out, tmp_path):
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "finished: validation" in out.stdout
    assert "mlflow ui --backend-store-uri" in out.stdout and "127.0.0.1" in out.stdout
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    val = run.data.metrics["val_bits_per_dim"]
    assert math.isfinite(val) and val < 8.0  # 8.0 is the uniform model
    assert run.data.tags["world_size"] == "2"
    latest = tmp_path / "run" / "checkpoints" / (tmp_path / "run" / "checkpoints" / "latest").read_text()
    for rank in (0, 1):  # a ZeRO-2 optimizer shard and an RNG state from each rank
        assert (latest / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").exists()
        assert (latest / f"rng_rank{rank}.pt").exists()
    return run


@pytest.mark.slow  # 2-rank DeepSpeed jobs
def test_smoke_locally_without_slurm_then_again(tmp_path, smoke_data):
    out = submit(*smoke_args(tmp_path, smoke_data), "--local")
    assert "(local executor, 2 task(s))" in out.stdout
    # The plan, printed before the job is submitted (after the shards were built).
    plan = ("data plan: 256 of 256 train images per epoch (100.00 %), 16 steps per epoch, 16 batches per rank; "
            "validation: 64 images on 2 ranks, at most 4 batches per rank")
    assert out.stdout.index(plan) < out.stdout.index(" as job ")
    first = assert_smoke_result(out, tmp_path)

    # Defect: running a finished experiment again printed the old result as if it had trained.
    again = submit(*smoke_args(tmp_path, smoke_data), "--local")
    assert again.returncode == 0, again.stderr
    assert "already complete at step 40" in again.stdout and "Nothing was submitted" in again.stdout
    assert "output_dir=" in again.stdout and "train.max_steps=80" in again.stdout
    assert " as job " not in again.stdout

    # Defect: continuing it against another MLflow store died with "Run with id=... not found".
    other = tmp_path / "other.db"
    more = submit(*smoke_args(tmp_path, smoke_data), f"tracking.tracking_uri={mlflow_store(other)}",
                  "train.max_steps=42", "train.eval_every=1000", "--local")
    assert more.returncode == 0, more.stdout[-2000:] + more.stderr[-3000:]
    assert f"a new run: this run's MLflow run {first.info.run_id} is in another store" in more.stdout
    assert "Traceback" not in more.stdout + more.stderr and "finished: validation" in more.stdout
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{other}")
    (run,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert run.info.run_id != first.info.run_id and run.info.status == "FINISHED"
    assert run.data.params["model"] == "row_lstm"  # a new MLflow run gets the params, though resumed
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_bits_per_dim")] == [42]


def test_dry_run_of_smoke_builds_no_data(tmp_path):
    out = submit("--exp", "smoke", f"data.root={tmp_path / 'data'}", "--dry-run")
    assert out.returncode == 0, out.stderr
    # --dry-run builds nothing; a real submission builds the shards first (as the smoke runs above do).
    assert not (tmp_path / "data").exists()


def test_list_shows_experiments_with_descriptions():
    out = submit("--list")
    assert out.returncode == 0
    lines = {l.split()[0]: l for l in out.stdout.splitlines()}
    assert {"smoke", "imagenet64_multiscale", "cifar10_pixelcnn"} <= set(lines)
    assert "Multi-scale" in lines["imagenet64_multiscale"]


def test_dry_run_of_multiscale_on_8_nodes(tmp_path, slurm_cluster):
    """One task per GPU, and the rendezvous every task uses, exported by the script itself: the first
    node of the allocation and a port derived from the job id (the same on every node)."""
    out = submit("--exp", "imagenet64_multiscale", "--nodes", "8", "--gpus-per-node", "8", "--dry-run",
                 f"data.root={tmp_path}", f"output_dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for line in ("#SBATCH --nodes=8", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --signal=USR2@180"):
        assert line in lines, line
    rendezvous = ['export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
                  'export MASTER_PORT="$(( 20000 + SLURM_JOB_ID % 10000 ))"']
    srun = next(i for i, line in enumerate(lines) if line.startswith("srun "))
    assert lines.index(rendezvous[0]) + 1 == lines.index(rendezvous[1]) < srun  # exported before the tasks start
    assert "--gpus-per-task" not in out.stdout and "CUDA_VISIBLE_DEVICES" not in out.stdout
    assert not (tmp_path / "run").exists()  # nothing submitted, nothing written


def test_dry_run_without_the_data_warns_and_a_real_submission_refuses(tmp_path, slurm_cluster):
    """A login node may not see the data: --dry-run prints the script anyway, naming the missing path;
    submitting for real refuses it (exit 2) before anything is submitted."""
    missing = tmp_path / "not-here"
    args = ["--exp", "imagenet64_multiscale", "--nodes", "8", "--gpus-per-node", "8", f"data.root={missing}",
            f"output_dir={tmp_path / 'run'}"]
    dry = submit(*args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "#SBATCH --nodes=8" in dry.stdout
    assert f"warning: 'data.root' does not exist: {missing}" in dry.stderr
    real = submit(*args)
    assert real.returncode == 2 and f"error: 'data.root' does not exist: {missing}" in real.stderr, real.stderr
    assert "submitted" not in real.stdout and not (tmp_path / "run").exists()


def test_bad_experiment_name_is_refused(tmp_path):
    out = submit("--exp", "imagenet64_multiscal", "--dry-run")
    assert out.returncode == 2 and "did you mean 'imagenet64_multiscale'" in out.stderr

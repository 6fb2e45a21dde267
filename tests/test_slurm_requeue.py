"""Time-out, requeue and cancel of a training job on the REAL local SLURM cluster (no mocks).

Timing facts these tests rely on (measured, see slurm/launcher.py): slurmctld checks time limits every
30 s and sends `--signal=USR2@N` at the first check with less than N + 30 s left, the kill at the first
check past the limit (so a signalled job always has >= 30 s to checkpoint), and a requeued job starts
again ~16 s later. A 2-rank smoke job needs ~20 s to reach its first step on 2 busy cores.
"""
from __future__ import annotations

import pytest
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow

from helpers import REPO, metrics, mlflow_store, train_2ranks

pytestmark = pytest.mark.slow  # jobs on the real SLURM cluster

# Only the final evaluation and checkpoint: steps are then ~16/s on 2 cores, and the result depends
# on nothing but the training itself.
FAST = ["train.eval_every=100000", "checkpoint.every=100000", "train.sample_every_eval=0", "train.log_every=50"]


def _submit_cmd(tmp_path: Path, data: Path, *extra: str):
    return [sys.executable, "slurm/submit.py", "--exp", "smoke", f"output_dir={tmp_path / 'run'}",
            f"data.root={data}", "data.prepare=none", f"tracking.tracking_uri={mlflow_store(tmp_path / 'mlflow.db')}",
            *extra]


def _start(cmd, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)


def _job_id(log: Path, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = re.search(r"as job (\d+) \(SLURM", log.read_text() if log.exists() else "")
        if m:
            return m.group(1)
        time.sleep(0.2)
    raise AssertionError(f"no job id in {log}:\n{log.read_text()[-2000:]}")


def _scontrol_job(job_id: str) -> dict:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def _wait(proc: subprocess.Popen, timeout: float, log: Path) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"submit.py --follow did not end in {timeout} s:\n{log.read_text()[-3000:]}")
    return log.read_text()


def _resumed_steps(text: str):
    return [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", text)]


def _one_mlflow_run(tmp_path: Path):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]  # the requeued job continued the same run
    return runs[0]


def test_time_limit_checkpoints_requeues_and_matches_uninterrupted(tmp_path, smoke_data, slurm_cluster):
    """`--time 1`: USR2 before the limit -> every rank checkpoints -> requeue -> resume -> same result."""
    steps = 720  # ~45 s of training: more than one 1-minute run can do after its ~20 s start-up
    overrides = [f"train.max_steps={steps}", *FAST]
    log = tmp_path / "submit.log"
    t0 = time.time()
    proc = _start(_submit_cmd(tmp_path, smoke_data, *overrides, "--time", "1", "slurm.signal_delay_s=2",
                              "slurm.max_num_timeout=3", "--follow"), log)
    job_id = _job_id(log)
    # Once requeued, give the job room to finish in its next run: otherwise each further 1-minute run
    # (signalled again after ~30 s) adds a minute to this test without testing anything new.
    requeued = threading.Event()

    def extend_after_first_requeue():
        while proc.poll() is None:
            if int(_scontrol_job(job_id).get("Restarts", "0")) >= 1:
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=10"], check=True)
                requeued.set()
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=extend_after_first_requeue, daemon=True)
    watcher.start()
    # The uninterrupted reference (same experiment, same seed, 2 ranks under torchrun) meanwhile.
    ref_dir = tmp_path / "ref"
    ref = train_2ranks(ref_dir, smoke_data, overrides, timeout=400)
    assert ref.returncode == 0, ref.stdout[-3000:]
    reference = json.loads((ref_dir / "final_metrics.json").read_text())["val_bits_per_dim"]

    out = _wait(proc, 400, log)
    elapsed = time.time() - t0
    assert proc.returncode == 0, out[-4000:]
    assert requeued.is_set(), f"job {job_id} finished without being requeued:\n{out[-3000:]}"
    assert "received signal 12" in out and "Requeued job" in out, out[-3000:]
    resumed = _resumed_steps(out)
    assert resumed and 0 < resumed[0] < steps, resumed
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert final["steps"] == steps
    assert final["val_bits_per_dim"] == reference  # bit for bit: the interruption changed nothing
    assert [m["step"] for m in metrics(tmp_path / "run")] == list(range(1, steps + 1))
    run = _one_mlflow_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["val_bits_per_dim"] == reference
    print(f"time-out test: resumed at steps {resumed}, {elapsed:.0f} s in all")


def test_scontrol_requeue_resumes_from_latest_checkpoint(tmp_path, smoke_data, slurm_cluster):
    """`scontrol requeue` (SIGTERM, then SIGKILL after KillWait): the next run resumes, not restarts."""
    steps = 150
    log = tmp_path / "submit.log"
    proc = _start(_submit_cmd(tmp_path, smoke_data, f"train.max_steps={steps}", *FAST, "checkpoint.every=50",
                              "--time", "10", "--follow"), log)
    job_id = _job_id(log)
    deadline = time.time() + 180
    while len(metrics(tmp_path / "run")) < 60:  # past the periodic checkpoint at step 50
        assert time.time() < deadline and proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    t_requeue = time.time()
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    out = _wait(proc, 300, log)
    assert proc.returncode == 0, out[-4000:]
    resumed = _resumed_steps(out)
    # SLURM sends SIGTERM to every process of the step, DataLoader workers included, and torch's
    # workers die of it: the SIGTERM checkpoint rarely gets written, the periodic one (step 50) is used.
    assert resumed and resumed[0] >= 50, out[-3000:]
    assert [m["step"] for m in metrics(tmp_path / "run")] == list(range(1, steps + 1))
    assert _one_mlflow_run(tmp_path).info.status == "FINISHED"
    print(f"scontrol requeue: resumed at step {resumed[0]}; job ended {time.time() - t_requeue:.0f} s later")


def test_cancelled_job_is_reported_as_cancelled(tmp_path, smoke_data, slurm_cluster):
    log = tmp_path / "submit.log"
    proc = _start(_submit_cmd(tmp_path, smoke_data, "train.max_steps=100000", "--time", "10", "--follow"), log)
    job_id = _job_id(log)
    deadline = time.time() + 60
    while "RUNNING" not in _scontrol_job(job_id).get("JobState", ""):
        assert time.time() < deadline, f"job {job_id} never ran"
        time.sleep(0.2)
    t0 = time.time()
    subprocess.run(["scancel", job_id], check=True)
    out = _wait(proc, 30, log)
    took = time.time() - t0
    assert proc.returncode == 1, out[-3000:]
    assert f"job {job_id} was CANCELLED" in out, out[-3000:]
    assert took < 15, f"cancel noticed after {took:.1f} s"
    print(f"scancel -> submit.py exited {took:.1f} s later")


def test_time_out_requeue_limit_is_reported(tmp_path, smoke_data, slurm_cluster):
    """`slurm.max_num_timeout=0`: the first time-out checkpoints but is not requeued; said clearly."""
    log = tmp_path / "submit.log"
    proc = _start(_submit_cmd(tmp_path, smoke_data, "train.max_steps=100000", *FAST, "--time", "1",
                              "slurm.signal_delay_s=2", "slurm.max_num_timeout=0", "--follow"), log)
    out = _wait(proc, 200, log)
    assert proc.returncode == 1, out[-3000:]
    assert "NOT REQUEUED" in out and "time-out requeue limit" in out, out[-3000:]
    assert "TIMEOUT" in out
    assert (tmp_path / "run" / "checkpoints" / "latest").exists()  # a resubmission continues from it

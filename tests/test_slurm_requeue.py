"""Requeue, cancel and the time-out requeue limit of a training job on the REAL local SLURM cluster (no mocks).
The time-out requeue itself (USR2 -> checkpoint -> requeue -> resume, bit-exact) runs on two nodes:
tests/test_multinode.py::test_four_ranks_on_two_nodes_time_out_requeue_matches_uninterrupted.

Timing facts these tests rely on (measured, see slurm/launcher.py): slurmctld checks time limits every
30 s and sends `--signal=USR2@N` at the first check with less than N + 30 s left, the kill at the first
check past the limit (so a signalled job always has >= 30 s to checkpoint), and a requeued job starts
again ~16 s later. A 2-rank smoke job needs ~20 s to reach its first step on 2 busy cores.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from helpers import FAST, job_id, metrics, one_mlflow_run, resumed_steps, scontrol_job, start, submit_cmd, wait

pytestmark = pytest.mark.slow  # jobs on the real SLURM cluster


def _submit_cmd(tmp_path: Path, data: Path, *extra: str):
    return submit_cmd(tmp_path / "run", data, tmp_path / "mlflow.db", *extra)


def test_scontrol_requeue_resumes_from_latest_checkpoint(tmp_path, smoke_data, slurm_cluster):
    """`scontrol requeue` (SIGTERM, then SIGKILL after KillWait): the next run resumes, not restarts."""
    steps = 150
    log = tmp_path / "submit.log"
    proc = start(_submit_cmd(tmp_path, smoke_data, f"train.max_steps={steps}", *FAST, "checkpoint.every=50",
                             "--time", "10", "--follow"), log)
    job = job_id(log)
    deadline = time.time() + 180
    while len(metrics(tmp_path / "run")) < 60:  # past the periodic checkpoint at step 50
        assert time.time() < deadline and proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    t_requeue = time.time()
    subprocess.run(["scontrol", "requeue", job], check=True)
    out = wait(proc, 300, log)
    assert proc.returncode == 0, out[-4000:]
    resumed = resumed_steps(out)
    # SLURM sends SIGTERM to every process of the step, DataLoader workers included, and torch's
    # workers die of it: the SIGTERM checkpoint rarely gets written, the periodic one (step 50) is used.
    assert resumed and resumed[0] >= 50, out[-3000:]
    assert [m["step"] for m in metrics(tmp_path / "run")] == list(range(1, steps + 1))
    assert one_mlflow_run(tmp_path / "mlflow.db").info.status == "FINISHED"
    print(f"scontrol requeue: resumed at step {resumed[0]}; job ended {time.time() - t_requeue:.0f} s later")


def test_cancelled_job_is_reported_as_cancelled(tmp_path, smoke_data, slurm_cluster):
    log = tmp_path / "submit.log"
    proc = start(_submit_cmd(tmp_path, smoke_data, "train.max_steps=100000", "--time", "10", "--follow"), log)
    job = job_id(log)
    deadline = time.time() + 60
    while "RUNNING" not in scontrol_job(job).get("JobState", ""):
        assert time.time() < deadline, f"job {job} never ran"
        time.sleep(0.2)
    t0 = time.time()
    subprocess.run(["scancel", job], check=True)
    out = wait(proc, 30, log)
    took = time.time() - t0
    assert proc.returncode == 1, out[-3000:]
    assert f"job {job} was CANCELLED" in out, out[-3000:]
    assert took < 15, f"cancel noticed after {took:.1f} s"
    print(f"scancel -> submit.py exited {took:.1f} s later")


def test_time_out_requeue_limit_is_reported(tmp_path, smoke_data, slurm_cluster):
    """`slurm.max_num_timeout=0`: the first time-out checkpoints but is not requeued; said clearly."""
    log = tmp_path / "submit.log"
    proc = start(_submit_cmd(tmp_path, smoke_data, "train.max_steps=100000", *FAST, "--time", "1",
                             "slurm.signal_delay_s=2", "slurm.max_num_timeout=0", "--follow"), log)
    out = wait(proc, 200, log)
    assert proc.returncode == 1, out[-3000:]
    assert "NOT REQUEUED" in out and "time-out requeue limit" in out, out[-3000:]
    assert "TIMEOUT" in out
    assert (tmp_path / "run" / "checkpoints" / "latest").exists()  # a resubmission continues from it

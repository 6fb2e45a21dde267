"""Helpers for tests that submit training jobs to the REAL local SLURM cluster through `slurm/submit.py`:
start a submission, find its job id, ask SLURM about the job and its processes, read the run's results."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import mlflow

from .launch import REPO, mlflow_store

# Only the final evaluation and checkpoint: steps are then ~16/s on 2 cores (2 ranks), and the result
# depends on nothing but the training itself.
FAST = ["train.eval_every=100000", "checkpoint.every=100000", "train.sample_every_eval=0", "train.log_every=50"]


def submit_cmd(run: Path, data: Path, db: Path, *extra: str) -> List[str]:
    """`python slurm/submit.py --exp smoke` into run folder `run`, MLflow store `db`."""
    return [sys.executable, "slurm/submit.py", "--exp", "smoke", f"output_dir={run}", f"data.root={data}",
            "data.prepare=none", f"tracking.tracking_uri={mlflow_store(db)}", *extra]


def start(cmd: List[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)


def job_id(log: Path, timeout: float = 60, pattern: str = r"as job (\d+) \(SLURM") -> str:
    """The id `submit.py` printed ("submitted smoke as job 42 (SLURM, ..."; a sweep's: "as job array 42")."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = re.search(pattern, log.read_text() if log.exists() else "")
        if m:
            return m.group(1)
        time.sleep(0.2)
    raise AssertionError(f"no job id in {log}:\n{log.read_text()[-2000:]}")


def wait(proc: subprocess.Popen, timeout: float, log: Path) -> str:
    """Wait for `submit.py --follow` to end; its whole output."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"submit.py --follow did not end in {timeout} s:\n{log.read_text()[-3000:]}")
    return log.read_text()


def scontrol_job(job: str) -> Dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def sacct_job(job: str) -> Dict[str, str]:
    """sacct's record of the job's allocation: JobID, State, NNodes, NodeList (e.g. 'node[1-2]')."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,NNodes,NodeList", "-j", job],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()
    assert out, f"sacct knows no job {job}"
    return dict(zip(("JobID", "State", "NNodes", "NodeList"), out[-1].split("|")))


def hostnames(nodelist: str) -> List[str]:
    """'node[1-2]' -> ['node1', 'node2'] (SLURM's own expansion)."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()


def task_pids(job: str, node: str) -> List[int]:
    """Every process of job `job`'s tasks on `node` (the ranks and their loader workers), found by the
    SLURM variables in their environment; slurmstepd, srun and the batch shell are left out."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            env = dict(kv.split("=", 1) for kv in open(f"/proc/{entry.name}/environ", "rb").read().decode(
                errors="replace").split("\0") if "=" in kv)
            comm = open(f"/proc/{entry.name}/comm").read().strip()
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == job and env.get("SLURMD_NODENAME") == node and \
                env.get("SLURM_STEP_ID", "batch") not in ("batch", "extern") and comm not in ("slurmstepd", "srun"):
            pids.append(int(entry.name))
    return pids


def resumed_steps(text: str) -> List[int]:
    return [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", text)]


def one_mlflow_run(db: Path):
    """The only run of experiment 'smoke' in store `db` (a requeued or resubmitted job continues it)."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def wait_until_idle(timeout: float = 90) -> List[str]:
    """Wait until no node of the cluster runs anything (jobs of earlier tests may still be ending), so that
    where the scheduler places the next jobs does not depend on what ran before. Returns the node names."""
    deadline = time.time() + timeout
    while True:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True).stdout
        states = dict(line.split() for line in out.splitlines() if line.strip())
        if states and all(state == "idle" for state in states.values()):
            return sorted(states)
        assert time.time() < deadline, f"the cluster's nodes did not become idle in {timeout} s: {states}"
        time.sleep(0.5)

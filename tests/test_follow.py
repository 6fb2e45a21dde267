"""Following a SLURM job without accounting (slurm/job_state.py), against the REAL local cluster.

The cluster keeps accounting on (submitit needs it); a client whose slurm.conf says
`AccountingStorageType=accounting_storage/none` gets sacct's real "Slurm accounting storage is disabled"
while scontrol still reaches the same controller: exactly what a user on a cluster without accounting
sees, without reconfiguring the cluster.
"""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import REPO

from slurm.job_state import StateTracker, parse_sacct, parse_scontrol

FOLLOW = """
import sys, time
import submitit
from slurm import jobs
ex = submitit.AutoExecutor(folder=sys.argv[1], cluster="slurm")
ex.update_parameters(nodes=1, tasks_per_node=1, cpus_per_task=1, timeout_min=5, slurm_signal_delay_s=30)
job = ex.submit(time.sleep, 2)
print("JOB", job.job_id, flush=True)
jobs.follow([job], [job.paths.stdout, job.paths.stderr], poll_s=0.5)
out = jobs.outcome(job)
print("OUTCOME", out.kind, out.state, flush=True)
"""


def _conf_without_accounting(tmp_path: Path) -> Path:
    text = Path("/etc/slurm/slurm.conf").read_text()
    conf = tmp_path / "slurm.conf"
    conf.write_text(re.sub(r"(?m)^AccountingStorageType=.*$", "AccountingStorageType=accounting_storage/none", text))
    return conf


def test_follow_without_accounting_falls_back_to_scontrol(tmp_path, slurm_cluster):
    env = dict(os.environ, SLURM_CONF=str(_conf_without_accounting(tmp_path)))
    sacct = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", "1"], env=env, capture_output=True,
                           text=True)
    assert sacct.returncode != 0 and "accounting storage is disabled" in sacct.stderr  # SLURM's own words
    assert parse_sacct(sacct.returncode, sacct.stdout, sacct.stderr) is None

    out = subprocess.run([sys.executable, "-c", FOLLOW, str(tmp_path / "jobs")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    job = re.search(r"^JOB (\d+)$", out.stdout, re.M).group(1)
    said = out.stdout.count("sacct cannot answer (Slurm accounting storage is disabled): this cluster keeps "
                            "no accounting; following the job through `scontrol show job` instead")
    assert said == 1, out.stdout  # said once, not at every poll
    assert f"[submit] job {job}: RUNNING" in out.stdout and f"[submit] job {job}: COMPLETED" in out.stdout
    assert out.stdout.rstrip().endswith("OUTCOME completed COMPLETED"), out.stdout[-2000:]


def test_a_job_that_left_the_queue_ends_the_follow_with_its_last_known_state(slurm_cluster):
    """A job id SLURM does not know (real sacct and scontrol answers): seen before -> it left the queue;
    never seen -> say it cannot be followed and how to watch it, instead of polling forever."""
    said = io.StringIO()
    tracker = StateTracker(out=said)
    tracker.last["987654321"] = "RUNNING"
    assert tracker.ended("987654321")
    assert tracker.state("987654321") == "RUNNING"
    assert ("job 987654321 is no longer known to SLURM (it left the queue); its last known state: RUNNING"
            in said.getvalue())
    never = StateTracker(unseen_grace_s=0, out=said)
    assert never.ended("987654322")
    assert ("cannot follow job 987654322: neither sacct nor scontrol knows it; watch it with "
            "`squeue -j 987654322` or `sacct -j 987654322`") in said.getvalue()


def test_state_parsing():
    assert parse_sacct(0, "RUNNING\n", "") == "RUNNING"
    assert parse_sacct(0, "REQUEUED\nRUNNING\n", "") == "RUNNING"
    assert parse_sacct(0, "", "") == ""  # not recorded yet
    assert parse_scontrol(0, "JobId=7 JobName=smoke JobState=COMPLETING Reason=None") == "COMPLETING"
    assert parse_scontrol(1, "") == ""

"""A SLURM job's state, on clusters with accounting and without.

sacct first (what submitit polls; it knows a job long after it ended). Where sacct cannot answer --
accounting is off ("Slurm accounting storage is disabled"), or slurmdbd is down -- or does not know the
job yet (sacct lags a submission by a moment), `scontrol show job`, which knows pending and running jobs
and keeps ended ones for the cluster's MinJobAge (300 s by default). What happens when neither knows the
job is said, once, never polled for silently:
  * a job that was seen before and is now unknown to both left the queue: it ended, in its last known state;
  * a job never seen at all for `unseen_grace_s` cannot be followed: say how to watch it by hand.
Commands are argument lists (no shell); job ids are SLURM's own.
"""
from __future__ import annotations

import subprocess
import sys
import time
from typing import Dict, List, Optional, Set

ACCOUNTING_DISABLED = "accounting storage is disabled"

# States of a job that may still produce a result (as submitit's InfoWatcher.is_done has them).
UNFINISHED = {"READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "PREEMPTED",
              "CONFIGURING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


def _run(cmd: List[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return subprocess.CompletedProcess(cmd, 127, "", str(e))


def parse_sacct(returncode: int, stdout: str, stderr: str) -> Optional[str]:
    """The state in `sacct -X -n -P -o State -j ID` output ('' while the job is not recorded yet), or
    None when sacct cannot answer at all (accounting disabled, slurmdbd unreachable)."""
    if returncode != 0:
        return None
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    return lines[-1] if lines else ""  # a requeued job has one line per run: the last is the current one


def parse_scontrol(returncode: int, stdout: str) -> str:
    """JobState from `scontrol -o show job ID` ('' for a job SLURM no longer knows: "Invalid job id")."""
    if returncode != 0:
        return ""
    for field in stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return ""


def head(state: str) -> str:
    """'CANCELLED by 0' -> 'CANCELLED'."""
    return (state.split() or ["UNKNOWN"])[0].upper()


class StateTracker:
    """The state of the jobs one `submit.py` follows, remembering the last state seen of each."""

    def __init__(self, unseen_grace_s: float = 60.0, out=None):
        self.last: Dict[str, str] = {}
        self.first_asked: Dict[str, float] = {}
        self.unseen_grace_s = unseen_grace_s
        self.out = out
        self._said: Set[str] = set()

    def say_once(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            print(f"[submit] {text}", file=self.out or sys.stdout, flush=True)

    def query(self, job_id: str) -> str:
        """The state now from sacct, else scontrol; '' when neither knows the job."""
        res = _run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id])
        state = parse_sacct(res.returncode, res.stdout, res.stderr)
        if state is None:
            why = (res.stderr.strip().splitlines() or ["no output"])[-1]
            hint = ("this cluster keeps no accounting" if ACCOUNTING_DISABLED in res.stderr.lower()
                    else "sacct fails")
            self.say_once("sacct", f"sacct cannot answer ({why}): {hint}; following the job through "
                                   f"`scontrol show job` instead (SLURM forgets an ended job after its MinJobAge)")
        if not state:
            res = _run(["scontrol", "-o", "show", "job", job_id])
            state = parse_scontrol(res.returncode, res.stdout)
        return state

    def _poll(self, job_id: str) -> str:
        """`query`, remembering when the job was first asked about and the last state it had."""
        self.first_asked.setdefault(job_id, time.time())
        state = self.query(job_id)
        if state:
            self.last[job_id] = state
        return state

    def state(self, job_id: str) -> str:
        """The state now, else the last one seen, else UNKNOWN."""
        return self._poll(job_id) or self.last.get(job_id, "UNKNOWN")

    def ended(self, job_id: str) -> bool:
        """The job is over: its state says so, or it left the queue, or it cannot be followed at all."""
        state = self._poll(job_id)
        if state:
            return head(state) not in UNFINISHED
        if job_id in self.last:
            self.say_once(f"gone {job_id}", f"job {job_id} is no longer known to SLURM (it left the queue); "
                                            f"its last known state: {self.last[job_id]}")
            return True
        if time.time() - self.first_asked[job_id] > self.unseen_grace_s:
            self.say_once(f"unseen {job_id}", f"cannot follow job {job_id}: neither sacct nor scontrol knows it; "
                                              f"watch it with `squeue -j {job_id}` or `sacct -j {job_id}`")
            return True
        return False

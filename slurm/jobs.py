"""Watching submitted jobs: stream the rank-0 log, notice the end at once, say how it ended.

Why not `job.result()`: submitit polls sacct at 0, 2, 4, 8 ... s after the last submission (up to
every 10 min), a job that ended without a result file (cancelled, killed at its time limit) makes
`result()` wait another 15 s for the file, and without accounting (sacct: "accounting storage is
disabled") submitit sees every job as UNKNOWN forever. Here the state is asked on every poll, from sacct
or, where it cannot answer, from scontrol (slurm/job_state.py), and the result files are read only when
they exist.
"""
from __future__ import annotations

import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from slurm.job_state import StateTracker, head

# One per process: submit.py follows the jobs it submitted.
TRACKER = StateTracker()


@dataclass
class Outcome:
    """How a job ended: `kind` is completed | failed | cancelled | timeout."""
    kind: str   # completed | failed | cancelled | timeout | unknown (could not be followed)
    state: str
    results: List[Any] = field(default_factory=list)   # per task, when every task returned
    error: str = ""                                      # rank 0's traceback or SLURM's reason

    @property
    def ok(self) -> bool:
        return self.kind == "completed"


def is_slurm(job) -> bool:
    return type(job).__name__ == "SlurmJob"


def fresh_state(job) -> str:
    """SLURM: sacct (or scontrol) now, e.g. 'RUNNING', 'CANCELLED by 0', else the last state seen;
    local executor: the process' state."""
    if is_slurm(job):
        return TRACKER.state(job.job_id)
    return job.state


def _task_jobs(job) -> Sequence[Any]:
    return list(job._sub_jobs) or [job]


def _read_result(path: Path):
    """(outcome, value) from a task's result pickle, or None while it does not exist."""
    if not path.exists():
        return None
    with open(path, "rb") as f:
        return pickle.load(f)


def ended(job) -> bool:
    """SLURM: sacct (or scontrol) says the job is over, or it left the queue. Result files are no proof
    there: a run that failed before a requeue (e.g. `scontrol requeue` killing DataLoader workers) leaves
    its error pickles behind while the next run goes on. Local executor: the processes have exited."""
    if not is_slurm(job):
        return job.done(force_check=True)
    return TRACKER.ended(job.job_id)


def outcome(job) -> Outcome:
    """Classify an ended job without waiting for result files that will never come."""
    state = fresh_state(job)
    kind = head(state)
    results = [_read_result(t.paths.result_pickle) for t in _task_jobs(job)]
    errors = [r[1] for r in results if r is not None and r[0] == "error"]
    if kind == "CANCELLED":
        return Outcome("cancelled", state, error=errors[0] if errors else "")
    if errors:
        return Outcome("timeout" if kind == "TIMEOUT" else "failed", state, error=errors[0])
    if results and all(r is not None for r in results):
        return Outcome("completed", state, results=[r[1] for r in results])
    if kind == "TIMEOUT":
        return Outcome("timeout", state, error="killed at its time limit")
    if kind == "UNKNOWN":
        return Outcome("unknown", state, error="neither sacct nor scontrol knows how the job ended")
    return Outcome("failed", state, error=f"no result from {sum(r is None for r in results)} task(s)")


class LogStreamer:
    """Prints what was appended to some files since the last call (submitit appends across requeues)."""

    def __init__(self, paths: Sequence[Path], out=sys.stdout):
        self.offsets: Dict[Path, int] = {Path(p): 0 for p in paths}
        self.out = out

    def pump(self) -> None:
        for path, offset in self.offsets.items():
            if path.exists() and path.stat().st_size > offset:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
                self.offsets[path] = offset + len(data)
                self.out.write(data.decode(errors="replace"))
        self.out.flush()


def follow(jobs: Sequence[Any], logs: Sequence[Path], poll_s: float = 2.0,
           on_poll: Optional[Callable[[], None]] = None) -> None:
    """Stream `logs` and report state changes until every job in `jobs` has ended."""
    streamer = LogStreamer(logs)
    last: Dict[str, str] = {}
    while True:
        done = all([ended(j) for j in jobs])  # a list: every job is asked on every poll
        for j in jobs:
            state = TRACKER.last.get(j.job_id, "UNKNOWN") if is_slurm(j) else j.state
            if state != "UNKNOWN" and last.get(j.job_id) != state:  # UNKNOWN: not in sacct yet
                print(f"[submit] job {j.job_id}: {state}", flush=True)
                last[j.job_id] = state
        streamer.pump()
        if on_poll is not None:
            on_poll()
        if done:
            return
        time.sleep(poll_s)


def wait(jobs: Sequence[Any], poll_s: float = 1.0) -> None:
    """Wait, without streaming, until every job has ended."""
    while not all(ended(j) for j in jobs):
        time.sleep(poll_s)


def describe_failure(job, out: Outcome) -> str:
    """One clear message for a job that did not complete."""
    if out.kind == "cancelled":
        return f"job {job.job_id} was CANCELLED ({out.state}); see {job.paths.stderr}"
    if out.kind == "unknown":
        return (f"job {job.job_id}: cannot tell how it ended ({out.error}); see {job.paths.stderr} and "
                f"`sacct -j {job.job_id}`")
    tail = out.error.strip().splitlines()[-1] if out.error.strip() else ""
    if "timed-out too many times" in out.error:
        return (f"job {job.job_id} stopped: the time-out requeue limit (slurm.max_num_timeout) is reached "
                f"({out.state}); its checkpoint is kept: submit the same command again to continue")
    if out.kind == "timeout":
        return f"job {job.job_id} hit its time limit ({out.state}): {tail}; see {job.paths.stderr}"
    return f"job {job.job_id} failed ({out.state}): {tail}\n  see {job.paths.stderr}"

"""Watching submitted jobs: stream the rank-0 log, notice the end at once, say how it ended.

Why not `job.result()`: submitit polls sacct at 0, 2, 4, 8 ... s after the last submission (up to
every 10 min), and a job that ended without a result file (cancelled, killed at its time limit) makes
`result()` wait another 15 s for the file. Here the state is asked with `force` on every poll, and the
result files are read only when they exist.
"""
from __future__ import annotations

import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

# sacct states of a job that may still produce a result (as submitit's InfoWatcher.is_done has them).
UNFINISHED = {"READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "PREEMPTED",
              "CONFIGURING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


@dataclass
class Outcome:
    """How a job ended: `kind` is completed | failed | cancelled | timeout."""
    kind: str
    state: str
    results: List[Any] = field(default_factory=list)   # per task, when every task returned
    error: str = ""                                      # rank 0's traceback or SLURM's reason

    @property
    def ok(self) -> bool:
        return self.kind == "completed"


def is_slurm(job) -> bool:
    return type(job).__name__ == "SlurmJob"


def fresh_state(job) -> str:
    """SLURM: sacct now (e.g. 'RUNNING', 'CANCELLED by 0'); local executor: the process' state."""
    if is_slurm(job):
        return job.watcher.get_state(job.job_id, mode="force")
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
    """SLURM: sacct (forced) says the job is over. Result files are no proof there: a run that failed
    before a requeue (e.g. `scontrol requeue` killing DataLoader workers) leaves its error pickles behind
    while the next run goes on. Local executor: the processes have exited."""
    if not is_slurm(job):
        return job.done(force_check=True)
    return (fresh_state(job).split() or ["UNKNOWN"])[0].upper() not in UNFINISHED


def outcome(job) -> Outcome:
    """Classify an ended job without waiting for result files that will never come."""
    state = fresh_state(job)
    head = state.split()[0].upper() if state else "UNKNOWN"
    results = [_read_result(t.paths.result_pickle) for t in _task_jobs(job)]
    errors = [r[1] for r in results if r is not None and r[0] == "error"]
    if head == "CANCELLED":
        return Outcome("cancelled", state, error=errors[0] if errors else "")
    if errors:
        return Outcome("timeout" if head == "TIMEOUT" else "failed", state, error=errors[0])
    if results and all(r is not None for r in results):
        return Outcome("completed", state, results=[r[1] for r in results])
    if head == "TIMEOUT":
        return Outcome("timeout", state, error="killed at its time limit")
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
        done = all(ended(j) for j in jobs)
        for j in jobs:
            state = fresh_state(j)
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
    tail = out.error.strip().splitlines()[-1] if out.error.strip() else ""
    if "timed-out too many times" in out.error:
        return (f"job {job.job_id} stopped: the time-out requeue limit (slurm.max_num_timeout) is reached "
                f"({out.state}); its checkpoint is kept: submit the same command again to continue")
    if out.kind == "timeout":
        return f"job {job.job_id} hit its time limit ({out.state}): {tail}; see {job.paths.stderr}"
    return f"job {job.job_id} failed ({out.state}): {tail}\n  see {job.paths.stderr}"

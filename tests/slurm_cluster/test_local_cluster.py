"""End-to-end checks of the local SLURM cluster started by ``slurm/local-cluster.sh start``.

These tests talk to the real cluster (slurmctld + slurmd + slurmdbd on 127.0.0.1) through submitit.
They FAIL (not skip) when the controller does not answer: start it with

    sudo slurm/local-cluster.sh start
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import typing as tp
from pathlib import Path

import cloudpickle
import pytest
import submitit

pytestmark = pytest.mark.slow  # jobs on the real SLURM cluster

# The job processes cannot import this test module (it is not on their sys.path):
# pickle the functions/classes defined here by value instead of by reference.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

REPO = Path(__file__).resolve().parents[2]
START_HINT = f"start it with: sudo {REPO / 'slurm' / 'local-cluster.sh'} start"


def _run(*cmd: str, timeout: float = 15) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _call_with_timeout(fn: tp.Callable[[], tp.Any], timeout: float) -> tp.Any:
    """Runs fn in a daemon thread so that a hang fails the test instead of blocking the suite."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"{fn} did not return within {timeout}s (hangs)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _wait_for(predicate: tp.Callable[[], bool], timeout: float, what: str, poll: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def _slurm_state(job: submitit.Job) -> str:
    """Fresh state from sacct (what submitit itself uses), e.g. 'RUNNING', 'CANCELLED by 0'."""
    return job.watcher.get_state(job.job_id, mode="force")


@pytest.fixture(scope="module", autouse=True)
def cluster_is_up() -> None:
    try:
        ping = _run("scontrol", "ping")
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        error = repr(e)
    else:
        error = ""
    if error:
        pytest.fail(f"local SLURM cluster not reachable ({error}); {START_HINT}", pytrace=False)
    if "is UP" not in ping.stdout:
        pytest.fail(
            f"`scontrol ping` does not answer UP (rc={ping.returncode}):\n{ping.stdout}{ping.stderr}\n{START_HINT}",
            pytrace=False,
        )
    # sacct is what submitit polls; without slurmdbd it errors and submitit never sees jobs end.
    sacct = _run("sacct", "-n", "-X", "-S", "now-1minutes")
    if sacct.returncode != 0:
        pytest.fail(f"`sacct` fails (is slurmdbd running?): {sacct.stderr}\n{START_HINT}", pytrace=False)


def _executor(folder: Path, **params: tp.Any) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    defaults = dict(nodes=1, tasks_per_node=1, cpus_per_task=1, timeout_min=5, slurm_signal_delay_s=30)
    defaults.update(params)
    executor.update_parameters(**defaults)
    assert executor.cluster == "slurm"
    return executor


# ------------------------------------------------------------------------------------------------ jobs
def rank_and_world() -> tuple[int, int, str]:
    env = submitit.JobEnvironment()
    return env.global_rank, env.num_tasks, os.environ.get("SLURM_JOB_PARTITION", "")


def sleep_for(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


class AppendAndHold(submitit.helpers.Checkpointable):
    """Appends one line per run to `path`; the first run then blocks, later runs return."""

    def __call__(self, path: str, hold_s: float) -> list[str]:
        with open(path, "a", encoding="utf8") as f:
            f.write(f"run restart_count={os.environ.get('SLURM_RESTART_COUNT', '0')}\n")
        lines = Path(path).read_text(encoding="utf8").splitlines()
        if len(lines) == 1:
            time.sleep(hold_s)
        return lines


# ------------------------------------------------------------------------------------------------ tests
def test_scontrol_ping_answers() -> None:
    ping = _run("scontrol", "ping")
    assert "is UP" in ping.stdout, ping.stdout + ping.stderr
    node = _run("sinfo", "-h", "-N", "-o", "%T")
    assert node.stdout.split(), f"no node in sinfo: {node.stdout}{node.stderr}"
    assert node.stdout.split()[0] in {"idle", "mixed", "allocated", "completing"}, node.stdout


def test_script_status_and_idempotent_start() -> None:
    script = str(REPO / "slurm" / "local-cluster.sh")
    status = _run(script, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    if os.geteuid() != 0:
        pytest.skip("`local-cluster.sh start` needs root")
    t0 = time.monotonic()
    start = _run(script, "start", timeout=60)
    elapsed = time.monotonic() - t0
    assert start.returncode == 0, start.stdout + start.stderr
    assert "already running" in start.stderr, start.stderr
    assert elapsed < 5, f"idempotent start took {elapsed:.1f}s"


def test_two_tasks_report_rank_and_world_size(tmp_path: Path) -> None:
    executor = _executor(tmp_path, tasks_per_node=2)
    job = executor.submit(rank_and_world)
    assert isinstance(job, submitit.SlurmJob)
    results = _call_with_timeout(job.results, timeout=60)
    assert len(results) == 2, results
    assert sorted(r[0] for r in results) == [0, 1]
    assert {r[1] for r in results} == {2}
    assert {r[2] for r in results} == {"debug"}


def test_cancelled_job_ends_instead_of_hanging(tmp_path: Path) -> None:
    executor = _executor(tmp_path)
    job = executor.submit(sleep_for, 600)
    _wait_for(lambda: _slurm_state(job) == "RUNNING", timeout=30, what=f"job {job.job_id} RUNNING")
    t0 = time.monotonic()
    job.cancel(check=True)
    _wait_for(
        lambda: _slurm_state(job).startswith("CANCELLED"),
        timeout=30,
        what=f"job {job.job_id} CANCELLED in sacct (state {job.state})",
    )
    assert job.state.startswith("CANCELLED"), job.state  # e.g. "CANCELLED by 0"
    t_cancelled = time.monotonic() - t0
    _call_with_timeout(job.wait, timeout=30)
    # result() of a job without result pickle first waits Job._results_timeout_s (15 s, for slow
    # network filesystems) before raising UncompletedJobError.
    with pytest.raises(submitit.core.utils.UncompletedJobError, match="CANCELLED"):
        _call_with_timeout(job.result, timeout=30)
    elapsed = time.monotonic() - t0
    print(f"cancel -> CANCELLED in sacct after {t_cancelled:.1f}s, result() raised after {elapsed:.1f}s")
    assert elapsed < 30


def test_scontrol_requeue_reruns_checkpointable_job(tmp_path: Path) -> None:
    marker = tmp_path / "runs.txt"
    executor = _executor(tmp_path)
    job = executor.submit(AppendAndHold(), str(marker), 600)
    _wait_for(lambda: marker.exists() and marker.read_text().count("\n") >= 1, 30, "first run to start")
    requeue = _run("scontrol", "requeue", job.job_id)
    assert requeue.returncode == 0, requeue.stderr
    t0 = time.monotonic()
    # KillWait (5 s, submitit bypasses SIGTERM) + BeginTime = now + cred_expire(10) + 1 s + scheduling
    lines = _call_with_timeout(job.result, timeout=60)
    elapsed = time.monotonic() - t0
    assert lines == ["run restart_count=0", "run restart_count=1"], lines
    assert marker.read_text().splitlines() == lines
    print(f"requeue -> result in {elapsed:.1f}s")

"""End-to-end checks of the local SLURM cluster started by ``dev/local-cluster.sh start --nodes 2``.

These tests talk to the real cluster (slurmctld + one slurmd per node + slurmdbd on 127.0.0.1) through
submitit and SLURM's own commands. They FAIL (not skip) when the controller does not answer: start it with

    sudo dev/local-cluster.sh start --nodes 2
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
SCRIPT = str(REPO / "dev" / "local-cluster.sh")
START_HINT = f"start it with: sudo {SCRIPT} start --nodes 2"
HOSTS_BEGIN = "# BEGIN pixelrnn slurm/local-cluster.sh"  # the mark the script writes (its former path, kept)


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
    """A bare `start` verifies a running cluster, keeping its node count."""
    script = SCRIPT
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


# ------------------------------------------------------------------------------------------------ nodes
def _usable_nodes() -> list[str]:
    out = _run("sinfo", "-h", "-N", "-o", "%N %T").stdout.split("\n")
    return sorted(n for n, state in (l.split() for l in out if l.strip())
                  if state in ("idle", "mixed", "allocated", "completing"))


def _hosts_outside_block() -> list[str]:
    lines, inside = [], False
    for line in Path("/etc/hosts").read_text().splitlines():
        if line.startswith(HOSTS_BEGIN):
            inside = True
        elif inside and line.startswith("# END pixelrnn"):
            inside = False
        elif not inside:
            lines.append(line)
    return lines


def _resolve(name: str) -> str:
    out = _run("getent", "ahostsv4", name).stdout.split()
    return out[0] if out else ""


def _srun_nodes(n: int) -> dict[str, str]:
    """SLURM_NODEID -> SLURMD_NODENAME of one task on each of n nodes."""
    out = _run("srun", f"-N{n}", "--ntasks-per-node=1", "printenv", "SLURM_NODEID", "SLURMD_NODENAME", timeout=60)
    assert out.returncode == 0, out.stderr
    values = out.stdout.split()
    return dict(sorted(zip(values[0::2], values[1::2])))


def test_two_nodes_each_run_a_task_and_their_names_resolve(two_nodes) -> None:
    assert two_nodes[:2] == ["node1", "node2"]
    assert _srun_nodes(2) == {"0": "node1", "1": "node2"}
    hosts = Path("/etc/hosts").read_text().splitlines()
    assert sum(line.startswith(HOSTS_BEGIN) for line in hosts) == 1
    assert all(_resolve(n) == "127.0.0.1" for n in two_nodes)
    assert _resolve(os.uname().nodename), "the machine's own hostname must still resolve"


def _slurmd_nodes() -> set[str]:
    """The nodes the running slurmd daemons serve (`slurmd -N NAME`; their short-lived helpers have no -N)."""
    lines = _run("pgrep", "-a", "-x", "slurmd").stdout.splitlines()
    return {line.split()[-1] for line in lines if " -N " in line}


def _start(*args: str) -> subprocess.CompletedProcess:
    out = _run(SCRIPT, "start", *args, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_start_with_another_node_count_reconfigures_cleanly(two_nodes) -> None:
    """3 nodes, then 1, then stopped, then back to the count it had: each time exactly the configured
    nodes are up, their names resolve, other /etc/hosts lines and the hostname are untouched."""
    if os.geteuid() != 0:
        pytest.skip("`local-cluster.sh start` needs root")
    count, others, me = len(two_nodes), _hosts_outside_block(), _resolve(os.uname().nodename)
    t0 = time.monotonic()
    try:
        _start("--nodes", "3")
        assert _usable_nodes() == ["node1", "node2", "node3"]
        assert sorted(_srun_nodes(3).values()) == ["node1", "node2", "node3"]
        assert _resolve("node3") == "127.0.0.1"
        _start("--nodes", "1")
        assert _usable_nodes() == ["node1"]
        assert _slurmd_nodes() == {"node1"}  # node2's and node3's daemons are stopped
        assert "node2" not in Path("/etc/hosts").read_text()
        stop = _run(SCRIPT, "stop", timeout=120)
        assert stop.returncode == 0, stop.stderr
        assert Path("/etc/hosts").read_text().splitlines() == others  # only our block was ever touched
        assert _resolve(os.uname().nodename) == me and _resolve("node1") == ""
    finally:
        _start("--nodes", str(count))
    assert _usable_nodes() == [f"node{i}" for i in range(1, count + 1)]
    assert _hosts_outside_block() == others and _resolve(os.uname().nodename) == me
    assert _run("sacct", "-n", "-X", "-S", "now-1minutes").returncode == 0  # accounting is still on
    print(f"3 -> 1 -> stopped -> {count} nodes in {time.monotonic() - t0:.0f} s")


def test_start_stops_a_slurmd_of_a_node_that_is_not_configured(two_nodes) -> None:
    """What a machine set up by this script's earlier single-node layout has: a slurmd serving the node
    `hostname -s`. slurmctld takes its registration for an alias of node1 (node1 becomes INVAL); `start`
    stops it and brings node1 back."""
    if os.geteuid() != 0:
        pytest.skip("`local-cluster.sh start` needs root")
    old = os.uname().nodename.split(".")[0]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SLURM_CONF": "/etc/slurm/slurm.conf"}
    subprocess.run(["slurmd", "-N", old], env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, start_new_session=True, check=True, timeout=30)
    out = _start()
    assert f"stopped slurmd {old} (not configured)" in out.stderr, out.stderr
    assert _usable_nodes() == two_nodes
    assert _slurmd_nodes() == set(two_nodes)

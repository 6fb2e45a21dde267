"""Helpers for the fault-injection tests: launches that can be killed at chosen moments, observers of
the checkpoint folder, and a small filesystem for disk-full faults.

"""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

from .launch import REPO, free_port, kill_tree, mlflow_store, process_groups, signal_groups

os.environ.setdefault("DS_ACCELERATOR", "cpu")

SEED = 9
DIST_TIMEOUT_S = 90  # also bounds the start-up rendezvous: slow imports on a busy 2-core machine
# fp32 ZeRO-2 RMSprop (bf16 is 3-5x slower on these CPUs; bf16 and ZeRO-3 resume are tested in
# tests/test_training.py). A checkpoint every 2 steps: many saves to hit one mid-write.
CHAIN_STEPS = 32
CHAIN = [f"train.max_steps={CHAIN_STEPS}", "checkpoint.every=2", "checkpoint.keep_last=2", "train.eval_every=100",
         "train.sample_every_eval=0", "train.log_every=4", "train.precision=fp32", "train.zero_stage=2",
         "optim.name=rmsprop", f"train.collective_timeout_s={DIST_TIMEOUT_S}"]
LAUNCH_TIMEOUT = 240


def sha256_tree(folder: Path) -> Dict[str, str]:
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def train_args(run_dir: Path, data: Path, overrides: List[str]) -> List[str]:
    db = Path(run_dir).parent / "mlflow.db"  # one store per folder: creating one costs ~7 s
    return ["-m", "pipeline.train", "--exp", "smoke", f"output_dir={run_dir}", f"data.root={data}",
            "data.prepare=none", f"tracking.tracking_uri={mlflow_store(db)}", *overrides]


class Launch:
    """One 2-rank training launch: `torchrun` (its agent supervises the ranks) or `manual` (two plain
    processes with RANK/WORLD_SIZE set, as srun starts tasks: nobody kills the survivor for us)."""

    def __init__(self, run_dir: Path, data: Path, overrides: List[str], mode: str = "torchrun", nproc: int = 2):
        self.run_dir, self.mode = Path(run_dir), mode
        self.log_path = Path(str(run_dir) + ".log")
        log = open(self.log_path, "ab")
        port = free_port()
        args = train_args(run_dir, data, overrides)
        if mode == "torchrun":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--master_addr", "127.0.0.1", "--master_port", str(port), *args]
            self.procs = [subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)]
        else:
            self.procs = []
            for r in range(nproc):
                # One thread per rank, as torchrun and our SLURM launcher set: the float results depend
                # on the thread count, and the resumed run must match the reference bit for bit.
                env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(nproc), LOCAL_RANK=str(r),
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
                self.procs.append(subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=log,
                                                   stderr=subprocess.STDOUT, start_new_session=True))
        log.close()

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def rank_pid(self, rank: int) -> int:
        if self.mode == "manual":
            return self.procs[rank].pid
        for child in subprocess.run(["pgrep", "-P", str(self.procs[0].pid)], capture_output=True,
                                    text=True).stdout.split():
            with contextlib.suppress(OSError):
                if f"RANK={rank}".encode() in open(f"/proc/{child}/environ", "rb").read().split(b"\0"):
                    return int(child)
        raise AssertionError("rank process not found")

    def freeze(self, frozen: bool) -> None:
        """SIGSTOP (or SIGCONT) everything: lets a test look at the disk at one instant of the run. The
        process groups are looked up once (pgrep is far slower than a checkpoint save)."""
        import signal
        if not getattr(self, "_groups", None):
            self._groups = [g for p in self.procs for g in process_groups(p.pid)]
        signal_groups(self._groups, signal.SIGSTOP if frozen else signal.SIGCONT)

    def kill_all(self) -> None:
        """SIGKILL to everything (agent, ranks, loader workers): no clean-up runs."""
        for p in self.procs:
            kill_tree(p.pid)

    def wait(self, timeout: float) -> List[int]:
        deadline = time.time() + timeout
        try:
            return [p.wait(timeout=max(0.1, deadline - time.time())) for p in self.procs]
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(f"launch still running after {timeout:.0f} s; see {self.log_path}")
        finally:
            for p in self.procs:  # loader workers or a stray rank left behind
                kill_tree(p.pid)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class CheckpointObserver:
    """Looks at `checkpoints/` as often as it can: records every moment `latest` named a checkpoint
    without meta.json (must never happen), and whether a checkpoint folder was seen mid-write."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "checkpoints"
        self.looks = 0
        self.bad_latest: List[str] = []

    def look(self) -> List[str]:
        """One look; returns the step folders that are being written (no meta.json yet)."""
        self.looks += 1
        try:
            tag = (self.dir / "latest").read_text().strip()
        except OSError:
            tag = None
        if tag and not (self.dir / tag / "meta.json").exists():
            # `latest` is replaced atomically and names a checkpoint only after its meta.json exists;
            # re-check once in case the folder was pruned between the two reads by a newer `latest`.
            again = (self.dir / "latest").read_text().strip() if (self.dir / "latest").exists() else None
            if again == tag:
                self.bad_latest.append(tag)
        writing = []
        with contextlib.suppress(OSError):
            for e in os.scandir(self.dir):
                if e.name.startswith("step") and e.name[4:].isdigit() and e.is_dir() \
                        and not os.path.exists(os.path.join(e.path, "meta.json")):
                    writing.append(e.name)
        return writing


def watch(launch: Launch, observer: CheckpointObserver, until: Callable[[], bool], timeout: float,
          poll: float = 0.002) -> bool:
    """Observe until `until()` is true (returns True) or the launch ends (False)."""
    deadline = time.time() + timeout
    while launch.running() and time.time() < deadline:
        observer.look()
        if until():
            return True
        time.sleep(poll)
    observer.look()
    return False


@contextlib.contextmanager
def small_filesystem(path: Path, size_kb: int):
    """A tmpfs of `size_kb` mounted at `path` (root only); skips the test where mounting is refused."""
    import pytest
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip()}); needs root in a sandbox "
                    f"that allows mount")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_up(folder: Path, leave_bytes: int) -> Path:
    """Fill the filesystem of `folder` until about `leave_bytes` stay free."""
    filler = Path(folder) / "filler.bin"
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    with open(filler, "r+b") as f:
        f.truncate(max(0, filler.stat().st_size - leave_bytes))
    return filler

"""2-rank launches that can be killed, the run's metrics, and MLflow stores for tests."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from pipeline.run_dir import RunDir

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def mlflow_store(db: Path) -> str:
    """The URI of a real MLflow SQLite store at `db`, copied from an empty store migrated once per machine:
    creating and migrating a store costs ~5 s, and the suite makes a dozen of them."""
    import mlflow
    template = Path(tempfile.gettempdir()) / f"pixelrnn-tests-mlflow-{mlflow.__version__}.db"
    if not template.exists():
        tmp = template.with_name(f"{template.name}.{os.getpid()}.tmp")
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments()  # creates and migrates
        os.replace(tmp, template)
    db = Path(db)
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(template, db)
    return f"sqlite:///{db}"


def hex_losses(run_dir: Path) -> List[tuple]:
    """(step, exact hex float of the training loss) for every recorded step: what bit-exact resume compares."""
    return [(m["step"], m["hex"]) for m in metrics(run_dir)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(run_dir: Path) -> List[Dict]:
    """Per-step training records of rank 0 (`metrics.jsonl`); a line being appended right now is left out."""
    path = RunDir(run_dir).metrics
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def train_2ranks(run_dir: Path, data: Path, overrides: List[str], kill_after_step: Optional[int] = None,
                 sig: int = signal.SIGKILL, timeout: float = 300, nproc: int = 2,
                 program: Optional[List[str]] = None) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m pipeline.train --exp smoke ...` (or `program`, with `nproc` ranks);
    optionally send `sig` once rank 0 has recorded `kill_after_step` steps: SIGKILL to the whole process
    group, other signals to the ranks. Returns the finished process with its combined output."""
    program = program or ["-m", "pipeline.train", "--exp", "smoke"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), *program,
           f"output_dir={run_dir}", f"data.root={data}", "data.prepare=none",
           f"tracking.tracking_uri={mlflow_store(Path(run_dir).parent / (Path(run_dir).name + '.db'))}",
           *overrides]
    log = open(Path(str(run_dir) + ".log"), "ab")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + timeout
    if kill_after_step is not None:
        while proc.poll() is None and time.time() < deadline:
            if len(metrics(run_dir)) >= kill_after_step:
                if sig == signal.SIGKILL:
                    kill_tree(proc.pid)           # everything: agent, ranks, loader workers; no clean-up
                else:
                    for child in _children(proc.pid):  # the ranks, as SLURM would signal the tasks
                        os.kill(child, sig)
                break
            time.sleep(0.05)
    try:
        proc.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        raise AssertionError(f"training did not finish in {timeout} s; see {run_dir}.log")
    log.close()
    return subprocess.CompletedProcess(cmd, proc.returncode, Path(str(run_dir) + ".log").read_text(errors="replace"))


def _children(pid: int) -> List[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def process_groups(pid: int) -> List[int]:
    """The process groups of a launcher and everything under it, the launcher's last. torchrun starts each
    rank in a session of its own, so signalling the launcher's group alone would leave the ranks (and
    their loader workers) running on as orphans."""
    pids, todo = [], [pid]
    while todo:  # collect first: once the parent dies its children are re-parented and lost to pgrep -P
        p = todo.pop()
        pids.append(p)
        todo.extend(_children(p))
    groups = []
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            groups.append(os.getpgid(p))
    return list(dict.fromkeys(reversed(groups)))


def signal_groups(groups: List[int], sig: int) -> None:
    for g in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(g, sig)


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """SIGKILL (or `sig`) a launcher and everything under it, at once."""
    signal_groups(process_groups(pid), sig)

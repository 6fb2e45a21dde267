"""Which ranks are alive, and on which node: one small file per rank under `<run_dir>/ranks/`.

Gloo and NCCL report that a collective failed, not which peer is gone (and on the local test cluster every
peer is 127.0.0.1). So every rank of a multi-rank run writes `ranks/rank<r>.json` = {rank, node, host, pid,
launch, beat, step, state} when it starts training and again every `interval_s` from a daemon thread, and
says how it ended (state done / failed / stopped). When a collective fails, the survivor reads every rank's
file twice, a few intervals apart: a rank of this launch whose beat counter did not move and that did not
say it ended is lost (killed, or its node is gone). Counters are compared, not clocks, so the nodes'
clocks need not agree; the run folder must be on a filesystem every node sees (it already is: the
checkpoints are written there by every rank).

Writes are atomic (a temporary file renamed over the old one: a reader never sees half a file) but not
fsynced: a heartbeat needs no durability, and an fsync stalled by a busy disk must not look like a lost rank.

    python -m pipeline.tools.heartbeat runs/NAME     # every rank's last word: node, pid, state, step, beats

(after the fact, e.g. where NCCL's watchdog aborted the survivors before they could say anything).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

# How a rank says it ended: finished, stopped by a signal (checkpointed), failed with an error of its own,
# or failed because a collective failed (a survivor of someone else's loss: never reported as the cause).
ENDED = ("done", "stopped", "failed", "peer-lost")


def node_name() -> str:
    """The SLURM node this task runs on (SLURMD_NODENAME), else the machine's hostname."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def launch_id() -> str:
    """Shared by every rank of one launch, different for the next one (a requeue, a resubmission, a new
    torchrun or manual launch on another port), taken from the environment: no collective needed."""
    keys = ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
            "MASTER_ADDR", "MASTER_PORT")
    return "/".join(os.environ.get(k, "") for k in keys)


@dataclass
class RankInfo:
    rank: int
    node: str
    host: str
    pid: int
    launch: str
    beat: int = 0
    step: int = 0
    state: str = "running"   # running, or one of ENDED
    error: str = ""


class Heartbeat:
    """This rank's file, refreshed every `interval_s` by a daemon thread until `end()`."""

    def __init__(self, folder: Path, rank: int, interval_s: float):
        self.path = Path(folder) / f"rank{rank}.json"
        self.interval_s = interval_s
        self.info = RankInfo(rank, node_name(), socket.gethostname(), os.getpid(), launch_id())
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "Heartbeat":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-rank{self.info.rank}", daemon=True)
        self._thread.start()
        return self

    @property
    def started(self) -> bool:
        return self._thread is not None

    def set_step(self, step: int) -> None:
        self.info.step = step  # read by the thread at its next beat

    def end(self, state: str, error: str = "") -> None:
        """Stop beating and say how this rank ended (idempotent; a no-op if it never started)."""
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self.info.state, self.info.error = state, error[:300]
        self._write()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.info.beat += 1
            try:
                self._write()
            except OSError:  # a full or vanished disk: the checkpoint code reports that; keep beating
                pass

    def _write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(asdict(self.info)))
        os.replace(tmp, self.path)


def read_ranks(folder: Path, world_size: int) -> Dict[int, RankInfo]:
    """Every readable rank file of ranks 0..world_size-1 (older, larger worlds' files are ignored)."""
    out: Dict[int, RankInfo] = {}
    for r in range(world_size):
        try:
            out[r] = RankInfo(**json.loads((Path(folder) / f"rank{r}.json").read_text()))
        except (OSError, ValueError, TypeError):
            continue
    return out


@dataclass
class Verdict:
    lost: List[RankInfo]        # this launch's ranks whose heartbeat stopped without saying why
    missing: List[int]          # ranks with no heartbeat of this launch at all (never got that far)
    failed: List[RankInfo]      # ranks that ended with an error of their own
    alive: List[RankInfo]       # still beating (a silent peer that is alive is stuck, not lost)


def find_lost(folder: Path, world_size: int, me: int, launch: str, window_s: float) -> Verdict:
    """Look at the other ranks' heartbeats twice, `window_s` apart, and sort them."""
    first = read_ranks(folder, world_size)
    time.sleep(window_s)
    second = read_ranks(folder, world_size)
    v = Verdict([], [], [], [])
    for r in range(world_size):
        if r == me:
            continue
        now = second.get(r)
        if now is None or now.launch != launch:
            v.missing.append(r)
        elif now.state in ENDED:
            if now.state == "failed":
                v.failed.append(now)
        elif r in first and first[r].beat == now.beat and first[r].pid == now.pid:
            v.lost.append(now)
        else:
            v.alive.append(now)
    return v


def _ranks_text(ranks: List[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def describe(v: Verdict) -> str:
    """'lost ranks 2, 3 on node node2' and what else the heartbeats say; '' when they say nothing."""
    parts = []
    by_node: Dict[str, List[int]] = {}
    for info in v.lost:
        by_node.setdefault(info.node, []).append(info.rank)
    if by_node:
        where = "; ".join(f"{_ranks_text(r)} on node {n}" for n, r in sorted(by_node.items()))
        whose = "its heartbeat" if len(v.lost) == 1 else "their heartbeats"
        nodes = "node" if len(by_node) == 1 else "nodes"
        parts.append(f"lost {where} ({whose} stopped: killed, or the {nodes} went away)")
    if v.missing:
        parts.append(f"{_ranks_text(v.missing)} never wrote a heartbeat in this launch (lost before training "
                     f"started, or the run folder is not on a filesystem every node sees)")
    for info in v.failed:
        parts.append(f"rank {info.rank} on node {info.node} failed: {info.error}")
    if not parts and v.alive:
        behind = min(i.step for i in v.alive)
        slow = [i for i in v.alive if i.step == behind]
        parts.append(f"no rank was lost: every rank's heartbeat is alive, so a live rank did not answer; "
                     f"furthest behind: {', '.join(f'rank {i.rank} on node {i.node}' for i in slow)} at step {behind}")
    return "; ".join(parts)

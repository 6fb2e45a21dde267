"""pipeline/train/heartbeat.py with real processes: ranks that beat into one folder, one of them SIGKILLed, one
that ends with an error, one from another launch; the survivor's verdict names each rightly. (Through real
training on two SLURM nodes: tests/test_multinode.py; on 2 ranks without SLURM: tests/faults/.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from pipeline.train.heartbeat import describe, find_lost, launch_id, read_ranks

INTERVAL_S = 0.2
# One fake rank: beats every INTERVAL_S; "fail" ends with an error after a few beats; otherwise beats on.
RANK = """
import sys, time
from pipeline.train.heartbeat import Heartbeat
hb = Heartbeat(sys.argv[1], int(sys.argv[2]), {interval}).start()
hb.set_step(int(sys.argv[2]) + 10)
if sys.argv[3] == "fail":
    time.sleep(0.5)
    hb.end("failed", "ShardError: bad shard train-000003.tar")
time.sleep(60)
"""


def _rank(folder, rank, node, mode="beat", port="29400"):
    env = dict(os.environ, SLURMD_NODENAME=node, MASTER_PORT=port)
    return subprocess.Popen([sys.executable, "-c", RANK.format(interval=INTERVAL_S), str(folder), str(rank), mode],
                            env=env)


def test_a_killed_rank_is_named_with_its_node_and_the_others_are_not(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "29400")
    for key in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
                "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    folder = tmp_path / "ranks"
    procs = [_rank(folder, 1, "node1"), _rank(folder, 2, "node2"), _rank(folder, 3, "node2"),
             _rank(folder, 4, "node3", "fail"), _rank(folder, 5, "node3", port="29999")]  # 5: another launch
    try:
        deadline = time.time() + 60
        while len(read_ranks(folder, 7)) < 5 or read_ranks(folder, 7)[4].state != "failed":
            assert time.time() < deadline, read_ranks(folder, 7)
            time.sleep(0.1)
        procs[2].send_signal(signal.SIGKILL)  # rank 3 on node2
        procs[2].wait()
        v = find_lost(folder, 7, me=0, launch=launch_id(), window_s=2.5 * INTERVAL_S)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert [(i.rank, i.node) for i in v.lost] == [(3, "node2")]
    assert sorted(i.rank for i in v.alive) == [1, 2]
    assert [(i.rank, i.error) for i in v.failed] == [(4, "ShardError: bad shard train-000003.tar")]
    assert v.missing == [5, 6]  # another launch's file, and no file at all
    text = describe(v)
    assert text.startswith("lost rank 3 on node node2 (its heartbeat stopped"), text
    assert "ranks 5, 6 never wrote a heartbeat in this launch" in text
    assert "rank 4 on node node3 failed: ShardError" in text
    table = subprocess.run([sys.executable, "-m", "pipeline.tools.heartbeat", str(tmp_path)], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert len(table) == 5 and table[2].startswith("rank    3  node node2") and " running " in table[2]
    assert " failed " in table[3] and table[3].endswith("ShardError: bad shard train-000003.tar")


def test_live_ranks_that_do_not_answer_are_named_as_stuck_not_lost(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "29400")
    folder = tmp_path / "ranks"
    procs = [_rank(folder, 1, "node1"), _rank(folder, 2, "node2")]
    try:
        deadline = time.time() + 60
        while len(read_ranks(folder, 3)) < 2:
            assert time.time() < deadline
            time.sleep(0.1)
        v = find_lost(folder, 3, me=0, launch=read_ranks(folder, 3)[1].launch, window_s=2.5 * INTERVAL_S)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert not v.lost and not v.missing and sorted(i.rank for i in v.alive) == [1, 2]
    assert describe(v) == ("no rank was lost: every rank's heartbeat is alive, so a live rank did not answer; "
                           "furthest behind: rank 1 on node node1 at step 11")

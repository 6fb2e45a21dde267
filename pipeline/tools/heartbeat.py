"""Every rank's last heartbeat in a run folder: `python -m pipeline.tools.heartbeat runs/NAME`.

Node, pid, state, step and beats of each rank (`<run_dir>/ranks/rank<r>.json`, pipeline/train/heartbeat.py):
what to read after the fact, e.g. where NCCL's watchdog aborted the survivors before they could say anything.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from pipeline.run_dir import RunDir
from pipeline.train.heartbeat import read_ranks


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="every rank's last heartbeat in a run folder")
    p.add_argument("run_dir", help="the run's folder (output_dir), holding ranks/")
    args = p.parse_args(argv)
    folder = RunDir(args.run_dir).ranks
    files = sorted(folder.glob("rank*.json"), key=lambda f: int(f.stem[4:]) if f.stem[4:].isdigit() else -1)
    if not files:
        print(f"no heartbeats in {folder} (a one-rank run, or train.heartbeat_s=0)", file=sys.stderr)
        return 1
    ranks = read_ranks(folder, 1 + max(int(f.stem[4:]) for f in files if f.stem[4:].isdigit()))
    current = ranks[0].launch if 0 in ranks else None
    for r, i in sorted(ranks.items()):
        said = f"  {i.error}" if i.error else ""
        if current is not None and i.launch != current:
            said += "  (from another launch than rank 0's: left by an earlier, larger run?)"
        print(f"rank {r:4d}  node {i.node:12s} pid {i.pid:8d}  {i.state:9s} step {i.step:8d}  beats {i.beat}  "
              f"launch {i.launch}{said}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

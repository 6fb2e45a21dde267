"""A `kind: preprocess` experiment on the REAL local SLURM cluster of two nodes: a job array of
`preprocessing build --num-tasks K --task-id I`, spread over both nodes (the partition schedules on the
least loaded node, LLN=YES), plus a finalize job (afterok dependency) produces shards and manifests
byte-identical to a one-process `preprocessing.build` of the same source."""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, wait_until_idle

import preprocessing

pytestmark = pytest.mark.slow  # jobs on the real SLURM cluster


def _hashes(root: Path) -> dict:
    """sha256 of every file under root (shards, manifests, build state), by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _array_nodes(array_id: str, tasks: int) -> dict:
    """task id -> the node sacct says it ran on. slurmctld hands job records to slurmdbd asynchronously,
    so the last task's record may lag its end by a moment: ask again for a few seconds."""
    deadline = time.time() + 15
    while True:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,NodeList", "-j", array_id],
                             capture_output=True, text=True, check=True).stdout
        nodes = {line.split("|")[0]: line.split("|")[1] for line in out.splitlines() if line.strip()}
        if len(nodes) == tasks or time.time() > deadline:
            return nodes
        time.sleep(0.5)


def test_array_build_over_two_nodes_is_byte_identical_to_one_process(tmp_path, two_nodes):
    src = tmp_path / "images"
    preprocessing.make_synthetic(src, num_images=50, classes=3, seed=1)
    single = tmp_path / "single"
    preprocessing.build(src, "train", [8, 16], single, shard_size=6, seed=0, progress=False)

    wait_until_idle()  # least loaded node first: jobs of earlier tests still ending would skew it
    out = subprocess.run(
        [sys.executable, "slurm/submit.py", "--exp", "preprocess_imagenet", f"preprocess.source={src}",
         f"preprocess.out={tmp_path / 'array'}", "preprocess.num_tasks=3", "preprocess.sizes=[8,16]",
         "preprocess.shard_size=6", "preprocess.workers=1", f"output_dir={tmp_path / 'run'}",
         "slurm.cpus_per_task=1", "slurm.mem_gb=0", "--time", "5", "--follow"],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "build array" in out.stdout and "of 3 task(s) (SLURM)" in out.stdout
    array_id = re.search(r"build array (\d+) of 3", out.stdout).group(1)
    nodes = _array_nodes(array_id, 3)
    assert sorted(nodes) == [f"{array_id}_{i}" for i in range(3)], nodes
    assert set(nodes.values()) == {"node1", "node2"}, nodes  # the tasks ran on both nodes
    assert "size 8: 50 samples in 9 shards" in out.stdout, out.stdout[-2000:]
    single_hashes, array_hashes = _hashes(single), _hashes(tmp_path / "array")
    assert any(name.endswith("train.json") for name in single_hashes)
    assert sum(name.endswith(".tar") and "/." not in name for name in single_hashes) == 18
    assert array_hashes == single_hashes
    assert preprocessing.verify(tmp_path / "array")["ok"]

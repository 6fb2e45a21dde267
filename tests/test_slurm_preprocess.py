"""A `kind: preprocess` experiment on the REAL local SLURM cluster: a job array of
`preprocessing build --num-tasks K --task-id I` plus a finalize job (afterok dependency) produces
shards and manifests byte-identical to a one-process `preprocessing.build` of the same source."""
from __future__ import annotations

import pytest
import hashlib
import subprocess
import sys
from pathlib import Path

import preprocessing

from helpers import REPO

pytestmark = pytest.mark.slow  # jobs on the real SLURM cluster


def _hashes(root: Path) -> dict:
    """sha256 of every file under root (shards, manifests, build state), by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_array_build_is_byte_identical_to_one_process(tmp_path, slurm_cluster):
    src = tmp_path / "images"
    preprocessing.make_synthetic(src, num_images=50, classes=3, seed=1)
    single = tmp_path / "single"
    preprocessing.build(src, "train", [8, 16], single, shard_size=6, seed=0, progress=False)

    out = subprocess.run(
        [sys.executable, "slurm/submit.py", "--exp", "preprocess_imagenet", f"preprocess.source={src}",
         f"preprocess.out={tmp_path / 'array'}", "preprocess.num_tasks=3", "preprocess.sizes=[8,16]",
         "preprocess.shard_size=6", "preprocess.workers=1", f"output_dir={tmp_path / 'run'}",
         "slurm.cpus_per_task=1", "slurm.mem_gb=0", "--time", "5", "--follow"],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "build array" in out.stdout and "of 3 task(s) (SLURM)" in out.stdout
    assert "size 8: 50 samples in 9 shards" in out.stdout, out.stdout[-2000:]
    single_hashes, array_hashes = _hashes(single), _hashes(tmp_path / "array")
    assert any(name.endswith("train.json") for name in single_hashes)
    assert sum(name.endswith(".tar") and "/." not in name for name in single_hashes) == 18
    assert array_hashes == single_hashes
    assert preprocessing.verify(tmp_path / "array")["ok"]

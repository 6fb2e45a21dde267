"""Bounded failure on the REAL local SLURM cluster of two nodes (`make cluster`), submitted with
`python slurm/submit.py ... --follow` as a user would: an exception on rank 0 alone, inside the universal
checkpoint conversion that only rank 0 runs while the other ranks wait, ends the whole job at once (not
after train.collective_timeout_s), FAILED, every rank's error and heartbeat naming rank 0 and its node.

The conversion fails for real: the run's `latest` checkpoint says it was written by 1 rank, so a 2-rank
job converts it (elastic resume), and its model file holds zero bytes where DeepSpeed's pickle should be.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from helpers import job_id, one_mlflow_run, sacct_job, start, submit_cmd, wait

COLLECTIVE_TIMEOUT_S = 120  # a job that waited for it would take > 2 min; the bound is this + 60 s


def _broken_one_rank_checkpoint(ckpts: Path) -> Path:
    """A 'complete' checkpoint of step 5 written by 1 rank, whose files are not DeepSpeed's."""
    tag = ckpts / "step00000005"
    tag.mkdir(parents=True)
    for name in ("mp_rank_00_model_states.pt", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        (tag / name).write_bytes(bytes(4096))  # not a checkpoint (and not a pickle: nothing to run)
    (tag / "meta.json").write_text(json.dumps({"world_size": 1, "step": 5, "tag": tag.name}))
    (ckpts / "latest").write_text(tag.name)
    return tag


def test_rank0_failing_the_universal_conversion_ends_the_job_at_once(tmp_path, smoke_data, two_nodes):
    run, db, log = tmp_path / "run", tmp_path / "mlflow.db", tmp_path / "submit.log"
    tag = _broken_one_rank_checkpoint(run / "checkpoints")
    t0 = time.time()
    proc = start(submit_cmd(run, smoke_data, db, "--nodes", "2", "slurm.tasks_per_node=1", "--time", "10",
                            f"train.collective_timeout_s={COLLECTIVE_TIMEOUT_S}", "--follow"), log)
    job = job_id(log)
    out = wait(proc, COLLECTIVE_TIMEOUT_S + 60, log)
    took = time.time() - t0

    assert proc.returncode == 1, out[-3000:]
    assert took < COLLECTIVE_TIMEOUT_S, f"the job took {took:.0f} s: the other rank waited for the timeout"
    assert sacct_job(job)["State"] == "FAILED"
    nodes = {json.loads(p.read_text())["rank"]: json.loads(p.read_text()) for p in (run / "ranks").glob("*.json")}
    node0 = nodes[0]["node"]
    cause = f"CheckpointError: converting {tag} to a universal checkpoint failed: "  # then DeepSpeed's last line
    assert cause in out, out[-3000:]  # rank 0's own log, streamed
    rank1_log = next(run.glob(f"submitit/*/{job}_1_log.err")).read_text()
    said = f"PeerFailedError: rank 1 of 2: rank 0 on node {node0} failed in the universal conversion: {cause}"
    assert said in rank1_log, rank1_log[-3000:]
    assert nodes[1]["state"] == nodes[0]["state"] == "failed"
    assert nodes[1]["error"].startswith(f"PeerFailedError: rank 1 of 2: rank 0 on node {node0} failed"), nodes[1]
    assert f"job {job} failed (FAILED)" in out
    assert not (run / "checkpoints" / "step00000005_universal").exists()
    assert one_mlflow_run(db).info.status == "FAILED"  # the run opened before the resume failed
    print(f"rank 0's conversion failure: the job ended {took:.1f} s after submission "
          f"(collective timeout {COLLECTIVE_TIMEOUT_S} s)")

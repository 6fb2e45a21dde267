"""Training across nodes on the REAL local SLURM cluster of two nodes (`make cluster`), every job submitted
with `python slurm/submit.py ... --follow` as a user would (no mocks):

  1. 2 nodes x 1 task trains to the same bits, to the last one, as 1 node x 2 tasks: the data split and the
     collectives depend on the global rank only (and both run one thread per rank: cpus_per_task=1).
  2. + 3. 2 nodes x 2 tasks (4 ranks, global batch 32): time-out requeue resumes from `latest` on both
     nodes in the same MLflow run and ends with the uninterrupted run's validation bits/dim; one ZeRO
     optimizer shard per rank; validation counts each sample once.
  4. + 5. node loss: node2's tasks are SIGKILLed mid-run; the survivors fail naming node2 and ranks 2, 3
     (pipeline/train/heartbeat.py), the job ends FAILED, checkpoints are intact; the same run resubmitted with
     --nodes 1 resumes from the 4-rank checkpoint through the universal-checkpoint path and trains on.
  6. the preprocessing job array over both nodes: tests/test_slurm_preprocess.py.

Timing facts (measured here): a 4-rank smoke job reaches its first step ~20 s after submission and runs
~12 steps/s alone on the 2 cores; for the time-out facts see tests/test_slurm_requeue.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from helpers import (FAST, hex_losses, hostnames, job_id, metrics, one_mlflow_run, resumed_steps, sacct_job,
                     scontrol_job, start, submit_cmd, task_pids, train_2ranks, wait)

from pipeline.train.checkpoint import latest_tag, read_meta

DIST_TIMEOUT_S = 60  # also bounds the rendezvous of 4 ranks starting on 2 busy cores


def _rank_nodes(run: Path) -> dict:
    """rank -> node, from the heartbeat files the ranks wrote (pipeline/train/heartbeat.py)."""
    infos = [json.loads(p.read_text()) for p in sorted((run / "ranks").glob("rank*.json"))]
    return {i["rank"]: i["node"] for i in infos}


def _shard_files(ckpt: Path) -> list:
    return sorted(p.name for p in ckpt.glob("*zero_pp_rank_*_optim_states.pt"))


def test_two_nodes_one_task_each_equal_one_node_two_tasks(tmp_path, smoke_data, two_nodes):
    """The smoke experiment as it is (evaluations, sample grids, checkpoints), submitted twice at once."""
    layouts = {"2x1": ["--nodes", "2", "slurm.tasks_per_node=1"], "1x2": []}
    procs = {}
    for name, extra in layouts.items():
        log = tmp_path / f"{name}.log"
        cmd = submit_cmd(tmp_path / name, smoke_data, tmp_path / f"{name}.db", *extra, "--follow")
        procs[name] = (start(cmd, log), log)
    jobs = {name: job_id(log) for name, (_, log) in procs.items()}
    outs = {name: wait(proc, 300, log) for name, (proc, log) in procs.items()}
    for name, out in outs.items():
        assert procs[name][0].returncode == 0, out[-3000:]
        assert "finished: validation" in out and "(SLURM, 2 task(s))" in out, out[-2000:]

    two, one = sacct_job(jobs["2x1"]), sacct_job(jobs["1x2"])
    assert two["NNodes"] == "2" and hostnames(two["NodeList"]) == ["node1", "node2"], two
    assert one["NNodes"] == "1", one
    assert _rank_nodes(tmp_path / "2x1") == {0: "node1", 1: "node2"}
    assert len(set(_rank_nodes(tmp_path / "1x2").values())) == 1

    final = {n: json.loads((tmp_path / n / "final_metrics.json").read_text()) for n in layouts}
    assert final["2x1"]["val_bits_per_dim"] == final["1x2"]["val_bits_per_dim"]   # exact
    losses = {n: hex_losses(tmp_path / n) for n in layouts}
    assert len(losses["2x1"]) == 40 and losses["2x1"] == losses["1x2"]           # every step, bit for bit
    for n in layouts:
        run = one_mlflow_run(tmp_path / f"{n}.db")
        assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
        assert run.data.metrics["val_bits_per_dim"] == final[n]["val_bits_per_dim"]
        latest = tmp_path / n / "checkpoints" / latest_tag(tmp_path / n / "checkpoints")
        assert _shard_files(latest) == [f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
    print(f"2x1 and 1x2: val {final['2x1']['val_bits_per_dim']!r} bits/dim, jobs {jobs}")


def test_four_ranks_on_two_nodes_time_out_requeue_matches_uninterrupted(tmp_path, smoke_data, two_nodes):
    """`--time 1` on 2 nodes x 2 tasks: USR2 before the limit -> every rank checkpoints -> requeue -> the
    job resumes on both nodes -> the same result as a 4-rank run that was never interrupted."""
    steps = 640  # more than one 1-minute run can do next to the reference run
    overrides = [f"train.max_steps={steps}", "train.global_batch_size=32", *FAST]
    run, db, log = tmp_path / "run", tmp_path / "mlflow.db", tmp_path / "submit.log"
    t0 = time.time()
    proc = start(submit_cmd(run, smoke_data, db, *overrides, "--nodes", "2", "--time", "1",
                            "slurm.signal_delay_s=2", "slurm.max_num_timeout=3", "--follow"), log)
    job = job_id(log)
    # Once requeued, give the job room to finish in its next run (a further 1-minute run would only add a
    # minute to this test without testing anything new).
    requeued = threading.Event()

    def extend_after_first_requeue():
        while proc.poll() is None:
            if int(scontrol_job(job).get("Restarts", "0")) >= 1:
                subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], check=True)
                requeued.set()
                return
            time.sleep(0.5)

    threading.Thread(target=extend_after_first_requeue, daemon=True).start()
    ref_dir = tmp_path / "ref"  # the uninterrupted reference meanwhile: 4 ranks under torchrun
    ref = train_2ranks(ref_dir, smoke_data, overrides, timeout=400, nproc=4)
    assert ref.returncode == 0, ref.stdout[-3000:]
    reference = json.loads((ref_dir / "final_metrics.json").read_text())["val_bits_per_dim"]

    out = wait(proc, 400, log)
    assert proc.returncode == 0, out[-4000:]
    assert requeued.is_set(), f"job {job} finished without being requeued:\n{out[-3000:]}"
    # submitit says "Requeued job" unless SLURM's requeue SIGTERM ended its `scontrol requeue` first
    requeued_said = "Requeued job" in out or "the requeue is under way" in out
    assert "received signal 12" in out and requeued_said, out[-3000:]
    resumed = resumed_steps(out)
    assert resumed and 0 < resumed[0] < steps, resumed
    # The second run ran on both nodes again: its ranks' heartbeats carry SLURM_RESTART_COUNT=1.
    acct = sacct_job(job)
    assert acct["NNodes"] == "2" and hostnames(acct["NodeList"]) == ["node1", "node2"], acct
    assert _rank_nodes(run) == {0: "node1", 1: "node1", 2: "node2", 3: "node2"}
    assert {json.loads(p.read_text())["launch"].split("/")[1] for p in (run / "ranks").glob("*.json")} == {"1"}

    final = json.loads((run / "final_metrics.json").read_text())
    assert final["steps"] == steps and final["world_size"] == 4
    assert final["val_bits_per_dim"] == reference  # bit for bit: the interruption changed nothing
    assert [m["step"] for m in metrics(run)] == list(range(1, steps + 1))
    mlrun = one_mlflow_run(db)
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["world_size"] == "4"
    assert mlrun.data.metrics["val_bits_per_dim"] == reference
    # One ZeRO optimizer shard and one RNG state per rank; validation saw each of the 64 images once.
    ckpt = run / "checkpoints" / latest_tag(run / "checkpoints")
    assert _shard_files(ckpt) == [f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(4)]
    assert sorted(p.name for p in ckpt.glob("rng_rank*.pt")) == [f"rng_rank{r}.pt" for r in range(4)]
    val_images = json.loads((smoke_data / "8" / "val.json").read_text())["num_samples"]
    assert val_images == 64 and f"step {steps}: val " in out and f"nats/image) over {val_images} images" in out
    print(f"2x2 time-out: resumed at step {resumed[0]}, {time.time() - t0:.0f} s in all")


def _sha256_tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _complete_checkpoints(ckpts: Path) -> dict:
    """sha256 of every file of every checkpoint that has its meta.json (complete), by tag, and `latest`."""
    out = {t.name: _sha256_tree(t) for t in sorted(ckpts.glob("step????????")) if (t / "meta.json").exists()}
    out["latest"] = (ckpts / "latest").read_text()
    return out


def _signal(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def test_node_loss_is_named_keeps_checkpoints_and_resumes_on_one_node(tmp_path, smoke_data, two_nodes):
    """SIGKILL of every task process on node2 (ranks 2 and 3 and their loader workers) mid-run."""
    common = ["train.global_batch_size=32", "train.eval_every=100000", "train.sample_every_eval=0",
              "train.log_every=50", "checkpoint.every=30", "checkpoint.keep_last=3",
              f"train.collective_timeout_s={DIST_TIMEOUT_S}"]
    run, db, log = tmp_path / "run", tmp_path / "mlflow.db", tmp_path / "submit.log"
    ckpts = run / "checkpoints"
    proc = start(submit_cmd(run, smoke_data, db, "train.max_steps=100000", *common, "--nodes", "2",
                            "--time", "10", "--follow"), log)
    job = job_id(log)
    deadline = time.time() + 180
    while not ((ckpts / "latest").exists() and int((ckpts / "latest").read_text()[4:]) >= 60):
        assert time.time() < deadline and proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    victims, survivors = task_pids(job, "node2"), task_pids(job, "node1")
    assert len(victims) >= 2 and len(survivors) >= 2, (victims, survivors)
    # Freeze the whole job at one instant so that the disk can be read while nothing writes, then kill
    # node2's share of it and let node1's run on.
    _signal(victims + survivors, signal.SIGSTOP)
    before = _complete_checkpoints(ckpts)
    metrics_before = (run / "metrics.jsonl").read_bytes()
    _signal(victims, signal.SIGKILL)
    t_kill = time.time()
    _signal(survivors, signal.SIGCONT)
    out = wait(proc, DIST_TIMEOUT_S + 120, log)
    took = time.time() - t_kill

    assert proc.returncode == 1, out[-3000:]
    assert took < DIST_TIMEOUT_S, f"the job ended {took:.0f} s after the node loss"
    assert sacct_job(job)["State"] == "FAILED"
    # SLURM's view of it, from rank 0's log (srun may add the line after --follow saw the job end)
    rank0_log = next(run.glob(f"submitit/*/{job}_0_log.err"))
    def srun_saw_both_killed() -> bool:  # "tasks 2-3: Killed", or one line per task when they end apart
        text = rank0_log.read_text()
        return "srun: error: node2: tasks 2-3: Killed" in text or all(
            f"srun: error: node2: task {r}: Killed" in text for r in (2, 3))
    deadline = time.time() + 15
    while not srun_saw_both_killed() and time.time() < deadline:
        time.sleep(0.5)
    assert srun_saw_both_killed(), rank0_log.read_text()[-3000:]
    rank1_log = next(run.glob(f"submitit/*/{job}_1_log.err")).read_text()  # beside rank 0's (streamed)
    for rank, rank_log in ((0, out), (1, rank1_log)):
        assert (f"LostRankError: rank {rank} of 4: a collective operation failed: lost ranks 2, 3 on node node2 "
                f"(their heartbeats stopped") in rank_log, rank_log[-3000:]
    assert f"job {job} failed (FAILED)" in out
    # Nothing written before the fault changed; `latest` names a complete 4-rank checkpoint.
    after = _complete_checkpoints(ckpts)
    kept = [t for t in before if t != "latest" and t in after]
    assert before["latest"] in kept and all(after[t] == before[t] for t in kept), (sorted(before), sorted(after))
    latest = latest_tag(ckpts)
    assert latest >= before["latest"] and read_meta(ckpts, latest)["world_size"] == 4
    assert len(_shard_files(ckpts / latest)) == 4
    assert (run / "metrics.jsonl").read_bytes().startswith(metrics_before)
    run_id = (run / "mlflow_run_id").read_text().strip()
    assert one_mlflow_run(db).info.status == "FAILED"

    # The same run on the one node left: resumes from the 4-rank checkpoint on 2 ranks, by itself.
    step = int(latest[4:])
    log2 = tmp_path / "resume.log"
    proc2 = start(submit_cmd(run, smoke_data, db, f"train.max_steps={step + 30}", *common, "--nodes", "1",
                             "--follow"), log2)
    out2 = wait(proc2, 300, log2)
    assert proc2.returncode == 0, out2[-3000:]
    assert "world size changed: converting" in out2 and f"{latest}_universal at step {step}" in out2, out2[-3000:]
    assert "world size 4 -> 2" in out2
    assert sacct_job(job_id(log2))["NNodes"] == "1"
    assert [m["step"] for m in metrics(run)] == list(range(1, step + 31))
    assert read_meta(ckpts, latest_tag(ckpts))["world_size"] == 2 and latest_tag(ckpts) == f"step{step + 30:08d}"
    mlrun = one_mlflow_run(db)
    assert mlrun.info.run_id == run_id and mlrun.info.status == "FINISHED"
    print(f"node loss: job ended {took:.1f} s after the kill; resumed at step {step} on 1 node")

"""Training under SIGKILL (everything, mid-checkpoint, one rank of two), a full checkpoint disk, and a
checkpoint from another model. The kills are made once, by the session fixture `kill_chain`."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import (CHAIN, CHAIN_STEPS, DIST_TIMEOUT_S, LAUNCH_TIMEOUT, Launch, fill_up, hex_losses, sha256_tree,
                     small_filesystem)

from pipeline.train.checkpoint import CheckpointError, check_compatible, latest_tag, read_meta
from pipeline.train.weights import consolidated_state

pytestmark = pytest.mark.slow  # 2-rank DeepSpeed launches killed and resumed


def test_sigkill_anywhere_then_resume_is_bit_exact(kill_chain):
    """Four kills (two of them of one rank only), four resumes: the loss sequence, the final weights and
    the final validation bits/dim equal the uninterrupted run's bit for bit."""
    ref, run = kill_chain["ref"], kill_chain["run"]
    a, b = hex_losses(ref), hex_losses(run)
    assert len(a) == CHAIN_STEPS and a == b
    fa = json.loads((ref / "final_metrics.json").read_text())
    fb = json.loads((run / "final_metrics.json").read_text())
    assert fa["val_bits_per_dim"] == fb["val_bits_per_dim"] and fb["steps"] == CHAIN_STEPS
    _, wa = consolidated_state(ref / "checkpoints")
    _, wb = consolidated_state(run / "checkpoints")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    killed = [r for r in kill_chain["rounds"] if r["fault"] != "none (final resume)"]
    assert len(killed) == 4
    # every kill interrupted the run before its end
    assert all(r["steps_recorded"] < CHAIN_STEPS for r in killed), killed


def test_latest_always_names_a_complete_checkpoint(kill_chain):
    obs = kill_chain["observer"]
    assert obs.looks > 1000, "the observer must have looked often"
    assert obs.bad_latest == [], f"`latest` named incomplete checkpoints: {obs.bad_latest}"
    run = kill_chain["run"]
    assert latest_tag(run / "checkpoints") == f"step{CHAIN_STEPS:08d}"


def test_kill_landed_while_a_checkpoint_was_being_written(kill_chain):
    """The on-disk state of a kill mid-save, observed for real (a step folder without meta.json when
    the SIGKILL went out, still without it after); the exact states a kill can leave are also built by
    hand in tests/test_training.py::test_crash_between_shard_writes_and_latest_resumes_from_previous."""
    mid = next(r for r in kill_chain["rounds"] if r["fault"] == "sigkill-all-mid-checkpoint")
    assert mid["hit"]
    assert mid["partial_after_kill"], "the kill must have left a checkpoint without meta.json"
    assert all(int(t[4:]) > mid["latest"] for t in mid["partial_after_kill"])  # latest stayed behind it


@pytest.mark.parametrize("mode", ["manual", "torchrun"])
def test_one_rank_killed_fails_the_other_in_bounded_time_naming_it(kill_chain, mode):
    """Rank 1 SIGKILLed. Without a launcher agent (srun-style) the survivor's collective fails (gloo sees
    the connection reset; a silent peer would hit train.collective_timeout_s) and train() re-raises it as a
    LostRankError naming rank 1; under torchrun the agent also reports 'rank : 1 ... SIGKILL'."""
    r = next(r for r in kill_chain["rounds"] if r["fault"] == f"sigkill-rank1-{mode}")
    assert r["elapsed_s"] < DIST_TIMEOUT_S + 30, r["elapsed_s"]
    assert r["codes"][0] != 0
    out = r["output"]
    assert "LostRankError: rank 0 of 2: a collective operation failed: lost rank 1" in out, out[-4000:]
    if mode == "torchrun":
        assert "rank      : 1 (local_rank: 1)" in out and "Signal 9 (SIGKILL)" in out


def test_full_checkpoint_disk_fails_clearly_and_keeps_the_previous_checkpoint(kill_chain, smoke_data, tmp_path):
    """The checkpoint folder on a tmpfs filled up to the last few KB: the next save fails with an error
    saying 'no space left on device' and the checkpoint's path; the previous checkpoint is unchanged
    (sha256 of every file), `latest` still names it, and it still loads."""
    run = tmp_path / "full"
    run.mkdir()
    src = kill_chain["run"] / "checkpoints"
    with small_filesystem(run / "checkpoints", 4096) as ckpts:
        last = f"step{CHAIN_STEPS:08d}"
        shutil.copytree(src / last, ckpts / last)
        shutil.copy(src / "latest", ckpts / "latest")
        shutil.copy(kill_chain["run"] / "metrics.jsonl", run / "metrics.jsonl")
        before = sha256_tree(ckpts)
        filler = fill_up(ckpts, 8 * 1024)
        ln = Launch(run, smoke_data, CHAIN + [f"train.max_steps={CHAIN_STEPS + 6}"])
        codes = ln.wait(LAUNCH_TIMEOUT)
        out = ln.output()
        assert any(c != 0 for c in codes)
        assert "no space left on device" in out and str(ckpts / f"step{CHAIN_STEPS + 2:08d}") in out, out[-4000:]
        filler.unlink()
        assert (ckpts / "latest").read_text() == last
        after = sha256_tree(ckpts)
        assert {k: v for k, v in after.items() if k.startswith(last + "/") or k == "latest"} == before
        assert latest_tag(ckpts) == last
        _, weights = consolidated_state(ckpts)
        assert weights and all(torch.isfinite(w).all() for w in weights.values())


def test_checkpoint_of_another_model_is_refused_naming_the_difference(kill_chain):
    from pipeline.config import load_config
    from pipeline.train.engine import model_config
    ckpts = kill_chain["run"] / "checkpoints"
    tag = latest_tag(ckpts)
    meta = read_meta(ckpts, tag)
    same = load_config("smoke", ["data.prepare=synthetic"])
    check_compatible(meta, model_config(same), ckpts / tag)  # the same model passes
    other = load_config("smoke", ["data.prepare=synthetic", "model.hidden=32", "model.name=pixelcnn"])
    with pytest.raises(CheckpointError, match=r"made for another model \(differs in hidden, name\)"):
        check_compatible(meta, model_config(other), ckpts / tag)

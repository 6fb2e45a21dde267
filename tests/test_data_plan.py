"""The data plan (pipeline/data/plan.py) as pure functions of the shard counts: the real ImageNet layout at
1, 8 and 64 GPUs without 64 processes, a layout with fewer shards than readers, the balanced validation
split, and the plan line slurm/submit.py prints before anything runs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.data.plan import EvalPlan, TrainPlan, cut
from shardformat import FORMAT
from slurm import submit

IMAGENET_TRAIN = (5000,) * 256 + (1167,)    # 1,281,167 images in shards of 5,000: 257 shards
IMAGENET_VAL = (5000,) * 10                 # 50,000 images


def use_counts(counts, spans):
    """How often each sample of the split appears in `spans`, one array per shard."""
    used = [np.zeros(n, dtype=np.int32) for n in counts]
    for shard, first, end in spans:
        assert 0 <= first < end <= counts[shard], (shard, first, end)
        used[shard][first:end] += 1
    return used


def epoch_spans(plan, epoch):
    return [plan.spans(epoch, r) for r in range(plan.readers)]


@pytest.mark.parametrize("gpus", [1, 8, 64])
@pytest.mark.parametrize("micro", [4, 8])   # imagenet64 and imagenet32 configs
def test_imagenet_epochs_use_the_whole_split_once_in_a_new_order(gpus, micro):
    plan = TrainPlan(IMAGENET_TRAIN, seed=0, world=gpus, workers=4, micro_batch=micro)
    assert plan.readers == 4 * gpus
    assert plan.samples_per_epoch / 1_281_167 >= 0.999
    assert 1_281_167 - plan.samples_per_epoch < plan.readers * micro
    epochs = [epoch_spans(plan, e) for e in (0, 1)]
    for readers in epochs:
        # Every reader reads the same whole number of micro-batches, so every rank gets the same batches.
        assert {sum(end - first for _, first, end in spans) for spans in readers} == {plan.samples_per_reader}
        assert plan.samples_per_reader % micro == 0
        used = np.concatenate(use_counts(IMAGENET_TRAIN, [s for spans in readers for s in spans]))
        assert used.max() == 1 and used.sum() == plan.samples_per_epoch   # each image at most once
    # A new order every epoch: the shards are laid out anew, so (nearly) every reader reads other samples
    # (a reader may draw the same shard at its place again, 1 in 257; its shuffle buffer is reseeded per
    # epoch), and another tail is left out.
    same = sum(a == b for a, b in zip(*epochs))
    assert same <= max(1, plan.readers // 20), same
    left_out = [np.flatnonzero(np.concatenate(use_counts(IMAGENET_TRAIN, [s for sp in rd for s in sp])) == 0)
                for rd in epochs]
    assert left_out[0].size == left_out[1].size and not np.array_equal(*left_out)


def test_fewer_shards_than_readers_share_shards_by_sample_ranges():
    counts = (20, 7, 30)                      # 3 uneven shards, 2 ranks × 4 workers = 8 readers
    plan = TrainPlan(counts, seed=3, world=2, workers=4, micro_batch=2)
    assert plan.batches_per_reader == 3 and plan.samples_per_epoch == 48
    for epoch in range(3):
        readers = epoch_spans(plan, epoch)
        used = use_counts(counts, [s for spans in readers for s in spans])
        assert max(u.max() for u in used) == 1 and sum(u.sum() for u in used) == 48
        readers_of = [{r for r, spans in enumerate(readers) for s, _, _ in spans if s == shard} for shard in range(3)]
        assert max(len(r) for r in readers_of) > 1    # a shard is shared by several readers
        assert any(spans[0][1] > 0 for spans in readers)   # readers start mid-shard


def test_cut_lays_shards_out_in_the_given_order():
    assert cut((5, 3, 4), [2, 0, 1], 0, 12) == [(2, 0, 4), (0, 0, 5), (1, 0, 3)]
    assert cut((5, 3, 4), [2, 0, 1], 3, 10) == [(2, 3, 4), (0, 0, 5), (1, 0, 1)]
    assert cut((5, 0, 4), [0, 1, 2], 5, 6) == [(2, 0, 1)]    # an empty shard is passed over


@pytest.mark.parametrize("micro", [4, 32])
def test_validation_split_is_balanced_and_each_image_is_evaluated_once(micro):
    plan = EvalPlan(IMAGENET_VAL, world=64, batch_size=micro)
    samples = [plan.samples(r) for r in range(64)]
    assert max(samples) - min(samples) <= 1 and plan.ranks_used == 64
    batches = [plan.batches(r) for r in range(64)]
    assert max(batches) - min(batches) <= 1 and plan.steps == max(batches)   # within one micro-batch
    spans = [plan.spans(r) for r in range(64)]
    assert [sum(e - f for _, f, e in sp) for sp in spans] == samples
    used = np.concatenate(use_counts(IMAGENET_VAL, [s for sp in spans for s in sp]))
    assert used.min() == used.max() == 1 and plan.images == 50_000
    assert any(first > 0 for sp in spans for _, first, _ in sp[:1])   # ranks start mid-shard


def test_validation_cap_and_more_ranks_than_images():
    capped = EvalPlan(IMAGENET_VAL, world=8, batch_size=4, max_batches=10)
    assert {capped.batches(r) for r in range(8)} == {10} and capped.images == 8 * 40 and capped.steps == 10
    tiny = EvalPlan((3,), world=5, batch_size=2)
    assert [tiny.samples(r) for r in range(5)] == [0, 1, 0, 1, 1] and tiny.ranks_used == 3 and tiny.steps == 1


# ------------------------------------------------------------------ the plan line of slurm/submit.py
def write_manifests(root, size, splits):
    """Manifests only (no shards): what the plan is computed from."""
    (root / str(size)).mkdir(parents=True)
    for split, counts in splits.items():
        shards = [{"name": f"{split}-{i:06d}.tar", "count": c, "sha256": "0" * 64} for i, c in enumerate(counts)]
        manifest = {"format": FORMAT, "split": split, "size": size, "num_samples": sum(counts), "shard_size": 5000,
                    "shards": shards, "classes": [], "num_classes": 1000, "skipped": [], "params": {},
                    "versions": {}, "source_kind": "test"}
        (root / str(size) / f"{split}.json").write_text(json.dumps(manifest))
    return root


def no_submission(*args, **kwargs):
    raise AssertionError("submitted")


@pytest.fixture
def no_slurm(monkeypatch):
    monkeypatch.setattr(submit, "slurm_available", lambda: False)
    monkeypatch.setattr(submit, "submit_training", no_submission)


def test_dry_run_prints_the_plan_for_imagenet_on_64_gpus(tmp_path, no_slurm, capsys):
    root = write_manifests(tmp_path / "imagenet", 64, {"train": IMAGENET_TRAIN, "val": IMAGENET_VAL})
    rc = submit.main(["--exp", "imagenet64_multiscale", "--nodes", "8", "--gpus-per-node", "8", "--dry-run",
                      f"data.root={root}", f"output_dir={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    assert rc == 0
    assert ("data plan: 1,281,024 of 1,281,167 train images per epoch (99.98 %), 5,004 steps per epoch, "
            "5,004 batches per rank; validation: 50,000 images on 64 ranks, at most 196 batches per rank"
            ) in out.splitlines()


def test_dry_run_without_the_data_says_the_plan_cannot_be_computed(tmp_path, no_slurm, capsys):
    rc = submit.main(["--exp", "imagenet64_multiscale", "--dry-run", f"data.root={tmp_path / 'absent'}",
                      f"output_dir={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"data plan: cannot be computed: data.root {tmp_path / 'absent'} is missing" in out


def test_a_real_submission_refuses_a_plan_below_99_percent(tmp_path, no_slurm, capsys):
    # 2 ranks × 2 workers × micro-batch 8 = 32 samples a round: 40 images give one batch per reader (80 %).
    root = write_manifests(tmp_path / "small", 8, {"train": (16, 16, 8), "val": (16,)})
    rc = submit.main(["--exp", "smoke", "--local", "data.prepare=none", f"data.root={root}",
                      f"output_dir={tmp_path / 'run'}"])
    cap = capsys.readouterr()
    assert rc == 2
    assert "data plan: 32 of 40 train images per epoch (80.00 %)" in cap.out
    assert cap.err.count("\n") == 1 and cap.err.startswith("error: an epoch would use only 80.00 % of the train")
    assert "lower data.num_workers or train.micro_batch_size" in cap.err

"""Bad input gets a clear error and writes nothing.

Covered elsewhere and not repeated: unknown/misspelt override keys with the nearest key suggested, wrong
types, bad choices, a global batch not divisible by ranks × micro-batch, fp16 on CPU, a missing data
root, an unknown experiment (tests/test_config.py::test_bad_config_is_refused_naming_the_key,
::test_global_batch_is_checked_against_the_ranks_where_they_are_known, ::test_fp16_on_cpu_is_refused, ::test_unknown_experiment_suggests_nearest,
::test_bad_override_fails_fast_from_the_command_line); a missing manifest or shard, a truncated val shard,
a corrupt image with data.on_corrupt=error|skip (tests/test_data.py)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from helpers import REPO, free_port, train_args

from pipeline.config import ConfigError, load_config
from pipeline.data.shards import ShardError, load_shard_set
from pipeline.data.stream import TrainStream, train_loader
from slurm.config import load_job_config


def _yaml(tmp_path, text):
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text, message", [
    ("train:\n  max_step: 5\n", "unknown config key 'train.max_step'; did you mean 'train.max_steps'"),
    ("optim:\n  weight_decai: 0.1\n", "did you mean 'optim.weight_decay'"),
    ("trian:\n  max_steps: 5\n", "unknown config key 'trian'"),
    ("train:\n  zero_stage: two\n", "bad value for 'train.zero_stage'"),
    ("checkpoint:\n  resume: maybe\n", "bad value for 'checkpoint.resume'"),
    ("model: [1, 2]\n", "bad value for 'model'"),
    ("- just\n- a list\n", "must be a mapping"),
    ("train: {max_steps: 5\n", "not valid YAML"),
])
def test_bad_experiment_file_is_refused_naming_the_key(tmp_path, text, message):
    """The same strictness for keys written in an experiment file as for command-line overrides."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(_yaml(tmp_path, "data: {prepare: synthetic}\n" + text if not text.startswith("-") else text))


@pytest.mark.parametrize("overrides, message", [
    (["train.precision=fp16", "train.device=cpu"], "fp16 needs a GPU"),
    (["train.precision=fp16", "train.device=cuda", "train.zero_stage=0"], "fp16 needs 'train.zero_stage' >= 1"),
    (["data.on_corrupt=ignore"], "'data.on_corrupt' is 'ignore'"),
    (["train.zero_stage=3", "optim.lr=0"], "'optim.lr' must be positive"),
])
def test_impossible_combinations_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("smoke", ["data.prepare=synthetic", *overrides])


def test_global_batch_not_divisible_by_the_jobs_ranks_is_refused_at_submission():
    """The job's ranks (slurm.*) are the launcher's: its loader refuses the combination."""
    with pytest.raises(ConfigError, match="not divisible"):
        load_job_config("smoke", ["data.prepare=synthetic", "train.global_batch_size=16", "train.micro_batch_size=8",
                                  "slurm.tasks_per_node=4"])


@pytest.mark.parametrize("overrides", [
    ["train.zero_stage=3", "train.zero3_persistence_threshold=-1"],
    ["data.num_workers=-1"],
    ["train.collective_timeout_s=0"],
    ["model.name=pixel_rnn"],
])
def test_out_of_range_settings_are_refused(overrides):
    with pytest.raises(ConfigError):
        load_config("smoke", ["data.prepare=synthetic", *overrides])


def test_empty_or_hollow_shard_folders_are_named(smoke_data, tmp_path):
    empty = tmp_path / "empty"
    (empty / "8").mkdir(parents=True)
    with pytest.raises(ShardError, match=r"no manifest .*empty/8/train.json"):
        load_shard_set(empty, 8, "train")
    hollow = tmp_path / "hollow"
    shutil.copytree(smoke_data / "8", hollow / "8")
    m = json.loads((hollow / "8" / "train.json").read_text())
    (hollow / "8" / "train.json").write_text(json.dumps(dict(m, shards=[])))
    with pytest.raises(ShardError, match="lists no shards"):
        load_shard_set(hollow, 8, "train")
    (hollow / "8" / "val-000002.tar").write_bytes(b"")
    with pytest.raises(ShardError, match=r"shard .*val-000002.tar is empty"):
        load_shard_set(hollow, 8, "val")
    (hollow / "8" / "val.json").write_text("{not json")
    with pytest.raises(ShardError, match="val.json is not valid JSON"):
        load_shard_set(hollow, 8, "val")
    with pytest.raises(ShardError, match="is for size 8, expected 16"):
        shutil.copytree(smoke_data / "8", hollow / "16")
        load_shard_set(hollow, 16, "train")


@pytest.mark.slow  # two loader worker processes per stream
def test_truncated_training_shard_is_named_through_loader_workers(smoke_data, tmp_path):
    """What train() reads (a DataLoader with 2 worker processes): a shard truncated mid-sample stops the
    run naming the shard; with data.on_corrupt=skip the epoch completes and the skip is logged."""
    copy = tmp_path / "copy"
    shutil.copytree(smoke_data / "8", copy / "8")
    shard = copy / "8" / "train-000005.tar"
    shard.write_bytes(shard.read_bytes()[:2500])
    shards = load_shard_set(copy, 8, "train")
    strict = TrainStream(shards, 8, 0, 0, 1, 2, 64)
    it = train_loader(strict)
    with pytest.raises(ShardError, match="train-000005.tar"):
        for _ in range(strict.batches_per_epoch):
            next(it)
    lenient = TrainStream(shards, 8, 0, 0, 1, 2, 64, on_corrupt="skip")
    it = train_loader(lenient)
    assert len([next(it) for _ in range(lenient.batches_per_epoch)]) == lenient.batches_per_epoch


def test_training_on_an_empty_data_folder_fails_before_writing_anything(tmp_path):
    """End to end (`python -m pipeline.train`, one rank): the error names the missing manifest and the
    run folder gets no checkpoint, config or metrics."""
    data = tmp_path / "data"
    data.mkdir()
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, *train_args(run, data, ["train.max_steps=2"])], cwd=REPO,
                         capture_output=True, text=True, timeout=180,
                         env={**__import__("os").environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})
    assert out.returncode != 0
    assert f"ShardError: no manifest {data}/8/train.json" in out.stderr, out.stderr[-3000:]
    assert not run.exists() or not any(run.rglob("*"))

"""The experiment config: strict loading, overrides, validation, and the derived DeepSpeed JSON."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pipeline.config import EXPERIMENTS_DIR, ConfigError, flatten, from_yaml_text, load_config, to_yaml
from pipeline.ds_config import deepspeed_config

from launch import REPO

ALL_EXPERIMENTS = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", ALL_EXPERIMENTS)
def test_every_experiment_loads(name, tmp_path):
    cfg = load_config(name, [f"data.root={tmp_path}"])
    assert cfg.name == name and cfg.description
    assert cfg.train.global_batch_size % (cfg.train.micro_batch_size * cfg.ranks()) == 0


def test_paper_sizes_are_the_configs():
    sizes = {n: (load_config(n, ["data.prepare=synthetic"]).model) for n in ALL_EXPERIMENTS}
    assert (sizes["cifar10_pixelcnn"].layers, sizes["cifar10_pixelcnn"].hidden) == (15, 128)
    assert (sizes["imagenet32_row_lstm"].layers, sizes["imagenet32_row_lstm"].hidden) == (12, 384)
    m64 = sizes["imagenet64_row_lstm"]
    assert (m64.layers, m64.hidden, m64.image_size, m64.extra["residual"]) == (4, 512, 64, False)
    assert sizes["imagenet64_multiscale"].extra["small_size"] == 32


def test_override_sets_nested_value_with_its_type():
    cfg = load_config("smoke", ["train.max_steps=7", "optim.lr=0.5", "model.extra.out_maps=32"])
    assert cfg.train.max_steps == 7 and isinstance(cfg.train.max_steps, int)
    assert cfg.optim.lr == 0.5 and cfg.model.extra["out_maps"] == 32


@pytest.mark.parametrize("override, message", [
    ("model.nonexistent=1", "unknown config key 'model.nonexistent'"),
    ("train.zero_stag=1", "did you mean 'train.zero_stage'"),
    ("train.max_steps=abc", "'train.max_steps'"),
    ("train.precision=fp8", "'train.precision' is 'fp8'"),
    ("train.zero_stage=4", "'train.zero_stage'"),
    ("train.global_batch_size=24", "not divisible"),
    ("train.micro_batch_size=0", "'train.micro_batch_size' must be at least 1"),
    ("optim.name=sgd", "'optim.name'"),
    ("data.prepare=none", "'data.root' does not exist"),
    ("noequals", "dotted.key=value"),
])
def test_bad_config_is_refused_naming_the_key(override, message, tmp_path):
    overrides = [f"data.root={tmp_path / 'missing'}", override]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("smoke", overrides)


def test_fp16_on_cpu_is_refused():
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        load_config("smoke", ["train.precision=fp16", "train.device=cpu"])


def test_fp16_at_zero0_is_refused():
    with pytest.raises(ConfigError, match="fp16 needs 'train.zero_stage' >= 1"):
        load_config("smoke", ["train.precision=fp16", "train.device=cuda", "train.zero_stage=0"])
    assert load_config("smoke", ["train.precision=fp16", "train.device=cuda", "train.zero_stage=1"]).train.zero_stage == 1


def test_unknown_experiment_suggests_nearest():
    with pytest.raises(ConfigError, match="did you mean 'smoke'"):
        load_config("smoek")


def test_effective_config_round_trips():
    cfg = load_config("imagenet64_multiscale", ["data.prepare=synthetic", "train.seed=3"])
    again = from_yaml_text(to_yaml(cfg))
    assert flatten(again) == flatten(cfg)


def test_deepspeed_json_is_derived_from_the_config():
    cfg = load_config("smoke", ["train.global_batch_size=64", "train.zero_stage=3", "train.precision=fp32"])
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["train_batch_size"] == 64 and ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["gradient_accumulation_steps"] == 4          # 64 = 8 × 4 × 2 ranks
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False
    ds1 = deepspeed_config(cfg, world_size=1)
    assert ds1["gradient_accumulation_steps"] == 8          # the global batch stays what the config says


def test_bad_override_fails_fast_from_the_command_line():
    t0 = time.time()
    out = subprocess.run([sys.executable, "slurm/submit.py", "--exp", "smoke", "model.nonexistent=1"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    elapsed = time.time() - t0
    assert out.returncode == 2
    assert "model.nonexistent" in out.stderr
    assert elapsed < 2.0, f"took {elapsed:.2f} s"


def test_model_names_known_to_the_config_are_the_registry():
    from pipeline.config import CHOICES
    from pipeline.models import MODELS
    assert set(CHOICES["model.name"]) == set(MODELS)

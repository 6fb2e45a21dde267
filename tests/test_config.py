"""The experiment config: strict loading, overrides, validation, and the derived DeepSpeed JSON."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from helpers import REPO

from pipeline.config import (EXPERIMENTS_DIR, ConfigError, check_data_paths, config_layers, flatten, from_yaml_text,
                             load_config, to_yaml, validate)
from pipeline.train.ds_config import deepspeed_config
from slurm.config import load_job_config

ALL_EXPERIMENTS = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
TRAINING_EXPERIMENTS = [n for n in ALL_EXPERIMENTS if load_job_config(n).kind == "train"]


@pytest.mark.parametrize("name", ALL_EXPERIMENTS)
def test_every_experiment_loads(name):
    cfg = load_job_config(name)
    assert cfg.name == name and cfg.description
    if cfg.kind == "train":  # as submitted, and as trained (without the launcher's sections)
        assert cfg.train.global_batch_size % (cfg.train.micro_batch_size * cfg.slurm.ranks()) == 0
        assert load_config(name).name == name


def test_paper_sizes_are_the_configs():
    sizes = {n: load_config(n).model for n in TRAINING_EXPERIMENTS}
    assert (sizes["cifar10_pixelcnn"].layers, sizes["cifar10_pixelcnn"].hidden) == (15, 128)
    assert (sizes["cifar10_diagonal_bilstm"].layers, sizes["cifar10_diagonal_bilstm"].hidden) == (12, 128)
    assert (sizes["imagenet32_row_lstm"].layers, sizes["imagenet32_row_lstm"].hidden) == (12, 384)
    m64 = sizes["imagenet64_row_lstm"]
    assert (m64.layers, m64.hidden, m64.image_size, m64.residual) == (4, 512, 64, False)
    assert (sizes["imagenet64_multiscale"].small_size, sizes["imagenet64_multiscale"].base) == (32, "diagonal_bilstm")


def test_experiments_inherit_the_paper_setting_from_their_defaults():
    cfg = load_config("imagenet32_row_lstm")
    assert (cfg.optim.name, cfg.optim.lr, cfg.checkpoint.every) == ("rmsprop", 0.001, 2000)  # base/paper.yaml
    assert (cfg.train.global_batch_size, cfg.data.variant) == (64, "chrabaszcz-box")         # base/imagenet32.yaml
    assert [p.name for p, _ in config_layers(EXPERIMENTS_DIR / "imagenet32_row_lstm.yaml")] == [
        "paper.yaml", "imagenet32.yaml", "imagenet32_row_lstm.yaml"]


@pytest.mark.parametrize("name", [n for n in ALL_EXPERIMENTS if n != "smoke"])
def test_each_experiment_states_only_what_differs_from_its_defaults(name):
    """A key an experiment sets to the value its defaults already give is noise that hides what is special."""
    layers = config_layers(EXPERIMENTS_DIR / f"{name}.yaml")
    inherited = {}
    for _, raw in layers[:-1]:
        inherited.update(flatten_raw(raw))
    repeated = {k: v for k, v in flatten_raw(layers[-1][1]).items() if k in inherited and inherited[k] == v}
    assert not repeated, f"{name}.yaml repeats what its defaults say: {repeated}"


def flatten_raw(raw, prefix=""):
    out = {}
    for k, v in raw.items():
        if isinstance(v, dict):
            out.update(flatten_raw(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_defaults_cycle_and_unknown_base_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("defaults: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("defaults: [a.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("defaults: [papr]\n")
    with pytest.raises(ConfigError, match="'papr'.*known: .*paper"):
        load_config(str(tmp_path / "c.yaml"))


def test_a_bad_key_in_a_base_names_the_base_file(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  max_step: 3\n")
    (tmp_path / "exp.yaml").write_text("defaults: [base.yaml]\ndescription: x\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: unknown config key 'train.max_step'"):
        load_config(str(tmp_path / "exp.yaml"))


def test_override_sets_nested_value_with_its_type():
    cfg = load_config("smoke", ["train.max_steps=7", "optim.lr=0.5", "model.out_maps=32"])
    assert cfg.train.max_steps == 7 and isinstance(cfg.train.max_steps, int)
    assert cfg.optim.lr == 0.5 and cfg.model.out_maps == 32


def test_model_section_is_the_typed_config_of_the_named_architecture():
    from pipeline.models import DiagonalBiLSTMConfig, PixelCNNConfig
    cfg = load_config("cifar10_diagonal_bilstm")
    assert type(cfg.model) is DiagonalBiLSTMConfig
    with pytest.raises(ConfigError, match="unknown config key 'model.kernel' \\(model 'diagonal_bilstm'\\)"):
        load_config("cifar10_diagonal_bilstm", ["model.kernel=5"])  # the Diagonal BiLSTM has no kernel width
    switched = load_config("cifar10_diagonal_bilstm", ["model.name=pixelcnn", "model.kernel=5"])
    assert type(switched.model) is PixelCNNConfig and switched.model.kernel == 5
    with pytest.raises(ConfigError, match="'model.name' is 'row_lstmm'; did you mean 'row_lstm'"):
        load_config("smoke", ["model.name=row_lstmm"])


def test_misspelt_model_key_is_refused_at_load_time():
    """Defect: `model.extra` was a free dict, so `model.extra.residul=false` only failed inside the job."""
    with pytest.raises(ConfigError, match="unknown config key 'model.extra'"):
        load_config("smoke", ["model.extra.residul=false"])
    with pytest.raises(ConfigError, match="unknown config key 'model.residul'.*did you mean 'model.residual'"):
        load_config("smoke", ["model.residul=false"])
    with pytest.raises(ConfigError, match="'model.kernel' must be odd"):
        load_config("smoke", ["model.kernel=4"])


def test_load_config_is_pure_and_data_paths_are_checked_where_used(tmp_path):
    """Defect: loading refused a missing data.root, so tools that never read data had to fake one."""
    cfg = load_config("cifar10_row_lstm", [f"data.root={tmp_path / 'missing'}"])
    assert cfg.data.root == str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="'data.root' does not exist"):
        check_data_paths(cfg)
    check_data_paths(load_config("smoke", [f"data.root={tmp_path / 'missing'}"]))  # generated: nothing to check


@pytest.mark.parametrize("override, message", [
    ("model.nonexistent=1", "unknown config key 'model.nonexistent'"),
    ("train.zero_stag=1", "did you mean 'train.zero_stage'"),
    ("train.max_steps=abc", "'train.max_steps'"),
    ("train.precision=fp8", "'train.precision' is 'fp8'"),
    ("train.zero_stage=4", "'train.zero_stage'"),
    ("train.micro_batch_size=0", "'train.micro_batch_size' must be at least 1"),
    ("optim.name=sgd", "'optim.name'"),
    ("model.layers=0", "'model.layers' must be at least 1"),
    ("noequals", "dotted.key=value"),
])
def test_bad_config_is_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("smoke", [override])


def test_global_batch_is_checked_against_the_ranks_where_they_are_known():
    """Training's loader does not know the world size (torchrun's or the job's): it checks the micro-batch
    only; the trainer checks its world size, slurm/config.py the job's ranks (smoke: 1 node x 2 tasks)."""
    cfg = load_config("smoke", ["train.global_batch_size=24"])  # 24 = 3 micro-batches of 8
    message = r"'train.global_batch_size' \(24\) is not divisible by 'train.micro_batch_size' × ranks \(8 × 2\)"
    with pytest.raises(ConfigError, match=message):
        validate(cfg, world_size=2)
    with pytest.raises(ConfigError, match=message):
        load_job_config("smoke", ["train.global_batch_size=24"])
    with pytest.raises(ConfigError, match=r"not divisible .* \(16 × 1\)"):
        load_config("smoke", ["train.micro_batch_size=16", "train.global_batch_size=24"])


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


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_bf16_reduces_and_accumulates_gradients_in_fp32(stage):
    """DeepSpeed's bf16 default reduces and accumulates gradients in bf16; the derived JSON asks for fp32
    (accumulation at ZeRO 1-3: DeepSpeed 0.19 refuses it at ZeRO-0, see ds_config.bf16_gradients)."""
    ds = deepspeed_config(load_config("smoke", [f"train.zero_stage={stage}"]), world_size=2)
    assert ds["bf16"]["enabled"] and ds["communication_data_type"] == "fp32"
    assert ds.get("data_types") == (None if stage == 0 else {"grad_accum_dtype": "fp32"})
    for precision in ("fp32", "fp16"):  # fp32 is fp32 already; fp16 keeps DeepSpeed's loss-scaled fp16 path
        other = deepspeed_config(load_config("smoke", [f"train.zero_stage={max(stage, 1)}", "train.device=auto",
                                                       f"train.precision={precision}"]), world_size=2)
        assert "communication_data_type" not in other and "data_types" not in other


def test_bad_override_fails_fast_from_the_command_line():
    t0 = time.time()
    out = subprocess.run([sys.executable, "slurm/submit.py", "--exp", "smoke", "model.nonexistent=1"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    elapsed = time.time() - t0
    assert out.returncode == 2
    assert "model.nonexistent" in out.stderr
    assert elapsed < 2.0, f"took {elapsed:.2f} s"


def test_model_configs_known_to_the_loader_are_the_registry():
    from pipeline.models import ARCHITECTURES
    assert all(arch.config().name == name for name, arch in ARCHITECTURES.items())


def test_summary_of_an_experiment_file():
    """Defect: `python -m pipeline.models --summary configs/experiments/cifar10_row_lstm.yaml` failed with
    TypeError: unexpected keyword argument 'extra'."""
    out = subprocess.run([sys.executable, "-m", "pipeline.models", "--summary",
                          "configs/experiments/cifar10_row_lstm.yaml"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "9,358,336 parameters" in out.stdout and "'hidden': 128" in out.stdout


def test_the_training_entry_refuses_a_bad_config_in_one_line(capsys):
    """`python -m pipeline.train` (torchrun's entry) says what is wrong in one line and exits 2, as
    slurm/submit.py does, before anything starts: a misspelt key, and a preprocessing experiment."""
    from pipeline.train.__main__ import main
    assert main(["--exp", "smoke", "model.residul=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: override: unknown config key 'model.residul' (model 'row_lstm'); did you mean "
                   "'model.residual'?"]
    assert main(["--exp", "preprocess_imagenet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a preprocessing experiment" in err[0]


def test_the_renamed_collective_timeout_is_refused_by_its_old_name_and_read_back_from_old_runs():
    """train.dist_timeout_s became train.collective_timeout_s (default 300 s: a stuck rank ends the job
    within it + 60 s): the old name is refused naming the new one; a config.yaml saved before reads back."""
    assert load_config("smoke").train.collective_timeout_s == 300
    with pytest.raises(ConfigError, match=r"^override: 'train.dist_timeout_s' was renamed "
                                          r"'train.collective_timeout_s'$"):
        load_config("smoke", ["train.dist_timeout_s=60"])
    saved = to_yaml(load_config("smoke", ["train.collective_timeout_s=77"])).replace(
        "collective_timeout_s: 77", "dist_timeout_s: 77")
    assert "dist_timeout_s: 77" in saved
    assert from_yaml_text(saved).train.collective_timeout_s == 77

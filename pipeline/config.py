"""The one typed config schema of an experiment.

An experiment is a YAML file in `configs/experiments/` that fills in these dataclasses; it inherits the
paper's setting from the files its `defaults:` names (in `configs/base/`) and states only what differs.
Any key can be overridden on the command line as `dotted.key=value`. The `model:` section is the typed
config of the architecture `model.name` picks (`pipeline/models/configs.py`). Loading is strict and pure:
an unknown key, a wrong type or an impossible combination is refused at once with an error naming the key
(and the nearest valid key), before anything is built or submitted, and nothing on disk is looked at (data
paths are checked where they are used: `check_data_paths`). This module imports no torch, so refusing a
bad config is fast.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config_files import BASE_DIR, EXPERIMENTS_DIR, REPO_ROOT, ConfigError, config_layers, experiment_path
from pipeline.models.configs import CONFIGS, ModelConfig, RowLSTMConfig

__all__ = ["BASE_DIR", "EXPERIMENTS_DIR", "REPO_ROOT", "ConfigError", "ExperimentConfig", "load_config", "validate",
           "check_data_paths", "config_layers", "experiment_path", "flatten", "to_yaml", "from_yaml_text",
           "get_args_parser"]


@dataclass
class DataConfig:
    root: str = "data/shards"       # preprocessing output: <root>/<size>/<split>-000000.tar + <split>.json
    train_split: str = "train"
    val_split: str = "val"
    variant: str = "chrabaszcz-box"  # which downsampling made the data; bits/dim only compare within one variant
    num_workers: int = 2            # loader processes per rank
    shuffle_buffer: int = 1000
    on_corrupt: str = "error"       # error | skip: what a corrupt sample or shard does at training time
    # Smoke / local runs: build a small generated dataset with the real preprocessing code when root is empty.
    prepare: str = "none"           # none | synthetic | photos (crops of the photos shipped in installed wheels)
    photo_val_scenes: List[str] = field(default_factory=lambda: ["chelsea", "coffee"])  # photos: held out
    synthetic_images: int = 256
    synthetic_val_images: int = 64
    synthetic_classes: int = 4
    shard_size: int = 16


@dataclass
class OptimConfig:
    name: str = "rmsprop"           # rmsprop (the paper, Sec. 5.1) | adam
    lr: float = 1e-3
    alpha: float = 0.95             # RMSprop decay; the paper does not give its settings
    eps: float = 1e-8
    momentum: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    decay: str = "cosine"           # cosine | linear | constant, after warm-up, down to min_lr_ratio * lr
    min_lr_ratio: float = 0.1


@dataclass
class TrainConfig:
    global_batch_size: int = 64     # stays fixed whatever the world size: micro * accumulation * ranks
    micro_batch_size: int = 16      # per rank per forward
    max_steps: int = 1000           # optimizer steps
    precision: str = "bf16"         # bf16 | fp16 (GPU only) | fp32
    zero_stage: int = 2
    zero3_persistence_threshold: int = 100000  # ZeRO-3 keeps params smaller than this whole on every rank
    seed: int = 0
    log_every: int = 10
    eval_every: int = 500
    eval_max_batches: int = 0       # 0: the whole validation split
    sample_every_eval: int = 16     # images in the sample grid logged at each evaluation (0: none)
    max_nonfinite_steps: int = 10   # consecutive non-finite losses before the run stops
    dist_timeout_s: int = 600       # collective timeout: a lost rank fails the job after this long
    heartbeat_s: float = 2.0        # each rank's <run_dir>/ranks/ file is refreshed this often: names lost
                                    # ranks and nodes (pipeline/heartbeat.py); 0: none
    device: str = "auto"            # auto | cpu | cuda
    compile: str = "none"           # none | cell: fuse the recurrent layers' LSTM cell (torch.compile;
                                    # ~20 s to compile; see bench/gpu_check.py for what it buys on a GPU)


@dataclass
class CheckpointConfig:
    every: int = 500                # steps between checkpoints (and one at the end)
    keep_last: int = 3
    resume: bool = True             # resume from <output_dir>/checkpoints/latest when present


@dataclass
class TrackingConfig:
    experiment: str = "default"     # one MLflow experiment per benchmark (imagenet32, imagenet64, cifar10)
    tracking_uri: str = ""          # empty: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    run_name: str = ""              # empty: derived from model, size and precision
    codec_baselines: bool = False   # log png_/webp_bits_per_dim of the val split at the end (pipeline.codecs)


@dataclass
class SlurmConfig:
    nodes: int = 1
    gpus_per_node: int = 1          # one task per GPU; 0 on CPU-only nodes (then tasks_per_node applies)
    tasks_per_node: int = 0         # 0: = gpus_per_node
    cpus_per_task: int = 8
    mem_gb: int = 0                 # 0: the partition's default
    timeout_min: int = 60 * 24
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    signal_delay_s: int = 120       # USR2 this long before the time limit: enough to write a checkpoint
    max_num_timeout: int = 3        # requeues after a time-out (submitit's cap)
    additional: Dict[str, Any] = field(default_factory=dict)  # extra sbatch options


@dataclass
class PreprocessConfig:
    """`kind: preprocess` experiments: a SLURM array of `preprocessing build` tasks, then `finalize`."""
    source: str = ""                # folder, tar or npz file (kind auto-detected by preprocessing)
    split: str = "train"
    sizes: List[int] = field(default_factory=lambda: [32, 64])
    out: str = "data/imagenet"      # shards land in <out>/<size>/<split>-NNNNNN.tar + <split>.json
    num_tasks: int = 1              # K array tasks; task I renders blocks b with b % K == I
    workers: int = 1                # processes per task (ask slurm.cpus_per_task for as many)
    shard_size: int = 5000
    resize: str = "box"             # box | center-crop
    seed: int = 0
    val_labels: str = ""            # ImageNet val labels file, for a val split
    class_map: str = ""
    label_order: str = "wnid"       # wnid (ImageNet classes by sorted wnid, from every source) | release (npz)
    overwrite: bool = False         # only with num_tasks=1 (preprocessing refuses it for arrays)
    array_parallelism: int = 0      # at most this many tasks at once (0: all)


@dataclass
class ExperimentConfig:
    name: str = "default"
    description: str = ""
    kind: str = "train"             # train | preprocess
    output_dir: str = "runs/{name}"  # checkpoints, logs, effective config; {name} is filled in
    model: ModelConfig = field(default_factory=RowLSTMConfig)  # the class `model.name` picks (CONFIGS)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))

    def ranks(self) -> int:
        """Ranks the job runs with: nodes × tasks per node."""
        return self.slurm.nodes * (self.slurm.tasks_per_node or self.slurm.gpus_per_node or 1)


CHOICES = {
    "optim.name": ("rmsprop", "adam"),
    "optim.decay": ("cosine", "linear", "constant"),
    "train.precision": ("bf16", "fp16", "fp32"),
    "train.zero_stage": (0, 1, 2, 3),
    "train.device": ("auto", "cpu", "cuda"),
    "train.compile": ("none", "cell"),
    "data.on_corrupt": ("error", "skip"),
    "data.prepare": ("none", "synthetic", "photos"),
    "kind": ("train", "preprocess"),
    "preprocess.resize": ("box", "center-crop"),
    "preprocess.label_order": ("wnid", "release"),
}


def _schema(model_name: str) -> ExperimentConfig:
    """Defaults of an experiment whose model is `model_name` (its typed config in the `model:` section)."""
    if model_name not in CONFIGS:
        near = difflib.get_close_matches(str(model_name), sorted(CONFIGS), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ConfigError(f"'model.name' is {model_name!r}{hint}; expected one of {sorted(CONFIGS)}")
    return ExperimentConfig(model=CONFIGS[model_name]())


def _all_keys(obj: Any, prefix: str = "") -> List[str]:
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(value):
            keys += _all_keys(value, f"{prefix}{f.name}.")
    return keys


def _explain(err: OmegaConfBaseException, source: str, schema: ExperimentConfig) -> ConfigError:
    """Turn OmegaConf's message into one naming the full key and the nearest valid key."""
    full_key = getattr(err, "full_key", None) or ""
    msg = str(err).splitlines()[0]
    if "not in" in msg or "Key '" in msg and "not" in msg:
        near = difflib.get_close_matches(full_key, _all_keys(schema), n=1, cutoff=0.75)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        where = f" (model '{schema.model.name}')" if full_key.startswith("model.") else ""
        return ConfigError(f"{source}: unknown config key '{full_key}'{where}{hint}")
    return ConfigError(f"{source}: bad value for '{full_key}': {msg}")


def _model_name(layers: List[Tuple[Path, Dict[str, Any]]], overrides: List[str]) -> str:
    """`model.name` as the layers and overrides set it (last wins): it picks the `model:` schema."""
    name = ExperimentConfig().model.name
    for _, raw in layers:
        if isinstance(raw.get("model"), dict) and "name" in raw["model"]:
            name = raw["model"]["name"]
    for ov in overrides:
        if ov.split("=", 1)[0].strip() == "model.name":
            name = ov.split("=", 1)[1].strip()
    return name


def load_config(exp: str, overrides: Optional[List[str]] = None) -> ExperimentConfig:
    """Load an experiment YAML (name or path) with its defaults, apply `dotted.key=value` overrides,
    validate, return it. Pure: reads the YAML files and nothing else."""
    overrides = list(overrides or [])
    path = experiment_path(exp)
    layers = config_layers(path)
    layers[-1][1].setdefault("name", path.stem)
    schema = _schema(_model_name(layers, overrides))
    merged = OmegaConf.structured(schema)
    for source, raw in layers:
        for key, value in raw.items():  # OmegaConf cannot name a whole section of the wrong type
            if dataclasses.is_dataclass(getattr(schema, key, None)) and not isinstance(value, dict):
                raise ConfigError(f"{source}: bad value for '{key}': expected a section (a mapping of keys), "
                                  f"got {type(value).__name__}")
        try:
            merged = OmegaConf.merge(merged, raw)
        except OmegaConfBaseException as e:
            raise _explain(e, str(source), schema) from None
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' is not of the form dotted.key=value")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([ov]))
        except OmegaConfBaseException as e:
            raise _explain(e, "override", schema) from None
    cfg: ExperimentConfig = OmegaConf.to_object(merged)
    validate(cfg)
    return cfg


def validate(cfg: ExperimentConfig, world_size: Optional[int] = None) -> None:
    """Refuse impossible combinations, naming the keys involved."""
    if cfg.kind == "preprocess":  # no model is trained: only the preprocessing section matters
        validate_preprocess(cfg)
        return
    flat = flatten(cfg)
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"'{key}' is {flat[key]!r}; expected one of {list(allowed)}")
    t = cfg.train
    for key in ("train.micro_batch_size",
                "train.global_batch_size", "train.max_steps", "checkpoint.every", "checkpoint.keep_last",
                "slurm.nodes", "data.shard_size", "train.log_every", "train.eval_every"):
        if flat[key] < 1:
            raise ConfigError(f"'{key}' must be at least 1, got {flat[key]}")
    for key in ("data.num_workers", "train.zero3_persistence_threshold", "train.max_nonfinite_steps",
                "train.eval_max_batches", "train.sample_every_eval"):
        if flat[key] < 0:
            raise ConfigError(f"'{key}' must be 0 or more, got {flat[key]}")
    if t.dist_timeout_s < 1:
        raise ConfigError(f"'train.dist_timeout_s' must be at least 1 second, got {t.dist_timeout_s}")
    if t.heartbeat_s < 0:
        raise ConfigError(f"'train.heartbeat_s' must be 0 (no heartbeats) or more, got {t.heartbeat_s}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"'optim.lr' must be positive, got {cfg.optim.lr}")
    ws = world_size or cfg.ranks()
    if t.global_batch_size % (t.micro_batch_size * ws):
        raise ConfigError(
            f"'train.global_batch_size' ({t.global_batch_size}) is not divisible by "
            f"'train.micro_batch_size' × ranks ({t.micro_batch_size} × {ws})")
    if t.precision == "fp16" and t.device == "cpu":
        raise ConfigError("'train.precision' fp16 needs a GPU ('train.device' is cpu): use bf16 or fp32")
    if t.precision == "fp16" and t.zero_stage == 0:
        # DeepSpeed's ZeRO-0 fp16 optimizer keeps its fp32 master weights out of the optimizer-state
        # files that export and elastic resume read: they would get fp16-rounded weights.
        raise ConfigError("'train.precision' fp16 needs 'train.zero_stage' >= 1 (at ZeRO-0 the fp32 master "
                          "weights are not checkpointed where export reads them); ZeRO-1 costs nothing on one GPU")
    try:
        cfg.model.check()
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_data_paths(cfg: ExperimentConfig) -> None:
    """Refuse a training experiment whose data is not there (and will not be generated): checked where the
    data is used (a real submission, training, evaluation), never by `load_config`."""
    if cfg.kind == "train" and cfg.data.prepare == "none" and not Path(cfg.data.root).exists():
        raise ConfigError(f"'data.root' does not exist: {cfg.data.root} (build the shards with "
                          f"`python -m preprocessing build ... --out {cfg.data.root}`)")


def validate_preprocess(cfg: ExperimentConfig) -> None:
    """Checks of a `kind: preprocess` experiment that can be made before anything is submitted."""
    if cfg.kind not in CHOICES["kind"]:
        raise ConfigError(f"'kind' is {cfg.kind!r}; expected one of {list(CHOICES['kind'])}")
    p = cfg.preprocess
    for key in ("preprocess.resize", "preprocess.label_order"):
        value = getattr(p, key.split(".")[1])
        if value not in CHOICES[key]:
            raise ConfigError(f"'{key}' is {value!r}; expected one of {list(CHOICES[key])}")
    if not p.source:
        raise ConfigError("'preprocess.source' is empty: give the image folder, tar or npz to render")
    if not p.sizes:
        raise ConfigError("'preprocess.sizes' is empty: give at least one output size")
    for key in ("num_tasks", "workers", "shard_size"):
        if getattr(p, key) < 1:
            raise ConfigError(f"'preprocess.{key}' must be at least 1, got {getattr(p, key)}")
    if p.array_parallelism < 0:
        raise ConfigError(f"'preprocess.array_parallelism' must be 0 (all) or more, got {p.array_parallelism}")
    if p.overwrite and p.num_tasks > 1:
        raise ConfigError("'preprocess.overwrite' cannot be combined with 'preprocess.num_tasks' > 1 "
                          "(each task would delete the others' work): remove the output first")


def get_args_parser() -> argparse.ArgumentParser:
    """The training script's arguments: an experiment and its overrides (slurm/submit.py extends it)."""
    p = argparse.ArgumentParser("pipeline.train", add_help=True)
    p.add_argument("--exp", required=True, help="experiment name in configs/experiments/ or a YAML path")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the experiment config")
    return p


def flatten(cfg: Any, prefix: str = "") -> Dict[str, Any]:
    """Dataclass -> {'model.hidden': 128, ...}, for MLflow params and error messages."""
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out.update(flatten(v, f"{prefix}{f.name}."))
        elif isinstance(v, dict):  # slurm.additional: the mapping and each of its keys
            out[f"{prefix}{f.name}"] = v
            for k, sub in v.items():
                out[f"{prefix}{f.name}.{k}"] = sub
        else:
            out[f"{prefix}{f.name}"] = v
    return out


def to_yaml(cfg: ExperimentConfig) -> str:
    """The effective config as YAML, saved with every run."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def from_yaml_text(text: str) -> ExperimentConfig:
    """Rebuild a config saved by `to_yaml` (e.g. beside a checkpoint)."""
    raw = yaml.safe_load(text)
    name = (raw.get("model") or {}).get("name", ExperimentConfig().model.name)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(_schema(name)), raw))

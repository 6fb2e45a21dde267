"""What a submission adds to the training experiment: how the job is launched (`slurm:`) and, for
`kind: preprocess` experiments, the preprocessing array (`preprocess:`), with every check that needs them.

`JobConfig` composes the training schema (`pipeline.config.ExperimentConfig`) with these two sections and
is what slurm/submit.py loads (`load_job_config`) and hands to the job: the training code sees an
`ExperimentConfig` (MLflow params and the saved config.yaml include the `slurm.*` keys). The experiment
files are the same for training under torchrun, whose loader drops these sections unread: their keys are
checked here. Torch-free, so refusing a bad submission is fast.

    from slurm.config import load_job_config
    cfg = load_job_config("imagenet64_multiscale", ["slurm.nodes=8"])
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from pipeline.config import CHOICES, ConfigError, ExperimentConfig, compose, validate


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

    def ranks_per_node(self) -> int:
        """Tasks on each node: one per GPU; on CPU-only nodes (`gpus_per_node: 0`) `tasks_per_node` (or 1)."""
        return self.tasks_per_node or self.gpus_per_node or 1

    def ranks(self) -> int:
        """Ranks the training job runs with: nodes × tasks per node."""
        return self.nodes * self.ranks_per_node()


@dataclass
class PreprocessConfig:
    """`kind: preprocess` experiments: a SLURM array of `preprocessing build` tasks, then `finalize`. Each
    field is a keyword argument of `preprocessing.build` (`build_kwargs`) unless it is in `ARRAY_ONLY`."""
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


# PreprocessConfig fields that shape the SLURM array and are no argument of `preprocessing.build`.
ARRAY_ONLY = ("array_parallelism",)

# preprocessing's own RESIZE_METHODS and LABEL_ORDERS (tests/test_slurm_config.py keeps them equal),
# written out so that refusing a bad submission does not import preprocessing (numpy, PIL).
PREPROCESS_CHOICES = {
    "preprocess.resize": ("box", "center-crop"),
    "preprocess.label_order": ("wnid", "release"),
}


@dataclass
class JobConfig(ExperimentConfig):
    """An experiment as submitted: the training schema plus its launcher sections."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)


def build_kwargs(p: PreprocessConfig) -> Dict[str, Any]:
    """`preprocessing.build`'s keyword arguments from the config: every field but `ARRAY_ONLY`, a path left
    empty (a field whose default is '') as None. A task adds its own `task_id`."""
    out = {}
    for f in dataclasses.fields(p):
        if f.name in ARRAY_ONLY:
            continue
        value = getattr(p, f.name)
        out[f.name] = None if value == "" and f.default == "" else value
    return out


def load_job_config(exp: str, overrides: Optional[List[str]] = None) -> JobConfig:
    """Load an experiment YAML (name or path) for submission: the training experiment and its `slurm:` and
    `preprocess:` sections, with the overrides, validated (`validate_job`). Pure: reads the YAML files only."""
    cfg = compose(exp, overrides, JobConfig)
    if cfg.kind == "train":
        validate_slurm(cfg.slurm)
        cfg.train.device = job_device(cfg.train.device, cfg.slurm)
    validate_job(cfg)
    return cfg


def job_device(device: str, s: SlurmConfig) -> str:
    """The device a training job expects, from its launch layout: cuda when it asks for GPUs
    (`slurm.gpus_per_node > 0`: the job then refuses to start without CUDA instead of falling back to the
    CPU, pipeline.train.distributed.resolve_device), cpu on CPU-only nodes. An explicit `train.device`
    that contradicts the layout is refused."""
    if s.gpus_per_node > 0:
        if device == "cpu":
            raise ConfigError(f"'train.device' is cpu but 'slurm.gpus_per_node' is {s.gpus_per_node}: the GPUs "
                              "would sit idle; set slurm.gpus_per_node=0 for a CPU job (or train.device=cuda)")
        return "cuda"
    if device == "cuda":
        raise ConfigError("'train.device' is cuda but 'slurm.gpus_per_node' is 0: the job would get no GPU; "
                          "set slurm.gpus_per_node (or --gpus-per-node) to the GPUs of each node")
    return "cpu"


def validate_job(cfg: JobConfig) -> None:
    """Refuse a submission that cannot run: a preprocessing array (`validate_preprocess`), or a training job
    (`validate_slurm`, then training's own checks with the job's ranks)."""
    if cfg.kind == "preprocess":  # no model is trained: only the preprocessing section matters
        validate_preprocess(cfg)
        return
    validate_slurm(cfg.slurm)
    job_device(cfg.train.device, cfg.slurm)
    validate(cfg, world_size=cfg.slurm.ranks())


def validate_slurm(s: SlurmConfig) -> None:
    """Checks of a training job's layout: at least one node, one task per GPU, resources that exist."""
    for key in ("nodes", "cpus_per_task", "timeout_min"):
        if getattr(s, key) < 1:
            raise ConfigError(f"'slurm.{key}' must be at least 1, got {getattr(s, key)}")
    for key in ("gpus_per_node", "tasks_per_node", "mem_gb", "signal_delay_s", "max_num_timeout"):
        if getattr(s, key) < 0:
            raise ConfigError(f"'slurm.{key}' must be 0 or more, got {getattr(s, key)}")
    if s.signal_delay_s >= 60 * s.timeout_min:
        raise ConfigError(f"'slurm.signal_delay_s' ({s.signal_delay_s} s) is not shorter than the time limit "
                          f"'slurm.timeout_min' ({s.timeout_min} min): the time-out signal would stop the job "
                          "as soon as it starts")
    if s.gpus_per_node and s.tasks_per_node and s.tasks_per_node != s.gpus_per_node:
        raise ConfigError(f"'slurm.tasks_per_node' ({s.tasks_per_node}) differs from 'slurm.gpus_per_node' "
                          f"({s.gpus_per_node}): training runs one task per GPU; leave tasks_per_node at 0")


def validate_preprocess(cfg: JobConfig) -> None:
    """Checks of a `kind: preprocess` experiment that can be made before anything is submitted."""
    if cfg.kind not in CHOICES["kind"]:
        raise ConfigError(f"'kind' is {cfg.kind!r}; expected one of {list(CHOICES['kind'])}")
    p = cfg.preprocess
    for key, allowed in PREPROCESS_CHOICES.items():
        value = getattr(p, key.split(".")[1])
        if value not in allowed:
            raise ConfigError(f"'{key}' is {value!r}; expected one of {list(allowed)}")
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

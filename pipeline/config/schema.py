"""The typed sections of an experiment config (dataclasses): what an experiment YAML fills in for training.

`pipeline/config/loading.py` merges the YAML files and overrides into these; the `model:` section is the
typed config of the architecture `model.name` picks (`pipeline/models/configs.py`). How a run is launched
(`slurm:`) and preprocessing arrays (`preprocess:`) are the launcher's sections: slurm/config.py. Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Dict, List, Tuple

from pipeline.models.configs import ModelConfig, RowLSTMConfig


@dataclass
class DataConfig:
    root: str = "data/shards"       # preprocessing output: <root>/<size>/<split>-000000.tar + <split>.json
    train_split: str = "train"
    val_split: str = "val"
    # Splits evaluated once, at the end of the run, beside val_split: the model's bits/dim (and, with
    # tracking.codec_baselines, the codecs') logged as <split>_bits_per_dim, ... (photos32: heldout, a source
    # never trained on). Each must exist before training starts.
    test_splits: List[str] = field(default_factory=list)
    variant: str = "chrabaszcz-box"  # which downsampling made the data; bits/dim only compare within one variant
    num_workers: int = 2            # loader processes per rank
    shuffle_buffer: int = 1000
    on_corrupt: str = "error"       # error | skip: what a corrupt sample or shard does at training time
    # Smoke / local runs: build a small generated dataset with the real preprocessing code when root is empty.
    # none | synthetic | photos (crops of the photos shipped in installed wheels) | fashion_mnist |
    # fashion_mnist_binarized (threshold 127): Debian's dataset-fashion-mnist, train -> train_split, t10k -> val_split
    prepare: str = "none"
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
    collective_timeout_s: int = 300  # process-group timeout (gloo and NCCL): a silent or stuck rank fails
                                    # the job after this long (+ ~60 s to end it; README: failures)
    heartbeat_s: float = 2.0        # each rank's <run_dir>/ranks/ file is refreshed this often: names lost
                                    # ranks and nodes (pipeline/train/heartbeat.py); 0: none
    device: str = "auto"            # auto | cpu | cuda (a SLURM job: cuda when it asks for GPUs, else cpu)
    tf32: bool = False              # GPU fp32 matmuls and cuDNN convolutions in TF32 (faster, 10-bit mantissa)
                                    # instead of full fp32 (pipeline/train/numerics.py)
    deterministic: bool = False     # deterministic kernels only (torch.use_deterministic_algorithms, cuDNN):
                                    # reproducible GPU runs, slower; CPU runs are bit-exact either way
    compile: str = "none"           # none | cell: fuse the recurrent layers' LSTM cell (torch.compile;
                                    # ~20 s to compile; see bench/gpu_check.py for what it buys on a GPU)
                                    # | layer: compile each recurrent layer whole (fullgraph, issue 21)


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
    codec_baselines: bool = False   # log png_/webp_bits_per_dim of the val split at the end (pipeline.tracking.baselines)
    # A point of a sweep (slurm/sweep.py sets these): its MLflow run is a child (nested) of the sweep's
    # parent run, tagged with the sweep's name and the point's own `key=value` overrides.
    parent_run_id: str = ""
    sweep: str = ""
    sweep_overrides: List[str] = field(default_factory=list)


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

    # Top-level sections of the experiment files that belong to the launcher (slurm/config.py: JobConfig
    # composes this schema with them). Training knows them by name only: loading into a schema that does
    # not declare them drops them unread (their keys are checked by the launcher's loader), so an
    # experiment is the same file under torchrun and through slurm/submit.py.
    launcher_sections: ClassVar[Tuple[str, ...]] = ("slurm", "preprocess")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))


# Keys that were renamed: an experiment or override using the old name is refused naming the new one, and a
# config.yaml saved by an earlier run reads back under the new name.
RENAMED: Dict[str, str] = {"train.dist_timeout_s": "train.collective_timeout_s"}

CHOICES = {
    "optim.name": ("rmsprop", "adam"),
    "optim.decay": ("cosine", "linear", "constant"),
    "train.precision": ("bf16", "fp16", "fp32"),
    "train.zero_stage": (0, 1, 2, 3),
    "train.device": ("auto", "cpu", "cuda"),
    "train.compile": ("none", "cell", "layer"),
    "data.on_corrupt": ("error", "skip"),
    "data.prepare": ("none", "synthetic", "photos", "fashion_mnist", "fashion_mnist_binarized"),
    "kind": ("train", "preprocess"),  # preprocess: a launcher-only experiment (slurm/config.py), never trained
}

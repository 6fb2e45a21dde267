"""The typed config schema of a training experiment: dataclasses (`schema.py`), which YAML files make an
experiment (`files.py`: `defaults:` inheritance), and strict, pure loading with dotted overrides
(`loading.py`, generic over the schema: slurm/config.py composes this one with its launch sections).
Torch-free, so refusing a bad config is fast.

    from pipeline.config import load_config
    cfg = load_config("imagenet32_row_lstm", ["train.zero_stage=3"])
"""
from pipeline.config.files import (BASE_DIR, EXPERIMENTS_DIR, REPO_ROOT, ConfigError, config_layers, experiment_path,
                                   list_experiments)
from pipeline.config.loading import (check_data_paths, compose, flatten, from_yaml_text, get_args_parser, load_config,
                                     to_yaml, validate)
from pipeline.config.schema import (CHOICES, CheckpointConfig, DataConfig, ExperimentConfig, OptimConfig,
                                    TrackingConfig, TrainConfig)

__all__ = ["BASE_DIR", "EXPERIMENTS_DIR", "REPO_ROOT", "ConfigError", "config_layers", "experiment_path",
           "list_experiments", "check_data_paths", "compose", "flatten", "from_yaml_text", "get_args_parser",
           "load_config", "to_yaml", "validate", "CHOICES", "CheckpointConfig", "DataConfig", "ExperimentConfig",
           "OptimConfig", "TrackingConfig", "TrainConfig"]

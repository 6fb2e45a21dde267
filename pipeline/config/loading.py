"""Loading an experiment into a typed config schema.

An experiment is a YAML file in `configs/experiments/` that fills in the schema's dataclasses; it inherits
the paper's setting from the files its `defaults:` names (in `configs/base/`) and states only what differs.
Any key can be overridden on the command line as `dotted.key=value`. The `model:` section is the typed
config of the architecture `model.name` picks (`pipeline/models/configs.py`). Loading is strict and pure:
an unknown key, a wrong type or an impossible combination is refused at once with an error naming the key
(and the nearest valid key), before anything is built or submitted, and nothing on disk is looked at (data
paths are checked where they are used: `check_data_paths`). This module imports no torch, so refusing a
bad config is fast.

`compose` is generic over the schema: training loads `ExperimentConfig` (`load_config`), the launcher its
`JobConfig`, which adds the `slurm:` and `preprocess:` sections (slurm/config.py: `load_job_config`). The
same experiment files feed both: a section the schema names in `launcher_sections` but does not declare is
dropped unread, so training knows those sections by name only and the launcher's loader checks their keys.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple, Type, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config.files import BASE_DIR, EXPERIMENTS_DIR, REPO_ROOT, ConfigError, config_layers, experiment_path
from pipeline.config.schema import CHOICES, RENAMED, ExperimentConfig
from pipeline.models.configs import ARCHITECTURES

__all__ = ["BASE_DIR", "EXPERIMENTS_DIR", "REPO_ROOT", "ConfigError", "ExperimentConfig", "compose", "load_config",
           "validate", "check_data_paths", "config_layers", "experiment_path", "flatten", "to_yaml",
           "from_yaml_text", "get_args_parser"]

S = TypeVar("S", bound=ExperimentConfig)


def _schema(model_name: str) -> ExperimentConfig:
    """Defaults of an experiment whose model is `model_name` (its typed config in the `model:` section)."""
    if model_name not in ARCHITECTURES:
        near = difflib.get_close_matches(str(model_name), sorted(ARCHITECTURES), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ConfigError(f"'model.name' is {model_name!r}{hint}; expected one of {sorted(ARCHITECTURES)}")
    return ExperimentConfig(model=ARCHITECTURES[model_name].config())


def _defaults(schema: Type[S], model_name: str) -> S:
    """Defaults of `schema` (ExperimentConfig or a launcher's subclass) with the model `model_name`."""
    return schema(model=_schema(model_name).model)


def _foreign(schema: Type[ExperimentConfig]) -> Set[str]:
    """Top-level sections that belong to another schema's owner: named by `schema`, not declared in it."""
    return set(schema.launcher_sections) - {f.name for f in dataclasses.fields(schema)}


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
    if full_key in RENAMED:
        return ConfigError(f"{source}: '{full_key}' was renamed '{RENAMED[full_key]}'")
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
    """Load an experiment YAML (name or path) for training: its defaults, then `dotted.key=value` overrides,
    validated (`validate`, without a world size: the global batch is checked against the ranks where they
    are known, by the trainer and by slurm/config.py). Pure: reads the YAML files and nothing else."""
    cfg = compose(exp, overrides, ExperimentConfig)
    validate(cfg)
    return cfg


def compose(exp: str, overrides: Optional[List[str]], schema: Type[S]) -> S:
    """An experiment YAML (name or path) with its defaults and `dotted.key=value` overrides, merged strictly
    into `schema` (unknown keys and wrong types refused) and not validated otherwise: the caller validates
    (`load_config`; slurm/config.py `load_job_config`). Sections `_foreign` to `schema` are dropped unread."""
    foreign = _foreign(schema)
    overrides = [ov for ov in overrides or [] if ov.split("=", 1)[0].split(".", 1)[0].strip() not in foreign]
    path = experiment_path(exp)
    layers = [(source, {k: v for k, v in raw.items() if k not in foreign}) for source, raw in config_layers(path)]
    layers[-1][1].setdefault("name", path.stem)
    defaults = _defaults(schema, _model_name(layers, overrides))
    merged = OmegaConf.structured(defaults)
    for source, raw in layers:
        for key, value in raw.items():  # OmegaConf cannot name a whole section of the wrong type
            if dataclasses.is_dataclass(getattr(defaults, key, None)) and not isinstance(value, dict):
                raise ConfigError(f"{source}: bad value for '{key}': expected a section (a mapping of keys), "
                                  f"got {type(value).__name__}")
        try:
            merged = OmegaConf.merge(merged, raw)
        except OmegaConfBaseException as e:
            raise _explain(e, str(source), defaults) from None
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' is not of the form dotted.key=value")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([ov]))
        except OmegaConfBaseException as e:
            raise _explain(e, "override", defaults) from None
    return OmegaConf.to_object(merged)


def validate(cfg: ExperimentConfig, world_size: Optional[int] = None) -> None:
    """Refuse a config that cannot be trained, naming the keys involved. `world_size`: the ranks it runs
    with (the trainer's, or the job's in slurm/config.py); None at load time, when the ranks are not known
    yet and the global batch is only checked against the micro-batch (one rank)."""
    if cfg.kind == "preprocess":
        raise ConfigError(f"'{cfg.name}' is a preprocessing experiment (kind: preprocess): there is no model to "
                          f"train; submit it with `python slurm/submit.py --exp {cfg.name}`")
    flat = flatten(cfg)
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"'{key}' is {flat[key]!r}; expected one of {list(allowed)}")
    t = cfg.train
    for key in ("train.micro_batch_size",
                "train.global_batch_size", "train.max_steps", "checkpoint.every", "checkpoint.keep_last",
                "data.shard_size", "train.log_every", "train.eval_every"):
        if flat[key] < 1:
            raise ConfigError(f"'{key}' must be at least 1, got {flat[key]}")
    for key in ("data.num_workers", "train.zero3_persistence_threshold", "train.max_nonfinite_steps",
                "train.eval_max_batches", "train.sample_every_eval"):
        if flat[key] < 0:
            raise ConfigError(f"'{key}' must be 0 or more, got {flat[key]}")
    if t.collective_timeout_s < 1:
        raise ConfigError(f"'train.collective_timeout_s' must be at least 1 second, got {t.collective_timeout_s}")
    if t.heartbeat_s < 0:
        raise ConfigError(f"'train.heartbeat_s' must be 0 (no heartbeats) or more, got {t.heartbeat_s}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"'optim.lr' must be positive, got {cfg.optim.lr}")
    ws = world_size or 1
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
        elif isinstance(v, dict):  # e.g. slurm.additional: the mapping and each of its keys
            out[f"{prefix}{f.name}"] = v
            for k, sub in v.items():
                out[f"{prefix}{f.name}.{k}"] = sub
        else:
            out[f"{prefix}{f.name}"] = v
    return out


def to_yaml(cfg: ExperimentConfig) -> str:
    """The effective config as YAML, saved with every run."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def from_yaml_text(text: str, schema: Type[S] = ExperimentConfig) -> S:
    """Rebuild a config saved by `to_yaml` (e.g. beside a checkpoint) as `schema`; a config saved by a
    launcher's schema (with `slurm:`) reads as the training one, without those sections."""
    foreign = _foreign(schema)
    raw = {k: v for k, v in yaml.safe_load(text).items() if k not in foreign}
    for old_key, new_key in RENAMED.items():  # a config saved before the rename
        section, old_name = old_key.split(".")
        if old_name in (raw.get(section) or {}):
            raw[section][new_key.split(".")[1]] = raw[section].pop(old_name)
    name = (raw.get("model") or {}).get("name", ExperimentConfig().model.name)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(_defaults(schema, name)), raw))

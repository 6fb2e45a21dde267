"""Builds the DeepSpeed engine: model wrapped as its bits/dim objective, optimizer, LR schedule."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from pipeline.config import ExperimentConfig, OptimConfig
from pipeline.models import build_model, compile_cells, compile_layers
from pipeline.models.objective import BitsPerDim
from pipeline.train.optim import RMSprop


def model_config(cfg: ExperimentConfig) -> Dict[str, Any]:
    """The model's typed config as a dict (`build_model(**it)` rebuilds it), as saved with every checkpoint."""
    return dataclasses.asdict(cfg.model)


def build(cfg: ExperimentConfig) -> torch.nn.Module:
    """The model the config describes (same initialisation on every rank: seed first)."""
    return build_model(cfg.model)


def make_optimizer(o: OptimConfig, params) -> torch.optim.Optimizer:
    """RMSprop as in the paper (its settings are not given there), or Adam."""
    if o.name == "rmsprop":  # torch's update, state named so that elastic resume can convert it
        return RMSprop(params, lr=o.lr, alpha=o.alpha, eps=o.eps, momentum=o.momentum,
                       weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def lr_lambda(o: OptimConfig, max_steps: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine or linear decay to min_lr_ratio (or constant)."""
    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.decay == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, max_steps - o.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if o.decay == "cosine" else 1 - progress
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * shape
    return f


def initialize(cfg: ExperimentConfig, ds_config: Dict[str, Any]) -> Tuple[Any, torch.nn.Module]:
    """(DeepSpeed engine, bare model). The engine's forward returns per-sample bits/dim."""
    import deepspeed  # only after resolve_device set DS_ACCELERATOR, which DeepSpeed reads at import
    torch.manual_seed(cfg.train.seed)
    model = build(cfg)
    if cfg.train.compile == "cell":
        compile_cells(model)
    elif cfg.train.compile == "layer":
        compile_layers(model)
    objective = BitsPerDim(model)
    optimizer = make_optimizer(cfg.optim, objective.parameters())
    schedule = lr_lambda(cfg.optim, cfg.train.max_steps)
    engine, _, _, _ = deepspeed.initialize(
        model=objective, optimizer=optimizer, config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))
    return engine, model


def loss_scale(engine) -> Optional[float]:
    """fp16's current dynamic loss scale; None in bf16 and fp32 (where DeepSpeed keeps a constant 1.0).
    The ZeRO optimizers call it cur_scale; ZeRO-0's FP16_UnfusedOptimizer has only loss_scale."""
    if not engine.fp16_enabled():
        return None
    for name in ("cur_scale", "loss_scale"):
        value = getattr(engine.optimizer, name, None)
        if value is not None:
            return float(value.item() if hasattr(value, "item") else value)
    return None

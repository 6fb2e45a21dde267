"""The DeepSpeed JSON, derived from the experiment config (the one source of truth)."""
from __future__ import annotations

from typing import Any, Dict

from pipeline.config import ExperimentConfig


def gradient_accumulation(cfg: ExperimentConfig, world_size: int) -> int:
    """Micro-batches per optimizer step so that micro × accumulation × ranks = the global batch."""
    t = cfg.train
    return t.global_batch_size // (t.micro_batch_size * world_size)


def deepspeed_config(cfg: ExperimentConfig, world_size: int, load_universal: bool = False) -> Dict[str, Any]:
    """DeepSpeed settings for this experiment at this world size."""
    t = cfg.train
    ds: Dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation(cfg, world_size),
        "gradient_clipping": cfg.optim.grad_clip,
        "bf16": {"enabled": t.precision == "bf16"},
        # DeepSpeed's dynamic loss scaling for fp16, with its usual defaults written out.
        "fp16": {"enabled": t.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "zero_optimization": {"stage": t.zero_stage},
        # The optimizer is a torch one (RMSprop as in the paper, or Adam) handed to deepspeed.initialize.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9,   # our own progress line replaces DeepSpeed's
        "wall_clock_breakdown": False,
        "checkpoint": {"load_universal": load_universal},
    }
    if t.precision == "bf16":
        ds.update(bf16_gradients(t.zero_stage))
    if t.zero_stage == 3:
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = t.zero3_persistence_threshold
    return ds


def bf16_gradients(zero_stage: int) -> Dict[str, Any]:
    """bf16 runs reduce gradients across ranks in fp32 and, at ZeRO 1-3, accumulate them over micro-batches
    in fp32. DeepSpeed's defaults do both in bf16 (8-bit mantissa): a sum over 64 ranks, or over many
    micro-batches, loses the small contributions. At ZeRO-1 DeepSpeed then uses its BF16 optimizer (fp32
    gradient buffers), at ZeRO-2/3 an fp32 gradient partition; at ZeRO-0 DeepSpeed 0.19 refuses fp32
    accumulation with bf16 parameters ("unsupported mix"), so there only the reduction is fp32."""
    out: Dict[str, Any] = {"communication_data_type": "fp32"}
    if zero_stage >= 1:
        out["data_types"] = {"grad_accum_dtype": "fp32"}
    return out

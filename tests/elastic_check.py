"""Run under torchrun by tests/test_elastic.py: resume a checkpoint written at another world size through
the real path (universal conversion, load_universal engine, checkpoint.load), then compare the engine's
full fp32 weights with the source checkpoint's consolidated weights, and its optimizer state with the
converted state, exactly. Prints one JSON line on rank 0."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

from pipeline.config import load_config
from pipeline.train import checkpoint as ckpt
from pipeline.train.distributed import dist_env, init_distributed, resolve_device
from pipeline.train.ds_config import deepspeed_config
from pipeline.train.engine import initialize
from pipeline.train.weights import consolidated_state


def main() -> None:
    ckpt_dir, overrides = Path(sys.argv[1]), sys.argv[2:]
    cfg = load_config("smoke", overrides)
    env = dist_env()
    init_distributed(env, resolve_device("cpu"), 120)
    tag = ckpt.latest_tag(ckpt_dir)
    if env.is_main:  # the source's weights, consolidated without any universal conversion
        _, expected = consolidated_state(ckpt_dir / tag)
    utag = ckpt.universal_tag(ckpt_dir, tag, env.rank)
    engine, _ = initialize(cfg, deepspeed_config(cfg, env.world_size, load_universal=True))
    client = ckpt.load(engine, ckpt_dir, utag, env.rank)
    weights_equal, state_equal, state_nonzero, names = True, True, True, 0
    for name, p in engine.module.named_parameters():
        full = safe_get_full_fp32_param(p)            # collective under ZeRO-3: every rank calls it
        sq = safe_get_full_optimizer_state(p, "exp_avg_sq")
        if env.is_main:
            names += 1
            weights_equal &= torch.equal(full.cpu(), expected[name.removeprefix("model.")])
            saved_sq = torch.load(ckpt_dir / utag / "zero" / name / "exp_avg_sq.pt", weights_only=False)
            saved_sq = saved_sq["param"] if isinstance(saved_sq, dict) else saved_sq  # ZeRO-1/2 vs 3 layout
            state_equal &= torch.equal(sq.cpu().reshape(saved_sq.shape), saved_sq)
            state_nonzero &= bool(sq.abs().sum() > 0)
    if env.is_main:
        print(json.dumps({"params": names, "weights_equal": bool(weights_equal), "state_equal": bool(state_equal),
                          "state_nonzero": bool(state_nonzero), "global_steps": engine.global_steps,
                          "client_step": client["step"], "world_size": env.world_size}))


if __name__ == "__main__":
    main()

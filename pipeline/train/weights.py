"""Consolidated fp32 weights from a (ZeRO-partitioned) DeepSpeed checkpoint, loadable without DeepSpeed.

`python -m pipeline.tools.export RUN/checkpoints OUT.pt` writes {"config": model config, "state_dict": ...};
`load_checkpoint_model` reads either form back. Nothing is ever unpickled beyond tensors and plain
containers (`torch.load(..., weights_only=True)`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from pipeline.models import build_model
from pipeline.models.objective import BitsPerDim
from pipeline.train.checkpoint import CheckpointError, latest_tag, read_meta


def _resolve(path: Path) -> Tuple[Path, str]:
    """A checkpoints folder (use `latest`) or one tag folder inside it -> (folder, tag)."""
    if (path / "meta.json").exists():
        return path.parent, path.name
    tag = latest_tag(path)
    if tag is None:
        raise CheckpointError(f"{path} holds no complete checkpoint (no `latest`)")
    return path, tag


def consolidated_state(ckpt: Path) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """(model config, fp32 state dict) from a DeepSpeed checkpoint, whatever its ZeRO stage."""
    # DeepSpeed (4-5 s to import) only for its partitioned checkpoints: a model.pt needs none of it
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    folder, tag = _resolve(Path(ckpt))
    meta = read_meta(folder, tag)
    if any((folder / tag).glob("*optim_states.pt")):  # ZeRO (or bf16) partitions hold the fp32 master weights
        sd = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag)
    else:  # ZeRO-0 fp32: the module's own weights are the master weights
        states = torch.load(folder / tag / "mp_rank_00_model_states.pt", weights_only=True, map_location="cpu")
        sd = states["module"]
    # DeepSpeed saved the training objective's state dict; the model's keys are inside it
    sd = {k: v.float().contiguous() for k, v in BitsPerDim.model_state_dict(sd).items()}
    return meta["model"], sd


def load_checkpoint_model(path: str | Path, device: str = "cpu") -> torch.nn.Module:
    """A model from an exported .pt file or a DeepSpeed checkpoint folder."""
    path = Path(path)
    if path.is_file():
        blob = torch.load(path, weights_only=True, map_location=device)
        config, sd = blob["config"], blob["state_dict"]
    else:
        config, sd = consolidated_state(path)
    config = dict(config)
    model = build_model(config.pop("name"), **config)
    model.load_state_dict(sd)
    return model.to(device)

"""The training objective: a model wrapped as its per-sample bits/dim (Sec. 5.1: discrete NLL)."""
from __future__ import annotations

from typing import Dict, Mapping, TypeVar

import torch

T = TypeVar("T")


class BitsPerDim(torch.nn.Module):
    """The training objective: forward(x uint8) -> per-sample bits/dim (Sec. 5.1: discrete NLL).

    DeepSpeed calls `forward`, so its hooks (ZeRO-3 parameter gathering, precision casts) see the whole
    model; the model itself stays a plain `pipeline.models` module under `.model`. DeepSpeed checkpoints
    therefore hold the objective's state dict: `model_state_dict` gives back the model's.
    """

    PREFIX = "model."  # the state-dict keys of `self.model` below start with its attribute name

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.bits_per_dim(x)

    @classmethod
    def model_state_dict(cls, state: Mapping[str, T]) -> Dict[str, T]:
        """The wrapped model's state dict from an objective's: each key without `PREFIX` (a key that
        lacks it is kept as it is)."""
        return {k.removeprefix(cls.PREFIX): v for k, v in state.items()}

"""The training objective: a model wrapped as its per-sample bits/dim (Sec. 5.1: discrete NLL)."""
from __future__ import annotations

import torch


class BitsPerDim(torch.nn.Module):
    """The training objective: forward(x uint8) -> per-sample bits/dim (Sec. 5.1: discrete NLL).

    DeepSpeed calls `forward`, so its hooks (ZeRO-3 parameter gathering, precision casts) see the whole
    model; the model itself stays a plain `pipeline.models` module under `.model`.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.bits_per_dim(x)

"""PixelCNN (PixelRNN paper, Section 3.3): a stack of masked 3x3 convolutions in residual blocks."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import LayerCacheMixin, PixelRNNBase
from .configs import PixelCNNConfig
from .masks import MaskedConv2d


class ResidualBlock(LayerCacheMixin, nn.Module):
    """Figure 5 block: 2h -> ReLU, 1x1 -> h -> ReLU, 3x3 (mask B) -> h -> ReLU, 1x1 -> 2h, plus input.

    With `cond_maps` (multi-scale conditional part), an unmasked 1x1 conv of the conditioning
    map is added to the 3x3 conv's output, the PixelCNN analogue of the input-to-state map.
    """

    def __init__(self, hidden: int, kernel: int = 3, residual: bool = True, cond_maps: int = 0, colours: int = 3):
        super().__init__()
        h = hidden
        self.hidden, self.kernel, self.residual = h, kernel, residual
        self.down = MaskedConv2d(2 * h, h, 1, "B", colours=colours)
        self.conv = MaskedConv2d(h, h, kernel, "B", colours=colours)
        self.up = MaskedConv2d(h, 2 * h, 1, "B", colours=colours)
        self.cond_proj = nn.Conv2d(cond_maps, h, 1) if cond_maps else None

    def forward(self, v: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        t = self.conv(F.relu(self.down(F.relu(v))))
        if self.cond_proj is not None:
            t = t + self.cond_proj(cond)
        out = self.up(F.relu(t))
        return v + out if self.residual else out

    # Incremental sampling: the 3x3 conv's (post-ReLU) input map is cached; a new pixel
    # writes its own entry and reads the 2 x k window (row above + current row) around it.
    def init_cache(self, batch: int, height: int, width: int, cond: Optional[torch.Tensor]) -> Dict[str, Any]:
        """Zero-padded cache of the 3x3 conv input and pre-masked, flattened weights."""
        w = self.down.weight
        p = self.kernel // 2
        return {
            "a": torch.zeros(batch, self.hidden, height + p, width + 2 * p, dtype=w.dtype, device=w.device),
            "w_down": self.down.masked_weight().flatten(1),
            "w_conv": self.conv.masked_weight()[:, :, : p + 1].flatten(1),
            "w_up": self.up.masked_weight().flatten(1),
            "cond": None if self.cond_proj is None else self.cond_proj(cond),
        }

    def step(self, cache: Dict[str, Any], v: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """Block output at pixel (i, j) from its input v [B, 2h]."""
        p, k = self.kernel // 2, self.kernel
        a = cache["a"]
        a[:, :, i + p, j + p] = F.relu(F.linear(F.relu(v), cache["w_down"], self.down.bias))
        t = F.linear(a[:, :, i:i + p + 1, j:j + k].flatten(1), cache["w_conv"], self.conv.bias)
        if cache["cond"] is not None:
            t = t + cache["cond"][:, :, i, j]
        out = F.linear(F.relu(t), cache["w_up"], self.up.bias)
        return v + out if self.residual else out


class PixelCNN(PixelRNNBase):
    """7x7 mask-A conv, `layers` residual blocks of 3x3 mask-B convs, output head."""

    name = "pixelcnn"

    def __init__(self, cfg: PixelCNNConfig):
        super().__init__(cfg)
        self.set_layers(ResidualBlock(cfg.hidden, cfg.kernel, cfg.residual, cfg.cond_maps, cfg.channels)
                        for _ in range(cfg.layers))

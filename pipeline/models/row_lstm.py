"""Row LSTM (PixelRNN paper, Section 3.1, Figure 2 centre).

Processes the image row by row. The input-to-state map K^is * x for ALL rows is one
masked 1 x k convolution (k = 3 columns along the row, mask B); the state-to-state map is a
k-wide 1-D convolution of the previous row's hidden state only, so it never reads the
current or the next row. Its receptive field is a triangle above the pixel.
All rows are one scan (`scan.LSTMScan`): a row is one matmul of the row above's im2col buffer with the
k-wide kernel and the cell. `impl` picks it or the code before issue 21
(`reference.py`): by default the scan on CUDA and under torch.compile, the reference on CPU.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import LayerCacheMixin, PixelRNNBase, gate_groups, lstm_cell
from .configs import RowLSTMConfig
from .masks import MaskedConv2d
from .reference import row_lstm_forward, runs_reference
from .scan import lstm_scan


class RowLSTMLayer(LayerCacheMixin, nn.Module):
    """One Row LSTM layer on a 2h-map input, with residual 1x1 (h -> 2h) and learned initial state."""

    def __init__(self, hidden: int, kernel: int = 3, residual: bool = True, cond_maps: int = 0, colours: int = 3):
        super().__init__()
        h = hidden
        self.hidden, self.kernel, self.residual = h, kernel, residual
        # Gate channel k of [o, f, i, g] gets the colour group of hidden channel k mod h, so
        # colour causality holds through the recurrence (Section 3.4).
        self.input_to_state = MaskedConv2d(2 * h, 4 * h, (1, kernel), "B", out_groups=gate_groups(h, 4, colours),
                                           colours=colours)
        # Reads only row i-1, whose pixels all precede row i: no mask needed (Table 4: "no mask").
        bound = 1.0 / math.sqrt(h * kernel)
        self.state_to_state = nn.Parameter(torch.empty(4 * h, h, kernel).uniform_(-bound, bound))
        self.h0 = nn.Parameter(torch.zeros(h))  # learned initial state (the row above row 0)
        self.c0 = nn.Parameter(torch.zeros(h))
        self.state_to_output = MaskedConv2d(h, 2 * h, 1, "B", colours=colours)  # residual connection h -> 2h
        self.cond_proj = nn.Conv2d(cond_maps, 4 * h, 1) if cond_maps else None
        self.cell = lstm_cell  # train.compile=cell swaps in a fused one (base.compile_cells)
        self.impl = "auto"  # scan on CUDA and under compile, reference on CPU; or "scan" | "reference"

    def forward(self, v: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        if runs_reference(self.impl, v):
            return row_lstm_forward(self, v, cond)
        b, _, n, w = v.shape
        h, k = self.hidden, self.kernel
        gis = self.input_to_state(v)  # [B, 4h, n, w], all rows at once
        if self.cond_proj is not None:
            gis = gis + self.cond_proj(cond)
        # Scan slot s of column j reads column j + k//2 - s of the row above: conv1d's tap k-1-s.
        w_ss = self.state_to_state.flip(2).permute(2, 1, 0).reshape(1, k * h, 4 * h)
        h0, c0 = (s.view(1, 1, 1, h).expand(1, w, b, h) for s in (self.h0, self.c0))
        hs = lstm_scan(gis.permute(2, 3, 0, 1).unsqueeze(1), c0, h0, w_ss, k, k // 2)  # [n, 1, w, B, h]
        out = self.state_to_output(hs.squeeze(1).permute(2, 3, 0, 1))
        return v + out if self.residual else out

    # Incremental sampling: h/c maps with row 0 = initial state (index i+1 = image row i) and
    # zero column padding exactly like conv1d's; the layer input's current row is cached too.
    def init_cache(self, batch: int, height: int, width: int, cond: Optional[torch.Tensor]) -> Dict[str, Any]:
        """Cached input row, hidden and cell maps, and pre-masked flattened weights."""
        p, h = self.kernel // 2, self.hidden
        kw = dict(dtype=self.h0.dtype, device=self.h0.device)
        hm = torch.zeros(batch, h, height + 1, width + 2 * p, **kw)
        hm[:, :, 0, p:p + width] = self.h0[None, :, None]
        cm = torch.zeros(batch, h, height + 1, width, **kw)
        cm[:, :, 0] = self.c0[None, :, None]
        return {
            "x": torch.zeros(batch, 2 * h, height, width + p, **kw), "h": hm, "c": cm,
            "w_is": self.input_to_state.masked_weight()[:, :, 0, : p + 1].flatten(1),
            "w_ss": self.state_to_state.flatten(1),
            "w_out": self.state_to_output.masked_weight().flatten(1),
            "cond": None if self.cond_proj is None else self.cond_proj(cond),
        }

    def step(self, cache: Dict[str, Any], v: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """Layer output at pixel (i, j): reads input (i, j-p..j) and hidden (i-1, j-p..j+p)."""
        p, k = self.kernel // 2, self.kernel
        x, hm, cm = cache["x"], cache["h"], cache["c"]
        x[:, :, i, j + p] = v
        gates = (F.linear(x[:, :, i, j:j + p + 1].flatten(1), cache["w_is"], self.input_to_state.bias)
                 + F.linear(hm[:, :, i, j:j + k].flatten(1), cache["w_ss"]))
        if cache["cond"] is not None:
            gates = gates + cache["cond"][:, :, i, j]
        h, c = self.cell(gates, cm[:, :, i, j])
        hm[:, :, i + 1, j + p] = h
        cm[:, :, i + 1, j] = c
        out = F.linear(h, cache["w_out"], self.state_to_output.bias)
        return v + out if self.residual else out


class RowLSTM(PixelRNNBase):
    """7x7 mask-A conv, `layers` Row LSTM layers, output head."""

    name = "row_lstm"

    def __init__(self, cfg: RowLSTMConfig):
        super().__init__(cfg)
        self.set_layers(RowLSTMLayer(cfg.hidden, cfg.kernel, cfg.residual, cfg.cond_maps, cfg.channels)
                        for _ in range(cfg.layers))

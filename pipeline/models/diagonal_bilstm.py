"""Diagonal BiLSTM (PixelRNN paper, Section 3.2, Figure 3).

Each direction skews its input-to-state map (row r shifted right by r) and runs an LSTM
along the columns of the skewed map, i.e. along the image's diagonals; the state-to-state
map is a 2x1 convolution of the previous column (the left pixel and the pixel above).
The right-to-left direction runs on the mirrored map; its output is shifted down one row
before it is added, so no pixel sees the future. Receptive field: the whole upper context.
Both directions advance in one scan (`scan.LSTMScan`) over the skewed map column by column at a fixed
height n: every step has the same shapes, the cells outside the image are frozen, and a step is one
batched matmul (both directions, left and upper neighbour) and the cell. `impl` picks it or the code
before issue 21 (`reference.py`, the tests' oracle): by default the scan on CUDA, the reference on CPU.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import PixelRNNBase, gate_groups, lstm_cell
from .configs import DiagonalBiLSTMConfig
from .masks import MaskedLinear
from .reference import diagonal_bilstm_forward, runs_reference
from .scan import freeze_gates, lstm_scan


@functools.lru_cache(maxsize=None)
def scan_indices(n: int, device: torch.device) -> Tuple[torch.Tensor, ...]:
    """Index tensors of the fixed-height scan of an n x n map (built once per (n, device)).

    The scan runs T = 2n - 1 skewed columns (diagonals) at height n; cell (t, d, r) is pixel (r, t - r) of
    direction d's map (d = 1: the mirrored map), or the frozen "pixel" n*n outside the image. Returns
    (pixel [T, 2, n], direction [T, 2, n]: the gather of the gate pre-activations; edges [n*n, 2, 2]:
    1 where direction d's left (s = 0) / upper (s = 1) neighbour is the learned initial state; step
    [2, n*n], side [2, 1], row [2, n*n]: the cell each raster pixel reads from each direction, the
    right-to-left one shifted down one row (row 0 reads a frozen cell, whose h is exactly 0)). An n = 1
    map gets one more, frozen, column so that a frozen cell exists.
    """
    steps = 2 * n - 1 + (n == 1)
    t = torch.arange(steps, device=device)[:, None]
    r = torch.arange(n, device=device)[None, :]
    j = t - r
    valid = (j >= 0) & (j < n)
    pixel = torch.stack([torch.where(valid, r * n + j, n * n), torch.where(valid, r * n + (n - 1 - j), n * n)], 1)
    direction = torch.tensor([0, 1], device=device)[None, :, None].expand_as(pixel).contiguous()
    i, jj = torch.arange(n * n, device=device).div(n, rounding_mode="floor"), torch.arange(n * n, device=device) % n
    edges = torch.stack([torch.stack([jj == 0, i == 0], -1), torch.stack([jj == n - 1, i == 0], -1)], 1)
    frozen_t = torch.full_like(i, steps - 1)
    step = torch.stack([i + jj, torch.where(i > 0, (i - 1) + (n - 1 - jj), frozen_t)])
    row = torch.stack([i, torch.where(i > 0, i - 1, 0)])
    return pixel, direction, edges.to(torch.get_default_dtype()), step, direction[0, :, :1], row


@functools.lru_cache(maxsize=None)
def _frozen(hidden: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return freeze_gates(hidden, dtype, device).repeat(2)  # both directions' [o, f, i, g]


class DiagonalBiLSTMLayer(nn.Module):
    """Both directions of one Diagonal BiLSTM layer, residual 1x1 (h -> 2h), learned initial state."""

    def __init__(self, hidden: int, residual: bool = True, cond_maps: int = 0, colours: int = 3):
        super().__init__()
        h = hidden
        self.hidden, self.residual = h, residual
        # One 1x1 mask-B conv gives both directions' [o, f, i, g] (8h maps). A 1x1 conv commutes
        # with mirroring, so the right-to-left half is computed on the unmirrored input. The
        # layer works pixel-major ([n*n, B, C]), so its 1x1 convs are MaskedLinear modules.
        self.input_to_state = MaskedLinear(2 * h, 8 * h, "B", out_groups=gate_groups(h, 8, colours), colours=colours)
        # [direction, (left-pixel h ; above-pixel h), 4h]: the 2x1 column kernel of the skewed
        # map. It reads only earlier pixels, so it is unmasked (Table 4).
        bound = 1.0 / math.sqrt(2 * h)
        self.state_to_state = nn.Parameter(torch.empty(2, 2 * h, 4 * h).uniform_(-bound, bound))
        self.h0 = nn.Parameter(torch.zeros(2, h))  # learned state left of column 0 / above row 0
        self.c0 = nn.Parameter(torch.zeros(2, h))
        self.state_to_output = MaskedLinear(h, 2 * h, "B", colours=colours)
        self.cond_proj = nn.Linear(cond_maps, 8 * h) if cond_maps else None
        self.cell = lstm_cell  # train.compile=cell swaps in a fused one (base.compile_cells)
        self.impl = "auto"  # scan on CUDA and under compile, reference on CPU; or "scan" | "reference"

    def forward(self, v: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        if runs_reference(self.impl, v):
            return diagonal_bilstm_forward(self, v, cond)
        b, _, n, _ = v.shape
        h = self.hidden
        # Child modules are called as modules (DeepSpeed ZeRO-3 gathers their weights in __call__).
        gis = self.input_to_state(v.flatten(2).permute(2, 0, 1))  # pixel-major [n*n, B, 8h]
        if self.cond_proj is not None:
            gis = gis + self.cond_proj(cond.flatten(2).permute(2, 0, 1))
        pixel, direction, edges, step, side, row = scan_indices(n, v.device)
        w = self.state_to_state
        # The learned initial state as a left / upper neighbour is a constant term of the gates of the
        # first column / row: added here, so the scan's states outside the image can be exactly 0.
        h0w = torch.einsum("dk,dskj->dsj", self.h0, w.view(2, 2, h, 4 * h))
        gis = gis.view(n * n, b, 2, 4 * h) + torch.einsum("pds,dsj->pdj", edges.to(h0w.dtype), h0w)[:, None]
        frozen = _frozen(h, gis.dtype, gis.device).view(1, 1, 2, 4 * h).expand(1, b, 2, 4 * h)
        g = torch.cat([gis, frozen])[pixel, :, direction]  # [T, 2, n, B, 4h]: the skewed maps, fixed height
        hs = lstm_scan(g, self.c0[:, None, None].expand(2, n, b, h), None, w, 2, 0)  # [T, 2, n, B, h]
        # Back to raster order; the right-to-left output shifted down one row (row i sees rows < i only).
        out = self.state_to_output(hs[step, side, row].sum(0))  # [n*n, B, 2h]
        out = out.permute(1, 2, 0).reshape(b, 2 * h, n, n)
        return v + out if self.residual else out

    # Incremental sampling. Left-to-right state at (i, j) needs (i, j-1) and (i-1, j) only; the
    # right-to-left pass of row i runs once row i is complete (its output reaches row i+1 only).
    def init_cache(self, batch: int, height: int, width: int, cond: Optional[torch.Tensor]) -> Dict[str, Any]:
        """Padded state maps of both directions, the layer input, and flattened weights."""
        h = self.hidden
        kw = dict(dtype=self.h0.dtype, device=self.h0.device)
        hl = torch.zeros(batch, h, height + 1, width + 1, **kw)  # pixel (i, j) at [i+1, j+1]
        hl[:, :, 0, :] = self.h0[0, None, :, None]
        hl[:, :, :, 0] = self.h0[0, None, :, None]
        cl = torch.zeros(batch, h, height, width + 1, **kw)  # pixel (i, j) at [i, j+1]
        cl[:, :, :, 0] = self.c0[0, None, :, None]
        hr = torch.zeros(batch, h, height + 1, width + 1, **kw)  # pixel (i, j) at [i+1, j]
        hr[:, :, 0, :] = self.h0[1, None, :, None]
        hr[:, :, :, width] = self.h0[1, None, :, None]
        cr = torch.zeros(batch, h, height, width + 1, **kw)  # pixel (i, j) at [i, j]
        cr[:, :, :, width] = self.c0[1, None, :, None]
        return {
            "x": torch.zeros(batch, 2 * h, height, width, **kw), "hl": hl, "cl": cl, "hr": hr, "cr": cr,
            "w_is": self.input_to_state.masked_weight().flatten(1),
            "w_out": self.state_to_output.masked_weight().flatten(1),
            "cond": None if self.cond_proj is None else self.cond_proj(cond.movedim(1, -1)).movedim(-1, 1),
        }

    def step(self, cache: Dict[str, Any], v: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """Layer output at pixel (i, j): new left-to-right state + right-to-left state of (i-1, j)."""
        h = self.hidden
        hl, cl = cache["hl"], cache["cl"]
        cache["x"][:, :, i, j] = v
        gates = F.linear(v, cache["w_is"][: 4 * h], self.input_to_state.bias[: 4 * h])
        gates = gates + torch.cat([hl[:, :, i + 1, j], hl[:, :, i, j + 1]], 1) @ self.state_to_state[0]
        if cache["cond"] is not None:
            gates = gates + cache["cond"][:, : 4 * h, i, j]
        hn, cn = self.cell(gates, cl[:, :, i, j])
        hl[:, :, i + 1, j + 1] = hn
        cl[:, :, i, j + 1] = cn
        if i > 0:
            hn = hn + cache["hr"][:, :, i, j]
        out = F.linear(hn, cache["w_out"], self.state_to_output.bias)
        return v + out if self.residual else out

    def end_row(self, cache: Dict[str, Any], i: int) -> None:
        """Right-to-left pass over the finished row i (input-to-state for the whole row at once)."""
        h = self.hidden
        hr, cr = cache["hr"], cache["cr"]
        gis = F.linear(cache["x"][:, :, i].transpose(1, 2), cache["w_is"][4 * h:], self.input_to_state.bias[4 * h:])
        if cache["cond"] is not None:
            gis = gis + cache["cond"][:, 4 * h:, i].transpose(1, 2)
        for j in range(hr.shape[3] - 2, -1, -1):
            gates = gis[:, j] + torch.cat([hr[:, :, i + 1, j + 1], hr[:, :, i, j]], 1) @ self.state_to_state[1]
            hr[:, :, i + 1, j], cr[:, :, i, j] = self.cell(gates, cr[:, :, i, j + 1])


class DiagonalBiLSTM(PixelRNNBase):
    """7x7 mask-A conv, `layers` Diagonal BiLSTM layers, output head."""

    name = "diagonal_bilstm"

    def __init__(self, cfg: DiagonalBiLSTMConfig):
        super().__init__(cfg)
        self.set_layers(DiagonalBiLSTMLayer(cfg.hidden, cfg.residual, cfg.cond_maps, cfg.channels)
                        for _ in range(cfg.layers))

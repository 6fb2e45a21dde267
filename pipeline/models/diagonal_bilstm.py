"""Diagonal BiLSTM (PixelRNN paper, Section 3.2, Figure 3).

Each direction skews its input-to-state map (row r shifted right by r) and runs an LSTM
along the columns of the skewed map, i.e. along the image's diagonals; the state-to-state
map is a 2x1 convolution of the previous column (the left pixel and the pixel above).
The right-to-left direction runs on the mirrored map; its output is shifted down one row
before it is added, so no pixel sees the future. Receptive field: the whole upper context.
Both directions share one recurrence (stacked on a leading dim, one batched matmul per step).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import PixelRNNBase, gate_groups, lstm_cell
from .configs import DiagonalBiLSTMConfig
from .masks import MaskedLinear
from .skew import skew, unskew


def diagonal_lengths(n: int) -> List[int]:
    """Number of pixels on each of the 2n - 1 diagonals (skewed columns) of an n x n map."""
    return [min(t, n - 1) - max(0, t - n + 1) + 1 for t in range(2 * n - 1)]


@functools.lru_cache(maxsize=None)
def diagonal_order(n: int, device: torch.device) -> Tuple[torch.Tensor, ...]:
    """Index vectors between raster order and skewed-column (diagonal) order of an n x n map.

    Returns (l2r, r2l, l2r_inv, r2l_inv): position k of the diagonal order is raster pixel
    l2r[k] (for the mirrored map of the right-to-left direction: r2l[k]); *_inv map back.
    The order is defined by `skew`: the valid cells of the skewed map read column by column,
    top to bottom (each column is one step of the recurrence); `unskew` gives the inverse.
    Built once per (n, device) and cached: eager forwards then make no index work at all. Every shape
    here is static (a stable sort, not a boolean selection), so the GPU never waits for the host and a
    CUDA graph capture or torch.compile of the layer can contain it.
    """
    ids = skew(torch.arange(1, n * n + 1, device=device).view(n, n))
    flat = ids.t().flatten()
    valid_first = torch.argsort((flat == 0).to(torch.int32), stable=True)[: n * n]  # order kept
    l2r = flat[valid_first] - 1
    rank = torch.zeros(n * n + 1, dtype=torch.long, device=device)
    rank[l2r + 1] = torch.arange(n * n, device=device)
    l2r_inv = unskew(rank[ids]).flatten()
    mirror = torch.arange(n * n, device=device).view(n, n).flip(1).flatten()  # (r, j) -> (r, n-1-j)
    return l2r, mirror[l2r], l2r_inv, l2r_inv[mirror]


class DiagonalBiLSTMLayer(nn.Module):
    """Both directions of one Diagonal BiLSTM layer, residual 1x1 (h -> 2h), learned initial state."""

    def __init__(self, hidden: int, residual: bool = True, cond_maps: int = 0):
        super().__init__()
        h = hidden
        self.hidden, self.residual = h, residual
        # One 1x1 mask-B conv gives both directions' [o, f, i, g] (8h maps). A 1x1 conv commutes
        # with mirroring, so the right-to-left half is computed on the unmirrored input. The
        # layer works pixel-major ([n*n, B, C]), so its 1x1 convs are MaskedLinear modules.
        self.input_to_state = MaskedLinear(2 * h, 8 * h, "B", out_groups=gate_groups(h, 8))
        # [direction, (left-pixel h ; above-pixel h), 4h]: the 2x1 column kernel of the skewed
        # map. It reads only earlier pixels, so it is unmasked (Table 4).
        bound = 1.0 / math.sqrt(2 * h)
        self.state_to_state = nn.Parameter(torch.empty(2, 2 * h, 4 * h).uniform_(-bound, bound))
        self.h0 = nn.Parameter(torch.zeros(2, h))  # learned state left of column 0 / above row 0
        self.c0 = nn.Parameter(torch.zeros(2, h))
        self.state_to_output = MaskedLinear(h, 2 * h, "B")
        self.cond_proj = nn.Linear(cond_maps, 8 * h) if cond_maps else None
        self.cell = lstm_cell  # train.compile=cell swaps in a fused one (base.compile_cells)

    def forward(self, v: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, _, n, _ = v.shape
        h = self.hidden
        # Child modules are called as modules (DeepSpeed ZeRO-3 gathers their weights in __call__).
        # Pixel-major [n*n, B, C]: gathering whole pixels into diagonal order is a row gather.
        gis = self.input_to_state(v.flatten(2).permute(2, 0, 1))  # [n*n, B, 8h]
        if self.cond_proj is not None:
            gis = gis + self.cond_proj(cond.flatten(2).permute(2, 0, 1))
        l2r, r2l, l2r_inv, r2l_inv = diagonal_order(n, v.device)
        # The right-to-left half is read in mirrored order (the skew of the mirrored map).
        # (split/unbind rather than slicing: their backward is one cat instead of zero-fill + copy)
        g_l2r, g_r2l = gis.split(4 * h, -1)
        gis = torch.stack([g_l2r.index_select(0, l2r), g_r2l.index_select(0, r2l)])
        left, right = self._recurrence(gis.split(diagonal_lengths(n), 1), b, n).unbind(0)  # diagonal order
        right = right.index_select(0, r2l_inv)
        right = F.pad(right, (0, 0, 0, 0, n, 0))[: n * n]  # shift down one row: row i sees rows < i only
        out = self.state_to_output(left.index_select(0, l2r_inv) + right)  # [n*n, B, 2h]
        out = out.permute(1, 2, 0).contiguous().view(b, 2 * h, n, n)
        return v + out if self.residual else out

    def _recurrence(self, diags: Tuple[torch.Tensor, ...], b: int, n: int) -> torch.Tensor:
        """LSTM along the skewed columns (diagonals); diags[t]: [2, m_t, B, 4h], valid rows only.

        Column t holds rows lo..hi (pixel (r, t - r)); a row's left neighbour is row r of
        column t-1, the pixel above is row r-1 of column t-1 (the 2x1 state-to-state kernel).
        """
        h = self.hidden
        h0 = self.h0[:, None, None, :].expand(2, 1, b, h)
        c0 = self.c0[:, None, None, :].expand(2, 1, b, h)
        w_left, w_above = self.state_to_state.split(h, 1)
        hp = cp = None  # previous column's states [2, m_prev, B, h], rows lo_prev..hi_prev
        outs = []
        # cat/split only (no slicing): their backward is views or one cat, never zero-fill + copy.
        for t, gis_t in enumerate(diags):
            m = gis_t.shape[1]
            if hp is None:
                left = above = h0
                c_left = c0
            elif t < n:  # row t starts here: its left neighbour is the initial state (and row 0's above)
                left, above = torch.cat([hp, h0], 1), torch.cat([h0, hp], 1)
                c_left = torch.cat([cp, c0], 1)
            else:  # rows lo..n-1: left = rows lo..n-1 of the previous column, above = rows lo-1..n-2
                left, above = hp.split([1, m], 1)[1], hp.split([m, 1], 1)[0]
                c_left = cp.split([1, m], 1)[1]
            # [2, m, B, *] -> [2, m*B, *] is a view (m and B adjacent): batched matmuls over directions.
            gates = torch.baddbmm(gis_t.reshape(2, m * b, 4 * h), left.reshape(2, m * b, h), w_left)
            gates = torch.baddbmm(gates, above.reshape(2, m * b, h), w_above)
            hp, cp = self.cell(gates.view(2, m, b, 4 * h), c_left)
            outs.append(hp)
        return torch.cat(outs, 1)

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
        self.set_layers(DiagonalBiLSTMLayer(cfg.hidden, cfg.residual, cfg.cond_maps) for _ in range(cfg.layers))

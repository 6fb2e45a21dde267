"""The recurrent layers' whole-image forward as it was before issue 21: the reference path and oracle.

The new forward of each recurrent layer is the fixed-height scan of `scan.py`; this module keeps
the earlier code (one diagonal or one row per step, built from autograd ops) so that the tests can
check the scan against it (equal to 1e-6 in float32 and 1e-12 in float64, gradients too) and the
benchmarks can time both in one run. `use_reference(model)` switches every recurrent layer of a
model to it (`layer.impl = "reference"`; "scan" forces the scan, "auto" picks by device, see
`runs_reference`); the incremental pass (`init_cache`/`step`/`end_row`) is the
same for both paths.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .skew import skew, unskew

IMPLS = ("auto", "scan", "reference")


def runs_reference(impl: str, v: torch.Tensor) -> bool:
    """Whether a layer set to `impl` runs the reference path on input v.

    "auto" (the default) runs the scan where operator launches set the pace (CUDA, or under torch.compile,
    which needs the scan's static shapes) and the reference on CPU eager, where the scan is slower at
    training sizes (docs/performance.md, issue 21: the fixed-height scan computes the Diagonal BiLSTM's
    (2n - 1) x n cells instead of n x n, and its layouts cost large transposing copies on CPU).
    """
    if impl == "auto":
        return not (v.is_cuda or torch.compiler.is_compiling())
    return impl == "reference"


def use_reference(model: nn.Module, impl: str = "reference") -> int:
    """Set `impl` on every recurrent layer of `model`; returns how many layers were changed."""
    if impl not in IMPLS:
        raise ValueError(f"unknown recurrent-layer implementation {impl!r}; choose from {IMPLS}")
    layers = [m for m in model.modules() if hasattr(m, "impl")]
    for m in layers:
        m.impl = impl
    return len(layers)


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


def diagonal_bilstm_forward(layer: nn.Module, v: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
    """`DiagonalBiLSTMLayer` forward, one diagonal (of its valid cells only) per step."""
    b, _, n, _ = v.shape
    h = layer.hidden
    # Child modules are called as modules (DeepSpeed ZeRO-3 gathers their weights in __call__).
    # Pixel-major [n*n, B, C]: gathering whole pixels into diagonal order is a row gather.
    gis = layer.input_to_state(v.flatten(2).permute(2, 0, 1))  # [n*n, B, 8h]
    if layer.cond_proj is not None:
        gis = gis + layer.cond_proj(cond.flatten(2).permute(2, 0, 1))
    l2r, r2l, l2r_inv, r2l_inv = diagonal_order(n, v.device)
    # The right-to-left half is read in mirrored order (the skew of the mirrored map).
    # (split/unbind rather than slicing: their backward is one cat instead of zero-fill + copy)
    g_l2r, g_r2l = gis.split(4 * h, -1)
    gis = torch.stack([g_l2r.index_select(0, l2r), g_r2l.index_select(0, r2l)])
    left, right = _diagonal_recurrence(layer, gis.split(diagonal_lengths(n), 1), b, n).unbind(0)
    right = right.index_select(0, r2l_inv)
    right = F.pad(right, (0, 0, 0, 0, n, 0))[: n * n]  # shift down one row: row i sees rows < i only
    out = layer.state_to_output(left.index_select(0, l2r_inv) + right)  # [n*n, B, 2h]
    out = out.permute(1, 2, 0).contiguous().view(b, 2 * h, n, n)
    return v + out if layer.residual else out


def _diagonal_recurrence(layer: nn.Module, diags: Tuple[torch.Tensor, ...], b: int, n: int) -> torch.Tensor:
    """LSTM along the skewed columns (diagonals); diags[t]: [2, m_t, B, 4h], valid rows only.

    Column t holds rows lo..hi (pixel (r, t - r)); a row's left neighbour is row r of
    column t-1, the pixel above is row r-1 of column t-1 (the 2x1 state-to-state kernel).
    """
    h = layer.hidden
    h0 = layer.h0[:, None, None, :].expand(2, 1, b, h)
    c0 = layer.c0[:, None, None, :].expand(2, 1, b, h)
    w_left, w_above = layer.state_to_state.split(h, 1)
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
        hp, cp = layer.cell(gates.view(2, m, b, 4 * h), c_left)
        outs.append(hp)
    return torch.cat(outs, 1)


def row_lstm_forward(layer: nn.Module, v: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
    """`RowLSTMLayer` forward, one row per step (a conv1d of the row above and the cell)."""
    b, _, n, w = v.shape
    gis = layer.input_to_state(v)  # [B, 4h, n, w], all rows at once
    if layer.cond_proj is not None:
        gis = gis + layer.cond_proj(cond)
    h = layer.h0[None, :, None].expand(b, -1, w)
    c = layer.c0[None, :, None].expand(b, -1, w)
    rows = []
    for gis_i in gis.unbind(2):  # unbind: per-row slicing would make backward quadratic
        gates = gis_i + F.conv1d(h, layer.state_to_state, padding=layer.kernel // 2)
        h, c = layer.cell(gates, c, dim=1)
        rows.append(h)
    out = layer.state_to_output(torch.stack(rows, 2))
    return v + out if layer.residual else out

"""Skewing of feature maps for the Diagonal BiLSTM (PixelRNN paper, Section 3.2, Figure 3).

Row r of an n x m map is shifted right by r positions, giving an n x (m + n - 1) map whose
columns are the diagonals of the original. Both directions are pure pad/flatten/reshape
(no Python loop over rows), so they are cheap and differentiable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def skew(x: torch.Tensor) -> torch.Tensor:
    """[..., n, m] -> [..., n, m + n - 1], out[..., r, r + j] = x[..., r, j], zeros elsewhere."""
    *lead, n, m = x.shape
    # Padding each row to length m + n and re-reading the flat buffer with row length
    # m + n - 1 moves row r right by exactly r (it loses one element per preceding row).
    flat = F.pad(x, (0, n)).reshape(*lead, n * (m + n))
    return flat[..., : n * (m + n - 1)].reshape(*lead, n, m + n - 1)


def unskew(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `skew`: [..., n, w] -> [..., n, w - n + 1], out[..., r, j] = x[..., r, r + j]."""
    *lead, n, w = x.shape
    m = w - n + 1
    flat = F.pad(x.reshape(*lead, n * w), (0, n))
    return flat.reshape(*lead, n, w + 1)[..., :m]

"""Masked convolutions (PixelRNN paper, Section 3.4).

Feature maps are split into three colour groups (R, G, B), or one for a grayscale image (then
mask A and B are the plain PixelCNN masks: the centre hidden, resp. fully visible). A kernel may read every pixel
strictly before the centre in raster order; at the centre pixel, mask A lets a group read
only *earlier* colours (first layer), mask B also lets it read *itself* (all later layers).
Pixels after the centre are always hidden.

Group assignment is explicit (a vector of group ids per channel) so that gate stacks such
as [o, f, i, g] (4h maps) can give gate channel k the group of hidden channel k mod h.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F


def color_groups(channels: int, colours: int = 3) -> torch.Tensor:
    """Colour group (0=R, 1=G, 2=B) of each of `channels` maps: `colours` contiguous blocks."""
    return torch.arange(channels) * colours // channels


def _mask(out_groups: torch.Tensor, in_groups: torch.Tensor, kh: int, kw: int, self_connect: bool) -> torch.Tensor:
    mask = torch.zeros(len(out_groups), len(in_groups), kh, kw)
    ci, cj = kh // 2, kw // 2
    mask[:, :, :ci, :] = 1  # rows above the centre
    mask[:, :, ci, :cj] = 1  # left of the centre, same row
    if self_connect:
        centre = out_groups[:, None] >= in_groups[None, :]
    else:
        centre = out_groups[:, None] > in_groups[None, :]
    mask[:, :, ci, cj] = centre.float()
    return mask


def mask_a(out_channels: int, in_channels: int, kh: int, kw: int,
           out_groups: Optional[torch.Tensor] = None, in_groups: Optional[torch.Tensor] = None,
           colours: int = 3) -> torch.Tensor:
    """Mask A [out, in, kh, kw]: at the centre a group sees strictly earlier colours only."""
    og = color_groups(out_channels, colours) if out_groups is None else out_groups
    ig = color_groups(in_channels, colours) if in_groups is None else in_groups
    return _mask(og, ig, kh, kw, self_connect=False)


def mask_b(out_channels: int, in_channels: int, kh: int, kw: int,
           out_groups: Optional[torch.Tensor] = None, in_groups: Optional[torch.Tensor] = None,
           colours: int = 3) -> torch.Tensor:
    """Mask B [out, in, kh, kw]: at the centre a group sees earlier colours and itself."""
    og = color_groups(out_channels, colours) if out_groups is None else out_groups
    ig = color_groups(in_channels, colours) if in_groups is None else in_groups
    return _mask(og, ig, kh, kw, self_connect=True)


class MaskedConv2d(nn.Conv2d):
    """'Same'-padded conv whose weight is multiplied by a fixed mask A or B at every call.

    Masking at call time (not once at init) keeps masked weights exactly zero in the
    computation whatever the optimizer or a checkpoint loader writes into them.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Union[int, Tuple[int, int]],
                 mask_type: str, out_groups: Optional[torch.Tensor] = None,
                 in_groups: Optional[torch.Tensor] = None, bias: bool = True, colours: int = 3):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        super().__init__(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2), bias=bias)
        make = {"A": mask_a, "B": mask_b}[mask_type]
        self.register_buffer("mask", make(out_channels, in_channels, kh, kw, out_groups, in_groups, colours),
                             persistent=False)

    def masked_weight(self) -> torch.Tensor:
        """The weight actually used: weight * mask."""
        return self.weight * self.mask.to(self.weight.dtype)  # DeepSpeed bf16 casts params, not buffers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.masked_weight(), self.bias, padding=self.padding)


class MaskedLinear(nn.Linear):
    """A 1x1 masked conv (mask A or B) applied to channels-last input [..., in_channels].

    Used where a layer already works pixel-major: one GEMM over all pixels, no NCHW
    round trip (torch's CPU conv takes a slow im2col path for 1x1 kernels at small batch).
    """

    def __init__(self, in_channels: int, out_channels: int, mask_type: str,
                 out_groups: Optional[torch.Tensor] = None, in_groups: Optional[torch.Tensor] = None,
                 bias: bool = True, colours: int = 3):
        super().__init__(in_channels, out_channels, bias=bias)
        make = {"A": mask_a, "B": mask_b}[mask_type]
        self.register_buffer("mask", make(out_channels, in_channels, 1, 1, out_groups, in_groups, colours)[:, :, 0, 0],
                             persistent=False)

    def masked_weight(self) -> torch.Tensor:
        """The weight actually used: weight * mask."""
        return self.weight * self.mask.to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.bias)

"""Multi-Scale PixelRNN (PixelRNN paper, Section 3.5).

An unconditional PixelRNN models the s x s image (s = n/2 by default); a conditional
PixelRNN models the n x n image given it. A deconvolution network upsamples the s x s image
into a c x n x n map; every layer of the conditional part adds it, through its own unmasked
1x1 conv (4h maps; 8h for the two BiLSTM directions; h for a PixelCNN block's 3x3 output),
to its input-to-state map.

Choices the paper leaves open (documented here):
* the small image is the box mean of each f x f block (f = n/s) of the uint8 image,
  rounded half up in integer arithmetic: (sum + f^2 // 2) // f^2;
* bits_per_dim = (NLL bits of the small image + NLL bits of the large image given it)
  / (C n^2): the total code length of both stages per large-image sub-pixel. It is an upper
  bound on the large image's NLL (the small image is a function of the large one).

Its exact incremental pass (`walk`, the protocol of `base.PixelRNNBase.walk`) has two stages: the
small image (stage 0), then the large image given the upsampled small image (stage 1).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from .base import Chooser, nll_bits, scale_input
from .configs import MultiScaleConfig, build_model


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """uint8 [B, C, n, n] -> uint8 [B, C, n/f, n/f]: rounded (half up) mean of each f x f block."""
    b, c, n, _ = x.shape
    s = n // factor
    sums = x.long().view(b, c, s, factor, s, factor).sum((3, 5))
    return ((sums + factor * factor // 2) // (factor * factor)).to(torch.uint8)


class Upsampler(nn.Module):
    """Deconvolution network: s x s image -> c x n x n map (3x3 conv, then one stride-2
    transposed conv per factor of 2). Unmasked: the whole small image is known."""

    def __init__(self, cond_maps: int, factor: int, channels: int = 3, levels: int = 256):
        super().__init__()
        self.levels = levels
        steps = int(round(math.log2(factor)))  # a power of 2: MultiScaleConfig.check
        mods: list = [nn.Conv2d(channels, cond_maps, 3, padding=1), nn.ReLU()]
        for _ in range(steps):
            mods += [nn.ConvTranspose2d(cond_maps, cond_maps, 4, stride=2, padding=1), nn.ReLU()]
        self.net = nn.Sequential(*mods)

    def forward(self, small: torch.Tensor) -> torch.Tensor:
        return self.net(scale_input(small, self.net[0].weight.dtype, self.levels))


class MultiScalePixelRNN(nn.Module):
    """Unconditional `base` model on the small image + conditional `base` model on the large one."""

    name = "multiscale"

    def __init__(self, cfg: MultiScaleConfig):
        super().__init__()
        cfg.check()
        cfg = dataclasses.replace(cfg, small_size=cfg.small(), cond_maps=cfg.cond_maps or cfg.hidden)  # 0: auto
        self.config: Dict[str, Any] = dataclasses.asdict(cfg)
        self.image_size, self.small_size = cfg.image_size, cfg.small_size
        self.channels, self.levels = cfg.channels, cfg.levels
        self.factor = cfg.image_size // cfg.small_size
        self.small = build_model(cfg.base_config(cfg.small_size, 0))
        self.large = build_model(cfg.base_config(cfg.image_size, cfg.cond_maps))
        self.upsample = Upsampler(cfg.cond_maps, self.factor, cfg.channels, cfg.levels)

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        """The small image the unconditional part models (see module docstring)."""
        return downsample(x, self.factor)

    def forward(self, x: torch.Tensor, small: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Large-image logits [B, levels, C, n, n] given the small image (default: downsample(x))."""
        small = self.downsample(x) if small is None else small
        return self.large(x, self.upsample(small))

    def bits_per_dim(self, x: torch.Tensor, small: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(small-image bits + large-image bits given it) / (C n^2), [B]: the upper bound."""
        small = self.downsample(x) if small is None else small
        bits = nll_bits(self.small(small), small) + nll_bits(self(x, small), x)
        return bits / x[0].numel()

    # ------------------------------------------------------------------ the exact incremental pass
    def walk_targets(self, x: torch.Tensor) -> List[torch.Tensor]:
        """What each stage of `walk` fills in for images x: [small image, x]."""
        return [self.downsample(x), x]

    def walk_rows(self) -> int:
        """Image rows one `walk` from row 0 visits (its `on_row` calls): both images' rows."""
        return self.small_size + self.image_size

    @torch.no_grad()
    def walk(self, x: torch.Tensor, start: int, choose: Chooser,
             on_row: Optional[Callable[[int], None]] = None) -> torch.Tensor:
        """`PixelRNNBase.walk` of both parts (Section 3.5): stage 0 walks the small image, stage 1 the
        large image x (changed in place) conditioned on the upsampled small image; returns x.

        Rows [0, start) of x are known; of the small image, as in `complete`, the rows they fully
        cover. `on_row(i)` is called after each row of either image (`walk_rows` calls in all)."""
        small = self.small.walk(self.downsample(x), start // self.factor, choose, None, on_row, stage=0)
        return self.large.walk(x, start, choose, self.upsample(small), on_row, stage=1)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None, incremental: bool = True,
               return_logprob: bool = False, return_small: bool = False) -> Union[torch.Tensor, Tuple]:
        """Small images first, then large ones given them. Log-prob (bits/dim, as bits_per_dim with
        the sampled small image) and the small images are appended on request."""
        small, bpd_s = self.small.sample(n, generator, incremental, return_logprob=True)
        x = torch.zeros(n, self.channels, self.image_size, self.image_size, dtype=torch.uint8, device=small.device)
        return self._complete_large(x, 0, small, bpd_s, generator, incremental, return_logprob, return_small)

    @torch.no_grad()
    def complete(self, x: torch.Tensor, known_rows: int, generator: Optional[torch.Generator] = None,
                 incremental: bool = True, return_logprob: bool = False,
                 return_small: bool = False) -> Union[torch.Tensor, Tuple]:
        """Keep rows [0, known_rows). Approximation: the small rows fully covered by known rows are
        taken from x, the other small rows are sampled, then the large image is completed."""
        device = self.large.input_conv.weight.device
        x = x.to(device=device, dtype=torch.uint8)
        small = self.downsample(x)
        small, bpd_s = self.small.complete(small, known_rows // self.factor, generator, incremental,
                                           return_logprob=True)
        return self._complete_large(x, known_rows, small, bpd_s, generator, incremental,
                                    return_logprob, return_small)

    def _complete_large(self, x, known_rows, small, bpd_s, generator, incremental, return_logprob, return_small):
        cond = self.upsample(small)
        x, bpd_l = self.large.complete(x, known_rows, generator, incremental, return_logprob=True, cond=cond)
        # Small-image bits rescaled to the large image's sub-pixel count (see module docstring).
        bpd = bpd_l + bpd_s * small[0].numel() / x[0].numel()
        out = (x,) + ((bpd,) if return_logprob else ()) + ((small,) if return_small else ())
        return out[0] if len(out) == 1 else out

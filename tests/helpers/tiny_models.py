"""Tiny model configurations and the causality probe shared by the model tests (kept small: 2 CPU cores)."""
from __future__ import annotations

from typing import Callable

import torch

from pipeline.models import build_model
from pipeline.models.base import SkipConnections

ARCHS = ["pixelcnn", "row_lstm", "diagonal_bilstm"]
ALL = ARCHS + ["multiscale"]
TINY = dict(image_size=6, layers=2, hidden=8, out_maps=32)


def tiny(name: str, seed: int = 0, **kw) -> torch.nn.Module:
    """A tiny float64 model in eval mode (deterministic init). The learnable skip connections start
    as the identity (a plain sum); they are randomised here so that every test also checks that both
    paths use them and that their mask keeps causality."""
    torch.manual_seed(seed)
    m = build_model(name, **{**TINY, **kw}).double().eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, SkipConnections):
                mod.weight.add_(torch.randn_like(mod.weight) * 0.3)
                mod.bias.normal_(0.0, 0.05)
    return m


def peaky(m: torch.nn.Module) -> torch.nn.Module:
    """Sharpen the output distributions so a wrong cached state (or condition) changes the drawn values."""
    heads = [m.output] if hasattr(m, "output") else [m.small.output, m.large.output]
    with torch.no_grad():
        for head in heads:
            head[3].weight.mul_(30.0)
    return m


def perturb_each_subpixel(x: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """x uint8 [C, H, W] -> [CHW, C, H, W]; copy k has sub-pixel k (raster, then R, G, B) changed by half
    the range (levels = 2: flipped)."""
    c, h, w = x.shape
    n = c * h * w
    flat = x.permute(1, 2, 0).reshape(1, n).repeat(n, 1)
    idx = torch.arange(n)
    flat[idx, idx] = (flat[idx, idx].long() + levels // 2).remainder(levels).to(torch.uint8)
    return flat.view(n, h, w, c).permute(0, 3, 1, 2).contiguous()


def changed_matrix(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """changed[k, m]: perturbing sub-pixel k changes (bit-for-bit) the logits of sub-pixel m.

    Copy k of the image (sub-pixel k perturbed) is compared with the unperturbed image at the same
    batch position of a batch of the same size: a matmul's rounding may depend on where a row falls
    (its tail tile takes another micro-kernel on some CPUs, e.g. AMD EPYC), never on the other rows.
    """
    perturbed = perturb_each_subpixel(x, levels)
    with torch.no_grad():
        out = fn(perturbed)
        base = fn(x[None].expand_as(perturbed).contiguous())
    changed = (out != base).any(1)  # [n, C, H, W]
    return changed.permute(0, 2, 3, 1).reshape(changed.shape[0], -1)

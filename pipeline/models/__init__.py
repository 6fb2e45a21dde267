"""PixelRNN-family models (van den Oord et al. 2016, arXiv 1601.06759).

    from pipeline.models import build_model, MODELS
    m = build_model("diagonal_bilstm", image_size=32, layers=12, hidden=128)
    logits = m(x)              # x int [B, 3, H, W] in 0..255 -> [B, 256, 3, H, W]
    bpd = m.bits_per_dim(x)    # [B], the training loss
    imgs = m.sample(16, generator=g)
    build_model(**m.config)    # same architecture
"""
from __future__ import annotations

from typing import Any, Dict, Type

import torch.nn as nn

from .base import PixelRNNBase, compile_cells, count_parameters
from .diagonal_bilstm import DiagonalBiLSTM
from .multiscale import MultiScalePixelRNN
from .pixelcnn import PixelCNN
from .row_lstm import RowLSTM

MODELS: Dict[str, Type[nn.Module]] = {
    "pixelcnn": PixelCNN,
    "row_lstm": RowLSTM,
    "diagonal_bilstm": DiagonalBiLSTM,
    "multiscale": MultiScalePixelRNN,
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate registry model `name` with its keyword arguments (see each class)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](**kwargs)


__all__ = ["MODELS", "build_model", "compile_cells", "count_parameters", "PixelRNNBase", "PixelCNN", "RowLSTM",
           "DiagonalBiLSTM", "MultiScalePixelRNN"]

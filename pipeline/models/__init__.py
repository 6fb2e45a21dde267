"""PixelRNN-family models (van den Oord et al. 2016, arXiv 1601.06759).

    from pipeline.models import build_model, ARCHITECTURES
    m = build_model("diagonal_bilstm", image_size=32, layers=12, hidden=128)
    logits = m(x)              # x int [B, 3, H, W] in 0..255 -> [B, 256, 3, H, W]
    bpd = m.bits_per_dim(x)    # [B], the training loss
    imgs = m.sample(16, generator=g)
    build_model(**m.config)    # same architecture

Each architecture has a typed config and a model class (its own file), registered together in
`configs.ARCHITECTURES` (torch-free). The names below that need torch are imported on first use, so
that the experiment loader can read the configs without paying for torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from .configs import (ARCHITECTURES, Architecture, DiagonalBiLSTMConfig, ModelConfig, MultiScaleConfig, PixelCNNConfig,
                      RowLSTMConfig, build_model, make_config)

_LAZY = {  # name -> submodule that defines it
    "PixelRNNBase": "base", "compile_cells": "base", "compile_layers": "base", "count_parameters": "base",
    "PixelCNN": "pixelcnn", "RowLSTM": "row_lstm", "DiagonalBiLSTM": "diagonal_bilstm",
    "MultiScalePixelRNN": "multiscale",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ARCHITECTURES", "Architecture", "ModelConfig", "PixelCNNConfig", "RowLSTMConfig", "DiagonalBiLSTMConfig",
           "MultiScaleConfig", "build_model", "make_config", *_LAZY]

"""PixelRNN-family models (van den Oord et al. 2016, arXiv 1601.06759).

    from pipeline.models import build_model, MODELS
    m = build_model("diagonal_bilstm", image_size=32, layers=12, hidden=128)
    logits = m(x)              # x int [B, 3, H, W] in 0..255 -> [B, 256, 3, H, W]
    bpd = m.bits_per_dim(x)    # [B], the training loss
    imgs = m.sample(16, generator=g)
    build_model(**m.config)    # same architecture

Each architecture has a typed config (`configs.py`, torch-free) and a model class (its own file),
registered together in `registry.py`. The names below that need torch are imported on first use, so
that the experiment loader can read the configs without paying for torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from .configs import (CONFIGS, DiagonalBiLSTMConfig, ModelConfig, MultiScaleConfig, PixelCNNConfig, RowLSTMConfig,
                      make_config)

_LAZY = {  # name -> submodule that defines it
    "MODELS": "registry", "build_model": "registry",
    "PixelRNNBase": "base", "compile_cells": "base", "count_parameters": "base",
    "PixelCNN": "pixelcnn", "RowLSTM": "row_lstm", "DiagonalBiLSTM": "diagonal_bilstm",
    "MultiScalePixelRNN": "multiscale",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CONFIGS", "ModelConfig", "PixelCNNConfig", "RowLSTMConfig", "DiagonalBiLSTMConfig", "MultiScaleConfig",
           "make_config", *_LAZY]

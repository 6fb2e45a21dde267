"""The model registry: architecture name -> model class (its typed config: `configs.CONFIGS`)."""
from __future__ import annotations

from typing import Any, Dict, Type, Union

import torch.nn as nn

from .configs import CONFIGS, ModelConfig, make_config
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
assert MODELS.keys() == CONFIGS.keys()


def build_model(name: Union[str, ModelConfig], **kwargs: Any) -> nn.Module:
    """A model from its typed config, or from a registry name and that config's fields:
    `build_model("row_lstm", layers=4)`, `build_model(RowLSTMConfig(layers=4))`, `build_model(**m.config)`."""
    cfg = name if isinstance(name, ModelConfig) else make_config(name, **kwargs)
    if isinstance(name, ModelConfig) and kwargs:
        raise TypeError("build_model takes a config or a name with keywords, not both")
    return MODELS[cfg.name](cfg)

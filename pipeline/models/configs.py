"""The architecture registry: one typed config per architecture and its model class, by name.

`ARCHITECTURES` is the one table of model names (torchtitan's pattern: the arguments beside the model;
DiT's registry dict). The experiment schema (`pipeline/config/schema.py`) picks the config dataclass by
`model.name`, so an unknown or misspelt key (`model.residul`) is refused when the experiment is loaded,
with the nearest valid key. This module imports no torch: loading and refusing a config stays fast, and
`build_model` imports a model's module only when it builds one.

Defaults are the paper's (van den Oord et al. 2016, Sections 3.4 and 5): a 7x7 mask-A input layer, 12
layers of h = 128 (PixelCNN: 15), residual connections, learnable skip connections from every layer
to the output, and an output head of two ReLU + 1x1 mask-B layers with 1024 maps.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Type, Union

if TYPE_CHECKING:  # annotations only: importing this module must not import torch
    import torch.nn as nn


@dataclass
class ModelConfig:
    """What every architecture has."""
    name: str = ""
    image_size: int = 32
    layers: int = 12
    hidden: int = 128        # h in the paper; recurrent layers carry 2h maps between them
    out_maps: int = 1024     # the output head's hidden 1x1 layer (Section 3.4)
    residual: bool = True    # residual connections around each layer (Section 3.4)
    skip: bool = True        # skip connections from every layer to the output (Section 3.4)
    channels: int = 3        # 3: R, G, B colour groups (Section 3.4); 1: grayscale, one group (MNIST)
    levels: int = 256        # values per sub-pixel, a levels-way softmax (Section 5.1); 2: binary images

    def check(self) -> None:
        """Raise ValueError naming the field if the values cannot build a model."""
        for key in ("image_size", "layers", "hidden", "out_maps"):
            if getattr(self, key) < 1:
                raise ValueError(f"'model.{key}' must be at least 1, got {getattr(self, key)}")
        if self.channels not in (1, 3):
            raise ValueError(f"'model.channels' must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        if not 2 <= self.levels <= 256:
            raise ValueError(f"'model.levels' must be in 2..256 (values of one sub-pixel), got {self.levels}")


def _check_kernel(kernel: int) -> None:
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"'model.kernel' must be odd and positive (a centred mask), got {kernel}")


@dataclass
class PixelCNNConfig(ModelConfig):
    """Section 3.3: residual blocks of masked 3x3 convolutions (15 layers in the CIFAR-10 experiment)."""
    name: str = "pixelcnn"
    layers: int = 15
    kernel: int = 3
    cond_maps: int = 0       # maps of a conditioning input (the multi-scale model's upper part)

    def check(self) -> None:
        super().check()
        _check_kernel(self.kernel)


@dataclass
class RowLSTMConfig(ModelConfig):
    """Section 3.1: k x 1 state-to-state and input-to-state convolutions (k = 3)."""
    name: str = "row_lstm"
    kernel: int = 3
    cond_maps: int = 0

    def check(self) -> None:
        super().check()
        _check_kernel(self.kernel)


@dataclass
class DiagonalBiLSTMConfig(ModelConfig):
    """Section 3.2: two directions along the diagonals, a 2x1 state-to-state convolution."""
    name: str = "diagonal_bilstm"
    cond_maps: int = 0


@dataclass
class MultiScaleConfig(ModelConfig):
    """Section 3.5: an unconditional `base` model on the small image, a conditional one on the full image."""
    name: str = "multiscale"
    image_size: int = 64
    small_size: int = 0      # 0: image_size // 2
    base: str = "diagonal_bilstm"
    cond_maps: int = 0       # maps of the upsampled small image fed to every conditional layer; 0: hidden
    kernel: int = 3          # the base's kernel, where it has one (PixelCNN, Row LSTM)

    def small(self) -> int:
        return self.small_size or self.image_size // 2

    def check(self) -> None:
        super().check()
        _check_kernel(self.kernel)
        if self.base not in multiscale_bases():
            raise ValueError(f"'model.base' is {self.base!r}; expected one of {multiscale_bases()}")
        factor, rest = divmod(self.image_size, self.small())
        if rest or factor < 2 or factor & (factor - 1):
            raise ValueError(f"'model.image_size' / 'model.small_size' must be a power of 2 (at least 2), got "
                             f"{self.image_size} / {self.small()}")

    def base_config(self, image_size: int, cond_maps: int) -> ModelConfig:
        """The config of one of the two base models."""
        cls = ARCHITECTURES[self.base].config
        names = {f.name for f in dataclasses.fields(cls)}
        shared = {k: getattr(self, k) for k in ("layers", "hidden", "out_maps", "residual", "skip", "kernel",
                                                        "channels", "levels")
                  if k in names}
        return cls(image_size=image_size, cond_maps=cond_maps, **shared)


@dataclass(frozen=True)
class Architecture:
    """One registered architecture: its typed config and its model class."""
    config: Type[ModelConfig]
    model: str                     # "module:Class" in pipeline.models, imported when first built (needs torch)
    multiscale_base: bool = False  # may model both images of a multi-scale model (Section 3.5)

    def model_class(self) -> Type[nn.Module]:
        """The model class, its module imported on first use."""
        module, name = self.model.split(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), name)


ARCHITECTURES: Dict[str, Architecture] = {
    "pixelcnn": Architecture(PixelCNNConfig, "pixelcnn:PixelCNN", multiscale_base=True),
    "row_lstm": Architecture(RowLSTMConfig, "row_lstm:RowLSTM", multiscale_base=True),
    "diagonal_bilstm": Architecture(DiagonalBiLSTMConfig, "diagonal_bilstm:DiagonalBiLSTM", multiscale_base=True),
    "multiscale": Architecture(MultiScaleConfig, "multiscale:MultiScalePixelRNN"),
}


def multiscale_bases() -> List[str]:
    """The architectures `MultiScaleConfig.base` may name, sorted."""
    return sorted(name for name, arch in ARCHITECTURES.items() if arch.multiscale_base)


def make_config(name: str, **kwargs: Any) -> ModelConfig:
    """The typed config of architecture `name`; an unknown keyword is refused with the nearest valid one."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[name].config
    fields = [f.name for f in dataclasses.fields(cls) if f.name != "name"]
    for key in kwargs:
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ValueError(f"{name} has no setting '{key}'{hint} (settings: {', '.join(fields)})")
    cfg = cls(**kwargs)
    cfg.check()
    return cfg


def build_model(name: Union[str, ModelConfig], **kwargs: Any) -> nn.Module:
    """A model from its typed config, or from a registry name and that config's fields:
    `build_model("row_lstm", layers=4)`, `build_model(RowLSTMConfig(layers=4))`, `build_model(**m.config)`."""
    if isinstance(name, ModelConfig) and kwargs:
        raise TypeError("build_model takes a config or a name with keywords, not both")
    cfg = name if isinstance(name, ModelConfig) else make_config(name, **kwargs)
    return ARCHITECTURES[cfg.name].model_class()(cfg)

"""Lossless coding of image batches with a trained model's `levels`-way softmax and a range coder.

Both directions run the model's one exact incremental pass (`walk`, one protocol for every model of
`pipeline.models`) over the whole batch: one network step per sub-pixel for all B images at once. At
every sub-pixel the logits [B, levels] (256; 2 for a binary model) become float64 probabilities
(`probabilities`), which constriction quantises to 24-bit fixed point and range-codes
(`queue.RangeEncoder` / `RangeDecoder`, one stream per batch, symbols in walk order: raster order, R, G, B
within a pixel, image by image within a step). The encoder's `choose` returns the known values (`model.walk_targets(x)[stage]`: the multi-scale model's
walk codes the small image first, then the large one given it, Section 3.5); the decoder's decodes
them from the stream. Same batch, same code path, same dtype and thread count on both sides give
bit-identical probabilities, so the decoder reproduces the encoder's quantised models exactly (the
pixel checksum in the file proves it after every decode).

The model quantisation is explicit: `Categorical(perfect=False)`, constriction's fast
approximation of the float probabilities (the default changed between its versions, so it is
named, and the version is pinned and recorded). Every symbol keeps at least probability 2^-24
(constriction's 24-bit precision: such a symbol costs 24 bits), so any value can be coded.
"""
from __future__ import annotations

import math
from importlib.metadata import version
from typing import Callable, Dict, Optional, Tuple

import constriction
import numpy as np
import torch

from pipeline.models.base import Chooser

STREAM = "constriction.stream.queue.RangeEncoder (32-bit words, 64-bit state)"
MODEL = "constriction.stream.model.Categorical(perfect=False)"
PRECISION_BITS = 24  # constriction's categorical models in its Python API: probabilities in units of 2^-24


def coder_info() -> Dict[str, object]:
    """What the header records about the coder (the decoder refuses another version)."""
    return {"name": "constriction", "version": version("constriction"), "stream": STREAM, "model": MODEL,
            "precision_bits": PRECISION_BITS}


def _family():
    # perfect=False named explicitly: constriction 0.4 defaulted to perfect=True, 0.5 to False.
    return constriction.stream.model.Categorical(perfect=False)


def probabilities(logits: torch.Tensor) -> np.ndarray:
    """Logits [B, levels] (any float dtype) -> float64 probabilities [B, levels], C-contiguous."""
    return np.ascontiguousarray(torch.softmax(logits.double(), dim=-1).cpu().numpy())


def _walk(model: torch.nn.Module, n: int, choose: Chooser, on_row: Optional[Callable[[int], None]]) -> torch.Tensor:
    """n images (uint8 [n, C, size, size]) from the model's walk from row 0: `choose` gives every value."""
    x = torch.zeros(n, model.channels, model.image_size, model.image_size, dtype=torch.uint8)
    return model.walk(x, 0, choose, on_row=on_row)


@torch.no_grad()
def encode_batch(model: torch.nn.Module, x: torch.Tensor,
                 on_row: Optional[Callable[[int], None]] = None) -> Tuple[np.ndarray, float]:
    """Range-code uint8 images [B, C, n, n] -> (uint32 words, sum of -log2 p over every sub-pixel).

    The second value is the ideal code length under the same float64 probabilities the coder was
    given: what the file's payload is compared with (`pipeline.compression` reports both)."""
    encoder = constriction.stream.queue.RangeEncoder()
    family = _family()
    ideal = [0.0]
    rows = np.arange(x.shape[0])
    targets = model.walk_targets(x.to(torch.uint8))

    def choose(stage: int, c: int, i: int, j: int, logits: torch.Tensor) -> torch.Tensor:
        p = probabilities(logits)
        values = targets[stage][:, c, i, j].long()
        symbols = values.to(torch.int32).numpy()
        encoder.encode(symbols, family, p)
        ideal[0] -= float(np.log2(np.maximum(p[rows, symbols], 1e-300)).sum())
        return values

    _walk(model, x.shape[0], choose, on_row)
    return encoder.get_compressed(), ideal[0]


@torch.no_grad()
def decode_batch(model: torch.nn.Module, words: np.ndarray, n: int,
                 on_row: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Decode n images (uint8 [n, C, size, size]) from the words `encode_batch` returned."""
    decoder = constriction.stream.queue.RangeDecoder(np.ascontiguousarray(words, dtype=np.uint32))
    family = _family()

    def choose(stage: int, c: int, i: int, j: int, logits: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(decoder.decode(family, probabilities(logits)).astype(np.int64))

    return _walk(model, n, choose, on_row)


def bits_per_dim(bits: float, images: int, size: int, channels: int = 3) -> float:
    """Code length in bits -> bits per sub-pixel of `images` size x size images of `channels` channels."""
    return bits / (images * channels * size * size) if images else math.nan

"""Shared pieces of every PixelRNN-family model (van den Oord et al. 2016, arXiv 1601.06759).

`PixelRNNBase` owns what all architectures share: the 7x7 mask-A input layer, the output
head (two ReLU + 1x1 mask-B layers, then channels x levels logits: 3 x 256 for RGB, Section 3.4 /
Table 4; 1 x 256 or 1 x 2 for grayscale or binary MNIST-style images, the same softmax), the
discrete NLL in bits per sub-pixel, and both samplers:

* plain: re-runs the whole network once per sub-pixel (channels * n^2 forward passes);
* incremental (default): every layer keeps a cache of its maps/states, and producing one
  more sub-pixel runs each layer at that single pixel only (see each layer's `step`).

Both samplers draw ALL uniforms up front ([N, channels, H, W], float64, one `torch.rand` call) and
pick a value by inverse CDF over float64 probabilities, so for the same generator they
consume it identically and return identical images (up to float rounding ties).

One exact incremental pass (`walk`) serves sampling, compression and decompression: it visits
the sub-pixels in order and asks a `choose(stage, c, i, j, logits)` callback for each value (sampling
draws it, `pipeline.compression` encodes the known value or decodes it from the range coder). Every
model implements the same protocol: `walk`, `walk_targets` (what each stage fills in) and
`walk_rows` (the `on_row` calls of one walk); a single-scale model's walk has one stage, 0, and the
multi-scale model's two (`multiscale.py`).

Subclasses pass their layers to `set_layers`: modules with
    forward(v, cond) -> v'                       (whole map, [B, 2h, H, W])
    init_cache(batch, height, width, cond) -> dict
    step(cache, v, i, j) -> v'                   (pixel (i, j) only, [B, 2h])
    end_row(cache, i) -> None                    (row i complete in every layer's input)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .configs import ModelConfig
from .masks import MaskedConv2d, color_groups, mask_b

LOG2 = math.log(2.0)
# walk()'s callback: (stage, colour, row, column, logits [B, levels]) -> values [B] (long, 0..levels-1)
Chooser = Callable[[int, int, int, int, torch.Tensor], torch.Tensor]


def lstm_cell(gates: torch.Tensor, c_prev: torch.Tensor, dim: int = -1) -> Tuple[torch.Tensor, torch.Tensor]:
    """LSTM update from pre-activations [o, f, i, g] stacked along `dim` (paper eq. 3).

    o, f, i use the sigmoid; the cell input g uses tanh. Returns (h, c) with
    c = f * c_prev + i * g and h = o * tanh(c).
    """
    o, f, i, g = gates.chunk(4, dim)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def compile_cells(model: nn.Module) -> int:
    """Fuse each recurrent layer's LSTM cell into one compiled kernel, forward and backward.

    The cell (3 sigmoids, 2 tanh, 3 products, a sum) is ~10 small kernels per recurrence step, and a
    64x64 Diagonal BiLSTM layer runs 127 steps: on a GPU those launches, not the FLOPs, set the pace.
    dynamic=True because the diagonals' lengths change from step to step. Returns the number of
    layers changed (`train.compile=cell`; the numbers are compared in bench/gpu_check.py).
    """
    fused = torch.compile(lstm_cell, dynamic=True, fullgraph=True)
    layers = [m for m in model.modules() if getattr(m, "cell", None) is lstm_cell]
    for m in layers:
        m.cell = fused
    return len(layers)


def compile_layers(model: nn.Module) -> int:
    """Compile each recurrent layer whole, forward and backward (`train.compile=layer`, issue 21).

    A layer's scan (`scan.py`) has static shapes and no host synchronisation, so torch.compile takes the
    whole layer as one graph (fullgraph=True: a graph break is an error, not a silent slow path) and a
    CUDA graph can capture it. `nn.Module.compile` compiles in place: parameter names, state dicts and
    DeepSpeed's module hooks stay as they are. Returns the number of layers compiled.
    """
    layers = [m for m in model.modules() if hasattr(m, "impl")]  # the recurrent layers (scan or reference)
    for m in layers:
        m.compile(fullgraph=True)
    return len(layers)


def scale_input(x: torch.Tensor, dtype: torch.dtype, levels: int = 256) -> torch.Tensor:
    """Integer pixels 0..levels-1 -> [-1, 1] in `dtype` (the paper only scales/centres inputs).

    The result has the plain NCHW strides: a 1-channel batch is also "channels last" by its strides, and
    torch's channels-last conv path rounds an output pixel differently when masked-out inputs change,
    which breaks the exact causality (and walk == forward) of the grayscale models."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    return (x.to(work, memory_format=torch.contiguous_format) * (2.0 / (levels - 1)) - 1.0).to(dtype)


def nll_bits(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Total NLL in bits per image [B] of integer image x [B, C, H, W] under logits [B, levels, C, H, W].

    Computed in float32 (float64 if the logits are float64) whatever the model dtype.
    """
    work = torch.promote_types(logits.dtype, torch.float32)
    nats = F.cross_entropy(logits.to(work), x.long(), reduction="none")  # [B, C, H, W]
    return nats.flatten(1).sum(1) / LOG2


def nats_per_image(bits_per_dim: Union[float, torch.Tensor], dims: int) -> Union[float, torch.Tensor]:
    """Bits per sub-pixel -> NLL in nats per image of `dims` sub-pixels (C * H * W): the unit of the
    paper's binarized-MNIST results (Table 4), bits/dim * dims * ln 2."""
    return bits_per_dim * dims * LOG2


def pick(logits: torch.Tensor, u: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF draw from logits [B, levels] with uniforms u [B] in [0, 1).

    Returns (values [B] long, log-probabilities [B] float64 in nats). Probabilities are
    cumsummed in float64 so that both samplers map the same uniform to the same value.
    """
    logp = torch.log_softmax(logits.double(), dim=-1)
    cdf = logp.exp().cumsum(-1)
    v = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1).clamp_(max=logits.shape[-1] - 1)
    return v, logp.gather(1, v[:, None]).squeeze(1)


class SkipConnections(nn.Module):
    """Learnable skip connections from every layer to the output (Section 3.4).

    out = sum_l W_l v_l + b, each W_l a 1x1 mask-B convolution (2h -> 2h) of layer l's output, all L of
    them applied as one matmul over the concatenated outputs. Why a 1x1 conv per layer rather than a
    gain per channel: it is the usual reading of "learnable skip connections" (a learned linear map per
    skip, as in WaveNet), it contains per-channel gains as its diagonal, and it costs L * 4h^2
    multiply-adds per pixel (about 5-10 % of a layer stack). Mask B keeps colour causality: output group
    g reads groups <= g of each layer at the same pixel. Initialised to [I, I, ..., I] with zero bias,
    i.e. exactly the fixed sum with weight 1 that the models used before, which training then adapts.
    """

    def __init__(self, layers: int, channels: int, colours: int = 3):
        super().__init__()
        groups = color_groups(channels, colours)
        self.weight = nn.Parameter(torch.eye(channels).repeat(1, layers))  # [C, L*C]
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("mask", mask_b(channels, layers * channels, 1, 1, groups, groups.repeat(layers))
                             [:, :, 0, 0], persistent=False)

    def masked_weight(self) -> torch.Tensor:
        """The weight actually used: weight * mask, [C, L*C]."""
        return self.weight * self.mask.to(self.weight.dtype)

    def forward(self, outs: List[torch.Tensor]) -> torch.Tensor:
        """Layer outputs [B, C, H, W] each -> their learned sum [B, C, H, W]."""
        v = torch.cat(outs, 1)
        b, _, hh, ww = v.shape
        out = torch.matmul(self.masked_weight(), v.flatten(2)) + self.bias[:, None]  # one GEMM per image
        return out.view(b, -1, hh, ww)


def draw_uniforms(n: int, shape: Tuple[int, ...], generator: Optional[torch.Generator],
                  device: torch.device) -> torch.Tensor:
    """All uniforms of one sampling run, [n, *shape] float64, in a single generator call."""
    gen_device = generator.device if generator is not None else device
    return torch.rand((n, *shape), generator=generator, dtype=torch.float64, device=gen_device).to(device)


class PixelRNNBase(nn.Module):
    """Input layer, layer stack, output head, bits/dim and samplers (see module docstring)."""

    name: str = "base"

    def __init__(self, cfg: ModelConfig, input_kernel: int = 7):
        super().__init__()
        cfg.check()
        self.image_size, self.hidden, self.skip = cfg.image_size, cfg.hidden, cfg.skip
        self.channels, self.levels = cfg.channels, cfg.levels
        # build_model(**model.config) rebuilds the architecture; checkpoints store this dict.
        self.config: Dict[str, Any] = dataclasses.asdict(cfg)
        h2, out_maps = 2 * cfg.hidden, cfg.out_maps
        c, n = cfg.channels, cfg.levels
        # Section 3.4: only the first layer uses mask A (3 input channels = R, G, B groups; 1 = one group).
        self.input_conv = MaskedConv2d(c, h2, input_kernel, "A", colours=c)
        logit_groups = torch.arange(c * n) // n  # logits are colour-major: [R x levels, G x levels, B x levels]
        self.output = nn.Sequential(
            nn.ReLU(), MaskedConv2d(h2, out_maps, 1, "B", colours=c),
            nn.ReLU(), MaskedConv2d(out_maps, c * n, 1, "B", out_groups=logit_groups, colours=c),
        )
        self.layers = nn.ModuleList()
        self.skip_connections: Optional[SkipConnections] = None

    def set_layers(self, layers: Iterable[nn.Module]) -> None:
        """Install the layer stack (and, with `skip`, its learnable skip connections to the output)."""
        self.layers = nn.ModuleList(layers)
        self.skip_connections = (SkipConnections(len(self.layers), 2 * self.hidden, self.channels)
                                 if self.skip else None)

    # ------------------------------------------------------------------ training
    @property
    def param_dtype(self) -> torch.dtype:
        return self.input_conv.weight.dtype

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Integer images [B, C, H, W] -> logits [B, levels, C, H, W] (cond: [B, c, H, W] or None)."""
        v = self.input_conv(scale_input(x, self.param_dtype, self.levels))
        outs = []
        for layer in self.layers:
            v = layer(v, cond)
            outs.append(v)
        # Section 3.4: learnable skip connections from every layer to the output
        logits = self.output(self.skip_connections(outs) if self.skip else v)
        b, _, hh, ww = logits.shape
        return logits.view(b, self.channels, self.levels, hh, ww).transpose(1, 2)

    def bits_per_dim(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Discrete NLL in bits per sub-pixel, [B] (float32; float64 for a float64 model)."""
        return nll_bits(self(x, cond), x) / x[0].numel()

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None, incremental: bool = True,
               return_logprob: bool = False) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """n images, uint8 [n, C, H, W]; with return_logprob also their NLL in bits/dim [n] (float64)."""
        x = torch.zeros(n, self.channels, self.image_size, self.image_size, dtype=torch.uint8,
                        device=self.input_conv.weight.device)
        return self.complete(x, 0, generator, incremental, return_logprob)

    @torch.no_grad()
    def complete(self, x: torch.Tensor, known_rows: int, generator: Optional[torch.Generator] = None,
                 incremental: bool = True, return_logprob: bool = False,
                 cond: Optional[torch.Tensor] = None) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Keep rows [0, known_rows) of x and sample the rest; NLL bits/dim counts sampled sub-pixels only."""
        x = x.to(device=self.input_conv.weight.device, dtype=torch.uint8).clone()
        u = draw_uniforms(x.shape[0], tuple(x.shape[1:]), generator, x.device)
        run = self._sample_incremental if incremental else self._sample_plain
        x, bits = run(x, known_rows, u, cond)
        bpd = bits / x[0].numel()
        return (x, bpd) if return_logprob else x

    def _sample_plain(self, x: torch.Tensor, start: int, u: torch.Tensor,
                      cond: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Reference sampler: one full forward pass per sub-pixel."""
        bits = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for i in range(start, x.shape[2]):
            for j in range(x.shape[3]):
                for c in range(x.shape[1]):
                    logits = self(x, cond)[:, :, c, i, j]
                    v, logp = pick(logits, u[:, c, i, j])
                    x[:, c, i, j] = v.to(torch.uint8)
                    bits -= logp / LOG2
        return x, bits

    def _sample_incremental(self, x: torch.Tensor, start: int, u: torch.Tensor,
                            cond: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cached sampler: `walk` with an inverse-CDF draw at every sub-pixel."""
        bits = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)

        def draw(stage: int, c: int, i: int, j: int, logits: torch.Tensor) -> torch.Tensor:
            v, logp = pick(logits, u[:, c, i, j])
            bits.sub_(logp / LOG2)
            return v

        return self.walk(x, start, draw, cond), bits

    def walk_targets(self, x: torch.Tensor) -> List[torch.Tensor]:
        """What each stage of `walk` fills in for images x: [x] (one stage)."""
        return [x]

    def walk_rows(self) -> int:
        """Image rows one `walk` from row 0 visits (its `on_row` calls)."""
        return self.image_size

    @torch.no_grad()
    def walk(self, x: torch.Tensor, start: int, choose: Chooser, cond: Optional[torch.Tensor] = None,
             on_row: Optional[Callable[[int], None]] = None, stage: int = 0) -> torch.Tensor:
        """The exact incremental pass: per sub-pixel, every layer runs at the current pixel only.

        Rows [0, start) of x (uint8 [B, C, H, W], changed in place) are known; for every later
        sub-pixel, in raster order and R, G, B within a pixel, `choose(stage, c, i, j, logits)` gets
        that sub-pixel's logits [B, levels] (model dtype) and returns its values [B] (long), which
        are written into x and fed to the next steps. The rows >= start are zeroed first, so the pass
        never depends on what they held: sampling, encoding (choose returns the known values,
        `walk_targets(x)[stage][:, c, i, j]`) and decoding (choose reads them from the coder) run the
        same computation on the same inputs, and for the same batch they see bit-identical logits.
        `on_row(i)` is called after each row. `stage` is only passed on to `choose`: the multi-scale
        model walks its two parts as stages 0 and 1.

        A pixel is run once per colour (later colours are hidden by the masks, so the value of colour
        c is right once colours < c are filled) and once more after its last colour to commit the
        final states; known rows are run once per pixel.
        """
        b, nc, hh, ww = x.shape
        if nc != self.channels:
            raise ValueError(f"walk got {nc}-channel images; the model has channels={self.channels}")
        x[:, :, start:] = 0
        dt, levels = self.param_dtype, self.levels
        k = self.input_conv.kernel_size[0]
        p = k // 2
        # Padded, scaled input; the mask-A kernel only reads rows i-p..i of it.
        xin = torch.zeros(b, nc, hh + p, ww + 2 * p, dtype=dt, device=x.device)
        xin[:, :, p:, p:p + ww] = scale_input(x, dt, levels)
        w_in = self.input_conv.masked_weight()[:, :, : p + 1].flatten(1)
        conv1, conv2 = self.output[1], self.output[3]
        w1, w2 = conv1.masked_weight().flatten(1), conv2.masked_weight().flatten(1)
        skips = self.skip_connections
        w_skip = skips.masked_weight() if skips is not None else None
        caches = [layer.init_cache(b, hh, ww, cond) for layer in self.layers]

        def run_pixel(i: int, j: int, head: bool = True) -> Optional[torch.Tensor]:
            v = F.linear(xin[:, :, i:i + p + 1, j:j + k].flatten(1), w_in, self.input_conv.bias)
            outs = []
            for layer, cache in zip(self.layers, caches):
                v = layer.step(cache, v, i, j)
                outs.append(v)
            if not head:
                return None
            return F.linear(torch.cat(outs, 1), w_skip, skips.bias) if skips is not None else v

        for i in range(hh):
            for j in range(ww):
                if i >= start:
                    for c in range(nc):
                        hid = F.relu(F.linear(F.relu(run_pixel(i, j)), w1, conv1.bias))
                        rows = slice(levels * c, levels * (c + 1))  # only colour c's logits are needed
                        v = choose(stage, c, i, j, F.linear(hid, w2[rows], conv2.bias[rows]))
                        x[:, c, i, j] = v.to(torch.uint8)
                        xin[:, c, i + p, j + p] = scale_input(v, dt, levels)
                run_pixel(i, j, head=False)  # commit the states of the finished pixel
            for layer, cache in zip(self.layers, caches):
                layer.end_row(cache, i)
            if on_row is not None:
                on_row(i)
        return x


class LayerCacheMixin:
    """Default no-op `end_row` for layers whose incremental state needs no row pass."""

    def end_row(self, cache: Dict[str, Any], i: int) -> None:
        """Nothing to do at the end of a row."""
        return None


def gate_groups(hidden: int, gates: int, colours: int = 3) -> torch.Tensor:
    """Colour groups of a stack of `gates` blocks of `hidden` maps: block channel k has hidden k's group."""
    return color_groups(hidden, colours).repeat(gates)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


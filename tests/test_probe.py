"""The .prc probe (`pipeline/compression/probe.py`): a checksum of the model's probabilities on a tiny fixed
input that decode checks before any chunk. It must see what it exists to see, rounding that differs
anywhere in what the coder computes, and stay a handful of network steps (its cost: each step reads
every weight once). Tiny models with every weight set to seeded noise (fresh models have zero h0, c0 and
biases, which no scaling changes). The probe's time for the configs' largest
model is a figure of bench/bench_compress.py, not a timed test."""
from __future__ import annotations

import pytest
import torch

from pipeline.compression.probe import probe_extent, probe_sha256
from pipeline.models import ARCHITECTURES, build_model

torch.set_num_threads(1)
TINY = dict(image_size=8, layers=2, hidden=8, out_maps=32)
CODED = ([(name, {}) for name in ARCHITECTURES if name != "multiscale"]
         + [("multiscale", {"base": b}) for b in ("pixelcnn", "row_lstm", "diagonal_bilstm")]
         + [("diagonal_bilstm", {"channels": 1, "levels": 2})])
IDS = [n + "-" + "-".join(f"{k}{v}" for k, v in kw.items()) for n, kw in CODED]


def noisy_model(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, **TINY, **kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def _layers(model: torch.nn.Module):
    """Every recurrent or residual layer of the model (both parts of a multi-scale one)."""
    return [m for m in model.modules() if hasattr(m, "init_cache")]


@pytest.mark.parametrize("name,kw", CODED, ids=IDS)
def test_every_weight_tensor_reaches_the_probe(name, kw):
    """Every parameter tensor scaled by 1 + 2^-10 changes the probe: no layer, direction, initial state,
    conditioning projection or upsampler escapes the tiny probe input. (A one-ulp flip of a single
    tensor can be absorbed by the rounding of the sums it enters: 25 of 714 tensors over 3 seeds of
    these models here. Other kernels round every layer otherwise, which the next test covers.)"""
    model = noisy_model(name, **kw)
    base = probe_sha256(model)
    unreached = []
    with torch.no_grad():
        for pname, p in model.named_parameters():
            kept = p.clone()
            p.mul_(1 + 2 ** -10)
            if probe_sha256(model) == base:
                unreached.append(pname)
            p.copy_(kept)
    assert not unreached, f"scaling these changed nothing: {unreached}"
    assert probe_sha256(model) == base  # restored weights, same checksum: a function of the weights only


@pytest.mark.parametrize("name,kw", CODED, ids=IDS)
def test_one_ulp_of_rounding_in_any_layer_changes_the_probe(name, kw):
    """One layer whose kernel rounds its outputs one ulp up (what another GEMM or another tanh gives)
    changes the probe, whichever layer it is."""
    model = noisy_model(name, **kw)
    base = probe_sha256(model)
    for k, layer in enumerate(_layers(model)):
        exact = layer.step

        def rounded_up(cache, v, i, j, exact=exact):
            out = exact(cache, v, i, j)
            return torch.nextafter(out, torch.full_like(out, float("inf")))
        layer.step = rounded_up
        assert probe_sha256(model) != base, f"layer {k} rounding otherwise went unseen"
        del layer.step  # back to the class's step
    assert probe_sha256(model) == base


def test_the_dtype_changes_the_probe():
    model = noisy_model("row_lstm")
    assert probe_sha256(model) != probe_sha256(model.double())


@pytest.mark.parametrize("name,kw", CODED, ids=IDS)
def test_the_probe_runs_a_handful_of_network_steps(name, kw):
    """Its cost in network steps (one run of every layer at one pixel; each reads all the weights):
    C + 2 for a C-channel model (a pixel's colours, its commit, row 1's first sub-pixel); the multi-scale
    model walks its 2x2 small image whole, 4 (C + 1), and its large one up to row 1's first sub-pixel."""
    model = noisy_model(name, **kw)
    counted = []
    for layer in _layers(model):
        exact = layer.step

        def counting(cache, v, i, j, exact=exact, layer=layer):
            counted.append(layer)
            return exact(cache, v, i, j)
        layer.step = counting
    probe_sha256(model)
    c = model.channels
    if name == "multiscale":
        f = model.factor
        assert probe_extent(model) == (2 * f, 2 * f)
        small = sum(1 for x in counted if any(x is y for y in model.small.modules()))
        large = sum(1 for x in counted if any(x is y for y in model.large.modules()))
        layers = len(model.small.layers)
        assert (small, large) == (layers * 4 * (c + 1), layers * (2 * f * (c + 1) + 1))
    else:
        assert probe_extent(model) == (2, 1)
        assert len(counted) == len(model.layers) * (c + 2)


def test_format_2_files_keep_their_own_probe():
    """A format-2 file's checksum is of the first 96 sub-pixels of two full-size images: still computed
    for such files, and unlike the format-3 one."""
    model = noisy_model("pixelcnn")
    assert probe_extent(model, 2) == (8, 8)
    assert probe_sha256(model, 2) != probe_sha256(model, 3)


def test_the_right_to_left_pass_reaches_the_probe():
    """The Diagonal BiLSTM stacks both directions in one tensor, so the test above cannot tell them apart:
    each right-to-left part (its initial states, state-to-state and input-to-state rows) scaled alone
    changes the probe (it reaches row 1 through `end_row`; a 1x1 probe extent would miss them)."""
    model = noisy_model("diagonal_bilstm")
    base = probe_sha256(model)
    for k, layer in enumerate(model.layers):
        h = layer.hidden
        for part in (layer.h0[1], layer.c0[1], layer.state_to_state[1], layer.input_to_state.weight[4 * h:]):
            with torch.no_grad():
                kept = part.clone()
                part.mul_(1 + 2 ** -10)
                changed = probe_sha256(model) != base
                part.copy_(kept)
            assert changed, f"layer {k}: a right-to-left tensor of shape {tuple(part.shape)} went unseen"

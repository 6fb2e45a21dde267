"""Grayscale (channels=1) and binary (levels=2) models, the MNIST-style cases of issue 22: one colour group
(mask A/B become the plain PixelCNN masks), a levels-way softmax, exact causality at every pixel, and the
incremental pass equal to the whole-image forward pass and to the plain sampler, for all four models."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import ALL, ARCHS, changed_matrix, peaky, tiny

from pipeline.models import make_config
from pipeline.models.base import draw_uniforms, nats_per_image, pick, scale_input
from pipeline.models.masks import mask_a, mask_b
from pipeline.models.reference import use_reference

CASES = [(1, 256), (1, 2)]  # (channels, levels): grayscale, binary
IDS = ["gray256", "binary"]


def gray_image(levels: int, size: int = 6, seed: int = 123) -> torch.Tensor:
    return torch.randint(0, levels, (1, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_one_colour_group_gives_the_plain_pixelcnn_masks():
    """With one group mask A hides the whole centre, mask B shows all of it; the rest is the raster mask."""
    a, b = mask_a(4, 5, 3, 3, colours=1), mask_b(4, 5, 3, 3, colours=1)
    raster = torch.zeros(3, 3)
    raster[0], raster[1, 0] = 1, 1
    assert torch.equal(a, raster.expand(4, 5, 3, 3))
    raster[1, 1] = 1
    assert torch.equal(b, raster.expand(4, 5, 3, 3))


@pytest.mark.parametrize("key,value", [("channels", 2), ("channels", 4), ("levels", 1), ("levels", 257)])
def test_config_refuses_other_channels_or_levels(key, value):
    with pytest.raises(ValueError, match=f"'model.{key}'"):
        make_config("pixelcnn", **{key: value})


@pytest.mark.parametrize("levels", [2, 16, 256])
def test_scale_input_maps_the_levels_onto_minus_one_to_one(levels):
    y = scale_input(torch.tensor([0, levels - 1]), torch.float64, levels)
    assert y.tolist() == [-1.0, 1.0]


@pytest.mark.parametrize("channels,levels", CASES, ids=IDS)
@pytest.mark.parametrize("name", ARCHS)
def test_shapes_and_nats_per_image(name, channels, levels):
    """Logits [B, levels, 1, H, W]; nats/image = bits/dim * dims * ln 2 = the summed cross-entropy in nats."""
    m = tiny(name, channels=channels, levels=levels)
    x = torch.stack([gray_image(levels, seed=s) for s in range(2)])
    logits = m(x)
    assert logits.shape == (2, levels, 1, 6, 6)
    nats = F.cross_entropy(logits, x.long(), reduction="none").flatten(1).sum(1)
    torch.testing.assert_close(nats_per_image(m.bits_per_dim(x), 36), nats, rtol=1e-12, atol=0)
    assert math.isclose(nats_per_image(1.0, 784), 784 * math.log(2))


@pytest.mark.parametrize("channels,levels", CASES, ids=IDS)
@pytest.mark.parametrize("name", ARCHS)
def test_causal_every_pixel(name, channels, levels):
    """Changing pixel k leaves the logits of k and of every earlier pixel bit-identical; the next pixel of
    the same row depends on it (one group: a pixel's own value is hidden, unlike mask B's colours)."""
    m = tiny(name, channels=channels, levels=levels)
    changed = changed_matrix(m, gray_image(levels), levels)
    assert changed.shape == (36, 36)
    assert not changed.tril().any(), "a logit depends on its own or a later pixel"
    k = torch.tensor([k for k in range(36) if k % 6 != 5])
    assert changed[k, k + 1].float().mean() > 0.9


@pytest.mark.parametrize("channels,levels", CASES, ids=IDS)
def test_multiscale_conditional_part_causal(channels, levels):
    m = tiny("multiscale", channels=channels, levels=levels)
    x = gray_image(levels)
    small = m.downsample(x[None])
    assert small.shape == (1, 1, 3, 3) and int(small.max()) < levels
    changed = changed_matrix(lambda xs: m(xs, small=small.expand(len(xs), -1, -1, -1)), x, levels)
    assert not changed.tril().any()
    assert changed.triu(1).any()


@pytest.mark.parametrize("channels,levels", CASES, ids=IDS)
@pytest.mark.parametrize("name", ALL)
def test_walk_logits_equal_the_forward_pass(name, channels, levels):
    """The encoder's walk sees every pixel once, in raster order (choose called once per channel per
    pixel), with the whole-image forward pass's logits [B, levels]."""
    m = tiny(name, image_size=4, channels=channels, levels=levels)
    x = torch.stack([gray_image(levels, 4, seed=s) for s in range(2)])
    targets = m.walk_targets(x)
    sites, logits = [], []

    def record(stage, c, i, j, lg):
        sites.append((stage, c, i, j))
        logits.append(lg)
        return targets[stage][:, c, i, j].long()

    out = m.walk(torch.zeros_like(x), 0, record)
    sizes = [t.shape[-1] for t in targets]
    assert sites == [(k, 0, i, j) for k, s in enumerate(sizes) for i in range(s) for j in range(s)]
    assert torch.equal(out, x)
    full = [m.small(targets[0]), m(x, targets[0])] if name == "multiscale" else [m(x)]
    expected = torch.stack([full[k][:, :, c, i, j] for k, c, i, j in sites])
    assert expected.shape[-1] == levels
    torch.testing.assert_close(torch.stack(logits), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("channels,levels", CASES, ids=IDS)
@pytest.mark.parametrize("name", ALL)
def test_incremental_sampler_equals_plain_and_its_walk(name, channels, levels):
    """Both samplers give the same 1-channel images from the same generator, and so does a walk drawing
    from the sampler's uniforms; every level can be drawn and no value is outside 0..levels-1."""
    m = tiny(name, image_size=4, channels=channels, levels=levels)
    if levels > 2:  # sharpened, a wrong logit changes the values drawn; a sharpened binary head draws all 1s
        peaky(m)
    fast, lp_fast = m.sample(3, generator=torch.Generator().manual_seed(7), return_logprob=True)
    slow, lp_slow = m.sample(3, generator=torch.Generator().manual_seed(7), incremental=False, return_logprob=True)
    assert fast.shape == (3, 1, 4, 4) and fast.dtype == torch.uint8
    assert torch.equal(fast, slow)
    torch.testing.assert_close(lp_fast, lp_slow, rtol=0, atol=1e-9)
    assert int(fast.max()) < levels and len(fast.unique()) >= min(levels, 5)
    x = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    g = torch.Generator().manual_seed(7)
    u = [draw_uniforms(t.shape[0], tuple(t.shape[1:]), g, t.device) for t in m.walk_targets(x)]
    walked = m.walk(x, 0, lambda stage, c, i, j, lg: pick(lg, u[stage][:, c, i, j])[0])
    assert torch.equal(walked, fast)
    if name != "multiscale":
        torch.testing.assert_close(m.bits_per_dim(fast), lp_fast, rtol=0, atol=1e-10)


def test_walk_refuses_images_with_other_channels():
    m = tiny("pixelcnn", channels=1)
    with pytest.raises(ValueError, match="3-channel images; the model has channels=1"):
        m.walk(torch.zeros(1, 3, 6, 6, dtype=torch.uint8), 0, lambda *a: None)


@pytest.mark.parametrize("channels,levels", CASES, ids=IDS)
@pytest.mark.parametrize("name", ["row_lstm", "diagonal_bilstm"])
def test_scan_path_causal_and_equal_to_the_reference(name, channels, levels):
    """The recurrent layers' scan (CUDA's default, forced here) on a grayscale model: exactly causal, and
    its logits equal the reference path's in float64."""
    m = tiny(name, channels=channels, levels=levels)
    x = torch.stack([gray_image(levels, seed=s) for s in range(2)])
    with torch.no_grad():
        reference = m(x)
        assert use_reference(m, "scan") == 2
        torch.testing.assert_close(m(x), reference, rtol=0, atol=1e-12)
    assert not changed_matrix(m, gray_image(levels), levels).tril().any()

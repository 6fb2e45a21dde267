"""The one exact incremental pass (`walk`) that sampling and the codec share, for every model: its stages
and their order, its logits against the whole-image forward pass, and its draws against the sampler."""
from __future__ import annotations

from typing import List

import pytest
import torch
from helpers import ALL, peaky, tiny

from pipeline.models.base import draw_uniforms, pick


def forward_logits(m: torch.nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    """Per stage of the walk, the whole-image forward pass's logits [B, 256, 3, H, W]."""
    if hasattr(m, "small"):  # Section 3.5: the small image alone, then the large one given it
        small = m.downsample(x)
        return [m.small(small), m(x, small)]
    return [m(x)]


@pytest.mark.parametrize("name", ALL)
def test_walk_visits_every_stage_in_order_with_the_forward_logits(name):
    """A recording callback that returns the known values (as the encoder does) sees every sub-pixel of
    every stage once, in raster order and R, G, B within a pixel, with the whole-image forward pass's
    logits; the walk leaves the image it was given and calls on_row once per row of every stage."""
    m = tiny(name, image_size=4)
    x = torch.randint(0, 256, (2, 3, 4, 4), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    targets = m.walk_targets(x)
    sites, logits, rows = [], [], []

    def record(stage, c, i, j, lg):
        sites.append((stage, c, i, j))
        logits.append(lg)
        return targets[stage][:, c, i, j].long()

    out = m.walk(torch.zeros_like(x), 0, record, on_row=rows.append)
    sizes = [t.shape[-1] for t in targets]
    assert sizes == ([2, 4] if name == "multiscale" else [4])
    assert sites == [(k, c, i, j) for k, s in enumerate(sizes) for i in range(s) for j in range(s) for c in range(3)]
    assert rows == [i for s in sizes for i in range(s)] and len(rows) == m.walk_rows()
    assert torch.equal(out, x)
    full = forward_logits(m, x)
    expected = torch.stack([full[k][:, :, c, i, j] for k, c, i, j in sites])
    torch.testing.assert_close(torch.stack(logits), expected, rtol=0, atol=1e-10)


def draw_with(uniforms: List[torch.Tensor]):
    """A walk callback that draws each value by inverse CDF from the uniforms of its stage."""
    return lambda stage, c, i, j, logits: pick(logits, uniforms[stage][:, c, i, j])[0]


def stage_uniforms(m: torch.nn.Module, x: torch.Tensor, seed: int) -> List[torch.Tensor]:
    """The uniforms the sampler draws for x, stage by stage, from one generator (as `complete` does)."""
    g = torch.Generator().manual_seed(seed)
    return [draw_uniforms(t.shape[0], tuple(t.shape[1:]), g, t.device) for t in m.walk_targets(x)]


@pytest.mark.parametrize("name", ALL)
def test_walk_drawing_from_the_samplers_uniforms_gives_its_images_exactly(name):
    m = peaky(tiny(name, image_size=4))  # sharp: a wrong logit (or stage) changes the values drawn
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    walked = m.walk(x, 0, draw_with(stage_uniforms(m, x, seed=9)))
    sampled = m.sample(2, generator=torch.Generator().manual_seed(9))
    assert torch.equal(walked, sampled)
    assert len(sampled.unique()) > 4  # not a degenerate constant image


@pytest.mark.parametrize("name", ALL)
def test_walk_from_a_known_row_is_the_incremental_completion(name):
    """Rows [0, start) are kept; the multi-scale walk keeps the small rows they cover, as `complete`."""
    m = peaky(tiny(name, image_size=4))
    x = torch.randint(0, 256, (2, 3, 4, 4), generator=torch.Generator().manual_seed(6), dtype=torch.uint8)
    walked = m.walk(x.clone(), 2, draw_with(stage_uniforms(m, x, seed=4)))
    completed = m.complete(x, 2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(walked, completed) and torch.equal(walked[:, :, :2], x[:, :, :2])
    assert not torch.equal(walked[:, :, 2:], x[:, :, 2:])

"""Incremental (cached) sampler == plain sampler; log-probs; completion."""
from __future__ import annotations

import pytest
import torch
from helpers import ALL, ARCHS, peaky, tiny


def draw(m, incremental: bool, seed: int = 7, n: int = 2):
    g = torch.Generator().manual_seed(seed)
    return m.sample(n, generator=g, incremental=incremental, return_logprob=True)


@pytest.mark.parametrize("name", ALL)
def test_incremental_equals_plain(name):
    m = peaky(tiny(name, image_size=4 if name == "multiscale" else 5))
    fast, lp_fast = draw(m, True)
    slow, lp_slow = draw(m, False)
    assert fast.dtype == torch.uint8 and fast.shape == (2, 3, m.config["image_size"], m.config["image_size"])
    assert torch.equal(fast, slow)
    torch.testing.assert_close(lp_fast, lp_slow, rtol=0, atol=1e-9)
    assert len(fast.flatten().unique()) > 4  # not a degenerate constant image


@pytest.mark.parametrize("name", ARCHS)
def test_bits_per_dim_of_sample_equals_sampler_logprob(name):
    """The cached logits at every drawn sub-pixel equal the full forward pass's."""
    m = tiny(name, image_size=5)
    x, lp = draw(m, True)
    torch.testing.assert_close(m.bits_per_dim(x), lp, rtol=0, atol=1e-10)


def test_multiscale_logprob_is_two_stage_bits():
    m = tiny("multiscale", image_size=4)
    g = torch.Generator().manual_seed(3)
    x, lp, small = m.sample(2, generator=g, return_logprob=True, return_small=True)
    assert small.shape == (2, 3, 2, 2)
    torch.testing.assert_close(m.bits_per_dim(x, small=small), lp, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("incremental", [True, False])
def test_complete_keeps_known_rows(name, incremental):
    m = tiny(name, image_size=4)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 4, 4), generator=g, dtype=torch.uint8)
    done = m.complete(x, known_rows=2, generator=torch.Generator().manual_seed(1), incremental=incremental)
    assert done.dtype == torch.uint8 and done.shape == x.shape
    assert torch.equal(done[:, :, :2], x[:, :, :2])
    assert not torch.equal(done[:, :, 2:], x[:, :, 2:])


@pytest.mark.parametrize("name", ARCHS)
def test_complete_incremental_equals_plain(name):
    m = peaky(tiny(name, image_size=5))
    x = torch.randint(0, 256, (2, 3, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    a = m.complete(x, 3, generator=torch.Generator().manual_seed(4))
    b = m.complete(x, 3, generator=torch.Generator().manual_seed(4), incremental=False)
    assert torch.equal(a, b)


def test_float32_sampler_matches_logprob():
    """Default float32 path: the cached sampler agrees with the full pass to float32 precision."""
    torch.manual_seed(0)
    from pipeline.models import build_model
    m = build_model("diagonal_bilstm", image_size=5, layers=2, hidden=8, out_maps=32).eval()
    x, lp = m.sample(2, generator=torch.Generator().manual_seed(0), return_logprob=True)
    torch.testing.assert_close(m.bits_per_dim(x).double(), lp, rtol=0, atol=1e-5)

"""Exhaustive causality and receptive-field tests (Sections 3.1-3.4)."""
from __future__ import annotations

import pytest
import torch
from helpers import ARCHS, changed_matrix, tiny

N_SUB = 3 * 6 * 6


@pytest.mark.parametrize("name", ARCHS)
def test_causal_every_subpixel(name, image):
    """Changing sub-pixel k leaves the logits of k and of every earlier sub-pixel bit-identical."""
    m = tiny(name)
    changed = changed_matrix(m, image)
    assert not changed.tril().any(), "a logit depends on its own or a later sub-pixel"
    # Non-trivial: the next sub-pixel of the same pixel depends on the changed one (a rare
    # miss is allowed: a tiny random net can have all ReLUs of a path off at one pixel).
    k = torch.tensor([k for k in range(N_SUB) if k % 3 != 2])
    assert changed[k, k + 1].float().mean() > 0.9


def test_multiscale_conditional_part_causal_and_conditioned(image):
    """Large-image logits: causal in the large image, and dependent on the small image."""
    m = tiny("multiscale")
    small = m.downsample(image[None])
    changed = changed_matrix(lambda xs: m(xs, small=small.expand(len(xs), -1, -1, -1)), image)
    assert not changed.tril().any()
    # The conditioning map is local (deconv net) and reaches later pixels through the layers.
    for (si, sj), (i, j) in [((0, 0), (0, 0)), ((2, 2), (5, 5)), ((2, 2), (4, 4))]:
        other = small.clone()
        other[0, 2, si, sj] ^= 0x40
        with torch.no_grad():
            a, b = m(image[None], small=small), m(image[None], small=other)
        assert not torch.equal(a[..., i, j], b[..., i, j]), "large pixel must see the small image"


def pixel_field(fn, x: torch.Tensor) -> torch.Tensor:
    """dep[q, p]: changing pixel q's red value changes pixel p's red logits ([HW, HW]). Each perturbed
    copy is compared with the unperturbed image at the same batch position (see `changed_matrix`)."""
    _, h, w = x.shape
    base = x[None].repeat(h * w, 1, 1, 1)
    xs = base.clone()
    q = torch.arange(h * w)
    xs[q, 0, q // w, q % w] ^= 0x80
    with torch.no_grad():
        changed = (fn(xs) != fn(base)).any(1)[:, 0]  # red logits, [HW, H, W]
    return changed.reshape(h * w, h * w)


def test_diagonal_bilstm_sees_whole_context(image):
    """Every pixel's logits depend on every earlier pixel, including rows above to the right."""
    dep = pixel_field(tiny("diagonal_bilstm"), image)
    n = dep.shape[0]
    earlier = torch.ones(n, n, dtype=torch.bool).triu(1)  # q < p
    assert torch.equal(dep & earlier, earlier)
    assert not (dep & ~earlier).any()


def row_lstm_expected_field(h: int, w: int, layers: int, k: int = 3, first: int = 7) -> torch.Tensor:
    """Pixel-level dependency sets of a Row LSTM stack, propagated by hand: [HW(q), HW(p)]."""
    p, f = k // 2, first // 2
    dep = torch.zeros(h, w, h, w, dtype=torch.bool)  # dep[i, j] = pixels feature (i, j) reads
    for i in range(h):
        for j in range(w):  # 7x7 mask A: rows above within 3 (cols +-3), same row left within 3, self
            dep[i, j, max(0, i - f):i, max(0, j - f):j + f + 1] = True
            dep[i, j, i, max(0, j - f):j + 1] = True
    for _ in range(layers):
        state = torch.zeros_like(dep)
        for i in range(h):
            for j in range(w):
                s = dep[i, max(0, j - p):j + 1].any(0)  # input-to-state: 1 x k, left part + centre
                if i > 0:  # state-to-state: row above, k wide (and c of the pixel above)
                    s = s | state[i - 1, max(0, j - p):j + p + 1].any(0)
                state[i, j] = s
        dep = dep | state  # residual connection
    return dep.reshape(h * w, h * w).T.contiguous()


def test_row_lstm_triangular_field():
    """Row LSTM logits change exactly for earlier pixels inside the hand-propagated triangle."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 5, 12), generator=g, dtype=torch.uint8)
    dep = pixel_field(tiny("row_lstm"), x)
    expected = row_lstm_expected_field(5, 12, layers=2)
    earlier = torch.ones(60, 60, dtype=torch.bool).triu(1)
    assert torch.equal(dep & earlier, expected & earlier)
    # The triangle is not the whole context: bottom-left pixel (4, 0) cannot see (0, 11).
    assert not expected[11, 48] and expected[1, 48]

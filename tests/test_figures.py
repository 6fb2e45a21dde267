"""Sample grids (pipeline/tracking/figures.py) of grayscale and binary images (issue 22): shown as RGB."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.tracking.figures import image_grid


def test_a_grayscale_grid_is_the_gray_values_in_all_three_channels():
    x = torch.randint(0, 256, (4, 1, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    grid = np.asarray(image_grid(x, nrow=2, pad=1))
    assert grid.shape == (13, 13, 3)
    assert np.array_equal(grid[1:6, 1:6], x[0, 0, :, :, None].expand(5, 5, 3).numpy())
    assert np.array_equal(grid[7:12, 7:12, 1], x[3, 0].numpy())


def test_a_binary_grid_is_black_and_white():
    x = torch.tensor([[[[0, 1], [1, 0]]]], dtype=torch.uint8)
    grid = np.asarray(image_grid(x, pad=0, levels=2))
    assert grid[..., 0].tolist() == [[0, 255], [255, 0]] and (grid[..., 0] == grid[..., 2]).all()


def test_an_rgb_grid_is_unchanged():
    x = torch.randint(0, 256, (1, 3, 4, 4), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    assert np.array_equal(np.asarray(image_grid(x, pad=0)), x[0].permute(1, 2, 0).numpy())

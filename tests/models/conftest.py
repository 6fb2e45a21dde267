"""Fixtures of the model tests (their tiny configurations live in tests/helpers/tiny_models.py)."""
from __future__ import annotations

import pytest
import torch

# Tiny tensors gain nothing from intra-op threads, and on a shared, loaded 2-core machine
# OpenMP's thread hand-offs made the suite several times slower.
torch.set_num_threads(1)


@pytest.fixture
def image() -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.randint(0, 256, (3, 6, 6), generator=g, dtype=torch.uint8)

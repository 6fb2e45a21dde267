"""pipeline/train/numerics.py: train.tf32 and train.deterministic set torch's fp32 precision and determinism
explicitly (the flags are process-wide and settable without a GPU)."""
from __future__ import annotations

import os

import pytest
import torch

from pipeline.train.numerics import CUBLAS_WORKSPACE, set_numerics


@pytest.fixture
def restore_numerics(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    b = torch.backends
    saved = (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision,
             b.cudnn.benchmark, b.cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    yield
    (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision,
     b.cudnn.benchmark, b.cudnn.deterministic) = saved[:5]
    torch.use_deterministic_algorithms(saved[5])


def _flags():
    b = torch.backends
    return (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision,
            b.cudnn.benchmark, b.cudnn.deterministic, torch.are_deterministic_algorithms_enabled())


def test_fp32_means_fp32_by_default_not_torchs_tf32_convolutions(restore_numerics):
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # torch's own default for cuDNN convolutions
    assert set_numerics(tf32=False, deterministic=False) == {"fp32_precision": "ieee", "deterministic": False,
                                                             "cublas_workspace": ""}
    assert _flags() == ("ieee", "ieee", "ieee", False, False, False)


def test_tf32_and_deterministic_are_set_when_asked(restore_numerics):
    assert set_numerics(tf32=True, deterministic=True)["cublas_workspace"] == CUBLAS_WORKSPACE
    assert _flags() == ("tf32", "tf32", "tf32", False, True, True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    set_numerics(tf32=False, deterministic=False)
    assert _flags() == ("ieee", "ieee", "ieee", False, False, False)

"""How fp32 arithmetic is done on this rank's device: TF32 or full fp32 for matmuls and cuDNN, and
deterministic kernels (`train.tf32`, `train.deterministic`), set explicitly in the trainer's setup.

torch's own defaults differ by library: cuBLAS matmuls run in full fp32, cuDNN convolutions (and RNNs) in
TF32 (10-bit mantissa) on Ampere and later. An "fp32" run would then train its convolutions in TF32
without saying so; here both follow `train.tf32`. Only torch's newer `fp32_precision` API is used (mixing
it with the legacy `allow_tf32` flags is an error in torch 2.13). On CPU none of this changes a bit: the
bit-exact guarantees (README: numerics) are CPU ones.
"""
from __future__ import annotations

import os
from typing import Dict

# cuBLAS needs a fixed workspace to be deterministic (torch's reproducibility notes); it must be set before
# the first cuBLAS call, which setup() precedes.
CUBLAS_WORKSPACE = ":4096:8"


def set_numerics(tf32: bool, deterministic: bool) -> Dict[str, object]:
    """Apply `train.tf32` and `train.deterministic` to this process; returns what was set (logged, tested).

    tf32: matmuls (cuBLAS) and cuDNN convolutions and RNNs in TF32 ("tf32") or full fp32 ("ieee").
    deterministic: torch.use_deterministic_algorithms(True) (an op without a deterministic kernel then
    raises instead of running a nondeterministic one), cuDNN deterministic and without autotuning
    (benchmark off), CUBLAS_WORKSPACE_CONFIG fixed."""
    import torch  # only where the trainer applies it: the config schema that names these keys is torch-free
    precision = "tf32" if tf32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
    torch.backends.cudnn.rnn.fp32_precision = precision
    torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing: another run, other kernels
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic)
    return {"fp32_precision": precision, "deterministic": deterministic,
            "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG", "")}

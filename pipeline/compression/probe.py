"""The probe of a .prc file: a checksum of the model's probabilities on a fixed input, so that decode
refuses a machine whose kernels round otherwise before any chunk is decoded, in a fraction of a second.

The probabilities are computed exactly as the coder computes them: the model's incremental pass
(`walk`: init_cache, one layer stack per sub-pixel, end_row), float64 `probabilities` of the logits.
What costs is the number of network steps, each of which reads every weight once (a matrix-vector
product per layer: memory-bound, about 30 ms for the 12-layer h=384 Row LSTM on one core here), not the
batch or the image size. So the probe runs the fewest steps that still reach every kernel the decoder
runs: PROBE_IMAGES seeded noise images of a tiny extent, 2 rows x 1 column, walked from row 0 up to the
first sub-pixel of row 1: C + 2 steps for a C-channel model. They reach the input conv, every layer's
step (input-to-state, state-to-state, cell, output), the skip and output layers and the softmax at
every colour of a pixel; the commit of a finished pixel; `end_row` (the Diagonal BiLSTM's right-to-left
pass) and the states row 1 reads from row 0. The multi-scale model's walk takes square images, a
multiple of its factor f: 2f x 2f, so that its small image (walked whole: 4 (C + 1) steps) has two
rows too, then its large image up to the first sub-pixel of row 1 (2f (C + 1) + 1 steps), which also
reaches the upsampler and every conditioning projection. (Format 2's probe walked the
first 96 sub-pixels of 2 full-size images: 8 s for that Row LSTM; it is kept for format-2 files.)
"""
from __future__ import annotations

import hashlib
import re
from typing import Dict, Tuple

import torch

from pipeline.compression import prc
from pipeline.compression.rangecoding import probabilities

PROBE_IMAGES, PROBE_SEED = 2, 20160125
FORMAT2_SUBPIXELS = 96  # format 2's probe: the first 96 sub-pixels of the full-size walk


def compute_info(dtype: str, threads: int) -> Dict[str, object]:
    """How the probabilities are computed: what both sides must share."""
    blas = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return {"dtype": dtype, "threads": threads, "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "blas": blas.group(1) if blas else "unknown"}


class _ProbeDone(Exception):
    """Ends the probe's walk at its last sub-pixel."""


def probe_extent(model: torch.nn.Module, version: int = prc.FORMAT_VERSION) -> Tuple[int, int]:
    """(rows, columns) of the probe images for a file of format `version`."""
    if version == 2:
        return model.image_size, model.image_size
    factor = getattr(model, "factor", 1)  # the multi-scale model: large image = factor x its small image
    return (2, 1) if factor == 1 else (2 * factor, 2 * factor)


@torch.no_grad()
def probe_sha256(model: torch.nn.Module, version: int = prc.FORMAT_VERSION) -> str:
    """`prc.digest` of the float64 probabilities the coder's walk gives on the probe input of format
    `version` (see the module docstring), in walk order."""
    rows, cols = probe_extent(model, version)
    g = torch.Generator().manual_seed(PROBE_SEED)
    x = torch.randint(0, model.levels, (PROBE_IMAGES, model.channels, rows, cols), generator=g, dtype=torch.uint8)
    targets, h, seen = model.walk_targets(x), hashlib.sha256(), [0]
    last = len(targets) - 1

    def choose(stage: int, c: int, i: int, j: int, logits: torch.Tensor) -> torch.Tensor:
        h.update(probabilities(logits).tobytes())
        seen[0] += 1
        if (seen[0] == FORMAT2_SUBPIXELS) if version == 2 else (stage == last and i == 1):
            raise _ProbeDone
        return targets[stage][:, c, i, j].long()

    try:
        model.walk(torch.zeros_like(x), 0, choose)
    except _ProbeDone:
        pass
    return h.hexdigest()[:32]


def check_probe(header: Dict, model: torch.nn.Module, name: str, version: int = prc.FORMAT_VERSION) -> None:
    """Refuse, before decoding, a machine where the model's probabilities differ from the encoder's,
    naming what the header recorded that differs here (torch, CPU kernels, BLAS; dtype and threads are
    the file's own). `version`: the file's format (its probe input)."""
    recorded = header["compute"]
    here = probe_sha256(model, version)
    if here == recorded["probe_sha256"]:
        return
    now = compute_info(recorded["dtype"], recorded["threads"])
    names = {"torch": "torch", "cpu_capability": "CPU kernels", "blas": "BLAS", "dtype": "dtype",
             "threads": "threads"}
    diffs = [f"{label} {recorded.get(k)} there, {now[k]} here" for k, label in names.items() if recorded.get(k) != now[k]]
    why = ("differs here: " + "; ".join(diffs)) if diffs else (
        "nothing recorded differs (same torch, CPU kernels, BLAS, dtype and threads): this machine's kernels "
        "round differently")
    raise prc.PrcError(f"{name}: the model's probabilities differ from the encoder's (probe checksum {here[:12]}, "
                       f"recorded {recorded['probe_sha256'][:12]}): refused before decoding, which would fail "
                       f"mid-stream or give other pixels. Encoded with torch {recorded['torch']}, CPU kernels "
                       f"{recorded['cpu_capability']}, BLAS {recorded['blas']}, {recorded['dtype']}, "
                       f"{recorded['threads']} thread(s); {why}. Decode on a machine like the encoder's")

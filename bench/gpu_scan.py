"""GPU check section of issue 21: the recurrent layers' scan against the reference path (bench/gpu_check.py).

Separate from gpu_sections.py (its helpers are reused) so that each file keeps one subject.
"""
from __future__ import annotations

import time
from typing import Any, Dict

from gpu_sections import images, seconds_per_call, sync


def scan_modes(cfg, device: str, steps: int, smoke: bool) -> Dict[str, Any]:
    """Issue 21, one forward + backward of the bf16 model in plain PyTorch at this micro-batch, side by side:
    the reference path (the code before issue 21), the eager scan, the scan compiled whole per layer
    (`train.compile=layer`) and the eager scan's step captured as CUDA graphs. On CPU (--cpu-smoke)
    the compile and graph modes are skipped (minutes to compile; no CUDA graphs)."""
    import torch
    from pipeline.models import compile_layers
    from pipeline.models.base import nll_bits
    from pipeline.models.reference import use_reference
    from pipeline.train.engine import build
    torch.manual_seed(0)
    batch = cfg.train.micro_batch_size
    x = images(batch, cfg.model.image_size, device)

    def model_for(impl: str):
        torch.manual_seed(0)
        m = build(cfg).to(device).to(torch.bfloat16)
        use_reference(m, impl)
        return m

    def fwd_bwd(m) -> None:
        m.zero_grad(set_to_none=True)
        (nll_bits(m(x), x).mean() / x[0].numel()).backward()  # model(x): what a CUDA graph captures

    r: Dict[str, Any] = {"model": f"{cfg.model.name} {cfg.model.layers}x{cfg.model.hidden} at "
                         f"{cfg.model.image_size}px", "micro_batch": batch}
    models = {"reference": model_for("reference"), "eager": model_for("scan")}  # "scan": also on CPU (smoke)
    for m in models.values():
        fwd_bwd(m)
    for name, m in models.items():
        r[f"{name}_ms"] = round(seconds_per_call(lambda m=m: fwd_bwd(m), steps, device) * 1e3, 2)
    if smoke:
        r["compiled"] = r["graphed"] = "skipped on CPU (minutes to compile; CUDA graphs need a GPU)"
    else:
        compiled = model_for("auto")
        compile_layers(compiled)
        t = time.perf_counter()
        fwd_bwd(compiled)
        sync(device)
        r["first_compiled_call_s"] = round(time.perf_counter() - t, 1)
        r["compiled_ms"] = round(seconds_per_call(lambda: fwd_bwd(compiled), steps, device) * 1e3, 2)
        graphed = models["eager"]
        torch.cuda.make_graphed_callables(graphed, (x,), allow_unused_input=True)
        fwd_bwd(graphed)
        r["graphed_ms"] = round(seconds_per_call(lambda: fwd_bwd(graphed), steps, device) * 1e3, 2)
        r["reference_again_ms"] = round(seconds_per_call(lambda: fwd_bwd(models["reference"]), steps, device) * 1e3, 2)
        for k in ("eager", "compiled", "graphed"):
            r[f"{k}_vs_reference"] = round(r["reference_ms"] / r[f"{k}_ms"], 3)
    return r

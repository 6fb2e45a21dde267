"""The measurements of bench/gpu_check.py, one function per JSON section.

Every function takes the device ("cuda", or "cpu" for `--cpu-smoke`, which runs the same code on toy
sizes so that the script is known to work before a GPU session spends its minutes on it).
"""
from __future__ import annotations

import math
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Toy sizes for --cpu-smoke: every code path, seconds instead of minutes.
SMOKE = ["model.layers=1", "model.hidden=8", "model.image_size=8"]


def sync(device: str) -> None:
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(fn, n: int, device: str) -> float:
    """Mean wall time of n calls of fn, the GPU's queue drained before and after."""
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t) / n


def environment(device: str) -> Dict[str, Any]:
    import torch
    env: Dict[str, Any] = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
                           "python": platform.python_version(), "host": platform.node(),
                           "cpus": os.cpu_count()}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                   gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), cudnn=torch.backends.cudnn.version(),
                   bf16_supported=torch.cuda.is_bf16_supported(), gpu_count=torch.cuda.device_count())
    try:
        import deepspeed
        env["deepspeed"] = deepspeed.__version__
    except Exception as e:  # noqa: BLE001
        env["deepspeed"] = f"not importable: {type(e).__name__}: {e}"
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        env["git_commit"] = "unknown"
    return env


def matmul_rate(device: str, n: int = 8192, iters: int = 30) -> Dict[str, Any]:
    """Dense matmul TFLOP/s per dtype: the denominator of the model FLOP utilisation."""
    import torch
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32} if device == "cuda" \
        else {"bf16": torch.bfloat16, "fp32": torch.float32}
    out: Dict[str, Any] = {}
    for name, dtype in dtypes.items():
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        best = math.inf
        for _ in range(3):
            sync(device)
            t = time.perf_counter()
            for _ in range(iters):
                a @ b
            sync(device)
            best = min(best, (time.perf_counter() - t) / iters)
        out[f"{name}_tflops"] = round(2 * n ** 3 / best / 1e12, 3)
        del a, b
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    out["size"] = n
    return out


def config(exp: str, overrides: List[str], precision: str, batch: int, device: str, smoke: bool,
           compile_mode: str = "none", steps: int = 100000):
    """The experiment's config as a 1-GPU run of it: ZeRO-2, this micro-batch, no accumulation."""
    from pipeline.config import load_config
    return load_config(exp, [*overrides, *(SMOKE if smoke else []), f"train.precision={precision}",
                             f"train.device={device}", "train.zero_stage=2", f"train.micro_batch_size={batch}",
                             f"train.global_batch_size={batch}", f"train.compile={compile_mode}",
                             f"data.root={REPO}", f"train.max_steps={steps}"])


def images(batch: int, size: int, device: str, seed: int = 0):
    """Structured uint8 images [batch, 3, size, size]: smooth colour fields plus a little noise (a
    uniform-noise batch would give gradients unlike real data's)."""
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, 4, 4, generator=g)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = x * 255 + torch.randn(batch, 3, size, size, generator=g) * 8
    return x.clamp(0, 255).to(torch.uint8).to(device)


def step_flops(cfg, device: str, batch: int = 2) -> float:
    """FLOPs of one forward+backward per image, counted by torch's FlopCounterMode (fp32 model)."""
    from torch.utils.flop_counter import FlopCounterMode
    from pipeline.train.engine import build
    model = build(cfg).to(device)
    x = images(batch, cfg.model.image_size, device)
    with FlopCounterMode(display=False) as fc:
        model.bits_per_dim(x).mean().backward()
    return fc.get_total_flops() / batch


def _engine(cfg):
    from pipeline.train.ds_config import deepspeed_config
    from pipeline.train.engine import initialize
    engine, model = initialize(cfg, deepspeed_config(cfg, 1))
    engine.train()
    return engine, model


def throughput(cfg, device: str, steps: int, peak_tflops: float, flops_per_image: float) -> Dict[str, Any]:
    """Training images/s and peak memory through the real engine (DeepSpeed, this config's precision
    and train.compile); the first steps (compilation included) are timed apart as warm-up."""
    import torch
    batch = cfg.train.micro_batch_size
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    engine, _ = _engine(cfg)
    x = images(batch, cfg.model.image_size, device)
    nonfinite = 0

    def one():
        nonlocal nonfinite
        loss = engine(x).mean()
        if not torch.isfinite(loss).item():
            nonfinite += 1
        engine.backward(loss)
        engine.step()
    t = time.perf_counter()
    for _ in range(3):
        one()
    sync(device)
    warmup_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        one()
    sync(device)
    dt = (time.perf_counter() - t) / steps
    r = {"images_per_s": round(batch / dt, 2), "step_ms": round(dt * 1e3, 2), "micro_batch": batch,
         "steps_timed": steps, "warmup_3_steps_s": round(warmup_s, 1), "compile": cfg.train.compile,
         "nonfinite_losses": nonfinite, "skipped_steps": int(getattr(engine, "skipped_steps", 0) or 0)}
    if device == "cuda":
        r["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
        r["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2 ** 30, 3)
    if flops_per_image:
        achieved = flops_per_image * batch / dt
        r["achieved_tflops"] = round(achieved / 1e12, 4)
        if peak_tflops:
            r["mfu_vs_measured_bf16_matmul"] = round(achieved / (peak_tflops * 1e12), 4)
    del engine
    return r


def stability(cfg, device: str, steps: int, time_limit_s: float = 1e9) -> Dict[str, Any]:
    """`steps` optimizer steps on fresh structured batches: non-finite losses, overflow-skipped steps,
    the fp16 loss scale every 20 steps, and whether the loss went down. Stops early (recording how
    far it got) after `time_limit_s`, so a slow GPU still reports what it measured."""
    from pipeline.train.engine import loss_scale
    engine, _ = _engine(cfg)
    batch = cfg.train.micro_batch_size
    losses, nonfinite, scales = [], 0, []
    t0 = time.perf_counter()
    for i in range(steps):
        if time.perf_counter() - t0 > time_limit_s:
            break
        loss = engine(images(batch, cfg.model.image_size, device, seed=i)).mean()
        v = loss.item()
        nonfinite += not math.isfinite(v)
        losses.append(v)
        engine.backward(loss)
        engine.step()
        if i % 20 == 0 or i == steps - 1:
            scales.append(loss_scale(engine))
    done = len(losses)
    k = max(1, min(10, done // 4))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    r = {"model": f"{cfg.model.name} {cfg.model.layers}x{cfg.model.hidden} at {cfg.model.image_size}px",
         "compile": cfg.train.compile, "steps": steps, "steps_done": done,
         "seconds": round(time.perf_counter() - t0, 1), "micro_batch": batch, "nonfinite_losses": nonfinite,
         "overflow_skipped_steps": int(getattr(engine, "skipped_steps", 0) or 0),
         f"loss_first{k}_mean": round(first, 4), f"loss_last{k}_mean": round(last, 4),
         "loss_scale_every20": scales if cfg.train.precision == "fp16" else None,
         "trains_without_nonfinite": nonfinite == 0 and math.isfinite(last) and last < first}
    del engine
    return r


def layer_compile_effect(cfg, device: str, steps: int) -> Dict[str, Any]:
    """torch.compile of whole recurrent layers (the loop unrolled; long first call) vs eager,
    forward+backward of the bf16 model in plain PyTorch, measured side by side."""
    import torch
    from pipeline.train.engine import build
    torch.manual_seed(0)
    model = build(cfg).to(device).to(torch.bfloat16)
    x = images(cfg.train.micro_batch_size, cfg.model.image_size, device)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        model.bits_per_dim(x).mean().backward()

    def timed(n):
        return seconds_per_call(fwd_bwd, n, device)
    for _ in range(2):
        fwd_bwd()
    eager = timed(steps)
    eager_layers = list(model.layers)
    for i, layer in enumerate(eager_layers):
        model.layers[i] = torch.compile(layer)
    t = time.perf_counter()
    fwd_bwd()
    sync(device)
    compile_s = time.perf_counter() - t
    fwd_bwd()
    compiled = timed(steps)
    for i, layer in enumerate(eager_layers):  # eager again, so both are measured side by side
        model.layers[i] = layer
    best_eager = min(eager, timed(steps))
    return {"model": cfg.model.name, "micro_batch": cfg.train.micro_batch_size,
            "eager_ms": round(best_eager * 1e3, 2), "compiled_ms": round(compiled * 1e3, 2),
            "speedup": round(best_eager / compiled, 3), "first_compiled_call_s": round(compile_s, 1)}


def cuda_graph_effect(cfg, device: str, steps: int, flops_per_image: float = 0.0) -> Dict[str, Any]:
    """The whole model's forward and backward captured as CUDA graphs (torch.cuda.make_graphed_callables:
    a step's thousands of small kernels replayed from two graphs) vs eager, plain PyTorch in bf16,
    measured side by side on the same model. How much of a recurrent step is kernel-launch overhead."""
    import torch
    from pipeline.train.engine import build
    from pipeline.models.base import nll_bits
    torch.manual_seed(0)
    model = build(cfg).to(device).to(torch.bfloat16)
    batch = cfg.train.micro_batch_size
    x = images(batch, cfg.model.image_size, device)

    def fwd_bwd() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        # model(x), not model.bits_per_dim(x): the graphed forward takes exactly the captured arguments
        loss = nll_bits(model(x), x).mean() / x[0].numel()
        loss.backward()
        return loss.detach()

    def timed(n: int) -> float:
        return seconds_per_call(fwd_bwd, n, device)
    # The graphed forward replaces the module's own only in the training state it was captured in, so
    # eval() gives the eager path (the models have no dropout or batch norm) and train() the graphs.
    model.eval()
    loss_eager = float(fwd_bwd())
    eager = timed(steps)
    model.train()
    t = time.perf_counter()
    torch.cuda.make_graphed_callables(model, (x,), allow_unused_input=True)
    sync(device)
    capture_s = time.perf_counter() - t
    loss_graphed = float(fwd_bwd())
    graphed = timed(steps)
    model.eval()
    best_eager = min(eager, timed(steps))  # eager again, so both are measured side by side
    r = {"model": f"{cfg.model.name} {cfg.model.layers}x{cfg.model.hidden} at {cfg.model.image_size}px",
         "micro_batch": batch, "eager_ms": round(best_eager * 1e3, 2), "graphed_ms": round(graphed * 1e3, 2),
         "speedup": round(best_eager / graphed, 3), "capture_s": round(capture_s, 1),
         "loss_eager": round(loss_eager, 5), "loss_graphed": round(loss_graphed, 5)}
    if flops_per_image:
        r["graphed_achieved_tflops"] = round(flops_per_image * batch / graphed / 1e12, 4)
        r["eager_achieved_tflops"] = round(flops_per_image * batch / best_eager / 1e12, 4)
    return r


def synthetic_shards(tmp: str, size: int, images_total: int, classes: int, shard_size: int):
    """A train ShardSet that `preprocessing` builds under tmp from generated images, at one size."""
    import preprocessing
    from pipeline.data.shards import load_shard_set
    preprocessing.make_synthetic(Path(tmp) / "img", num_images=images_total, classes=classes, seed=0)
    preprocessing.build(Path(tmp) / "img", "train", [size], Path(tmp) / "shards", shard_size=shard_size,
                        workers=max(1, min(16, (os.cpu_count() or 2) - 1)), progress=False)
    return load_shard_set(Path(tmp) / "shards", size, "train")


def training_collectives(cfg, device: str) -> Dict[str, Any]:
    """The training loop's own collectives on this device's process group (NCCL on a GPU, which reduces
    CUDA tensors only): the per-micro-batch agreement (`pipeline.train.distributed.agree`) for a finite and a
    non-finite loss, and `pipeline.train.evaluate` of a model over shards that `preprocessing` builds here.
    (The training loop itself needs MLflow, which the GPU image lacks; these are its collectives.)"""
    import torch
    from pipeline.train.distributed import agree
    from pipeline.train.engine import build
    from pipeline.train.evaluate import evaluate_bits_per_dim
    finite = agree(torch.tensor(3.0, device=device), False)
    nonfinite = agree(torch.tensor(float("nan"), device=device), True)
    if finite != (False, 3.0, False) or nonfinite != (True, 0.0, True):
        raise AssertionError(f"agree() gave {finite} and {nonfinite}")
    size = cfg.model.image_size
    model = build(cfg).to(device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        shards = synthetic_shards(tmp, size, images_total=40, classes=4, shard_size=16)
        r = evaluate_bits_per_dim(model.bits_per_dim, shards, 0, 1, 16, device)
    if r["samples"] != 40 or not math.isfinite(r["bits_per_dim"]):
        raise AssertionError(f"evaluate gave {r}")
    return {"agree_finite": list(finite), "agree_nonfinite": list(nonfinite),
            "eval_bits_per_dim": round(r["bits_per_dim"], 4), "eval_samples": r["samples"], "ok": True}


def loader_rate(cfg, images_total: int, batches: int) -> Dict[str, Any]:
    """images/s of the training loader (TrainStream + train_loader, the config's data.num_workers)
    on shards that `preprocessing` builds here from generated images, at the config's image size."""
    from pipeline.data.stream import TrainStream, train_loader
    size, batch = cfg.model.image_size, cfg.train.micro_batch_size
    workers = cfg.data.num_workers
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        # at least 2 shards per loader worker (the loader refuses fewer shards than readers)
        shard_size = max(1, min(256, images_total // (2 * max(1, workers))))
        shards = synthetic_shards(tmp, size, images_total, classes=10, shard_size=shard_size)
        build_s = time.perf_counter() - t
        stream = TrainStream(shards, batch, seed=0, rank=0, world=1, num_workers=workers,
                             shuffle_buffer=cfg.data.shuffle_buffer)
        it = train_loader(stream, start=0)
        for _ in range(max(4, 2 * workers)):
            next(it)
        t = time.perf_counter()
        for _ in range(batches):
            x = next(it)
        dt = time.perf_counter() - t
        assert x.shape == (batch, 3, size, size), x.shape
        del it
    return {"images_per_s": round(batches * batch / dt, 1), "num_workers": workers, "micro_batch": batch,
            "image_size": size, "batches_timed": batches, "shards_built_s": round(build_s, 1)}


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

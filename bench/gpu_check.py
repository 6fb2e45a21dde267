"""One-shot GPU check (one NVIDIA GPU, under 5 minutes): writes one JSON, installs nothing.

    bash bench/gpu_check.sh            # or: python bench/gpu_check.py [--budget-s 270] [--quick]

Measures, in this order (each in its own try/except; an error is recorded in the JSON, not raised, and
a section that would start after the time budget is recorded as skipped):

1. environment: GPU, torch / CUDA / DeepSpeed versions, git commit;
2. the GPU's dense bf16 matmul rate (a large torch.matmul, the denominator of the FLOP utilisation);
3. training throughput (images/s) and peak memory, bf16 and fp16, through the real path
   (`pipeline.engine.initialize` + `pipeline.ds_config.deepspeed_config`, ZeRO-2, world size 1) of:
   Diagonal BiLSTM 12 layers h=128 at 32×32 and 64×64; Row LSTM 12×384 at 32×32; Row LSTM 4×512 without
   residuals at 64×64 (the paper's ImageNet models) — with the step's FLOPs counted by
   torch.utils.flop_counter and the model FLOP utilisation = achieved FLOP/s / measured matmul rate;
4. stability: 200 steps each of DeepSpeed fp16 (dynamic loss scale) and bf16 training of the Diagonal
   BiLSTM at 32×32 (config overrides `train.precision=fp16|bf16 train.device=cuda`) on structured
   generated images: non-finite losses, overflow-skipped steps, final loss scale, first/last loss;
5. torch.compile of the recurrent layers (`model.layers[i] = torch.compile(layer)`): forward+backward
   time with and without (bf16 weights, plain PyTorch), and the compile time.

Where no GPU is present it stops at once with exit status 2. The JSON goes to $OUT/gpu_check.json when
OUT is set, else bench/gpu_check.json; it is rewritten (atomically) after every section, so a run cut
short still leaves what it measured.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from common import free_port  # noqa: E402  (bench/common.py; bench/ is sys.path[0] for a script)

# (key, experiment config to start from, overrides, micro-batch for the throughput run)
MODELS = [
    ("diagonal_bilstm_12x128_32", "imagenet32_diagonal_bilstm", [], 64),
    ("diagonal_bilstm_12x128_64", "imagenet64_diagonal_bilstm", [], 32),
    ("row_lstm_12x384_32", "imagenet32_row_lstm", [], 64),
    ("row_lstm_4x512_nores_64", "imagenet64_row_lstm", [], 32),
]


class SectionTimeout(Exception):
    pass


def out_path() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "gpu_check.json" if out else HERE / "gpu_check.json"


class Report:
    def __init__(self, path: Path, budget_s: float):
        self.path, self.t0, self.budget = path, time.time(), budget_s
        self.data: Dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "budget_s": budget_s}

    def left(self) -> float:
        return self.budget - (time.time() - self.t0)

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.t0, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)

    def section(self, key: str, fn: Callable[[], Any], need_s: float = 0.0, limit_s: float = 0.0) -> Any:
        """Run fn, store its result (or the error) under key, save. Skip it when less than need_s is left;
        stop it (SIGALRM) after limit_s, or when the budget is spent."""
        if self.left() < need_s:
            self.data[key] = {"skipped": f"time budget: {self.left():.0f}s left, this needs about {need_s:.0f}s"}
            print(f"[{key}] skipped (time budget)", flush=True)
            self.save()
            return None
        t = time.time()
        allowed = max(5, int(min(limit_s or 1e9, self.left())))

        def alarm(signum, frame):
            raise SectionTimeout(f"stopped after {allowed}s (section limit or time budget)")
        old = signal.signal(signal.SIGALRM, alarm)
        signal.alarm(allowed)
        try:
            result = fn()
            self.data[key] = result
            print(f"[{key}] {json.dumps(result, default=str)[:400]}", flush=True)
        except BaseException as e:  # noqa: BLE001  (recorded, never fatal; Ctrl-C still stops below)
            self.data[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2500:]}
            print(f"[{key}] ERROR {type(e).__name__}: {e}", flush=True)
            result = None
            if isinstance(e, KeyboardInterrupt):
                raise
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
            free_cuda()
        if isinstance(self.data.get(key), dict):
            self.data[key]["section_s"] = round(time.time() - t, 1)
        self.save()
        return result


def free_cuda() -> None:
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------- sections
def environment() -> Dict[str, Any]:
    import torch
    env: Dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "bf16_supported": torch.cuda.is_bf16_supported(), "python": platform.python_version(),
        "host": platform.node(), "gpu_count": torch.cuda.device_count(),
    }
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


def matmul_rate(n: int = 8192, iters: int = 30) -> Dict[str, Any]:
    import torch
    out = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("tf32", torch.float32)):
        torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        best = math.inf
        for _ in range(3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                a @ b
            end.record()
            torch.cuda.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3 / iters)
        out[f"{name}_tflops"] = round(2 * n ** 3 / best / 1e12, 1)
        del a, b
    torch.backends.cuda.matmul.allow_tf32 = False
    out["size"] = n
    return out


def _config(exp: str, overrides: List[str], precision: str, batch: int, steps: int = 100000):
    from pipeline.config import load_config
    return load_config(exp, [*overrides, f"train.precision={precision}", "train.device=cuda",
                             "train.zero_stage=2", f"train.micro_batch_size={batch}",
                             f"train.global_batch_size={batch}", f"data.root={REPO}",
                             f"train.max_steps={steps}", "slurm.nodes=1", "slurm.gpus_per_node=1"])


def _images(batch: int, size: int, seed: int = 0):
    """Structured uint8 images [batch, 3, size, size]: smooth colour fields plus a little noise (a
    uniform-noise batch would give gradients unlike real data's)."""
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, 4, 4, generator=g)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = x * 255 + torch.randn(batch, 3, size, size, generator=g) * 8
    return x.clamp(0, 255).to(torch.uint8).cuda()


def step_flops(cfg, batch: int = 2) -> float:
    """FLOPs of one forward+backward per image, counted by torch's FlopCounterMode (fp32 model)."""
    from torch.utils.flop_counter import FlopCounterMode
    from pipeline.engine import build
    model = build(cfg).cuda()
    x = _images(batch, cfg.model.image_size)
    with FlopCounterMode(display=False) as fc:
        model.bits_per_dim(x).mean().backward()
    total = fc.get_total_flops()
    del model
    return total / batch


def _engine(cfg):
    from pipeline.ds_config import deepspeed_config
    from pipeline.engine import initialize
    engine, model = initialize(cfg, deepspeed_config(cfg, 1))
    engine.train()
    return engine, model


def _loss_scale(engine):
    opt = engine.optimizer
    for name in ("cur_scale", "loss_scale"):
        v = getattr(opt, name, None)
        if isinstance(v, (int, float)):
            return float(v)
        if hasattr(v, "item"):
            return float(v.item())
    return None


def throughput(exp: str, overrides: List[str], precision: str, batch: int, steps: int, peak_tflops: float,
               flops_per_image: float) -> Dict[str, Any]:
    import torch
    cfg = _config(exp, overrides, precision, batch)
    torch.cuda.reset_peak_memory_stats()
    engine, _ = _engine(cfg)
    x = _images(batch, cfg.model.image_size)
    nonfinite = 0

    def one():
        nonlocal nonfinite
        loss = engine(x).mean()
        if not torch.isfinite(loss).item():
            nonfinite += 1
        engine.backward(loss)
        engine.step()
    for _ in range(3):
        one()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        one()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    r = {"images_per_s": round(batch / dt, 1), "step_ms": round(dt * 1e3, 2), "micro_batch": batch,
         "steps_timed": steps, "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 3),
         "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2 ** 30, 3),
         "nonfinite_losses": nonfinite, "skipped_steps": int(getattr(engine, "skipped_steps", 0) or 0)}
    if flops_per_image:
        achieved = flops_per_image * batch / dt
        r["achieved_tflops"] = round(achieved / 1e12, 2)
        if peak_tflops:
            r["mfu_vs_measured_bf16_matmul"] = round(achieved / (peak_tflops * 1e12), 4)
    del engine
    return r


def stability(precision: str, steps: int, batch: int) -> Dict[str, Any]:
    import torch
    cfg = _config("imagenet32_diagonal_bilstm", ["optim.warmup_steps=20"], precision, batch, steps=steps)
    engine, _ = _engine(cfg)
    losses, nonfinite, scales = [], 0, []
    for i in range(steps):
        x = _images(batch, cfg.model.image_size, seed=i)
        loss = engine(x).mean()
        v = loss.item()
        if not math.isfinite(v):
            nonfinite += 1
        losses.append(v)
        engine.backward(loss)
        engine.step()
        if i % 20 == 0 or i == steps - 1:
            scales.append(_loss_scale(engine))
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    r = {"steps": steps, "micro_batch": batch, "nonfinite_losses": nonfinite,
         "overflow_skipped_steps": int(getattr(engine, "skipped_steps", 0) or 0),
         "loss_first10_mean": round(first, 4), "loss_last10_mean": round(last, 4),
         "loss_scale_every20": scales if precision == "fp16" else None,
         "trains_without_nonfinite": nonfinite == 0 and math.isfinite(last) and last < first}
    del engine
    return r


def compile_effect(exp: str, batch: int, steps: int) -> Dict[str, Any]:
    import torch
    from pipeline.engine import build
    cfg = _config(exp, [], "bf16", batch)
    torch.manual_seed(0)
    model = build(cfg).cuda().to(torch.bfloat16)
    x = _images(batch, cfg.model.image_size)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        model.bits_per_dim(x).mean().backward()

    def timed(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fwd_bwd()
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / n
    for _ in range(2):
        fwd_bwd()
    eager = timed(steps)
    for i, layer in enumerate(list(model.layers)):
        model.layers[i] = torch.compile(layer)
    t = time.perf_counter()
    fwd_bwd()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t
    fwd_bwd()
    compiled = timed(steps)
    eager2 = None
    # Interleave once more: eager layers back, so both are measured side by side.
    for i, layer in enumerate(list(model.layers)):
        model.layers[i] = getattr(layer, "_orig_mod", layer)
    eager2 = timed(steps)
    best_eager = min(eager, eager2)
    return {"model": exp, "micro_batch": batch, "eager_ms": round(best_eager * 1e3, 2),
            "compiled_ms": round(compiled * 1e3, 2), "speedup": round(best_eager / compiled, 3),
            "first_compiled_call_s": round(compile_s, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=270, help="stop starting sections after this")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per throughput measurement")
    ap.add_argument("--stability-steps", type=int, default=200)
    ap.add_argument("--stability-batch", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="a few steps everywhere (checks the script)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.stability_steps = 2, 20

    import torch
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}, CUDA build {torch.version.cuda}): run this on a machine with an NVIDIA "
              "GPU and a CUDA build of torch. Nothing was measured.", file=sys.stderr)
        return 2

    rep = Report(out_path(), args.budget_s)
    print(f"gpu_check: writing {rep.path}", flush=True)
    rep.section("environment", environment)
    mm = rep.section("matmul", matmul_rate) or {}
    peak = mm.get("bf16_tflops", 0.0)

    # The engines need a process group (NCCL, world size 1), as pipeline.train starts it.
    def start_dist():
        from pipeline.distributed import DistEnv, init_distributed, resolve_device
        resolve_device("cuda")
        init_distributed(DistEnv(0, 0, 1, "127.0.0.1", free_port()), "cuda", 600)
        return {"ok": True}
    dist_ok = rep.section("distributed_init", start_dist)

    flops: Dict[str, float] = {}
    rep.data["throughput"] = {}
    for key, exp, ov, batch in MODELS:
        def count(exp=exp, ov=ov, batch=batch):
            return {"flops_per_image_fwd_bwd": step_flops(_config(exp, ov, "bf16", batch))}
        fl = rep.section(f"flops_{key}", count, need_s=5, limit_s=60) or {}
        flops[key] = fl.get("flops_per_image_fwd_bwd", 0.0)
        for prec in ("bf16", "fp16"):
            name = f"{key}_{prec}"
            if not dist_ok:
                rep.data["throughput"][name] = {"error": "no process group (see distributed_init)"}
                continue
            rep.section(f"_tp", lambda exp=exp, ov=ov, prec=prec, batch=batch, key=key: throughput(
                exp, ov, prec, batch, args.steps, peak, flops[key]), need_s=15, limit_s=90)
            rep.data["throughput"][name] = rep.data.pop("_tp")
            rep.save()

    for prec in ("fp16", "bf16"):
        if dist_ok:
            rep.section(f"stability_{prec}", lambda prec=prec: stability(prec, args.stability_steps,
                                                                           args.stability_batch),
                        need_s=30, limit_s=90)
    rep.section("torch_compile_diagonal_bilstm_32", lambda: compile_effect(
        "imagenet32_diagonal_bilstm", 16, args.steps), need_s=40, limit_s=150)
    rep.section("torch_compile_row_lstm_32", lambda: compile_effect(
        "imagenet32_row_lstm", 16, args.steps), need_s=40, limit_s=120)
    rep.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    rep.save()
    errors = [k for k, v in rep.data.items() if isinstance(v, dict) and "error" in v]
    errors += [f"throughput.{k}" for k, v in rep.data["throughput"].items() if isinstance(v, dict) and "error" in v]
    print(f"gpu_check: done in {rep.data['elapsed_s']}s; {len(errors)} section(s) with errors {errors}; "
          f"results in {rep.path}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())

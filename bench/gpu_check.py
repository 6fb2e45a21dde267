"""One-shot GPU check (one NVIDIA GPU, under 5 minutes): writes one JSON.

    bash bench/gpu_check.sh            # or: python bench/gpu_check.py [--budget-s 270] [--quick]
    python bench/gpu_check.py --cpu-smoke   # the same code on toy sizes on CPU (tests/test_gpu_check.py)

Measures, most important first (each section in its own try/except: an error is recorded in the JSON,
not raised; a section that would start after the time budget is recorded as skipped). Order: environment,
matmul, the two 64x64 models, the loader, `targets`, CUDA graphs, stability, the other models, whole-layer
compile:

1. environment (GPU, torch / CUDA / DeepSpeed, commit) and the dense bf16/fp16/tf32 matmul rate, the
   denominator of the model FLOP utilisation (MFU); the training loop's collectives on NCCL
   (`pipeline.train.distributed.agree`, `pipeline.train.evaluate`);
   1b. micro-batch 4 (what imagenet64_multiscale runs on 64 ranks): the 64x64 Diagonal BiLSTM's
   throughput at 4 against 32, the top-level aten operator calls of one training step (torch.profiler:
   what makes a small-batch step launch-bound), and a checkpoint save + load through
   pipeline.train.checkpoint on the device (weights equal bit for bit);
2. for each model, FLOPs per image (torch's FlopCounterMode) and training throughput + peak memory
   through the real path (`pipeline.engine.initialize`, ZeRO-2, world size 1) in bf16, bf16 with
   `train.compile=cell` (the fused LSTM cell) and fp16: the 12-layer Diagonal BiLSTM (h=128) at 64x64,
   the PixelCNN of the same width at 64x64 (the target's denominator), the Diagonal BiLSTM at 32x32,
   the paper's Row LSTMs (12x384 at 32x32, 4x512 without residuals at 64x64);
3. the loader: TrainStream + train_loader with the 64x64 config's data.num_workers, on shards that
   `preprocessing` builds here, against the Diagonal BiLSTM's training rate at 64x64;
4. `targets`: Diagonal BiLSTM / PixelCNN FLOP/s at 64x64 (>= 0.3), loader / training (>= 3), and
   which train.compile is faster;
5. CUDA graphs: the 64x64 Diagonal BiLSTM's whole forward and backward captured once
   (`torch.cuda.make_graphed_callables`) vs eager, plain PyTorch bf16: the share of a step that is
   kernel-launch overhead, the other half of "torch.compile and/or CUDA graphs";
6. stability: DeepSpeed fp16 (dynamic loss scale) and bf16 training of the Diagonal BiLSTM at 32x32
   for 200 steps with the faster train.compile (each stops early at 80 s, saying how far it got):
   non-finite losses, overflow-skipped steps, loss scale, loss first vs last;
7. torch.compile of whole recurrent layers (unrolled; long compile) vs eager, plain PyTorch.

Where no GPU is present it stops at once with exit status 2 (unless --cpu-smoke). The JSON goes to
$OUT/gpu_check.json when OUT is set, else bench/gpu_check.json; it is rewritten (atomically) after
every section, so a run cut short still leaves what it measured.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import gpu_scan  # noqa: E402  (bench/ is sys.path[0] for a script)
import gpu_sections as S  # noqa: E402
from common import free_port  # noqa: E402

# (key, experiment config to start from, overrides, micro-batch for the throughput runs)
MODELS = [
    ("diagonal_bilstm_12x128_64", "imagenet64_diagonal_bilstm", [], 32),
    ("pixelcnn_12x128_64", "imagenet64_diagonal_bilstm", ["model.name=pixelcnn"], 32),
    ("diagonal_bilstm_12x128_32", "imagenet32_diagonal_bilstm", [], 64),
    ("row_lstm_12x384_32", "imagenet32_row_lstm", [], 64),
    ("row_lstm_4x512_nores_64", "imagenet64_row_lstm", [], 32),
]
RECURRENT = ("diagonal_bilstm", "row_lstm")
TARGET_FLOPS_RATIO, TARGET_LOADER_RATIO = 0.3, 3.0


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

    def section(self, key: str, fn: Callable[[], Any], need_s: float = 0.0, limit_s: float = 0.0,
                into: Dict[str, Any] | None = None) -> Any:
        """Run fn and store its result (or the error) under key in `into` (default: the top level);
        save. Skip it when less than need_s is left; stop it (SIGALRM) after limit_s or at the budget."""
        into = self.data if into is None else into
        if self.left() < need_s:
            into[key] = {"skipped": f"time budget: {self.left():.0f}s left, this needs about {need_s:.0f}s"}
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
            into[key] = result
            print(f"[{key}] {json.dumps(result, default=str)[:400]}", flush=True)
        except BaseException as e:  # noqa: BLE001  (recorded, never fatal; Ctrl-C still stops below)
            into[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2500:]}
            print(f"[{key}] ERROR {type(e).__name__}: {e}", flush=True)
            result = None
            if isinstance(e, KeyboardInterrupt):
                raise
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
            free_memory()
        if isinstance(into.get(key), dict):
            into[key]["section_s"] = round(time.time() - t, 1)
        self.save()
        return result


def free_memory() -> None:
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def errors_in(data: Any, path: str = "") -> list:
    """Dotted keys of every section that recorded an error."""
    if not isinstance(data, dict):
        return []
    if "error" in data:
        return [path]
    return [e for k, v in data.items() for e in errors_in(v, f"{path}.{k}" if path else k)]


def targets(tp: Dict[str, Any], loader: Dict[str, Any]) -> Dict[str, Any]:
    """The issue's GPU targets from the measured sections, and which train.compile to default to."""
    def rate(key, field="achieved_tflops"):
        v = tp.get(key, {})
        return v.get(field) if isinstance(v, dict) else None
    out: Dict[str, Any] = {}
    base = rate("pixelcnn_12x128_64_bf16")
    for mode in ("", "_cell"):
        diag = rate(f"diagonal_bilstm_12x128_64_bf16{mode}")
        if diag and base:
            r = diag / base
            out[f"diag64_vs_pixelcnn64_flops{mode or '_eager'}"] = {
                "value": round(r, 3), "target": TARGET_FLOPS_RATIO, "met": r >= TARGET_FLOPS_RATIO}
    train = max(filter(None, [rate(f"diagonal_bilstm_12x128_64_bf16{m}", "images_per_s") for m in ("", "_cell")]),
                default=None)
    if train and isinstance(loader, dict) and loader.get("images_per_s"):
        r = loader["images_per_s"] / train
        out["loader_vs_training_64"] = {"value": round(r, 2), "target": TARGET_LOADER_RATIO,
                                        "met": r >= TARGET_LOADER_RATIO}
    small, full = (rate(f"diagonal_bilstm_12x128_64{mb}_bf16", "images_per_s") for mb in ("_mb4", ""))
    if small and full:  # 1.0: the step costs its FLOPs; 0.125 (= 4/32): a step costs the same at any batch
        out["mb4_vs_mb32_images_per_s_64"] = round(small / full, 3)
    faster = {}
    for key, *_ in MODELS:
        eager, cell = rate(f"{key}_bf16", "images_per_s"), rate(f"{key}_bf16_cell", "images_per_s")
        if eager and cell:
            faster[key] = round(cell / eager, 3)
    if faster:
        out["cell_vs_eager_images_per_s"] = faster
        out["train_compile_default"] = "cell" if min(faster.values()) > 1.05 else "none"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=270, help="stop starting sections after this")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per throughput measurement")
    ap.add_argument("--stability-steps", type=int, default=200)
    ap.add_argument("--stability-batch", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="a few steps everywhere (checks the script)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run every section on CPU at toy sizes (fp16, CUDA graphs and whole-layer compile skipped)")
    args = ap.parse_args()
    smoke = args.cpu_smoke
    if args.quick or smoke:
        args.steps, args.stability_steps = 2, (6 if smoke else 20)

    from pipeline.train.distributed import DistEnv, init_distributed, resolve_device
    import torch
    if not smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}, CUDA build {torch.version.cuda}): run this on a machine with an NVIDIA "
              "GPU and a CUDA build of torch. Nothing was measured.", file=sys.stderr)
        return 2
    device = resolve_device("cpu" if smoke else "cuda")  # before deepspeed is imported (DS_ACCELERATOR)

    rep = Report(out_path(), args.budget_s)
    rep.data["mode"] = "cpu-smoke (toy sizes: not a measurement)" if smoke else "gpu"
    print(f"gpu_check: writing {rep.path}", flush=True)
    rep.section("environment", lambda: S.environment(device))
    mm = rep.section("matmul", lambda: S.matmul_rate(device, *((256, 3) if smoke else ()))) or {}
    peak = mm.get("bf16_tflops", 0.0)

    def start_dist():  # the engines need a process group (NCCL or gloo, world size 1), as training has
        init_distributed(DistEnv(0, 0, 1, "127.0.0.1", free_port()), device, 600)
        return {"ok": True}
    dist_ok = rep.section("distributed_init", start_dist)
    if dist_ok:  # the training loop's collectives on NCCL (cheap: before anything can cut the budget)
        rep.section("training_collectives", lambda: S.training_collectives(
            S.config("smoke", [], "bf16", 16, device, smoke), device), need_s=5, limit_s=60)

    tp: Dict[str, Any] = rep.data.setdefault("throughput", {})
    loader: Dict[str, Any] = {}

    def measure(key, exp, ov, batch):
        batch = 4 if smoke else batch

        def count():
            return {"flops_per_image_fwd_bwd": S.step_flops(S.config(exp, ov, "bf16", batch, device, smoke), device)}
        fl = rep.section(f"flops_{key}", count, need_s=5, limit_s=60) or {}
        for prec, mode in (("bf16", "none"), ("bf16", "cell"), ("fp16", "none")):
            name = f"{key}_{prec}" + ("_cell" if mode == "cell" else "")
            if mode == "cell" and not key.startswith(RECURRENT):
                continue
            if prec == "fp16" and device == "cpu":
                tp[name] = {"skipped": "fp16 training needs a GPU"}
            elif not dist_ok:
                tp[name] = {"error": "no process group (see distributed_init)"}
            else:
                rep.section(name, lambda prec=prec, mode=mode: S.throughput(
                    S.config(exp, ov, prec, batch, device, smoke, mode), device, args.steps, peak,
                    fl.get("flops_per_image_fwd_bwd", 0.0)), need_s=15, limit_s=120 if mode == "cell" else 90, into=tp)

    # 1. the two 64x64 models of the FLOP/s target, then the loader against them, then the targets
    for key, exp, ov, batch in MODELS[:2]:
        measure(key, exp, ov, batch)
    loader = rep.section("loader_64", lambda: S.loader_rate(
        S.config("imagenet64_diagonal_bilstm", [], "bf16", 4 if smoke else 32, device, smoke),
        128 if smoke else 4096, 4 if smoke else 100), need_s=20, limit_s=90) or {}
    rep.data["targets"] = targets(tp, loader)
    rep.save()
    print(f"[targets] {json.dumps(rep.data['targets'])}", flush=True)

    # 1b. micro-batch 4 (imagenet64_multiscale's on 64 ranks): launch-bound? Throughput at 4 against 32
    # (images/s ratio), and the operator calls of one step that bound it; checkpoint save/load on the device
    mb4 = "diagonal_bilstm_12x128_64_mb4"
    if dist_ok:
        rep.section(f"{mb4}_bf16", lambda: S.throughput(
            S.config("imagenet64_diagonal_bilstm", [], "bf16", 4, device, smoke), device, args.steps, peak,
            (rep.data.get("flops_diagonal_bilstm_12x128_64") or {}).get("flops_per_image_fwd_bwd", 0.0)),
            need_s=15, limit_s=90, into=tp)
        rep.section("operator_calls_diagonal_bilstm_64_mb4", lambda: S.operator_calls(
            S.config("imagenet64_diagonal_bilstm", [], "bf16", 4, device, smoke), device), need_s=15, limit_s=90)
        rep.section("checkpoint_round_trip", lambda: S.checkpoint_round_trip(
            S.config("imagenet64_diagonal_bilstm", [], "bf16", 4, device, smoke), device), need_s=15, limit_s=90)
    else:
        for key in ("operator_calls_diagonal_bilstm_64_mb4", "checkpoint_round_trip"):
            rep.data[key] = {"error": "no process group (see distributed_init)"}
    rep.data["targets"] = targets(tp, loader)

    # 2. CUDA graphs of the 64x64 Diagonal BiLSTM's whole step (seconds to capture, unlike compile)
    if smoke:
        rep.data["cuda_graph_diagonal_bilstm_64"] = {"skipped": "CUDA graphs need a GPU"}
    else:
        flops64 = (rep.data.get("flops_diagonal_bilstm_12x128_64") or {}).get("flops_per_image_fwd_bwd", 0.0)
        rep.section("cuda_graph_diagonal_bilstm_64", lambda: S.cuda_graph_effect(
            S.config("imagenet64_diagonal_bilstm", [], "bf16", MODELS[0][3], device, smoke), device,
            args.steps, flops64), need_s=20, limit_s=60)

    # 3. fp16 loss scaling and bf16 over 200 steps, with the faster train.compile (each stops early at 80 s)
    mode = rep.data["targets"].get("train_compile_default", "none")
    for prec in ("fp16", "bf16"):
        if prec == "fp16" and device == "cpu":
            rep.data["stability_fp16"] = {"skipped": "fp16 training needs a GPU"}
        elif dist_ok:
            rep.section(f"stability_{prec}", lambda prec=prec: S.stability(S.config(
                "imagenet32_diagonal_bilstm", ["optim.warmup_steps=20"], prec, 4 if smoke else args.stability_batch,
                device, smoke, mode, steps=args.stability_steps), device, args.stability_steps, 80),
                need_s=30, limit_s=150)

    # 4. the other models, then whole-layer compilation
    for key, exp, ov, batch in MODELS[2:]:
        measure(key, exp, ov, batch)
    rep.data["targets"] = targets(tp, loader)  # now with every model's eager vs cell
    if smoke:
        rep.data["layer_compile_diagonal_bilstm_32"] = {"skipped": "whole-layer compile takes minutes on CPU"}
    else:
        rep.section("layer_compile_diagonal_bilstm_32", lambda: S.layer_compile_effect(
            S.config("imagenet32_diagonal_bilstm", [], "bf16", 16, device, smoke), device, args.steps),
            need_s=40, limit_s=150)
    # 5. issue 21: reference path, eager scan, whole-layer compile, CUDA graphs at micro-batches 4 and 32
    for batch in (4, 32):
        rep.section(f"scan_modes_diagonal_bilstm_32_mb{batch}", lambda batch=batch: gpu_scan.scan_modes(
            S.config("imagenet32_diagonal_bilstm", [], "bf16", 2 if smoke else batch, device, smoke), device,
            args.steps, smoke), need_s=40, limit_s=150)
    rep.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    rep.save()
    errors = errors_in(rep.data)
    print(f"gpu_check: done in {rep.data['elapsed_s']}s; {len(errors)} section(s) with errors {errors}; "
          f"results in {rep.path}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())

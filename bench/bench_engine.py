"""Engine overhead: a DeepSpeed training step vs the same model's plain PyTorch step, on CPU.

One process, world size 1 (`pipeline.train.distributed.init_distributed`, gloo, DS_ACCELERATOR=cpu). The
DeepSpeed engines come from the real path (`pipeline.engine.initialize` with the JSON of
`pipeline.ds_config.deepspeed_config`) and the model from `pipeline.models.build_model`: a Row LSTM
(default 16×16, 4 layers, h=32, 256 output maps, micro-batch 16) — small enough for a CPU, big enough
that the step is compute, not Python.

A step is what `pipeline.train` does per micro-batch: bits/dim forward, `.item()` of the loss, backward,
optimizer step (RMSprop, the paper's), LR schedule, gradient clipping at `optim.grad_clip`. The plain
references do the same work without DeepSpeed:

* plain fp32: `BitsPerDim(model)`, `loss.backward()`, `clip_grad_norm_`, `opt.step()`, `sched.step()`;
* plain bf16: the model cast to bf16, fp32 master weights in the optimizer (grads copied up, clipped,
  stepped, weights copied back) — what DeepSpeed's bf16 mode does, written out by hand.

Contenders: ZeRO-0 and ZeRO-2 × fp32 and bf16 DeepSpeed engines, and the two plain references, all in
this process, interleaved step by step (order reversed every other round, after warm-up). Ratio =
DeepSpeed step time / plain step time of the same precision and round, median over rounds (the ratio
of best rounds is printed beside it); target <= 1.15; the last line is the worst configuration.

Usage: python bench/bench_engine.py [--quick] [--steps 5] [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402

from common import REPO, free_port, header, result_line  # noqa: E402

TARGET = 1.15


def make_cfg(args, precision: str, zero: int):
    from pipeline.config import load_config
    return load_config("cifar10_row_lstm", [
        f"model.image_size={args.size}", f"model.layers={args.layers}", f"model.hidden={args.hidden}",
        f"model.out_maps={args.out_maps}", f"train.precision={precision}", f"train.zero_stage={zero}",
        "train.device=cpu", f"train.micro_batch_size={args.batch}", f"train.global_batch_size={args.batch}",
        f"data.root={REPO}", "optim.warmup_steps=10", "train.max_steps=100000"])


def deepspeed_step(args, precision: str, zero: int):
    from pipeline.train.ds_config import deepspeed_config
    from pipeline.train.engine import initialize
    cfg = make_cfg(args, precision, zero)
    engine, _ = initialize(cfg, deepspeed_config(cfg, 1))
    engine.train()

    def step(x):
        bpd = engine(x).mean()
        loss = bpd.item()
        engine.backward(bpd)
        engine.step()
        return loss
    return step


def plain_step(args, precision: str):
    from pipeline.models.objective import BitsPerDim
    from pipeline.train.engine import build, lr_lambda, make_optimizer
    cfg = make_cfg(args, precision, 0)
    torch.manual_seed(cfg.train.seed)
    objective = BitsPerDim(build(cfg))
    clip = cfg.optim.grad_clip
    if precision == "fp32":
        params = list(objective.parameters())
        opt = make_optimizer(cfg.optim, params)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.optim, cfg.train.max_steps))

        def step(x):
            opt.zero_grad(set_to_none=True)
            bpd = objective(x).mean()
            loss = bpd.item()
            bpd.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            sched.step()
            return loss
        return step
    objective.to(torch.bfloat16)
    low = list(objective.parameters())
    master = [p.detach().float().clone().requires_grad_(True) for p in low]
    opt = make_optimizer(cfg.optim, master)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.optim, cfg.train.max_steps))

    def step(x):
        for p in low:
            p.grad = None
        bpd = objective(x).mean()
        loss = bpd.item()
        bpd.backward()
        for m, p in zip(master, low):
            m.grad = p.grad.float()
        torch.nn.utils.clip_grad_norm_(master, clip)
        opt.step()
        sched.step()
        with torch.no_grad():
            for m, p in zip(master, low):
                p.copy_(m)
        return loss
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--out-maps", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1, help="timed steps per contender per round")
    ap.add_argument("--repeats", type=int, default=25, help="rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadier on a shared box)")
    ap.add_argument("--configs", nargs="+", default=["zero0-fp32", "zero2-fp32", "zero0-bf16", "zero2-bf16"])
    args = ap.parse_args()
    if args.quick:
        args.repeats = 8
    torch.set_num_threads(args.threads)
    header("engine overhead")
    from pipeline.train.distributed import DistEnv, init_distributed, resolve_device
    resolve_device("cpu")
    init_distributed(DistEnv(0, 0, 1, "127.0.0.1", free_port()), "cpu", 600)

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.batch, 3, args.size, args.size), generator=g, dtype=torch.uint8)
    steps = {}
    for prec in sorted({c.split("-")[1] for c in args.configs}):
        steps[f"plain-{prec}"] = plain_step(args, prec)
    for c in args.configs:
        zero, prec = c.split("-")
        steps[c] = deepspeed_step(args, prec, int(zero.removeprefix("zero")))
    print(f"row_lstm {args.size}x{args.size}, {args.layers} layers, h={args.hidden}, out_maps={args.out_maps}, "
          f"micro-batch {args.batch}, RMSprop, clip 1.0; torch threads {args.threads}; "
          f"{args.steps} step(s) x {args.repeats} rounds, interleaved ABBA", flush=True)
    for name, fn in steps.items():  # warm-up: allocator, first-step state creation
        for _ in range(2):
            fn(x)
    # Step-level interleaving, order reversed every other round (ABBA): the machine's load changes by
    # the second when shared, and each DeepSpeed step is compared with the plain step of the same round.
    times = {k: [] for k in steps}
    names = list(steps)
    for r in range(args.repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            for _ in range(args.steps):
                steps[name](x)
            times[name].append((time.perf_counter() - t) / args.steps)
        if (r + 1) % max(1, args.repeats // 5) == 0 or r + 1 == args.repeats:
            print(f"  round {r + 1}/{args.repeats}: " +
                  "  ".join(f"{k} {v[-1] * 1e3:.0f}ms" for k, v in times.items()), flush=True)
    for k, v in times.items():
        print(f"{k:11s}: best {min(v) * 1e3:7.1f} ms/step, median {statistics.median(v) * 1e3:7.1f} ms/step")
    ratios = {}
    for c in args.configs:
        prec = c.split("-")[1]
        paired = [a / b for a, b in zip(times[c], times[f"plain-{prec}"])]
        ratios[c] = statistics.median(paired)
        print(f"{c} / plain-{prec}: median of {len(paired)} paired rounds {ratios[c]:.3f}x, "
              f"best/best {min(times[c]) / min(times[f'plain-{prec}']):.3f}x (target <= {TARGET}x)")
    worst = max(ratios, key=ratios.get)
    print(result_line(f"DeepSpeed step / plain PyTorch step, worst ({worst})", ratios[worst], TARGET,
                      higher_is_better=False, unit="x"))


if __name__ == "__main__":
    main()

"""Distributed scaling on CPU: training images/s per rank with 2 ranks vs 1 rank.

Each run is the real thing: `torchrun --nproc_per_node N -m pipeline.train --exp smoke ...` (DeepSpeed
ZeRO-2 bf16, gloo, the smoke experiment's generated 8×8 shards, built once by `slurm.submit.prepare_data`
and cached under $PIXELRNN_BENCH_CACHE), with single-threaded ranks (OMP_NUM_THREADS=1, so 2 ranks on
2 cores is a fair comparison), one in-process loader reader per rank (data.num_workers=1), no evaluation,
sample grid or checkpoint inside the timed loop (train.eval_every, checkpoint.every large,
train.sample_every_eval=0). The global batch is fixed (micro-batch × accumulation × ranks), so 1 rank
accumulates 2 micro-batches per step where 2 ranks take one each.

images/s comes from rank 0's progress lines (`step k/n ... X images/s`, every train.log_every steps,
global images over the window's wall time): the first window (loader start, first allocations) is
dropped, the median of the others kept. Launches alternate 1, 2, 2, 1, ... ranks; each rank count keeps
its best run. Ratio = (2-rank images/s / 2) / (1-rank images/s); target >= 0.8.

The default model is larger than the smoke one (4 layers, h=32, 128 output maps) so that a step is
compute rather than Python and gloo latency; `--model smoke` keeps the smoke model.

Usage: python bench/bench_scaling.py [--quick] [--steps 60] [--repeats 2] [--model medium|smoke]
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CACHE, REPO, free_port, header, result_line, single_thread_env

TARGET = 0.8
MODELS = {
    "smoke": [],
    "medium": ["model.layers=4", "model.hidden=32", "model.out_maps=128"],
}
RATE = re.compile(r"step (\d+)/(\d+) .* ([0-9.]+) images/s")


def smoke_data() -> Path:
    from pipeline.config import load_config
    from slurm.submit import prepare_data
    root = CACHE / "smoke_data"
    prepare_data(load_config("smoke", [f"data.root={root}"]))
    return root


def launch(nproc: int, data: Path, work: Path, tag: str, args) -> dict:
    run_dir = work / tag
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "pipeline.train", "--exp", "smoke",
           f"output_dir={run_dir}", f"data.root={data}", "data.prepare=none", "data.num_workers=1",
           f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}",
           f"train.max_steps={args.steps}", f"train.log_every={args.log_every}", "train.eval_every=1000000",
           "train.eval_max_batches=1", "train.sample_every_eval=0", "checkpoint.every=1000000",
           f"train.micro_batch_size={args.micro}", f"train.global_batch_size={2 * args.micro}",
           *MODELS[args.model]]
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=single_thread_env(), capture_output=True, text=True,
                         timeout=args.timeout)
    wall = time.perf_counter() - t
    text = out.stdout + out.stderr
    (work / f"{tag}.log").write_text(text)
    windows = [float(m.group(3)) for m in RATE.finditer(text)]
    if len(windows) < 2:
        raise RuntimeError(f"{tag}: found {len(windows)} progress lines (rc {out.returncode}); "
                           f"see {work / (tag + '.log')}:\n{text[-3000:]}")
    rate = statistics.median(windows[1:])
    return {"ranks": nproc, "images_per_s": rate, "per_rank": rate / nproc, "windows": windows,
            "wall_s": wall, "rc": out.returncode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps, one launch each")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2, help="launches per rank count")
    ap.add_argument("--micro", type=int, default=16, help="micro-batch per rank (global = 2 × micro)")
    ap.add_argument("--model", choices=sorted(MODELS), default="medium")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    if args.quick:
        args.steps, args.log_every, args.repeats = 30, 5, 1
    header("distributed scaling (CPU, gloo)")
    data = smoke_data()
    print(f"smoke experiment, model {args.model} {MODELS[args.model]}, micro-batch {args.micro}, global "
          f"{2 * args.micro}, {args.steps} steps, OMP_NUM_THREADS=1, data.num_workers=1", flush=True)
    best = {1: None, 2: None}
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        work = Path(tmp)
        for r in range(args.repeats):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                res = launch(n, data, work, f"r{r}_n{n}", args)
                print(f"  run {r + 1}, {n} rank(s): {res['images_per_s']:.1f} images/s "
                      f"({res['per_rank']:.1f} per rank; windows {[round(w, 1) for w in res['windows']]}; "
                      f"launch-to-exit {res['wall_s']:.0f}s, rc {res['rc']})", flush=True)
                if best[n] is None or res["images_per_s"] > best[n]["images_per_s"]:
                    best[n] = res
    one, two = best[1]["per_rank"], best[2]["per_rank"]
    print(f"1 rank : {best[1]['images_per_s']:8.1f} images/s")
    print(f"2 ranks: {best[2]['images_per_s']:8.1f} images/s ({two:.1f} per rank); "
          f"speed-up {best[2]['images_per_s'] / best[1]['images_per_s']:.2f}x")
    print(result_line("images/s per rank, 2 ranks / 1 rank", two / one, TARGET))


if __name__ == "__main__":
    main()

"""Helpers shared by the benchmarks: repo path, interleaved timing, cached shards, result lines.

Every benchmark here compares two (or more) ways of doing the same work measured side by side in one
process or one run: the contenders are interleaved round by round (A B A B ...) so that a change in the
machine's load during the run falls on both, and each one keeps its best round (or the median) — on a
machine shared with other jobs, absolute times are noise; only the ratios mean something.

The last line a benchmark prints is its headline ratio, in the form `run_all.py` parses:

    <what>: 0.93 (target >= 0.8) MET
"""
from __future__ import annotations

import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CACHE = Path(os.environ.get("PIXELRNN_BENCH_CACHE", Path(tempfile.gettempdir()) / "pixelrnn-bench-cache"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def interleave(contenders: Dict[str, Callable[[], Tuple[float, float]]], repeats: int,
               verbose: bool = True) -> Dict[str, List[float]]:
    """Run each contender once per round (order reversed every other round); every call returns
    (work units, seconds). Returns {name: [rate per round]} (units / s)."""
    rates: Dict[str, List[float]] = {k: [] for k in contenders}
    for r in range(repeats):
        # A B C, then C B A: a load that drifts during the run falls evenly on every contender.
        order = list(contenders.items()) if r % 2 == 0 else list(contenders.items())[::-1]
        for name, fn in order:
            units, seconds = fn()
            rates[name].append(units / seconds)
        if verbose:
            print(f"  round {r + 1}/{repeats}: " + "  ".join(f"{k} {v[-1]:.1f}/s" for k, v in rates.items()),
                  flush=True)
    return rates


def best(xs: Sequence[float]) -> float:
    return max(xs)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "MET" if ok else "NOT MET"


def result_line(what: str, value: float, target: float, higher_is_better: bool = True, unit: str = "") -> str:
    """The headline line, last on stdout; run_all.py parses it."""
    op = ">=" if higher_is_better else "<="
    return f"{what}: {value:.3f}{unit} (target {op} {target}{unit}) {verdict(value, target, higher_is_better)}"


def synthetic_shards(size: int, num_images: int, shard_size: int, classes: int = 10, seed: int = 0,
                     workers: int = 2) -> Path:
    """A train split of `num_images` generated images at `size`×`size` in shards of `shard_size`, built
    by the real preprocessing code (`make_synthetic` + `build`) and cached under CACHE; returns the root
    (`<root>/<size>/train.json`)."""
    import shutil
    root = CACHE / f"shards_{size}px_{num_images}_{shard_size}_{seed}"
    if (root / str(size) / "train.json").exists():
        return root
    import preprocessing
    t = time.perf_counter()
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    preprocessing.make_synthetic(tmp / "_images", num_images=num_images, classes=classes, seed=seed)
    preprocessing.build(tmp / "_images", "train", [size], tmp, shard_size=shard_size, seed=seed,
                        workers=workers, progress=False)
    shutil.rmtree(tmp / "_images")
    try:
        tmp.rename(root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"built {num_images} synthetic {size}x{size} images into shards of {shard_size} "
          f"in {time.perf_counter() - t:.1f}s (cached in {root})", flush=True)
    return root


def header(title: str) -> None:
    import platform
    print(f"== {title} ==  python {platform.python_version()}, cpus={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)


def single_thread_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", DS_ACCELERATOR="cpu",
               PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env

"""Batched vs naive per-image lossless coding with the model (`pipeline.compression`), in images/s.

Batched: all N images in one chunk, one network step per sub-pixel for the whole batch (what
`python -m pipeline.compression` does). Naive: one image per chunk, i.e. one incremental pass per image.
Both round-trip exactly (checked) through the real .prc format; the contenders are interleaved
round by round and each keeps its best round. Images: validation crops of the packaged photos
(preprocessing/photos.py, cached); model: photos32's architecture, randomly initialised unless
--checkpoint is given (the speed does not depend on the weights, the bits/dim do). Then the time of
decode's early check (the probe, pipeline/compression/probe.py) for the configs' largest model, at 1
and 2 threads. Prints the ratio of decode rates last.

    python bench/bench_compress.py                                   # 64 images 32x32, 4x32 model
    python bench/bench_compress.py --checkpoint runs/photos32/checkpoints
    python bench/bench_compress.py --quick                           # 16x16, tiny model, seconds
"""
from __future__ import annotations

import argparse
import time

import torch

from common import CACHE, REPO, best, header, interleave, result_line  # noqa: F401  (REPO: sys.path)
from pipeline.compression.codec import decode_file, encode_images, load_model
from pipeline.compression.probe import probe_sha256
from pipeline.config import ConfigError, load_config
from pipeline.models import build_model, count_parameters
from pipeline.compression.rangecoding import bits_per_dim


def photo_crops(size: int, n: int) -> torch.Tensor:
    """n validation crops (size x size) of the packaged photos, uint8 [n, 3, size, size]."""
    import numpy as np
    from PIL import Image
    from preprocessing.photos import make_photo_crops
    root = CACHE / f"photos_{size}px"
    make_photo_crops(root, size=size, seed=0)
    files = sorted((root / "val").glob("*/*.png"))
    pick = files[:: max(1, len(files) // n)][:n]
    return torch.from_numpy(np.stack([np.asarray(Image.open(f)) for f in pick])).permute(0, 3, 1, 2).contiguous()


def probe_figure(repeats: int = 3) -> None:
    """The decode's early check (`probe_sha256`) for the configs' largest model (most parameters, seed 0),
    best of `repeats` at 1 and 2 threads: wall and CPU seconds (the CPU figure is the one that holds on a
    loaded machine). The decode runs it once, before any chunk."""
    models = {}
    for path in sorted((REPO / "configs" / "experiments").glob("*.yaml")):
        exp = path.stem
        try:
            models[exp] = load_config(exp).model
        except ConfigError:  # a preprocessing experiment: no model
            continue
    with torch.device("meta"):  # parameter counts only: no memory, no initialisation
        sizes = {exp: count_parameters(build_model(cfg)) for exp, cfg in models.items()}
    exp = max(sizes, key=sizes.get)
    torch.manual_seed(0)
    model = build_model(models[exp]).eval()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        wall, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            probe_sha256(model)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        print(f"probe of {exp} ({sizes[exp] / 1e6:.1f}M parameters), {threads} thread(s): "
              f"{min(wall):.3f} s wall, {min(cpu):.3f} s CPU (best of {repeats})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--checkpoint", help="a trained model (checkpoints folder or model.pt)")
    ap.add_argument("--images", type=int, default=64, help="images coded in one batch (compress: --batch-size 64)")
    ap.add_argument("--naive-images", type=int, default=4, help="images coded one by one per round")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="the coder's compute dtype")
    args = ap.parse_args()
    header("lossless coding: batched vs per-image")
    if args.checkpoint:
        model, _ = load_model(args.checkpoint)
    else:
        size, layers, hidden, out_maps = (16, 2, 16, 64) if args.quick else (32, 4, 32, 128)
        torch.manual_seed(0)
        model = build_model("diagonal_bilstm", image_size=size, layers=layers, hidden=hidden, out_maps=out_maps)
    # Both sides load the weights through the real path, from a model.pt (a DeepSpeed folder would
    # cost seconds to consolidate on every decode; the rates below count the coding loops only).
    ckpt = str(CACHE / "bench_compress_model.pt")
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config, "state_dict": model.state_dict()}, ckpt)
    model, sha = load_model(ckpt, args.dtype)
    if args.quick:
        args.images, args.naive_images, args.repeats = 8, 2, 1
    x = photo_crops(model.image_size, args.images)
    n, size = len(x), model.image_size
    cfg = model.config
    print(f"# {cfg['name']} {cfg['layers']}x{cfg['hidden']} out_maps {cfg.get('out_maps')}, {size}x{size}, "
          f"{n} images batched vs {args.naive_images} one by one, {args.dtype}, {args.threads} thread(s); "
          f"{args.checkpoint or 'random init'}")
    sizes = {}

    def run(batch: int, xs: torch.Tensor, key: str):
        def fn():
            data, s = encode_images(model, sha, xs, [f"i{k}" for k in range(len(xs))], ckpt, batch,
                                    dtype=args.dtype, threads=args.threads, progress=False)
            y, _, d = decode_file(data, ckpt, progress=False)
            seconds = d["seconds"]  # the decode loop, without loading the weights
            assert torch.equal(y, xs), "round trip not exact"
            sizes[key] = (bits_per_dim(8 * len(data), len(xs), size), s["images"] / s["seconds"])
            return len(xs), seconds
        return fn

    rates = interleave({"batched": run(n, x, "batched"), "naive": run(1, x[:args.naive_images], "naive")},
                       args.repeats)
    for key in ("batched", "naive"):
        bpd, enc = sizes[key]
        print(f"{key:8s} decode {best(rates[key]):7.2f} images/s, encode {enc:7.2f} images/s, "
              f"file {bpd:.4f} bits/dim (header and stream end shared by {n if key == 'batched' else 1})")
    probe_figure()
    print(result_line("batched vs per-image decode, images/s", best(rates["batched"]) / best(rates["naive"]),
                      10, unit="x"))


if __name__ == "__main__":
    main()

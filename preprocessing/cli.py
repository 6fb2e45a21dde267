"""Command line: `python -m preprocessing <command>` / `pixelrnn-preprocess <command>`.

Exit codes: 0 success, 1 `verify` found a difference, 2 bad input or refused operation (message on
stderr, no traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from .builder import DEFAULT_SHARD_SIZE, build, finalize
from .errors import PreprocessError
from .imaging import BINARIZE_METHODS, MAX_SIZE, MIN_SIZE, RESIZE_METHODS
from .labels import LABEL_ORDERS
from .manifest import info, verify
from .photo_sources import sources
from .photos import DEFAULT_HELDOUT, DEFAULT_VAL, make_photo_crops, scenes
from .synthetic import make_synthetic


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixelrnn-preprocess",
                                description="Image sources -> size x size webdataset shards + manifest.")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="render a source into shards",
                       description="Render a source (ImageNet train dir/tar, val dir/tar + labels, "
                                   "ImageFolder, CIFAR-10 batches, downsampled-ImageNet npz, MNIST-format IDX, "
                                   "binarized-MNIST .amat) into "
                                   "DIR/<size>/<split>-NNNNNN.tar shards and DIR/<size>/<split>.json.")
    b.add_argument("--source", required=True, help="folder, tar or npz file (kind is auto-detected)")
    b.add_argument("--split", required=True, help="split name, e.g. train or val")
    b.add_argument("--sizes", required=True, type=int, nargs="+", help=f"output sizes ({MIN_SIZE}..{MAX_SIZE})")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--val-labels", help="LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt")
    b.add_argument("--class-map", help="id -> wnid map for the devkit labels / npz release: meta.mat "
                                       "(needs scipy) or text '<wnid> <id>' lines (map_clsloc.txt); the npz "
                                       "release's own map is built in")
    b.add_argument("--label-order", choices=LABEL_ORDERS, default="wnid",
                   help="wnid: ImageNet classes labelled by sorted wnid, the same from every source (default); "
                        "release: the npz release's own order (label = its id - 1)")
    b.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    b.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help=f"samples per shard (default {DEFAULT_SHARD_SIZE})")
    b.add_argument("--resize", choices=RESIZE_METHODS, default="box",
                   help="box: squash whole image (default); center-crop: centre square, then box")
    b.add_argument("--seed", type=int, default=0, help="shuffle seed, and the stochastic binarization's (default 0)")
    b.add_argument("--binarize", choices=BINARIZE_METHODS,
                   help="make a grayscale source binary (levels=2): threshold (v > 127) or stochastic "
                        "(Bernoulli(v/255), seeded by --seed and the sample)")
    b.add_argument("--exif-transpose", action="store_true", help="apply EXIF orientation (default: ignore)")
    b.add_argument("--num-tasks", type=int, default=1, help="split the work over K array tasks")
    b.add_argument("--task-id", type=int, default=0, help="this task, 0..K-1 (then run finalize)")
    b.add_argument("--overwrite", action="store_true", help="replace output built with other parameters")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")

    f = sub.add_parser("finalize", help="lay out shards + write manifests after K array tasks")
    f.add_argument("--out", required=True)
    f.add_argument("--split", required=True)
    f.add_argument("--sizes", type=int, nargs="+", help="default: every size with a build of this split")

    v = sub.add_parser("verify", help="re-hash every shard against its manifest (exit 1 on mismatch)")
    v.add_argument("dir")

    i = sub.add_parser("info", help="counts, classes, skipped files and parameters")
    i.add_argument("dir")
    i.add_argument("--json", action="store_true", help="print JSON")

    s = sub.add_parser("synthetic", help="write a small generated ImageFolder tree")
    s.add_argument("--out", required=True)
    s.add_argument("--num-images", type=int, required=True)
    s.add_argument("--classes", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)

    ph = sub.add_parser("photos", help="cut the packaged photos (wheels, Debian wallpapers) into size x size crops",
                        description="Write OUT/<split>/<scene>/*.png crops of the RGB photos that scikit-image, "
                                    "matplotlib, scikit-learn and Debian's wallpaper packages ship, split by "
                                    "scene (val) and by source (heldout), and OUT/photos.json (the photo list "
                                    "with sha256s); then `build` each OUT/<split>.")
    ph.add_argument("--out", required=True)
    ph.add_argument("--size", type=int, default=32, help="crop size (default 32)")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--val", nargs="+", default=list(DEFAULT_VAL), choices=scenes(), metavar="SCENE",
                    help=f"scenes held out for validation (default: {' '.join(DEFAULT_VAL)}; "
                         f"choose from {', '.join(scenes())})")
    ph.add_argument("--heldout-source", nargs="*", default=list(DEFAULT_HELDOUT), choices=sources(), metavar="SOURCE",
                    help=f"sources held out of training as the split 'heldout' (default: {' '.join(DEFAULT_HELDOUT)}; "
                         f"none: no such split; choose from {', '.join(sources())})")
    ph.add_argument("--train-density", type=float, default=4.0, help="crops per size^2 of resized photo")
    ph.add_argument("--val-density", type=float, default=1.0)
    return p


def _report(manifests) -> None:
    for size, m in sorted(manifests.items()):
        print(f"size {size}: {m['num_samples']} samples, {len(m['shards'])} shards, "
              f"{m['num_classes']} classes, {len(m['skipped'])} skipped"
              + (f" (listed in {size}/{m['split']}.json)" if m["skipped"] else ""))


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            res = build(args.source, args.split, args.sizes, args.out, workers=args.workers,
                        shard_size=args.shard_size, resize=args.resize, seed=args.seed,
                        val_labels=args.val_labels, class_map=args.class_map,
                        exif_transpose=args.exif_transpose, num_tasks=args.num_tasks,
                        task_id=args.task_id, overwrite=args.overwrite, progress=not args.no_progress,
                        label_order=args.label_order, binarize=args.binarize)
            if args.num_tasks == 1:
                _report(res)
            else:
                print(f"task {res['task_id']}/{res['num_tasks']}: built {len(res['blocks_built'])} of "
                      f"{res['num_blocks']} blocks; run `finalize` when all tasks are done")
        elif args.command == "finalize":
            _report(finalize(args.out, args.split, args.sizes))
        elif args.command == "verify":
            res = verify(args.dir)
            for problem in res["problems"]:
                print(f"MISMATCH {problem}")
            print(f"{'OK' if res['ok'] else 'FAILED'}: {res['shards_checked']} shards in "
                  f"{len(res['manifests'])} manifests, {len(res['problems'])} problems")
            return 0 if res["ok"] else 1
        elif args.command == "info":
            rows = info(args.dir)
            if args.json:
                print(json.dumps(rows, indent=1))
            else:
                for r in rows:
                    _print_info(r)
        elif args.command == "photos":
            rec = make_photo_crops(args.out, args.size, args.seed, args.val, args.train_density, args.val_density,
                                   heldout_sources=args.heldout_source)
            print(f"wrote {rec['counts']} crops of {len(rec['photos'])} photos to {args.out} "
                  f"(val scenes: {', '.join(rec['params']['val_scenes'])}; held-out sources: "
                  f"{', '.join(rec['params']['heldout_sources']) or 'none'}; record {args.out}/photos.json)")
        elif args.command == "synthetic":
            res = make_synthetic(args.out, args.num_images, args.classes, args.seed)
            print(f"wrote {res['num_images']} images in {len(res['classes'])} classes to {res['out']}")
    except PreprocessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a full output disk: say what and where, without a traceback
        where = e.filename or getattr(args, "out", None) or getattr(args, "dir", "")
        print(f"error: {e.strerror or e}: {where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def _print_info(r: dict) -> None:
    if not r["complete"]:
        print(f"[{r['size']}px {r['split']}] INCOMPLETE: {r['blocks_done']}/{r['num_blocks']} blocks "
              f"rendered ({r['path']})")
        return
    classes = r["classes"]
    shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
    print(f"[{r['size']}px {r['split']}] {r['num_samples']} samples in {r['num_shards']} shards "
          f"(shard size {r['shard_size']}), source {r['source_kind']}")
    print(f"  classes: {r['num_classes']} ({shown})")
    print(f"  skipped: {len(r['skipped'])}")
    for s in r["skipped"][:20]:
        print(f"    {s['source']}: {s['reason']}")
    if len(r["skipped"]) > 20:
        print(f"    ... {len(r['skipped']) - 20} more in {r['path']}")
    print("  params: " + ", ".join(f"{k}={v}" for k, v in sorted(r["params"].items())))
    print("  versions: " + ", ".join(f"{k} {v}" for k, v in sorted(r["versions"].items())))

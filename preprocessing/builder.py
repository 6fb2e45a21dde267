"""The build: list the source, shuffle it, render blocks of it in parallel, lay out the shards.

Determinism: the global order is ``default_rng(seed).permutation`` of the items sorted by
(class, source path). Input block b is shuffled positions b*S..(b+1)*S-1 (S = shard_size); array
task I of K renders the blocks with b % K == I, so what lands in a block (and a shard) depends
only on the order and S, never on K or the number of workers. Shards are laid out from the
block summaries by :func:`finalize` (see shards.py for why there is a parts stage).
"""

from __future__ import annotations

import math
import multiprocessing as mp
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from pathlib import Path
from typing import Deque, Dict, Iterable, List, Optional, Tuple

import numpy as np

from shardformat import manifest_path, shard_name, size_dir

from .errors import PreprocessError
from .fsutil import read_json, sha256_file
from .imaging import BINARIZE_METHODS, MAX_SIZE, MIN_SIZE, RESIZE_METHODS, SkipImage, png_encoder, render
from .manifest import cleanup, make_manifest, prepare_output, read_state, write_manifest
from .mnist import binarized_variant
from .progress import progress_bar
from .shards import PartWriter, blocks_of, layout, load_summaries, part_path, write_shard
from .source_types import make_keys
from .sources import open_source
from .tario import sample_records

DEFAULT_SHARD_SIZE = 5000


def _check_args(split, sizes, shard_size, resize, workers, num_tasks, task_id) -> List[int]:
    if not split or any(c in split for c in "/\\.") or split.startswith("-"):
        raise PreprocessError(f"invalid split name {split!r} (no '/', '\\' or '.')")
    sizes = [sizes] if isinstance(sizes, int) else list(sizes or [])
    if not sizes:
        raise PreprocessError("no --sizes given")
    for s in sizes:
        if not isinstance(s, (int, np.integer)) or not MIN_SIZE <= s <= MAX_SIZE:
            raise PreprocessError(f"unsupported size {s!r}: sizes must be integers in {MIN_SIZE}..{MAX_SIZE}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise PreprocessError(f"--shard-size must be >= 1, got {shard_size!r}")
    if resize not in RESIZE_METHODS:
        raise PreprocessError(f"unknown --resize {resize!r}: choose one of {', '.join(RESIZE_METHODS)}")
    if not isinstance(workers, int) or workers < 1:
        raise PreprocessError(f"--workers must be >= 1, got {workers!r}")
    if num_tasks < 1 or not 0 <= task_id < num_tasks:
        raise PreprocessError(f"need --num-tasks >= 1 and 0 <= --task-id < num-tasks, got {num_tasks}, {task_id}")
    return sorted(set(int(s) for s in sizes))


def build(source, split: str, sizes: Iterable[int], out, *, workers: int = 1,
          shard_size: int = DEFAULT_SHARD_SIZE, resize: str = "box", seed: int = 0,
          val_labels=None, class_map=None, exif_transpose: bool = False, num_tasks: int = 1,
          task_id: int = 0, overwrite: bool = False, progress: bool = True, label_order: str = "wnid",
          binarize: Optional[str] = None) -> dict:
    """Build shards. With one task, finalize too and return {size: manifest}; with K tasks,
    render this task's blocks and return a status dict (run :func:`finalize` after all tasks).
    `label_order`: "wnid" (ImageNet classes by sorted wnid, the default) or "release" (the npz release's).
    `binarize` ("threshold" or "stochastic", seeded by `seed`) makes a grayscale source binary: levels=2."""
    sizes = _check_args(split, sizes, shard_size, resize, workers, num_tasks, task_id)
    if binarize is not None and binarize not in BINARIZE_METHODS:
        raise PreprocessError(f"unknown --binarize {binarize!r}: choose one of {', '.join(BINARIZE_METHODS)}")
    out = Path(out)
    # K array tasks would each list a tar source again: the first one saves the listing for the rest
    src = open_source(source, split, val_labels, class_map, cache_dir=out / ".listing", label_order=label_order)
    _check_source(src, sizes, binarize)
    n = len(src.items)
    keys = make_keys(src.items)
    order = np.random.default_rng(seed).permutation(n)
    num_blocks = math.ceil(n / shard_size)
    fingerprint = src.fingerprint()
    for size in sizes:
        params = {"source": str(Path(source).resolve()), "split": split, "size": size,
                  "shard_size": shard_size, "resize": resize, "seed": seed,
                  "val_labels": str(Path(val_labels).resolve()) if val_labels else None,
                  "class_map": str(Path(class_map).resolve()) if class_map else None,
                  "exif_transpose": bool(exif_transpose), "label_order": label_order}
        if binarize is not None:  # only then: the params of every older build stay what they were
            params["binarize"] = binarize
        state = {"params": params, "classes": src.classes, "source_kind": src.kind,
                 "num_inputs": n, "num_blocks": num_blocks, "source_fingerprint": fingerprint,
                 "png_encoder": png_encoder(), "channels": src.channels,
                 "levels": 2 if binarize else src.levels,
                 "variant": binarized_variant(src.variant, (binarize, seed)) if binarize else src.variant}
        size_dir(out, size).mkdir(parents=True, exist_ok=True)
        prepare_output(out, size, split, state, overwrite, num_tasks)

    jobs = _plan_jobs(out, split, sizes, num_blocks, shard_size, num_tasks, task_id)
    ctx = _Context(src, keys, order, {c: i for i, c in enumerate(src.classes)}, shard_size, out, split,
                   (binarize, seed) if binarize else None)
    _render_blocks(ctx, jobs, resize, exif_transpose, workers, progress)
    if num_tasks == 1:
        return finalize(out, split, sizes)
    return {"task_id": task_id, "num_tasks": num_tasks, "blocks_built": [b for b, _ in jobs],
            "num_blocks": num_blocks}


def _plan_jobs(out, split, sizes, num_blocks, shard_size, num_tasks, task_id) -> List[Tuple[int, Tuple[int, ...]]]:
    """(block, sizes to render) for this task: blocks without a summary, and blocks whose part is
    gone but is needed again because a shard made from it is missing (rerun after deletion)."""
    need: Dict[int, set] = {}
    for size in sizes:
        summaries, missing = load_summaries(out, size, split, num_blocks)
        for b in missing:
            need.setdefault(b, set()).add(size)
        if not missing:
            for plan in layout(summaries, num_blocks, shard_size):
                if not (size_dir(out, size) / shard_name(split, plan.index)).exists():
                    for b in blocks_of(plan):
                        if not part_path(out, size, split, b).exists():
                            need.setdefault(b, set()).add(size)
    return [(b, tuple(sorted(need[b]))) for b in sorted(need) if b % num_tasks == task_id]


def _check_source(src, sizes: List[int], binarize: Optional[str]) -> None:
    """Binarizing needs a grayscale source; a binary one is built at its own size (a BOX resize would
    make grays that are no longer 0 or 1)."""
    if binarize is not None and src.channels != 1:
        raise PreprocessError(f"--binarize needs a grayscale source (MNIST-format IDX); this {src.kind} source is RGB")
    if src.levels < 256 and binarize is None:
        side = np.asarray(src.reader(src.items[0].ref)).shape[0]
        if sizes != [side]:
            raise PreprocessError(f"{src.kind} is binary at {side}x{side}: build it at --sizes {side} (a resize "
                                  "would make grays), or pass --binarize threshold to binarize after the resize")


class _Context:
    def __init__(self, src, keys, order, label_of, shard_size, out, split, binarization=None):
        self.src, self.keys, self.order, self.label_of = src, keys, order, label_of
        self.shard_size, self.out, self.split = shard_size, out, split
        self.binarization = binarization   # (method, seed) or None

    def positions(self, block: int) -> range:
        return range(block * self.shard_size, min(len(self.order), (block + 1) * self.shard_size))


# Inputs per worker task (at most). A task is a run of consecutive positions of one block, and its
# result is one joined byte string per size: the parent then does a few writes per task instead of
# Python work per image, which is what kept 2 workers from scaling (0.3 ms/image in the parent).
# Small builds get smaller tasks so that every worker stays busy to the end.
CHUNK = 32


def _chunk_size(total: int, workers: int) -> int:
    return max(1, min(CHUNK, total // (16 * workers)))


# Worker state: set once per process by _init (under fork the context is inherited, not pickled).
_WORKER: dict = {}


def _init(ctx, method, exif_transpose) -> None:
    _WORKER.update(ctx=ctx, method=method, exif=exif_transpose)


def _render_one(idx: int, sizes) -> "Dict[int, bytes] | str":
    """Input idx -> {size: tar record of the sample}, or the reason it is skipped."""
    ctx = _WORKER["ctx"]
    it = ctx.src.items[idx]
    try:
        data = ctx.src.reader(it.ref)
    except OSError as e:
        return f"cannot read: {e}"
    try:
        # the stochastic binarization's RNG is named by (seed, item): the same in any worker
        bz = None if ctx.binarization is None else (ctx.binarization[0], (ctx.binarization[1], idx))
        pngs, orig = render(data, sizes, _WORKER["method"], _WORKER["exif"], bz)
    except SkipImage as e:
        return str(e)
    meta = {"class": it.cls, "source": it.source, "orig_size": list(orig)}
    return sample_records(ctx.keys[idx], ctx.label_of[it.cls], meta, pngs)


def _work(task):
    """(block, sizes, start, stop) -> (records joined per size, record lengths per size, skipped)."""
    _, sizes, start, stop = task
    ctx = _WORKER["ctx"]
    records: Dict[int, List[bytes]] = {s: [] for s in sizes}
    skipped = []
    for pos in range(start, stop):
        idx = int(ctx.order[pos])
        res = _render_one(idx, sizes)
        if isinstance(res, str):
            skipped.append({"source": ctx.src.items[idx].source, "reason": res})
            continue
        for s in sizes:
            records[s].append(res[s])
    return ({s: b"".join(r) for s, r in records.items()},
            {s: [len(x) for x in r] for s, r in records.items()}, skipped)


def _in_order(pool: ProcessPoolExecutor, tasks, window: int):
    """Results of _work over tasks, in order, with at most `window` tasks in flight: the parent's
    memory stays bounded even when writing is slower than rendering (unlike Executor.map)."""
    pending: Deque[Future] = deque()
    todo = iter(tasks)
    for task in islice(todo, window):
        pending.append(pool.submit(_work, task))
    while pending:
        result = pending.popleft().result()
        for task in islice(todo, 1):
            pending.append(pool.submit(_work, task))
        yield result


def _render_blocks(ctx: _Context, jobs, method, exif_transpose, workers, progress) -> None:
    if not jobs:
        return
    total = sum(len(ctx.positions(b)) for b, _ in jobs)
    chunk = _chunk_size(total, workers)

    def chunks(b, bsizes):
        r = ctx.positions(b)
        return [(b, bsizes, i, min(i + chunk, r.stop)) for i in range(r.start, r.stop, chunk)]

    tasks = [t for b, bsizes in jobs for t in chunks(b, bsizes)]
    pool = None
    if workers == 1:
        _init(ctx, method, exif_transpose)
        results = map(_work, tasks)
    else:
        # fork: workers inherit the imported modules and the context; readers re-open files per process.
        # ProcessPoolExecutor, not multiprocessing.Pool: Pool's worker-handler thread wakes up (and
        # spins) whenever a result is waiting in the pipe, which with ~0.5 MB results cost the parent
        # as much CPU as the writing; the executor also fails (BrokenProcessPool) instead of hanging
        # when a worker is killed.
        context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init,
                                   initargs=(ctx, method, exif_transpose))
        results = _in_order(pool, tasks, window=4 * workers)
    skipped_total = 0
    try:
        sizes = "/".join(map(str, sorted({s for _, ss in jobs for s in ss})))
        with progress_bar(total, f"{ctx.split} {sizes}px", progress) as bar:
            for b, bsizes in jobs:
                writers = {s: PartWriter(ctx.out, s, ctx.split, b) for s in bsizes}
                skipped = []
                try:
                    for _, _, start, stop in chunks(b, bsizes):
                        try:
                            blobs, lengths, chunk_skipped = next(results)
                        except BrokenProcessPool:
                            raise PreprocessError(
                                f"a worker process died while rendering block {b} of {ctx.split} (killed, "
                                "or out of memory?); finished blocks are kept: rerun the same command "
                                "to resume") from None
                        for s, w in writers.items():
                            w.add(blobs[s], lengths[s])
                        skipped += chunk_skipped
                        bar.update(stop - start)
                except BaseException:
                    for w in writers.values():
                        w.abort()
                    raise
                for w in writers.values():
                    w.commit(skipped)
                skipped_total += len(skipped)
                if skipped_total:
                    bar.set_postfix(skipped=skipped_total)
    finally:
        if pool is not None:
            # On an error: queued tasks are dropped; the ones running (a chunk each) finish first.
            pool.shutdown(wait=True, cancel_futures=True)
        _WORKER.clear()  # workers=1 rendered in this process: do not keep the source listing alive


def finalize(out, split: str, sizes: Optional[Iterable[int]] = None) -> Dict[int, dict]:
    """Lay out shards from the block parts of every size, write manifests -> {size: manifest}."""
    out = Path(out)
    if sizes is None:
        sizes = sorted(int(d.name) for d in out.iterdir() if d.is_dir() and d.name.isdigit()
                       and (d / f".{split}.params.json").exists()) if out.is_dir() else []
        if not sizes:
            raise PreprocessError(f"no {split} build state under {out}: run build first")
    manifests = {}
    for size in sorted(set(sizes)):
        manifests[size] = _finalize_size(out, split, int(size))
    return manifests


def _finalize_size(out: Path, split: str, size: int) -> dict:
    state = read_state(out, size, split)
    nb, ss = state["num_blocks"], state["params"]["shard_size"]
    summaries, missing = load_summaries(out, size, split, nb)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise PreprocessError(f"size {size}: {len(missing)} of {nb} blocks of {split} are not built yet "
                              f"(blocks {shown}; block b belongs to task b % num_tasks): run those tasks")
    plans = layout(summaries, nb, ss)
    if not plans:
        raise PreprocessError(f"all {state['num_inputs']} inputs of {split} were skipped: nothing to write")
    mp_ = manifest_path(out, size, split)
    old = {s["name"]: s["sha256"] for s in read_json(mp_)["shards"]} if mp_.exists() else {}
    shards = []
    for plan in plans:
        name = shard_name(split, plan.index)
        final = size_dir(out, size) / name
        if final.exists():
            sha = old.get(name) or sha256_file(final)
        else:
            gone = [b for b in blocks_of(plan) if not part_path(out, size, split, b).exists()]
            if gone:
                raise PreprocessError(f"shard {final} is missing and the parts it is made from are gone "
                                      f"(blocks {gone}): rerun build with the same arguments")
            sha = write_shard(out, size, split, plan, summaries)
        shards.append({"name": name, "count": plan.count, "sha256": sha})
    skipped = sorted((s for b in range(nb) for s in summaries[b]["skipped"]), key=lambda s: s["source"])
    manifest = make_manifest(state, shards, skipped)
    write_manifest(out, size, split, manifest)
    cleanup(out, size, split)
    return manifest

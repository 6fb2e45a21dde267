"""DeepSpeed checkpoints that are safe to kill at any moment.

Layout under `<run_dir>/checkpoints/`:
  step00000120/               DeepSpeed's files: the model, one ZeRO optimizer-state file per rank,
                              plus rng_rank<r>.pt (every rank's RNG) and meta.json (written last)
  latest                      the tag of the newest *complete* checkpoint

  step00000120_universal/     made on demand when the world size changed (elastic resume)

Every rank writes its part; only after a barrier does rank 0 write meta.json and then replace `latest`
atomically, so a crash in the middle of a save leaves the previous checkpoint as latest. The newest
`keep_last` complete checkpoints are kept.

Elastic resume: a ZeRO checkpoint only loads on the world size that wrote it, so when that changes rank 0
converts it with DeepSpeed's `ds_to_universal` (into a temporary folder, renamed when complete) and every
rank loads the universal form (`"checkpoint": {"load_universal": true}`).
"""
from __future__ import annotations

import errno
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from pipeline.fsutil import atomic_write_text
from pipeline.train.distributed import is_collective_failure, rank0_only

log = logging.getLogger(__name__)
TAG_RE = re.compile(r"^step(\d{8})$")
UNIVERSAL = "_universal"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message says why."""


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def latest_tag(ckpt_dir: Path) -> Optional[str]:
    """The tag `latest` names, if it points at a complete checkpoint."""
    latest = Path(ckpt_dir) / "latest"
    if not latest.exists():
        return None
    tag = latest.read_text().strip()
    if not (Path(ckpt_dir) / tag / "meta.json").exists():
        raise CheckpointError(f"{latest} names {tag!r}, which is not a complete checkpoint")
    return tag


def latest_step(ckpt_dir: Path) -> Optional[int]:
    """The step of the newest complete checkpoint, or None. Reads two small files and imports no torch, so
    that the launcher can tell a finished run before it submits anything."""
    tag = latest_tag(ckpt_dir)
    match = TAG_RE.match(tag) if tag else None
    return int(match.group(1)) if match else None


def read_meta(ckpt_dir: Path, tag: str) -> Dict[str, Any]:
    return json.loads((Path(ckpt_dir) / tag / "meta.json").read_text())


def save(engine, ckpt_dir: Path, step: int, client_state: Dict[str, Any], meta: Dict[str, Any],
         keep_last: int, rank: int) -> str:
    """Every rank calls this at the same step. Returns the tag."""
    import torch  # torch and DeepSpeed only where a checkpoint is written or read: the launcher reads
    import torch.distributed as dist  # `latest` (latest_step) from this module without paying for them
    ckpt_dir = Path(ckpt_dir)
    from deepspeed.checkpoint.constants import (UNIVERSAL_CHECKPOINT_INFO,  # as torch, above
                                                UNIVERSAL_CHECKPOINT_VERSION_KEY, UNIVERSAL_CHECKPOINT_VERSION_VALUE)
    tag = tag_for(step)
    # ds_to_universal refuses checkpoints without this entry; it makes elastic resume possible.
    client_state = dict(client_state, **{UNIVERSAL_CHECKPOINT_INFO: {
        UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}})
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
        torch.save({"torch": torch.get_rng_state()}, ckpt_dir / tag / f"rng_rank{rank}.pt")
    except OSError as e:
        raise _write_error(ckpt_dir, tag, rank, e) from e
    except RuntimeError as e:
        # torch.save reports a failed write as a RuntimeError ("unexpected pos", "file write failed"); a
        # collective inside save_checkpoint fails as one too, and that is a lost rank, not a disk problem.
        if is_collective_failure(e):
            raise
        raise _write_error(ckpt_dir, tag, rank, e) from e
    dist.barrier()  # every rank's files are on disk before the checkpoint is declared complete

    def declare_complete() -> None:
        try:
            atomic_write_text(ckpt_dir / tag / "meta.json", json.dumps(dict(meta, step=step, tag=tag), indent=2))
            atomic_write_text(ckpt_dir / "latest", tag)
        except OSError as e:
            raise _write_error(ckpt_dir, tag, rank, e) from e
        _prune(ckpt_dir, keep_last, tag)

    # Rank 0 alone; a failure there (a full disk) fails every rank at once instead of leaving them waiting.
    rank0_only(rank, "declaring the checkpoint complete", declare_complete)
    return tag


def _write_error(ckpt_dir: Path, tag: str, rank: int, err: BaseException) -> CheckpointError:
    """A failed checkpoint write, explained: torch.save reports a full disk only as "file write failed"."""
    free = None
    try:
        free = shutil.disk_usage(ckpt_dir).free
    except OSError:
        pass
    code = getattr(err, "errno", None)
    if code == errno.ENOSPC or (code is None and free is not None and free < 1 << 20):
        why = f"no space left on device ({free} bytes free on the filesystem of {ckpt_dir})"
    elif code == errno.EFBIG:
        why = "file too large (the file-size limit, ulimit -f / RLIMIT_FSIZE, was reached)"
    elif code == errno.EDQUOT:
        why = "disk quota exceeded"
    else:
        why = "write failed"
    try:
        previous = (ckpt_dir / "latest").read_text().strip()
    except OSError:
        previous = None
    kept = f"`latest` still names {previous}, which is intact" if previous else "no earlier checkpoint exists"
    return CheckpointError(f"rank {rank}: writing checkpoint {ckpt_dir / tag} failed: {why}: "
                           f"{type(err).__name__}: {err}; {kept}")


def _prune(ckpt_dir: Path, keep_last: int, newest: str) -> None:
    tags = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and TAG_RE.match(p.name))
    complete = [t for t in tags if (ckpt_dir / t / "meta.json").exists()]
    for t in complete[:-keep_last]:
        if t != newest:
            shutil.rmtree(ckpt_dir / t, ignore_errors=True)
    # Incomplete checkpoints older than the newest complete one are leftovers of a crash mid-save;
    # universal conversions are only needed for the checkpoint a run resumed from.
    for t in tags:
        if t not in complete and t < newest:
            shutil.rmtree(ckpt_dir / t, ignore_errors=True)
    for p in ckpt_dir.glob(f"step*{UNIVERSAL}*"):
        shutil.rmtree(p, ignore_errors=True)


def load(engine, ckpt_dir: Path, tag: str, rank: int) -> Dict[str, Any]:
    """Load model, optimizer, scheduler and this rank's RNG state from `tag` (a plain or a universal
    checkpoint folder). Returns the client state."""
    import torch  # not at the top: see save()
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {Path(ckpt_dir) / tag}")
    rng_file = Path(ckpt_dir) / tag / f"rng_rank{rank}.pt"
    if rng_file.exists():  # absent in a universal conversion: another world size has other ranks
        torch.set_rng_state(torch.load(rng_file, weights_only=True)["torch"])
    return client_state or {}


def universal_tag(ckpt_dir: Path, tag: str, rank: int) -> str:
    """Convert `tag` to DeepSpeed's universal format (rank 0, once; all ranks wait). Returns its tag. A
    failed conversion fails every rank at once, naming rank 0 and the error (distributed.rank0_only)."""
    ckpt_dir = Path(ckpt_dir)
    out = ckpt_dir / f"{tag}{UNIVERSAL}"
    # Every rank takes part in rank0_only whatever it sees on disk (a late rank may already see `out`).
    rank0_only(rank, "the universal conversion", lambda: out.exists() or _convert_to_universal(ckpt_dir, tag, out))
    return out.name


def _convert_to_universal(ckpt_dir: Path, tag: str, out: Path) -> None:
    """Rank 0: ds_to_universal into a temporary folder, renamed to `out` when complete."""
    tmp = ckpt_dir / f"{tag}{UNIVERSAL}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("world size changed: converting %s to a universal checkpoint", ckpt_dir / tag)
    proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
                           "--input_folder", str(ckpt_dir / tag), "--output_folder", str(tmp),
                           "--num_extract_workers", "1", "--num_merge_workers", "1"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        log.error("ds_to_universal failed on %s:\n%s", ckpt_dir / tag, proc.stderr[-2000:])
        raise CheckpointError(f"converting {ckpt_dir / tag} to a universal checkpoint failed: {last[:300]}")
    shutil.copy(ckpt_dir / tag / "meta.json", tmp / "meta.json")
    tmp.rename(out)
    # ds_to_universal also drops a `latest_universal` file naming its (temporary) output: not ours.
    (ckpt_dir / "latest_universal").unlink(missing_ok=True)


def check_compatible(meta: Dict[str, Any], model_config: Dict[str, Any], ckpt: Path) -> None:
    """Refuse a checkpoint made for another model before DeepSpeed fails on shapes."""
    saved = meta.get("model")
    if saved is not None:  # saved before issue 22 added these fields: every such model was RGB, 256 levels
        saved = {**{k: v for k, v in (("channels", 3), ("levels", 256)) if k in model_config}, **saved}
    if saved is not None and saved != model_config:
        diff = sorted(k for k in set(saved) | set(model_config) if saved.get(k) != model_config.get(k))
        raise CheckpointError(f"checkpoint {ckpt} was made for another model (differs in {', '.join(diff)}): "
                              f"saved {saved}, configured {model_config}")

"""Per-size/split build state, the manifest, and the `verify` / `info` reports.

Files in `DIR/<size>/`:
  `.<split>.params.json`  state written when a build starts: the output-determining parameters,
                          class list, source fingerprint and block count. A later build with other
                          parameters is refused (unless --overwrite); finalize reads it.
  `<split>.json`          the manifest (see `shardformat` for its fields), written atomically last.

`params` holds every parameter that can change the output. Execution-only options (workers,
num_tasks, task_id, overwrite) are left out on purpose, so that a 3-task build and a 1-process
build give byte-identical manifests as well as shards.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Dict, List

import numpy as np
import PIL

from shardformat import (DEFAULT_CHANNELS, DEFAULT_LEVELS, FORMAT, FormatError, check_manifest, manifest_path,
                         shard_glob, size_dir)

from .errors import PreprocessError
from .fsutil import atomic_write_json, read_json, sha256_file
from .imaging import png_encoder
from .shards import temp_files


def state_path(out: Path, size: int, split: str) -> Path:
    return size_dir(out, size) / f".{split}.params.json"


def versions() -> Dict[str, str]:
    # importlib.metadata, not `import webdataset`: that import pulls in torch (over a second).
    try:
        wds_version = metadata.version("webdataset")
    except metadata.PackageNotFoundError:  # the writer does not need it; the loader does
        wds_version = "not installed"
    return {"pillow": PIL.__version__, "numpy": np.__version__, "webdataset": wds_version,
            "python": platform.python_version(),
            # PNG bytes depend on libpng/zlib: recorded so a hash difference across machines is explainable
            "png_encoder": png_encoder()}


def _outputs(out: Path, size: int, split: str) -> List[Path]:
    d = size_dir(out, size)
    found = list(d.glob(shard_glob(split))) if d.is_dir() else []
    found += [p for p in [manifest_path(out, size, split)] if p.exists()]
    parts = d / ".parts"
    if parts.is_dir():
        found += [p for p in parts.iterdir() if p.name.startswith(f"{split}-")]
    return found + temp_files(out, size, split)


def prepare_output(out: Path, size: int, split: str, state: dict, overwrite: bool, num_tasks: int) -> None:
    """Refuse output made with other parameters (or clear it with overwrite); record the state."""
    sp = state_path(out, size, split)
    d = size_dir(out, size)
    if overwrite:
        if num_tasks > 1:
            raise PreprocessError("--overwrite cannot be combined with --num-tasks > 1 (each task would "
                                  f"delete the others' work): remove {d} first, or overwrite with one task")
        for p in _outputs(out, size, split) + [sp]:
            p.unlink(missing_ok=True)
    elif sp.exists():
        old = read_json(sp)
        if old.get("params") != state["params"]:
            a, b = old.get("params", {}), state["params"]
            diff = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                             if a.get(k) != b.get(k))
            raise PreprocessError(f"{d} already holds {split} output built with other parameters ({diff}); "
                                  "pass --overwrite to replace it")
        if old.get("source_fingerprint") != state["source_fingerprint"]:
            raise PreprocessError(f"the source changed since {d} was started (different files or classes); "
                                  "pass --overwrite to rebuild")
        if old.get("png_encoder") != state["png_encoder"]:
            # Pixels would still match, but the shards written from now on would not be
            # byte-identical to the ones already there (and to an uninterrupted build).
            before = old.get("png_encoder") or "Pillow's, from a version of this tool that did not record it"
            raise PreprocessError(f"{d} was started with another PNG encoder ({before}; now {state['png_encoder']}): "
                                  "finish it with that version, or pass --overwrite")
        return
    elif _outputs(out, size, split):
        raise PreprocessError(f"{d} already holds {split} output but no build state ({sp.name}); "
                              "pass --overwrite to replace it")
    atomic_write_json(sp, state)


def read_state(out: Path, size: int, split: str) -> dict:
    sp = state_path(out, size, split)
    if not sp.exists():
        raise PreprocessError(f"no {split} build at size {size} in {out} ({sp} missing): run build first")
    return read_json(sp)


def make_manifest(state: dict, shards: List[dict], skipped: List[dict]) -> dict:
    p = state["params"]
    return {"format": FORMAT, "split": p["split"], "size": p["size"],
            "num_samples": sum(s["count"] for s in shards), "shard_size": p["shard_size"],
            "shards": shards, "classes": state["classes"], "num_classes": len(state["classes"]),
            "skipped": skipped, "params": p, "versions": versions(),
            "source_kind": state["source_kind"],
            # absent from states written before channels/levels existed: those are RGB, 256 levels
            "channels": state.get("channels", DEFAULT_CHANNELS), "levels": state.get("levels", DEFAULT_LEVELS),
            **({"variant": state["variant"]} if state.get("variant") else {})}


def write_manifest(out: Path, size: int, split: str, manifest: dict) -> None:
    atomic_write_json(manifest_path(out, size, split), manifest)


def cleanup(out: Path, size: int, split: str) -> None:
    """After the manifest: drop parts and temporaries (summaries stay: they let a rerun rebuild
    a deleted shard from only the blocks it needs)."""
    parts = size_dir(out, size) / ".parts"
    if parts.is_dir():
        for p in parts.glob(f"{split}-*.tar"):
            p.unlink(missing_ok=True)
    for p in temp_files(out, size, split):
        p.unlink(missing_ok=True)


def find_manifests(out: Path) -> List[Path]:
    out = Path(out)
    if not out.is_dir():
        raise PreprocessError(f"{out} is not a directory")
    found = sorted((p for d in out.iterdir() if d.is_dir() and d.name.isdigit()
                    for p in d.glob("*.json") if not p.name.startswith(".")),
                   key=lambda p: (int(p.parent.name), p.name))
    return found


def verify(out) -> dict:
    """Re-hash every shard of every manifest under `out`. -> {"ok": bool, "problems": [...], ...}"""
    manifests = find_manifests(Path(out))
    if not manifests:
        raise PreprocessError(f"no manifests (<size>/<split>.json) under {out}")
    problems, checked = [], 0
    for mp in manifests:
        m = read_json(mp)
        try:
            check_manifest(m)
        except FormatError as e:
            problems.append(f"{mp}: {e}")
            continue
        listed = set()
        for entry in m["shards"]:
            path = mp.parent / entry["name"]
            listed.add(entry["name"])
            checked += 1
            if not path.exists():
                problems.append(f"{path}: missing")
            elif sha256_file(path) != entry["sha256"]:
                problems.append(f"{path}: sha256 differs from {mp.name}")
        for extra in sorted(mp.parent.glob(shard_glob(m["split"]))):
            if extra.name not in listed:
                problems.append(f"{extra}: shard not listed in {mp.name}")
    return {"ok": not problems, "problems": problems, "shards_checked": checked,
            "manifests": [str(p) for p in manifests]}


def info(out) -> List[dict]:
    """One summary per manifest, plus unfinished builds (state file without manifest)."""
    out = Path(out)
    if not out.is_dir():
        raise PreprocessError(f"{out} is not a directory")
    rows = []
    for mp in find_manifests(out):
        m = read_json(mp)
        rows.append({"path": str(mp), "split": m["split"], "size": m["size"], "complete": True,
                     "num_samples": m["num_samples"], "num_shards": len(m["shards"]),
                     "shard_size": m["shard_size"], "num_classes": m["num_classes"],
                     "classes": m["classes"], "skipped": m["skipped"], "params": m["params"],
                     "source_kind": m["source_kind"], "versions": m["versions"]})
    for d in sorted((d for d in out.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name)):
        for sp in sorted(d.glob(".*.params.json")):
            split = sp.name[1:-len(".params.json")]
            if not (d / f"{split}.json").exists():
                st = read_json(sp)
                done = len(list((d / ".parts").glob(f"{split}-*.json"))) if (d / ".parts").is_dir() else 0
                rows.append({"path": str(sp), "split": split, "size": int(d.name), "complete": False,
                             "blocks_done": done, "num_blocks": st["num_blocks"], "params": st["params"],
                             "num_classes": len(st["classes"]), "source_kind": st["source_kind"]})
    if not rows:
        raise PreprocessError(f"no shards or build state under {out}")
    return rows

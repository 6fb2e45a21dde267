"""Helpers for the preprocessing tests: tiny images, shard readers, CLI runner."""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from .launch import REPO


def noise_image(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Gradient + noise: compressible like a photo, with detail that a wrong resize would change."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w, 1), yy * 255 / max(h, 1), (xx + yy) * 127 / max(w + h, 1)], -1)
    arr = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    return img if mode == "RGB" else img.convert(mode)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def read_samples(out: Path, size: int, split: str):
    """All samples of a split, in shard order: dicts with key, cls, json, pixels (HxWx3)."""
    manifest = json.loads((Path(out) / str(size) / f"{split}.json").read_text())
    samples = []
    for entry in manifest["shards"]:
        with tarfile.open(Path(out) / str(size) / entry["name"]) as tf:
            members = {}
            for m in tf:
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
        for key, d in members.items():
            samples.append({"key": key, "cls": int(d["cls"]), "json": json.loads(d["json"]),
                            "pixels": np.asarray(Image.open(io.BytesIO(d["png"]))),
                            "mode": Image.open(io.BytesIO(d["png"])).mode})
    return manifest, samples


def output_bytes(out: Path) -> dict:
    """{relative path: bytes} of every visible output file (shards and manifests)."""
    out = Path(out)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)}


def run_cli(*args, cwd=None):
    """Run `python -m preprocessing` in a subprocess with an argument list."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "preprocessing", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or REPO, env=env, timeout=120)


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool) -> Path:
    """An IDX file (MNIST's format): big-endian magic and dims, then the uint8 data; gzipped if `compress`."""
    raw = struct.pack(f">I{array.ndim}I", magic, *array.shape) + np.ascontiguousarray(array, np.uint8).tobytes()
    return write(Path(path), gzip.compress(raw, mtime=0) if compress else raw)


def mnist_like(n: int, seed: int = 0, side: int = 28):
    """n grayscale side x side images (uint8, with 0 and 255 present) and labels 0..9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = 0, 255
    return images, rng.integers(0, 10, n).astype(np.uint8)


def write_amat(path: Path, bits: np.ndarray) -> Path:
    """A binarized-MNIST .amat file: one line of 784 space-separated 0/1 values per image."""
    lines = [" ".join(map(str, row.ravel().tolist())) for row in bits]
    return write(Path(path), ("\n".join(lines) + "\n").encode())

"""Lossless image compression with a trained model: `python -m pipeline.compression encode|decode|compare`.

    python -m pipeline.compression encode --checkpoint runs/photos32/checkpoints --out val.prc a.png b.png ...
    python -m pipeline.compression decode val.prc --out-dir decoded/        # [--checkpoint DIR|model.pt]
    python -m pipeline.compression compare --checkpoint runs/photos32/checkpoints --data data/photos32

The images (size x size RGB, size = the model's) are coded in chunks of --batch-size with one range-coded
stream each (pipeline/compression/rangecoding.py); the file format is pipeline/compression/prc.py. `--checkpoint` takes a
run's checkpoints folder, one tag folder or an exported model.pt; the header records its path (the
default for decode) and the sha256 of its weights (decode refuses other weights). Probabilities are
computed with a fixed dtype and thread count (recorded; decode uses the header's). A file's size is
the model's code length plus a stated overhead: the header (JSON: model config, names, checksums) and,
per chunk, the range coder's final words (at most 64 bits) and 24-bit quantisation of the probabilities.
Exit status: 0 done, 2 refused (bad input, a corrupted or mismatched file; the message says why).
"""
from __future__ import annotations

import io
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from pipeline.compression import prc
from pipeline.compression.probe import check_probe, compute_info, probe_sha256
from pipeline.compression.rangecoding import coder_info, decode_batch, encode_batch
from pipeline.fsutil import atomic_write_bytes
from pipeline.progress import progress
from pipeline.train.checkpoint import CheckpointError
from pipeline.train.weights import load_checkpoint_model

DTYPES = {"float32": torch.float32, "float64": torch.float64}
CONVERTIBLE = ("L", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr")  # 8-bit modes convert("RGB") maps exactly
SAFE_NAME = re.compile(r"(?!\.)[^/\\\x00]{1,200}")  # a decoded image's file stem: no folders, no dot-files


class CompressError(ValueError):
    """Input the compressor refuses (wrong size or mode, a checkpoint it cannot load); the message says why."""


def load_model(checkpoint: str, dtype: str = "float32") -> Tuple[torch.nn.Module, str]:
    """(model in eval mode and `dtype`, sha256 of its float32 weights) from a checkpoint or model.pt."""
    if not Path(checkpoint).exists():
        raise CompressError(f"checkpoint {checkpoint} does not exist")
    try:
        model = load_checkpoint_model(checkpoint, "cpu").eval()
    except (CheckpointError, KeyError, RuntimeError) as e:
        raise CompressError(f"cannot load a model from {checkpoint}: {type(e).__name__}: {e}") from None
    sha = prc.weights_sha256(model)  # of the float32 weights, whatever dtype the coder computes in
    return model.to(DTYPES[dtype]), sha


def _gray_levels(path: str, im: Image.Image, levels: int) -> np.ndarray:
    """A grayscale PNG (mode L, or 1 for a binary model) -> values 0..levels-1, as the shards store them
    (v * (255 // (levels - 1))); a value off that grid has no exact form and is refused."""
    if im.mode not in ("L", "1"):
        raise CompressError(f"{path} is {im.mode}, not L (grayscale): refused, the model codes 1-channel images")
    arr = np.asarray(im.convert("L"))
    step = 255 // (levels - 1)
    if (arr % step).any() or arr.max() // step >= levels:
        raise CompressError(f"{path} holds gray values that are not multiples of {step}: refused, a {levels}-level "
                            f"model codes only 0, {step}, ..., {step * (levels - 1)}")
    return (arr // step)[:, :, None]


def read_images(paths: Sequence[str], size: int, convert: bool = False, channels: int = 3,
                levels: int = 256) -> Tuple[torch.Tensor, List[str]]:
    """uint8 [N, C, size, size] and unique names; refuses other sizes, and other modes unless `convert`
    (RGB models); a 1-channel model reads grayscale PNGs of its `levels` (`_gray_levels`)."""
    images, names, seen = [], [], set()
    for path in paths:
        try:
            with Image.open(path) as im:
                im.load()
                mode, img = im.mode, im
                if channels == 1:
                    arr = _gray_levels(path, im, levels)
                elif mode != "RGB":
                    if not convert or mode not in CONVERTIBLE:
                        how = (f"--convert maps {mode} to RGB" if mode in CONVERTIBLE else
                               f"{mode} has no exact 8-bit RGB form")
                        raise CompressError(f"{path} is {mode}, not RGB: refused ({how})")
                    print(f"note: {path} converted from {mode} to RGB"
                          + (" (alpha dropped)" if "A" in mode else "") + "; the decoded image is the RGB one",
                          file=sys.stderr)
                    img = im.convert("RGB")
                if channels == 3:
                    arr = np.asarray(img)
        except OSError as e:
            raise CompressError(f"cannot read {path} as an image: {e}") from None
        if arr.shape[:2] != (size, size):
            raise CompressError(f"{path} is {arr.shape[1]}x{arr.shape[0]}, the model codes {size}x{size} images: "
                                f"refused (resizing would not be lossless)")
        images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
        stem = Path(path).stem if SAFE_NAME.fullmatch(Path(path).stem) else f"image_{len(names):05d}"
        name, k = stem, 1
        while name in seen:
            name, k = f"{stem}_{k}", k + 1
        seen.add(name)
        names.append(name)
    if not images:
        raise CompressError("no images given")
    return torch.stack(images).contiguous(), names


def _progress(total: int, desc: str, enabled: bool):
    # a bar on a terminal; in a log (SLURM's output file, a pipe) a line every 30 s instead of '\r' frames
    return progress(total, desc, "image", enabled,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} [{elapsed}<{remaining}, {rate_fmt}]")


def encode_images(model: torch.nn.Module, weights_sha: str, x: torch.Tensor, names: Optional[List[str]],
                  checkpoint: str, batch_size: int = 64, dtype: str = "float32", threads: int = 1,
                  progress: bool = True) -> Tuple[bytes, Dict[str, float]]:
    """The .prc bytes of uint8 images [N, 3, n, n] and stats (ideal bits, payload bits, header bytes, s).
    `names` (one per image) are stored for decode's file names; None stores none (image_00000, ...)."""
    torch.set_num_threads(threads)
    n_img, size = x.shape[0], model.image_size
    chunks, payloads, ideal = [], [], 0.0
    t0 = time.perf_counter()
    with _progress(n_img, "encode", progress) as bar:
        for start in range(0, n_img, batch_size):
            xb = x[start:start + batch_size]
            step = xb.shape[0] / model.walk_rows()  # on_row calls per image
            words, bits = encode_batch(model, xb, on_row=lambda i: bar.update(step))
            payload = words.astype("<u4").tobytes()
            chunks.append({"images": xb.shape[0], "payload_bytes": len(payload),
                           "payload_sha256": prc.digest(payload), "pixels_sha256": prc.pixels_sha256(xb)})
            payloads.append(payload)
            ideal += bits
    seconds = time.perf_counter() - t0
    compute = dict(compute_info(dtype, threads), probe_sha256=probe_sha256(model))
    header = {"format": "pixelrnn-prc", "coder": coder_info(), "compute": compute,
              "model": {"config": model.config, "weights_sha256": weights_sha, "checkpoint": checkpoint},
              "images": {"count": n_img, "size": size, "channels": model.channels, "names": names},
              "chunks": chunks}
    data = prc.pack(header, payloads)
    payload_bits = 8 * sum(len(p) for p in payloads)
    return data, {"ideal_bits": ideal, "payload_bits": payload_bits, "header_bytes": len(data) - payload_bits // 8,
                  "file_bits": 8 * len(data), "seconds": seconds, "images": n_img, "size": size,
                  "channels": model.channels}


def check_header(header: Dict, model_sha: str, name: str) -> None:
    """Refuse a file written by another coder version or for other weights; warn about other kernels."""
    coder, here = header["coder"], coder_info()
    if coder != here:
        raise prc.PrcError(f"{name} was encoded with {coder['name']} {coder['version']} ({coder['model']}, "
                           f"{coder['precision_bits']}-bit); this is {here['name']} {here['version']} "
                           f"({here['model']}, {here['precision_bits']}-bit): refused, another coder version may "
                           f"quantise the probabilities differently")
    want = header["model"]["weights_sha256"]
    if model_sha != want:
        raise prc.PrcError(f"{name} was encoded with weights sha256 {want[:16]}... "
                           f"({header['model']['checkpoint']}); the model given has {model_sha[:16]}...: refused")
    if "probe_sha256" in header["compute"]:
        return  # formats 2 and 3: check_probe decides, once the model computes as the file says
    comp, now = header["compute"], compute_info(header["compute"]["dtype"], header["compute"]["threads"])
    for key in ("torch", "cpu_capability"):  # format 1: no probe, only the pixel checksum after decoding
        if comp[key] != now[key]:
            print(f"warning: {name} was encoded with {key} {comp[key]}, this is {now[key]}: if the kernels round "
                  f"differently the pixel checksum will refuse the result", file=sys.stderr)


def decode_file(data: bytes, checkpoint: Optional[str] = None, name: str = "file",
                progress: bool = True) -> Tuple[torch.Tensor, List[str], Dict[str, float]]:
    """(uint8 images, names, stats) of a .prc file; every checksum verified before anything is returned."""
    header, payloads, _ = prc.unpack(data, name)
    comp = header["compute"]
    names = header["images"]["names"] or [f"image_{k:05d}" for k in range(header["images"]["count"])]
    bad = [n for n in names if not isinstance(n, str) or not SAFE_NAME.fullmatch(n)]
    if bad or len(set(names)) != len(names):
        raise prc.PrcError(f"{name}: the header's image names are not plain, distinct file names ({bad[:3]})")
    if checkpoint is None:
        checkpoint = header["model"]["checkpoint"]
        print(f"note: using the checkpoint recorded in {name}: {checkpoint} (--checkpoint chooses another; "
              f"a DeepSpeed folder is read with DeepSpeed's loader: use checkpoints you trust)", file=sys.stderr)
    model, sha = load_model(checkpoint, comp["dtype"])
    check_header(header, sha, name)
    torch.set_num_threads(int(comp["threads"]))
    version = prc.format_version(data)
    if version >= 2:  # format 1 has no probe; 2 and 3 differ in the probe input (probe.py)
        check_probe(header, model, name, version)
    out = []
    t0 = time.perf_counter()
    with _progress(header["images"]["count"], "decode", progress) as bar:
        for k, (chunk, payload) in enumerate(zip(header["chunks"], payloads)):
            n = int(chunk["images"])
            step = n / model.walk_rows()
            try:
                x = decode_batch(model, np.frombuffer(payload, dtype="<u4"), n, on_row=lambda i: bar.update(step))
            except Exception as e:  # noqa: BLE001 (constriction's errors have no common type: restated below)
                raise prc.PrcError(f"{name}: chunk {k} could not be decoded: the range coder failed mid-stream "
                                   f"({type(e).__name__}: {str(e).strip()[:200]}): the probabilities differed "
                                   f"from the encoder's (torch {comp['torch']}, {comp['cpu_capability']}, "
                                   f"{comp['dtype']}, {comp['threads']} thread(s)); nothing was written") from None
            if prc.pixels_sha256(x) != chunk["pixels_sha256"]:
                raise prc.PrcError(f"{name}: chunk {k} decoded to other pixels than were encoded (pixel sha256 "
                                   f"mismatch): the probabilities differed from the encoder's (torch "
                                   f"{comp['torch']}, {comp['cpu_capability']}, {comp['dtype']}, {comp['threads']} "
                                   f"thread(s)); nothing was written")
            out.append(x)
    seconds = time.perf_counter() - t0
    return torch.cat(out), list(names), {"seconds": seconds, "levels": model.levels}


def write_pngs(x: torch.Tensor, names: List[str], out_dir: Path, levels: int = 256) -> List[Path]:
    """Each image as <out_dir>/<name>.png, written atomically: RGB, or for 1 channel a grayscale PNG of
    v * (255 // (levels - 1)) (what `read_images` reads back)."""
    paths = []
    gray = x.shape[1] == 1
    for img, name in zip(x.permute(0, 2, 3, 1).numpy(), names):
        buf = io.BytesIO()
        if gray:
            Image.fromarray(img[:, :, 0] * np.uint8(255 // (levels - 1)), "L").save(buf, format="PNG")
        else:
            Image.fromarray(img, "RGB").save(buf, format="PNG")
        atomic_write_bytes(out_dir / f"{name}.png", buf.getvalue())
        paths.append(out_dir / f"{name}.png")
    return paths

"""MNIST-format sources: IDX files (MNIST, Fashion-MNIST) and the fixed binarization of MNIST (.amat).

IDX (LeCun's format; gzip-compressed ``.gz`` or raw): a big-endian header, then the data.
  images ``*-images-idx3-ubyte``: magic 2051 (0x00000803), count, rows, cols, then count*rows*cols uint8
  labels ``*-labels-idx1-ubyte``: magic 2049 (0x00000801), count, then count uint8
A folder holding ``train-images-idx3-ubyte[.gz]`` + ``train-labels-idx1-ubyte[.gz]`` gives --split train and
the ``t10k-*`` pair any other split; an images file given itself takes the labels file beside it.

.amat (Larochelle & Murray 2011, the paper's Table 4): ``binarized_mnist_{train,valid,test}.amat``, one
image per line, 784 space-separated 0/1 values, no labels (every image is class 0). It is levels=2 by itself.

Every image is a 2-D uint8 array (mode L), values 0..255; the .amat's 0/1 are stored as 0/255 (the shard
format's levels=2 mapping). The whole file is read once per process: 60,000 images are 47 MB.
"""
from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .errors import PreprocessError
from .source_types import Item, Source

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
AMAT_SIDE = 28
IDX_IMAGES = re.compile(r"^(?P<prefix>.+)-images-idx3-ubyte(\.gz)?$")
AMAT = re.compile(r"^binarized_mnist_(train|valid|test)\.amat$")
# --split -> the .amat file's split name
AMAT_SPLITS = {"train": "train", "val": "valid", "valid": "valid", "test": "test"}


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its name)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise PreprocessError(f"{path}: gzip data is damaged or truncated ({e})") from None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file -> uint8 array [count, rows, cols] (images, magic 2051) or [count] (labels, magic 2049)."""
    data = _read_bytes(path)
    ndim = 3 if magic == IMAGES_MAGIC else 1
    head = 4 * (1 + ndim)
    if len(data) < head:
        raise PreprocessError(f"{path}: truncated IDX header ({len(data)} bytes, need {head})")
    got = struct.unpack(">I", data[:4])[0]
    if got != magic:
        what = "images" if magic == IMAGES_MAGIC else "labels"
        raise PreprocessError(f"{path}: wrong magic number {got} (0x{got:08x}); an IDX {what} file starts "
                              f"with {magic} (0x{magic:08x})")
    dims = struct.unpack(f">{ndim}I", data[4:head])
    want = int(np.prod(dims, dtype=np.int64))
    if len(data) - head != want:
        state = "truncated" if len(data) - head < want else "longer than its header says"
        raise PreprocessError(f"{path}: {state}: the header gives {' x '.join(map(str, dims))} = {want} "
                              f"bytes of data, the file holds {len(data) - head}")
    return np.frombuffer(data, np.uint8, offset=head).reshape(dims)


def read_amat(path: Path) -> np.ndarray:
    """A binarized-MNIST .amat file -> uint8 [count, 28, 28] of 0/1."""
    rows: List[np.ndarray] = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            flat = b"".join(tokens)
            if len(tokens) != AMAT_SIDE ** 2 or len(flat) != AMAT_SIDE ** 2 or flat.strip(b"01"):
                what = f"{len(tokens)} values" if len(tokens) != AMAT_SIDE ** 2 else "values other than 0 and 1"
                raise PreprocessError(f"{path}, line {n}: expected {AMAT_SIDE ** 2} space-separated 0/1 values, "
                                      f"got {what}")
            rows.append(np.frombuffer(flat, np.uint8) - ord("0"))
    if not rows:
        raise PreprocessError(f"{path}: no images (an .amat file holds one line of {AMAT_SIDE ** 2} values per image)")
    return np.stack(rows).reshape(-1, AMAT_SIDE, AMAT_SIDE)


class MnistReader:
    """row -> HxW uint8 (0..255). The file is (re)read lazily once per process, not pickled to workers."""

    def __init__(self, path: Path, kind: str):
        self.path, self.kind = Path(path), kind
        self._data: Optional[np.ndarray] = None

    def __getstate__(self) -> Dict:
        return {"path": self.path, "kind": self.kind, "_data": None}

    def __call__(self, row: int) -> np.ndarray:
        if self._data is None:
            self._data = read_idx(self.path, IMAGES_MAGIC) if self.kind == "idx" else read_amat(self.path) * 255
        return self._data[row]


def _gz_or_raw(folder: Path, name: str) -> Optional[Path]:
    for cand in (folder / f"{name}.gz", folder / name):
        if cand.is_file():
            return cand
    return None


def is_mnist_dir(path: Path) -> bool:
    """Whether a folder holds IDX image files or binarized-MNIST .amat files."""
    return any(p.is_file() and (IDX_IMAGES.match(p.name) or AMAT.match(p.name)) for p in path.iterdir())


def is_mnist_file(path: Path) -> bool:
    """Whether a file is an IDX images file (by name or by its magic number) or an .amat file."""
    if IDX_IMAGES.match(path.name) or AMAT.match(path.name) or path.suffix == ".amat":
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as g:
                head = g.read(4)
        except (OSError, EOFError, zlib.error):
            return False
    return head == struct.pack(">I", IMAGES_MAGIC)


def open_mnist_dir(path: Path, split: str) -> Source:
    """The IDX pair (train-* for split train, t10k-* otherwise) or the .amat file of `split` in a folder."""
    if any(p.is_file() and AMAT.match(p.name) for p in path.iterdir()):
        if split not in AMAT_SPLITS:
            raise PreprocessError(f"{path} holds binarized-MNIST .amat files: --split must be one of "
                                  f"{', '.join(AMAT_SPLITS)}, got {split!r}")
        f = path / f"binarized_mnist_{AMAT_SPLITS[split]}.amat"
        if not f.is_file():
            raise PreprocessError(f"{path} holds binarized-MNIST .amat files but no {f.name} for split {split!r}")
        return open_mnist_file(f)
    prefix = "train" if split == "train" else "t10k"
    images = _gz_or_raw(path, f"{prefix}-images-idx3-ubyte")
    if images is None:
        raise PreprocessError(f"{path} holds IDX files but no {prefix}-images-idx3-ubyte[.gz] for split {split!r} "
                              "(train -> train-*, anything else -> t10k-*)")
    return open_mnist_file(images)


def open_mnist_file(path: Path) -> Source:
    """An IDX images file (its labels file beside it) or one .amat file -> a Source of 1-channel images."""
    if path.suffix == ".amat":
        n = len(read_amat(path))
        items = [Item(i, f"{path.name}[{i}]", "0", f"{path.stem}_{i:06d}") for i in range(n)]
        return Source("binarized-mnist-amat", ["0"], items, MnistReader(path, "amat"), channels=1, levels=2,
                      variant="binarized-mnist/fixed")
    m = IDX_IMAGES.match(path.name)
    if m is None:
        raise PreprocessError(f"{path} is an IDX images file but not named <prefix>-images-idx3-ubyte[.gz]: "
                              "cannot find its labels file")
    labels_path = _gz_or_raw(path.parent, f"{m.group('prefix')}-labels-idx1-ubyte")
    if labels_path is None:
        raise PreprocessError(f"no labels file {m.group('prefix')}-labels-idx1-ubyte[.gz] beside {path}")
    images, labels = read_idx(path, IMAGES_MAGIC), read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise PreprocessError(f"{path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    names = _class_names(labels)
    items = [Item(i, f"{path.name}[{i}]", names[int(lab)], f"{m.group('prefix')}_{i:06d}")
             for i, lab in enumerate(labels.tolist())]
    return Source("mnist-idx", sorted(set(names.values())), items, MnistReader(path, "idx"), channels=1,
                  levels=256, variant=f"{_dataset_name(path)}/grayscale")


def _class_names(labels: np.ndarray) -> Dict[int, str]:
    """Label -> class name, zero-padded so that sorted names keep the labels' numeric order."""
    width = len(str(int(labels.max(initial=0))))
    return {int(v): f"{int(v):0{width}d}" for v in np.unique(labels)}


def _dataset_name(path: Path) -> str:
    """The folder's name (e.g. `fashion-mnist`), recorded as the first part of the manifest's variant."""
    return path.resolve().parent.name or "mnist"


def binarized_variant(variant: str, binarize: Tuple[str, int]) -> str:
    """`fashion-mnist/grayscale` + ("threshold", s) -> `fashion-mnist/binarized-threshold127`."""
    method, seed = binarize
    suffix = "binarized-threshold127" if method == "threshold" else f"binarized-stochastic-seed{seed}"
    return f"{variant.split('/', 1)[0]}/{suffix}"

"""Already-small array sources: CIFAR-10 python batches and the downsampled-ImageNet npz release.

Safety: CIFAR batches are pickles, and unpickling runs arbitrary code. :func:`safe_unpickle` uses
an Unpickler whose ``find_class`` resolves only numpy's array-reconstruction functions, the
``ndarray``/``dtype`` types and ``_codecs.encode`` (bytes at protocol 2); everything else raises, and the result is then checked to be a
dict of str/bytes keys -> list / bytes / str / int / non-object ndarray. The npz release is read
with ``np.load(allow_pickle=False)``; an uncompressed member is memory-mapped (random access
without loading 10 GB), again refusing object dtypes.
"""

from __future__ import annotations

import importlib
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .errors import PreprocessError
from .labels import imagenet_class_map, read_class_map
from .source_types import Item, Source

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(str, "latin1"): no code runs
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        mod = module.replace("numpy.core.", "numpy._core.") if hasattr(np, "_core") else module
        return getattr(importlib.import_module(mod), name)


def _check(obj, depth=0):
    if depth > 3:
        raise pickle.UnpicklingError("nesting too deep")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise pickle.UnpicklingError("object arrays are not allowed")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, bytes)):
                raise pickle.UnpicklingError("dict keys must be strings")
            _check(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check(v, depth + 1)
    elif not isinstance(obj, (str, bytes, int, float, bool, type(None))):
        raise pickle.UnpicklingError(f"type {type(obj).__name__} is not allowed")


def safe_unpickle(path: Path) -> dict:
    """Load a CIFAR-style pickle allowing only plain containers and numpy arrays."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
        if not isinstance(obj, dict):
            raise pickle.UnpicklingError("top level is not a dict")
        _check(obj)
    except PreprocessError:
        raise
    except Exception as e:
        raise PreprocessError(f"refusing to load {path}: {e}") from None
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _planar_to_hwc(row: np.ndarray) -> np.ndarray:
    """One channel-planar row (all R, then G, then B) -> HxWx3."""
    side = int(round((row.size // 3) ** 0.5))
    return np.asarray(row, dtype=np.uint8).reshape(3, side, side).transpose(1, 2, 0)


class ArrayReader:
    """(file index, row) -> HxWx3 uint8. Arrays are (re)opened lazily in each process."""

    def __init__(self, files: List[Path], kind: str):
        self.files, self.kind = [Path(f) for f in files], kind
        self._cache: Dict[int, np.ndarray] = {}

    def __getstate__(self):
        return {"files": self.files, "kind": self.kind, "_cache": {}}

    def __call__(self, ref) -> np.ndarray:
        fi, row = ref
        if fi not in self._cache:
            path = self.files[fi]
            data = safe_unpickle(path)["data"] if self.kind == "cifar10" else npz_data(path)
            self._cache[fi] = data
        return _planar_to_hwc(self._cache[fi][row])


# ---------------------------------------------------------------- CIFAR-10
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def is_cifar_dir(path: Path) -> bool:
    return (path / "batches.meta").is_file() or (path / "test_batch").is_file() \
        or (path / "data_batch_1").is_file()


def open_cifar(path: Path, split: str) -> Source:
    names = CIFAR_TRAIN if split == "train" else ["test_batch"]
    files = [path / n for n in names if (path / n).is_file()]
    if not files:
        raise PreprocessError(f"{path} looks like CIFAR-10 but has none of {', '.join(names)} "
                              f"for split {split!r} (train -> data_batch_*, anything else -> test_batch)")
    label_names: Optional[List[str]] = None
    if (path / "batches.meta").is_file():
        meta = safe_unpickle(path / "batches.meta")
        raw = meta.get("label_names")
        if raw is not None:
            label_names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    items: List[Item] = []
    for fi, f in enumerate(files):
        batch = safe_unpickle(f)
        labels = batch.get("labels")
        data = batch.get("data")
        if labels is None or data is None or len(labels) != len(data):
            raise PreprocessError(f"{f} is not a CIFAR-10 batch (needs 'data' and 'labels' of equal length)")
        for row, lab in enumerate(labels):
            lab = int(lab)
            name = label_names[lab] if label_names and 0 <= lab < len(label_names) else f"{lab:04d}"
            items.append(Item((fi, row), f"{f.name}[{row}]", name, f"{f.name}_{row:06d}"))
    classes = sorted(set(label_names) if label_names else {it.cls for it in items})
    return Source("cifar10", classes, items, ArrayReader(files, "cifar10"))


# ---------------------------------------------------------------- downsampled ImageNet (npz)
NPZ_TRAIN = re.compile(r"^train_data_batch_(\d+)(\.npz)?$")
NPZ_VAL = re.compile(r"^val_data(\.npz)?$")


def npz_files(path: Path, split: str) -> List[Path]:
    pattern = NPZ_TRAIN if split == "train" else NPZ_VAL
    found = [p for p in path.iterdir() if p.is_file() and pattern.match(p.name)]
    if split == "train":
        found.sort(key=lambda p: int(NPZ_TRAIN.match(p.name).group(1)))
    return found


def npz_data(path: Path) -> np.ndarray:
    """The `data` array: memory-mapped when stored uncompressed, else loaded (allow_pickle=False)."""
    mm = _memmap_member(path, "data.npy")
    if mm is not None:
        return mm
    with np.load(path, allow_pickle=False) as z:
        return z["data"]


def _memmap_member(path: Path, member: str) -> Optional[np.ndarray]:
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
        if dtype.hasobject:
            raise PreprocessError(f"{path}: object arrays are refused (allow_pickle=False)")
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                         order="F" if fortran else "C")
    except PreprocessError:
        raise
    except Exception:
        return None   # not a plain stored member: let np.load handle (or report) it


def open_npz(files: List[Path], class_map: Optional[Path], label_order: str = "wnid") -> Source:
    """The npz release: its 1-based labels are named through `class_map` (default: the release's own,
    shipped as data). `label_order` "release" keeps the release's order (label = id - 1); "wnid" leaves
    the order to `labels.label_space` (the sorted wnids), as for every other source."""
    mapping = read_class_map(class_map) if class_map else imagenet_class_map()
    items: List[Item] = []
    for fi, f in enumerate(files):
        try:
            with np.load(f, allow_pickle=False) as z:
                labels = np.asarray(z["labels"]).astype(np.int64).ravel()
                mm = _memmap_member(f, "data.npy")
                n_data = (mm if mm is not None else z["data"]).shape[0]
        except PreprocessError:
            raise
        except Exception as e:
            raise PreprocessError(f"cannot read {f} as a downsampled-ImageNet npz (keys data, labels; "
                                  f"pickled files are refused): {e}") from None
        if n_data != len(labels):
            raise PreprocessError(f"{f}: {n_data} images but {len(labels)} labels")
        stem = f.name[:-4] if f.name.endswith(".npz") else f.name
        for row, lab in enumerate(labels.tolist()):
            if lab not in mapping:
                where = class_map or "the release's class map (ids 1..1000)"
                raise PreprocessError(f"{f}: label {lab} is not in {where}")
            items.append(Item((fi, row), f"{f.name}[{row}]", mapping[lab], f"{stem}_{row:07d}"))
    if label_order == "release":  # every class of the map, in id order: label = position = id - 1 for 1..N
        classes = [mapping[i] for i in sorted(mapping)]
    else:
        classes = sorted({it.cls for it in items})
    return Source("downsampled-imagenet-npz", classes, items, ArrayReader(files, "npz"))

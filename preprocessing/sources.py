"""Find out what `--source` is and list its items (see :func:`open_source`).

Recognised, in this order:

directory
  * MNIST-format IDX files (``train-images-idx3-ubyte[.gz]`` + labels, ``t10k-*``) or binarized-MNIST
    ``binarized_mnist_{train,valid,test}.amat`` (see mnist.py): 1-channel sources
  * CIFAR-10 python batches (``batches.meta`` / ``data_batch_N`` / ``test_batch``)
  * downsampled-ImageNet npz release (``train_data_batch_N[.npz]``, ``val_data[.npz]``)
  * ImageFolder ``<class>/<image>`` (``imagenet-train-dir`` when every class is a wnid): every
    non-hidden file below a class folder is an input; non-images are skipped and listed.
  * a flat folder of images (the ImageNet val folder) + ``--val-labels``
file
  * an IDX images file (its labels file beside it) or one ``.amat`` file
  * uncompressed tar of per-class tars (``ILSVRC2012_img_train.tar``): read in place by offset
  * uncompressed tar of ``<class>/<image>`` members (an ImageFolder tar)
  * uncompressed flat tar of images (``ILSVRC2012_img_val.tar``) + ``--val-labels``
  * a single npz file of the downsampled release (e.g. ``val_data.npz``)

Items are listed sorted by (class, source path) so the order never depends on the filesystem.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import List

from . import listing_cache
from .arrays import NPZ_TRAIN, NPZ_VAL, is_cifar_dir, npz_files, open_cifar, open_npz
from .errors import PreprocessError
from .labels import LABEL_ORDERS, WNID, label_space, read_val_labels
from .mnist import is_mnist_dir, is_mnist_file, open_mnist_dir, open_mnist_file
from .source_types import FileReader, Item, OffsetReader, Source


def _stem(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def _hidden(name: str) -> bool:
    return name.startswith(".")


def open_source(source, split: str, val_labels=None, class_map=None, cache_dir=None,
                label_order: str = "wnid") -> Source:
    """Detect the source kind and return its items, labelled in `label_order` (see labels.py);
    PreprocessError if unrecognised or empty. With `cache_dir`, a tar source's listing is read from /
    saved to it (see listing_cache.py)."""
    path = Path(source)
    if not path.exists():
        raise PreprocessError(f"source {path} does not exist")
    if label_order not in LABEL_ORDERS:
        raise PreprocessError(f"label order {label_order!r}: expected one of {', '.join(LABEL_ORDERS)}")
    if path.is_dir():
        src = _open_dir(path, split, val_labels, class_map, label_order)
    elif path.is_file():
        cached = listing_cache.cache_path(cache_dir, path, split, val_labels, class_map) if cache_dir else None
        src = listing_cache.load(cached, path) if cached else None
        if src is None:
            src = _open_file(path, split, val_labels, class_map, label_order)
            if cached and src.items:
                listing_cache.save(cached, src)
    else:
        raise PreprocessError(f"source {path} is neither a file nor a directory")
    if not src.items:
        raise PreprocessError(f"no images found in {path} (recognised as {src.kind})")
    if label_order == "release" and src.kind != "downsampled-imagenet-npz":
        raise PreprocessError(f"--label-order release is the npz release's own order; {path} is {src.kind}")
    if label_order == "wnid":
        src.classes = label_space(src.classes)
    src.items.sort(key=lambda it: (it.cls, it.source))
    return src


def _open_dir(path: Path, split, val_labels, class_map, label_order) -> Source:
    if is_mnist_dir(path):
        return open_mnist_dir(path, split)
    if is_cifar_dir(path):
        return open_cifar(path, split)
    if any(NPZ_TRAIN.match(p.name) or NPZ_VAL.match(p.name) for p in path.iterdir() if p.is_file()):
        files = npz_files(path, split)
        if not files:
            want = "train_data_batch_N[.npz]" if split == "train" else "val_data[.npz]"
            raise PreprocessError(f"{path} holds a downsampled-ImageNet release but no {want} for split {split!r}")
        return open_npz(files, class_map, label_order)
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not _hidden(p.name))
    if class_dirs:
        return _open_image_folder(path, class_dirs)
    files = sorted(p.name for p in path.iterdir() if p.is_file() and not _hidden(p.name))
    if not files:
        raise PreprocessError(f"no images found in {path}: expected <class>/<image> folders, a flat "
                              "folder of images with --val-labels, CIFAR-10 batches or npz files")
    return _labelled_flat(path, files, "imagenet-val-dir", lambda n: n, val_labels, class_map,
                          FileReader(path))


def _open_image_folder(root: Path, class_dirs: List[Path]) -> Source:
    items: List[Item] = []
    for d in class_dirs:
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = sorted(n for n in dirnames if not _hidden(n))
            for name in sorted(filenames):
                if _hidden(name):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
                items.append(Item(rel, rel, d.name, _stem(name)))
    classes = sorted({it.cls for it in items})
    kind = "imagenet-train-dir" if classes and all(WNID.match(c) for c in classes) else "imagefolder"
    return Source(kind, classes, items, FileReader(root))


def _labelled_flat(root, names, kind, source_of, val_labels, class_map, reader, refs=None) -> Source:
    """A flat set of images whose classes come from a labels file, matched by file stem."""
    if val_labels is None:
        raise PreprocessError(f"{root} is a flat set of images without class folders: pass "
                              "--val-labels (LOC_val_solution.csv or the devkit ground truth)")
    labels, classes = read_val_labels(val_labels, class_map)
    # Only ILSVRC2012_val_* files when there are any: stray files next to them are not inputs.
    if any(n.rsplit("/", 1)[-1].startswith("ILSVRC2012_val_") for n in names):
        keep = [i for i, n in enumerate(names) if n.rsplit("/", 1)[-1].startswith("ILSVRC2012_val_")]
    else:
        keep = list(range(len(names)))
    missing = [names[i] for i in keep if _stem(names[i]) not in labels]
    if missing:
        raise PreprocessError(f"labels file {val_labels} does not match the images in {root}: no label for "
                              f"{len(missing)} of {len(keep)} images (e.g. {', '.join(missing[:3])})")
    items = [Item(refs[i] if refs else source_of(names[i]), names[i], labels[_stem(names[i])],
                  _stem(names[i])) for i in keep]
    return Source(kind, classes, items, reader)


def _open_file(path: Path, split, val_labels, class_map, label_order) -> Source:
    if is_mnist_file(path):
        return open_mnist_file(path)
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:4] == b"PK\x03\x04":
        return open_npz([path], class_map, label_order)
    if magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic[:6] == b"\xfd7zXZ\x00":
        raise PreprocessError(f"{path} is a compressed tar: only uncompressed tars can be read in "
                              "place (random access); decompress it first")
    if not tarfile.is_tarfile(str(path)):
        raise PreprocessError(f"unrecognised source {path}: not a folder, an uncompressed tar or an npz file")
    try:
        return _open_tar(path, val_labels, class_map)
    except tarfile.TarError as e:
        raise PreprocessError(f"cannot read tar {path}: {e}") from None


def _open_tar(path: Path, val_labels, class_map) -> Source:
    with tarfile.open(path, "r:") as outer:
        members = [m for m in outer if m.isfile()]
    if not members:
        raise PreprocessError(f"no images found in tar {path}")
    if all(m.name.endswith(".tar") for m in members):
        return _open_tar_of_tars(path, members)
    if any("/" in m.name.strip("/") for m in members):
        items = []
        for m in members:
            parts = m.name.strip("/").split("/")
            if len(parts) >= 2 and not any(_hidden(p) for p in parts):
                items.append(Item((m.offset_data, m.size), m.name, parts[0], _stem(m.name)))
        classes = sorted({it.cls for it in items})
        return Source("imagefolder-tar", classes, items, OffsetReader(path))
    members = [m for m in members if not _hidden(m.name)]
    return _labelled_flat(path, [m.name for m in members], "imagenet-val-tar", None, val_labels,
                          class_map, OffsetReader(path), refs=[(m.offset_data, m.size) for m in members])


class _Window:
    """A read-only file view of bytes [start, start+size) of another file, for nested tars."""

    def __init__(self, f, start: int, size: int):
        self.f, self.start, self.size, self.pos = f, start, size, 0

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        self.f.seek(self.start + self.pos)
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else (self.pos + pos if whence == 1 else self.size + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos


def _open_tar_of_tars(path: Path, members) -> Source:
    """ILSVRC2012_img_train.tar: one inner `<wnid>.tar` per class; each image is addressed by its
    absolute offset in the outer file, so workers read it with one seek, nothing is extracted."""
    items: List[Item] = []
    with open(path, "rb") as f:
        for m in members:
            wnid = _stem(m.name)
            try:
                with tarfile.open(fileobj=_Window(f, m.offset_data, m.size), mode="r:") as inner:
                    for im in inner:
                        if im.isfile() and not _hidden(im.name.rsplit("/", 1)[-1]):
                            items.append(Item((m.offset_data + im.offset_data, im.size),
                                              f"{m.name}/{im.name}", wnid, _stem(im.name)))
            except tarfile.TarError as e:
                raise PreprocessError(f"inner tar {m.name} of {path} is unreadable: {e}") from None
    classes = sorted({it.cls for it in items})
    return Source("imagenet-train-tar", classes, items, OffsetReader(path))

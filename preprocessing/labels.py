"""Validation labels and ImageNet class-id mappings.

Accepted label files (``--val-labels``), detected by content:

* ``LOC_val_solution.csv`` (Kaggle): ``ImageId,PredictionString``; the first word of the
  prediction string is the wnid.
* devkit ``ILSVRC2012_validation_ground_truth.txt``: one ILSVRC2012 id (1..1000) per line, line i
  is ``ILSVRC2012_val_%08d`` % i. The ids need a class map (``--class-map``):

Class maps (``--class-map``; for the devkit ground truth it is looked up next to the labels
file when not given: ``meta.mat``, then ``map_clsloc.txt``):

* a text file with one ``<wnid> <id> [name...]`` (the ``map_clsloc.txt`` layout) or
  ``<id> <wnid>`` per line. Chosen as the scipy-free option.
* the devkit's ``meta.mat``, read with ``scipy.io.loadmat`` if scipy is installed (the 1000
  leaf synsets, ``num_children == 0``).

The same map also names the classes of the downsampled-ImageNet npz release, whose 1-based
labels follow the same ILSVRC2012 id order; the release's map ships with this package
(``data/imagenet_classes.txt``), so npz labels are named without a ``--class-map``.

Label order (``label_space``): a source whose classes are all ImageNet-1k wnids is labelled by each
wnid's index among the 1000 sorted wnids (the usual ImageNet class ids), whichever source and whichever
subset of classes it holds; so the same image has the same ``cls`` from the JPEG tar, an ImageFolder or
the npz release. Other sources are labelled by their sorted class names. ``--label-order release``
keeps the npz release's own order (label = ILSVRC2012_ID - 1).
"""

from __future__ import annotations

import csv
import functools
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .errors import PreprocessError

WNID = re.compile(r"^n\d{8}$")
IMAGENET_CLASSES = Path(__file__).resolve().parent / "data" / "imagenet_classes.txt"  # map_clsloc.txt
LABEL_ORDERS = ("wnid", "release")


@functools.lru_cache(maxsize=None)
def imagenet_class_map() -> Dict[int, str]:
    """ILSVRC2012_ID (1..1000) -> wnid: the devkit's map, shipped with this package."""
    return read_class_map(IMAGENET_CLASSES)


def label_space(classes: List[str]) -> List[str]:
    """The class list whose indices are the labels (see the module docstring): the 1000 sorted ImageNet
    wnids when every class is one of them, else the sorted class names."""
    imagenet = set(imagenet_class_map().values())
    if classes and all(c in imagenet for c in classes):
        return sorted(imagenet)
    return sorted(classes)


def read_class_map(path: Path) -> Dict[int, str]:
    """id -> class name (wnid) from a text map or the devkit meta.mat."""
    path = Path(path)
    if not path.is_file():
        raise PreprocessError(f"class map {path} does not exist")
    if path.suffix.lower() == ".mat":
        return _read_meta_mat(path)
    mapping: Dict[int, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if len(tokens) >= 2 and tokens[1].isdigit() and not tokens[0].isdigit():
            name, idx = tokens[0], int(tokens[1])
        elif len(tokens) >= 2 and tokens[0].isdigit():
            idx, name = int(tokens[0]), tokens[1]
        else:
            raise PreprocessError(f"class map {path}, line {lineno}: expected '<wnid> <id>' or "
                                  f"'<id> <wnid>', got {line.strip()!r}")
        if idx in mapping and mapping[idx] != name:
            raise PreprocessError(f"class map {path}: id {idx} is mapped twice")
        mapping[idx] = name
    if not mapping:
        raise PreprocessError(f"class map {path} is empty")
    return mapping


def _read_meta_mat(path: Path) -> Dict[int, str]:
    try:
        import scipy.io  # only for the devkit's meta.mat: an optional dependency, hence the clear error below
    except ImportError:
        raise PreprocessError(f"reading {path} needs scipy (pip install scipy); or pass a text "
                              "class map ('<wnid> <id>' per line, like map_clsloc.txt)") from None
    try:
        synsets = scipy.io.loadmat(str(path), squeeze_me=True)["synsets"]
        mapping = {}
        for s in synsets:
            if int(s["num_children"]) == 0:
                mapping[int(s["ILSVRC2012_ID"])] = str(s["WNID"])
    except Exception as e:
        raise PreprocessError(f"{path} is not a devkit meta.mat with 'synsets': {e}") from None
    return mapping


def _find_class_map(labels_path: Path) -> Path:
    for name in ("meta.mat", "map_clsloc.txt"):
        cand = labels_path.parent / name
        if cand.is_file():
            return cand
    raise PreprocessError(f"{labels_path} holds ILSVRC2012 ids; pass --class-map (meta.mat or a "
                          "'<wnid> <id>' text file) to name the classes")


def read_val_labels(path: Path, class_map: Optional[Path] = None) -> Tuple[Dict[str, str], List[str]]:
    """-> ({image stem: class name}, sorted class names)."""
    path = Path(path)
    if not path.is_file():
        raise PreprocessError(f"labels file {path} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [l for l in text.splitlines() if l.strip()]
    if not lines:
        raise PreprocessError(f"labels file {path} is empty")
    if "," in lines[0]:
        labels = _read_loc_csv(path, text)
        classes = sorted(set(labels.values()))
    elif all(l.strip().isdigit() for l in lines):
        mapping = read_class_map(Path(class_map) if class_map else _find_class_map(path))
        labels = {}
        for i, l in enumerate(lines, 1):
            idx = int(l)
            if idx not in mapping:
                raise PreprocessError(f"{path}, line {i}: id {idx} is not in the class map")
            labels[f"ILSVRC2012_val_{i:08d}"] = mapping[idx]
        classes = sorted(set(mapping.values()))
    else:
        raise PreprocessError(f"labels file {path}: not a LOC_val_solution.csv nor a devkit "
                              "ground-truth file (one integer per line)")
    return labels, classes


def _read_loc_csv(path: Path, text: str) -> Dict[str, str]:
    labels = {}
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or (n == 1 and row[0].strip() == "ImageId"):
            continue
        if len(row) < 2 or not row[1].split():
            raise PreprocessError(f"{path}, line {n}: expected 'ImageId,PredictionString', got {row!r}")
        labels[row[0].strip()] = row[1].split()[0]
    if not labels:
        raise PreprocessError(f"labels file {path} has no rows")
    return labels

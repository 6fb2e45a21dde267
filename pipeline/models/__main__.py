"""`python -m pipeline.models --summary CONFIG`: parameter counts.

CONFIG is a YAML experiment file (its `model:` mapping: name, image_size, layers, hidden,
extra kwargs), a registry name (default sizes), or `paper` (the paper's configurations).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from . import MODELS, build_model, count_parameters

# Section 5: CIFAR-10 and ImageNet models. Diagonal BiLSTM / multi-scale widths on ImageNet
# are not stated in the paper; h=128 is assumed.
PAPER: List[Tuple[str, Dict[str, Any]]] = [
    ("CIFAR-10 PixelCNN", dict(name="pixelcnn", image_size=32, layers=15, hidden=128)),
    ("CIFAR-10 Row LSTM", dict(name="row_lstm", image_size=32, layers=12, hidden=128)),
    ("CIFAR-10 Diagonal BiLSTM", dict(name="diagonal_bilstm", image_size=32, layers=12, hidden=128)),
    ("ImageNet32 Row LSTM", dict(name="row_lstm", image_size=32, layers=12, hidden=384)),
    ("ImageNet64 Row LSTM (no residual)", dict(name="row_lstm", image_size=64, layers=4, hidden=512, residual=False)),
    ("ImageNet32 Diagonal BiLSTM", dict(name="diagonal_bilstm", image_size=32, layers=12, hidden=128)),
    ("ImageNet64 Diagonal BiLSTM", dict(name="diagonal_bilstm", image_size=64, layers=12, hidden=128)),
    ("ImageNet64 Multi-Scale (32 -> 64)", dict(name="multiscale", image_size=64, small_size=32, layers=12, hidden=128)),
]


def configs(spec: str) -> List[Tuple[str, Dict[str, Any]]]:
    """(label, build_model kwargs incl. name) for a YAML path, a registry name or 'paper'."""
    if spec == "paper":
        return PAPER
    if spec in MODELS:
        return [(spec, {"name": spec})]
    import yaml
    model = dict(yaml.safe_load(Path(spec).read_text())["model"])
    return [(spec, model)]


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.models", description=__doc__.splitlines()[0])
    parser.add_argument("--summary", required=True, metavar="CONFIG", help="YAML file, registry name or 'paper'")
    args = parser.parse_args(argv)
    for label, kw in configs(args.summary):
        kw = dict(kw)
        model = build_model(kw.pop("name"), **kw)
        parts = {n: count_parameters(mod) for n, mod in model.named_children()}
        detail = ", ".join(f"{n} {c:,}" for n, c in parts.items())
        print(f"{label}: {count_parameters(model):,} parameters ({detail})  config={model.config}")


if __name__ == "__main__":
    main()

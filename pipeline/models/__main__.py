"""`python -m pipeline.models --summary CONFIG`: parameter counts.

CONFIG is an experiment (a name in configs/experiments/ or a YAML path: its `model:` section, defaults
and all), a registry name (that architecture's default sizes), or `paper` (the paper's configurations).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Dict, List, Optional, Tuple

from . import ARCHITECTURES, build_model, count_parameters

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
    """(label, build_model keywords incl. name) for 'paper', a registry name or an experiment."""
    if spec == "paper":
        return PAPER
    if spec in ARCHITECTURES:
        return [(spec, {"name": spec})]
    # An entry point (nothing imports it): reading an experiment needs the experiment loader (defaults,
    # validation), which sits above the models in the import order.
    from pipeline.config import load_config
    return [(spec, dataclasses.asdict(load_config(spec).model))]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.models", description=__doc__.splitlines()[0])
    parser.add_argument("--summary", required=True, metavar="CONFIG",
                        help="experiment name or YAML file, registry name, or 'paper'")
    args = parser.parse_args(argv)
    try:
        specs = configs(args.summary)
    except ValueError as e:  # pipeline.config.ConfigError: an unknown experiment, a bad key
        print(f"error: {e}", file=sys.stderr)
        return 2
    for label, kw in specs:
        model = build_model(**kw)
        parts = {n: count_parameters(mod) for n, mod in model.named_children()}
        detail = ", ".join(f"{n} {c:,}" for n, c in parts.items())
        print(f"{label}: {count_parameters(model):,} parameters ({detail})  config={model.config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

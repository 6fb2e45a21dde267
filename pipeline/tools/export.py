"""Consolidated fp32 weights from a (ZeRO-partitioned) DeepSpeed checkpoint, loadable without DeepSpeed:

    python -m pipeline.tools.export RUN/checkpoints OUT.pt      # {"config": model config, "state_dict": ...}
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Optional

import torch

from pipeline.fsutil import atomic_write_bytes
from pipeline.train.weights import consolidated_state


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a run's checkpoints folder (uses `latest`) or one tag folder")
    p.add_argument("out", help="output .pt file")
    args = p.parse_args(argv)
    config, sd = consolidated_state(Path(args.checkpoint))
    buf = io.BytesIO()
    torch.save({"config": config, "state_dict": sd}, buf)
    atomic_write_bytes(args.out, buf.getvalue())
    n = sum(v.numel() for v in sd.values())
    print(f"wrote {args.out}: {config['name']} with {n:,} parameters (fp32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

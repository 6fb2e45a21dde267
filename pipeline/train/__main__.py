"""`python -m pipeline.train --exp smoke [dotted.key=value ...]`: train (or resume) on this rank, under
torchrun or as one process. `slurm/submit.py` parses the same arguments and calls `train(cfg)` in each task.
"""
from __future__ import annotations

import json
import sys
from typing import List, Optional

from pipeline.config import ConfigError, get_args_parser, load_config
from pipeline.train.distributed import dist_env
from pipeline.train.trainer import train


def main(argv: Optional[List[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        cfg = load_config(args.exp, args.overrides)
    except ConfigError as e:  # a config that cannot run: one line, like submit.py, before anything starts
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = train(cfg)
    if dist_env().is_main:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

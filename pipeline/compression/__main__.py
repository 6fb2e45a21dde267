"""Lossless image compression with a trained model: `python -m pipeline.compression encode|decode|compare`.

    python -m pipeline.compression encode --checkpoint runs/photos32/checkpoints --out val.prc a.png b.png ...
    python -m pipeline.compression decode val.prc --out-dir decoded/        # [--checkpoint DIR|model.pt]
    python -m pipeline.compression compare --checkpoint runs/photos32/checkpoints --data data/photos32

Exit status: 0 done, 2 refused (bad input, a corrupted or mismatched file; the message says why).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from pipeline.compression import prc
from pipeline.compression.codec import (DTYPES, CompressError, decode_file, encode_images, load_model, read_images,
                                        write_pngs)
from pipeline.compression.compare import compare
from pipeline.compression.rangecoding import bits_per_dim
from pipeline.fsutil import atomic_write_bytes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("pipeline.compression", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("encode", help="images -> one .prc file")
    e.add_argument("images", nargs="+")
    e.add_argument("--checkpoint", required=True, help="checkpoints folder, tag folder or exported model.pt")
    e.add_argument("--out", required=True)
    e.add_argument("--batch-size", type=int, default=64, help="images coded together (one stream each)")
    e.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    e.add_argument("--threads", type=int, default=1, help="torch threads (recorded; decode uses the same)")
    e.add_argument("--convert", action="store_true", help="convert L/P/RGBA/... images to RGB (said per image)")
    e.add_argument("--no-progress", action="store_true")
    d = sub.add_parser("decode", help="a .prc file -> PNG images")
    d.add_argument("file")
    d.add_argument("--out-dir", required=True)
    d.add_argument("--checkpoint", help="default: the path recorded in the file (its weights are checked)")
    d.add_argument("--no-progress", action="store_true")
    c = sub.add_parser("compare", help="bits/dim table: PNG, WebP lossless, this coder, the model")
    c.add_argument("--checkpoint", required=True)
    c.add_argument("--data", required=True, help="shard root (data.root)")
    c.add_argument("--split", default="val")
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--out", help="keep the .prc file here (default: not kept)")
    c.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "encode":
            if args.batch_size < 1 or args.threads < 1:
                raise CompressError("--batch-size and --threads must be at least 1")
            model, sha = load_model(args.checkpoint, args.dtype)
            x, names = read_images(args.images, model.image_size, args.convert, model.channels, model.levels)
            data, s = encode_images(model, sha, x, names, str(Path(args.checkpoint).resolve()), args.batch_size,
                                    args.dtype, args.threads, not args.no_progress)
            atomic_write_bytes(args.out, data)
            print(f"wrote {args.out}: {s['images']} images, {len(data)} bytes = "
                  f"{bits_per_dim(s['file_bits'], s['images'], s['size'], s['channels']):.4f} bits/dim (model: "
                  f"{bits_per_dim(s['ideal_bits'], s['images'], s['size'], s['channels']):.4f}; "
                  f"header {s['header_bytes']} bytes), "
                  f"{s['images'] / s['seconds']:.2f} images/s")
        elif args.command == "decode":
            data = Path(args.file).read_bytes()
            x, names, s = decode_file(data, args.checkpoint, args.file, not args.no_progress)
            write_pngs(x, names, Path(args.out_dir), s["levels"])
            print(f"decoded {len(names)} images into {args.out_dir} (pixel checksums verified), "
                  f"{len(names) / s['seconds']:.2f} images/s")
        else:
            print(compare(args.checkpoint, args.data, args.split, args.batch_size, args.threads, args.out,
                          not args.no_progress))
    except (CompressError, prc.PrcError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or ''}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

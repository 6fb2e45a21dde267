"""Progress of a long loop (encode, decode): tqdm's bar on a terminal, plain lines in a log.

tqdm redraws its bar in place with '\\r'. A file or a pipe (SLURM's output file, `2> decode.log`)
keeps every frame, so a decode's log used to be one 30 kB line. Where the stream is not a terminal,
:class:`_LogLines` keeps tqdm's counting, pacing and API (update, close, ``with``) but draws no bar:
one line when the loop starts, at most one per `every_s` seconds, one at the end, e.g.

    decode: 640/1280 images (50 %), 9.10 images/s, ETA 01:10
"""
from __future__ import annotations

import sys
from typing import Any, Optional, TextIO

from tqdm import tqdm

LOG_EVERY_S = 30.0


class _LogLines(tqdm):
    """A tqdm whose every display (tqdm calls it at most once per mininterval, and at close) is a line."""

    def display(self, msg: Optional[str] = None, pos: Optional[int] = None) -> bool:
        """Write the state as one line (count, share, average rate, time left); `msg`/`pos` are a bar's."""
        d = self.format_dict
        n, total, elapsed = d["n"], d["total"], d["elapsed"]
        rate = n / elapsed if elapsed > 0 else 0.0
        eta = self.format_interval((total - n) / rate) if rate and total else "?"
        share = f" ({100 * n / total:.0f} %)" if total else ""
        speed = f"{rate:.2f}" if rate else "?"
        self.fp.write(f"{self.desc}: {n:.0f}/{total or '?'} {self.unit}s{share}, {speed} {self.unit}s/s, ETA {eta}\n")
        self.fp.flush()
        return False  # close() (leave=False) then adds no '\r' to clear a bar: none was drawn


def progress(total: int, desc: str, unit: str, enabled: bool = True, stream: Optional[TextIO] = None,
             every_s: float = LOG_EVERY_S, **bar: Any) -> tqdm:
    """A tqdm counting `total` `unit`s on `stream` (default: stderr, looked up now): on a terminal the
    bar (`bar`: more tqdm arguments, e.g. bar_format), elsewhere :class:`_LogLines`; nothing if not
    `enabled`. Use it as tqdm: ``with progress(...) as p: p.update(k)`` (k may be fractional)."""
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(total=total, desc=desc, unit=unit, file=stream, disable=not enabled, **bar)
    # miniters=0: tqdm reads the clock at every update instead of counting updates adaptively, so a
    # slow stretch cannot hold a line back past every_s
    return _LogLines(total=total, desc=desc, unit=unit, file=stream, disable=not enabled, leave=False,
                     mininterval=every_s, miniters=0)

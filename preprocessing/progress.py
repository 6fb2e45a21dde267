"""The build's progress: a tqdm bar on a terminal, a plain line every `every_s` seconds in a log.

A bar is redrawn in place with '\\r', which suits a terminal only: a file or a pipe (SLURM's output
file, `2> build.log`) keeps every frame, and a long build's log becomes one line of thousands of
frames. Where the stream is not a terminal tqdm still counts, times and paces the output, but draws
into a file that turns each frame into a line of its own (count, rate, time left): one when the
build starts, at most one per `every_s` seconds, one at the end.
"""
from __future__ import annotations

import sys
from typing import Optional, TextIO

from tqdm import tqdm

LOG_EVERY_S = 30.0
# A log line, e.g. "train 8/16px: 640/1280 images (50 %), 91.20 images/s, ETA 00:07" (the unit is " images").
_LINE = "{desc}: {n:.0f}/{total_fmt}{unit} ({percentage:.0f} %), {rate_noinv_fmt}, ETA {remaining}"


class _FramesAsLines:
    """The file tqdm draws into for a log: each frame ('\\r', the text, padding) becomes one line."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        frames = (" ".join(frame.split()) for frame in text.replace("\r", "\n").split("\n"))
        self.stream.write("".join(f"{frame}\n" for frame in frames if frame))

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, desc: str, enabled: bool = True, stream: Optional[TextIO] = None,
                 every_s: float = LOG_EVERY_S) -> tqdm:
    """A tqdm counting `total` images on `stream` (default: stderr, looked up now): the usual bar
    where the stream is a terminal, else plain lines (see the module's docstring); nothing if not
    `enabled`. Use it as tqdm: ``with progress_bar(...) as bar: bar.update(k)``."""
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(total=total, desc=desc, unit="img", file=stream, disable=not enabled, mininterval=1.0)
    # miniters=0: the clock is read at every update (no adaptive count that a slow stretch could
    # hold a line back with); smoothing=0: the rate is the average since the start, not the latest burst
    return tqdm(total=total, desc=desc, unit=" images", file=_FramesAsLines(stream), disable=not enabled,
                mininterval=every_s, miniters=0, smoothing=0, bar_format=_LINE)

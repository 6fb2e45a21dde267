"""Progress of encode/decode (pipeline/progress.py): tqdm's bar on a terminal; in a log (not a terminal)
no '\\r' frames but a line at the start, at most one per interval, and one at the end, with rate and ETA."""
from __future__ import annotations

import io
import re
import time

from pipeline.progress import progress

# e.g. "decode: 1500/2000 images (75 %), 5123.40 images/s, ETA 00:00"; '?' while nothing is measured yet
LINE = re.compile(r"(en|de)code: \d+/\d+ images \(\d+ %\), (\?|\d+\.\d\d) images/s, ETA (\?|\d\d:\d\d)")


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_many_updates_within_the_interval_give_two_lines():
    out = io.StringIO()
    with progress(10_000, "encode", "image", stream=out, every_s=60) as bar:
        for _ in range(10_000):
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines[0] == "encode: 0/10000 images (0 %), ? images/s, ETA ?"
    assert len(lines) == 2 and lines[1].startswith("encode: 10000/10000 images (100 %), ")
    assert LINE.fullmatch(lines[1]) and "? images/s" not in lines[1] and lines[1].endswith("ETA 00:00")


def test_a_log_gets_a_line_per_interval_with_rate_and_eta():
    out, every = io.StringIO(), 0.2
    t0 = time.monotonic()
    with progress(2000, "decode", "image", stream=out, every_s=every) as bar:
        for _ in range(4000):
            bar.update(0.25)  # fractional, like the codec's per-row updates
        time.sleep(every + 0.05)
        bar.update(500)  # a line: an interval has passed
        bar.update(500)
    elapsed = time.monotonic() - t0
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    # the start and the end, plus at most one line per interval in between (and at least the one after the pause)
    assert 3 <= len(lines) <= 2 + int(elapsed / every), lines
    assert all(LINE.fullmatch(line) for line in lines), lines
    paused = [line for line in lines if line.startswith("decode: 1500/2000 images (75 %)")]
    assert paused and re.search(r"\d\.\d\d images/s, ETA \d\d:\d\d$", paused[0]), lines
    assert lines[-1].startswith("decode: 2000/2000 images (100 %)")


def test_a_terminal_gets_the_bar_and_no_progress_gets_nothing():
    tty = Terminal()
    with progress(10, "decode", "image", stream=tty, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total}") as bar:
        bar.update(10)
    assert "\r" in tty.getvalue() and "decode: 100%|##########| 10/10" in tty.getvalue()
    for stream in (Terminal(), io.StringIO()):
        with progress(10, "decode", "image", enabled=False, stream=stream) as bar:
            bar.update(10)
        assert stream.getvalue() == ""


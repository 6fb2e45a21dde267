"""The build's progress (preprocessing/progress.py): a bar on a terminal; in a log one plain line per
interval with the rate and the time left, never a '\\r' frame."""

import io

import pytest

from preprocessing import build
from preprocessing.progress import progress_bar


class Clock:
    """The clock tqdm reads, moved by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr("tqdm.std.time", fake)  # a tqdm reads `time` when it is made
    return fake


def test_one_line_per_interval_whatever_the_number_of_updates(clock):
    log = io.StringIO()
    with progress_bar(600, "train 8px", stream=log, every_s=30) as bar:
        for _ in range(600):  # 600 updates over 300 s: 10 intervals of 30 s
            clock.now += 0.5
            bar.update(1)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 1 + 10 + 1, lines  # the start, one per interval, the end
    assert lines[0] == "train 8px: 0/600 images (0 %), ? images/s, ETA ?"
    assert lines[5] == "train 8px: 300/600 images (50 %), 2.00 images/s, ETA 02:30"
    assert lines[-1] == "train 8px: 600/600 images (100 %), 2.00 images/s, ETA 00:00"


def test_a_terminal_gets_a_bar(clock):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    with progress_bar(4, "val 8px", stream=tty) as bar:
        clock.now += 2
        bar.update(4)
    assert tty.getvalue().startswith("\rval 8px:   0%|") and "| 4/4 [00:02<00:00,  2.00img/s]" in tty.getvalue()


def test_build_logs_lines_and_no_progress_logs_nothing(tmp_path, synthetic_src, capsys):
    build(synthetic_src, "train", [8], tmp_path / "a", shard_size=30, workers=1)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines()[0] == "train 8px: 0/90 images (0 %), ? images/s, ETA ?"
    assert err.splitlines()[-1].startswith("train 8px: 90/90 images (100 %), ") and err.endswith(" ETA 00:00\n")
    build(synthetic_src, "train", [8], tmp_path / "b", shard_size=30, workers=1, progress=False)
    assert capsys.readouterr().err == ""

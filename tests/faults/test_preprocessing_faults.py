"""Preprocessing under SIGKILL at seeded random moments, a full output disk, a corrupted shard found by
`verify`, and bad image files through the command line.

Covered elsewhere and not repeated here: a crash (KeyboardInterrupt) mid-build with a kill -9 leftover
temp file, deleted shards (tests/preprocessing/test_prep_build.py::test_resume_after_crash_mid_build,
::test_resume_after_deleted_shard_and_temp_file); a label file that does not match the images
(tests/preprocessing/test_prep_cli.py::test_errors_val_labels); empty, truncated, CMYK, PNG-as-JPEG and
non-image files at the API level (test_prep_build.py::test_oddities_handled_and_listed,
test_prep_imaging.py::test_unusable_inputs_raise_skip); a pickle with code in a CIFAR batch
(test_prep_sources.py::test_cifar_pickle_with_code_is_refused)."""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (REPO, encode, fill_up, noise_image, output_bytes, read_samples, run_cli, sha256_tree,
                     small_filesystem, write)

BUILD = ["--split", "train", "--sizes", "8", "16", "--workers", "2", "--shard-size", "16", "--no-progress"]
KILLS = 4


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return [sys.executable, "-m", "preprocessing", *map(str, args)], env


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from preprocessing import make_synthetic
    root = tmp_path_factory.mktemp("prep_faults") / "src"
    make_synthetic(root, 600, 3, seed=3)
    return root


def _parts(out):
    return sum(1 for _ in Path(out).glob("*/.parts/*.tar"))


def _final_shards(out):
    return sum(1 for _ in Path(out).glob("*/train-*.tar"))


def test_sigkill_at_random_moments_then_rerun_gives_identical_bytes(source, tmp_path):
    """SIGKILL to the build (parent and pool workers) at seeded random moments: after a random number of
    rendered blocks (a re-run renders only what is missing, so the moments are chosen by progress, not
    by time), plus a random few milliseconds; the last kill lands while finalize lays out shards."""
    ref = tmp_path / "ref"
    assert run_cli("build", "--source", source, "--out", ref, *BUILD).returncode == 0
    out = tmp_path / "out"
    rng = random.Random(11)
    # 600 images / 16 = 38 blocks at 2 sizes = 76 parts. Each run before the last is killed once it has
    # written 2..20 parts more than were there when it started (a re-run renders only what is missing;
    # 3 x 20 stays below 76, so every kill lands before finalize); the last while finalize lays out shards.
    steps = [rng.randint(2, 20) for _ in range(KILLS - 1)] + [rng.randint(1, 30)]
    landed = []
    for i, step in enumerate(steps):
        count, target = (_parts, _parts(out) + step) if i < KILLS - 1 else (_final_shards, step)
        cmd, env = _cli("build", "--source", source, "--out", out, *BUILD)
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        while proc.poll() is None and count(out) < target:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.005))  # less than a part takes: the kill lands mid-block
        if proc.poll() is None:
            landed.append((count.__name__, count(out)))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the parent and its 2 pool workers, no clean-up
        proc.wait()
    assert len(landed) >= KILLS - 1, f"the kills must land while the build runs: {landed}"
    res = run_cli("build", "--source", source, "--out", out, *BUILD)
    assert res.returncode == 0, res.stderr
    assert output_bytes(out) == output_bytes(ref)
    for size in (8, 16):
        _, samples = read_samples(out, size, "train")
        keys = [s["key"] for s in samples]
        assert len(keys) == len(set(keys)) == 600  # none duplicated, none missing
    assert not list(out.rglob("*.tmp-*"))  # no leftover of a killed writer
    assert sorted(q.relative_to(out) for q in out.rglob("*")) == sorted(q.relative_to(ref) for q in ref.rglob("*"))


def test_full_output_disk_fails_and_keeps_previous_shards(source, tmp_path):
    small = tmp_path / "small"
    from preprocessing import make_synthetic
    make_synthetic(small, 40, 2, seed=1)
    with small_filesystem(tmp_path / "disk", 2048) as disk:
        out = disk / "shards"
        assert run_cli("build", "--source", small, "--out", out, *BUILD).returncode == 0
        before = sha256_tree(out)
        filler = fill_up(disk, 16 * 1024)
        res = run_cli("build", "--source", source, "--out", out, "--split", "val", "--sizes", "8", "16",
                      "--workers", "2", "--shard-size", "16", "--no-progress")
        assert res.returncode != 0
        assert "No space left on device" in res.stderr, res.stderr[-2000:]
        filler.unlink()
        after = sha256_tree(out)
        assert {k: v for k, v in after.items() if k in before} == before
        assert run_cli("verify", out).returncode == 0


def test_full_output_disk_error_is_one_line_naming_the_path(source, tmp_path):
    with small_filesystem(tmp_path / "disk", 1024) as disk:
        fill_up(disk, 16 * 1024)
        res = run_cli("build", "--source", source, "--out", disk / "o", *BUILD)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert "No space left on device" in res.stderr and str(disk / "o") in res.stderr
        assert not list((disk / "o").rglob("*.tmp-*"))


def test_corrupted_shard_is_found_by_verify(source, tmp_path):
    out = tmp_path / "out"
    assert run_cli("build", "--source", source, "--out", out, "--split", "train", "--sizes", "8",
                   "--shard-size", "64", "--no-progress").returncode == 0
    assert run_cli("verify", out).returncode == 0
    shard = out / "8" / "train-000003.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0x40  # one flipped bit inside a sample
    shard.write_bytes(bytes(data))
    res = run_cli("verify", out)
    assert res.returncode == 1
    assert f"MISMATCH {shard}: sha256 differs from train.json" in res.stdout
    assert "FAILED" in res.stdout


def test_bad_image_files_through_the_cli(tmp_path):
    """Empty, truncated, non-image, CMYK and PNG-named-.JPEG files: the good ones are kept (converted to
    RGB), the bad ones skipped and listed with a reason by `info`; a folder with only bad files is an
    error (exit 2, one line) and writes no shard or manifest."""
    src = tmp_path / "src"
    full = encode(noise_image(40, 30, 1), "JPEG")
    write(src / "a" / "good.JPEG", full)
    write(src / "a" / "cmyk.JPEG", encode(noise_image(30, 30, 2, "CMYK"), "JPEG"))
    write(src / "a" / "png_as.JPEG", encode(noise_image(30, 30, 3), "PNG"))
    write(src / "b" / "empty.JPEG", b"")
    write(src / "b" / "truncated.JPEG", full[: len(full) // 3])
    write(src / "b" / "notes.JPEG", b"<html>not an image</html>")
    out = tmp_path / "out"
    res = run_cli("build", "--source", src, "--out", out, "--split", "train", "--sizes", "8", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "3 samples" in res.stdout and "3 skipped" in res.stdout
    info = run_cli("info", out)
    for name in ("b/empty.JPEG", "b/truncated.JPEG", "b/notes.JPEG"):
        assert name in info.stdout
    manifest = json.loads((out / "8" / "train.json").read_text())
    assert {s["source"] for s in manifest["skipped"]} == {"b/empty.JPEG", "b/truncated.JPEG", "b/notes.JPEG"}

    bad = tmp_path / "bad"
    write(bad / "a" / "empty.JPEG", b"")
    write(bad / "a" / "notes.JPEG", b"plain text")
    res = run_cli("build", "--source", bad, "--out", tmp_path / "bad_out", "--split", "train", "--sizes", "8",
                  "--no-progress")
    assert res.returncode == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr
    assert "skipped" in res.stderr
    assert output_bytes(tmp_path / "bad_out") == {}  # no shard, no manifest (only hidden build state)

"""The command line, run in a subprocess: happy path and clear errors (exit 2, no traceback)."""

import json

import pytest
from helpers import encode, noise_image, run_cli, write


def test_synthetic_build_info_verify(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    r = run_cli("synthetic", "--out", src, "--num-images", 24, "--classes", 4, "--seed", 3)
    assert r.returncode == 0, r.stderr
    write(src / "class_000" / "broken.jpg", b"")
    r = run_cli("build", "--source", src, "--split", "train", "--sizes", 32, 64, "--out", out,
                "--shard-size", 10, "--workers", 2)
    assert r.returncode == 0, r.stderr
    assert "size 64: 24 samples, 3 shards, 4 classes, 1 skipped" in r.stdout
    assert "images/s, ETA" in r.stderr and "\r" not in r.stderr   # progress lines on stderr (a pipe)
    r = run_cli("info", out)
    assert r.returncode == 0 and "[32px train] 24 samples in 3 shards" in r.stdout
    assert "class_000/broken.jpg: empty file" in r.stdout
    r = run_cli("info", out, "--json")
    assert json.loads(r.stdout)[0]["num_classes"] == 4
    r = run_cli("verify", out)
    assert r.returncode == 0 and r.stdout.startswith("OK: 6 shards")
    shard = out / "64" / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:-10240])
    r = run_cli("verify", out)
    assert r.returncode == 1 and "MISMATCH" in r.stdout and "train-000001.tar" in r.stdout


def test_tasks_and_finalize_via_cli(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    assert run_cli("synthetic", "--out", src, "--num-images", 12, "--classes", 2).returncode == 0
    for task in (0, 1):
        r = run_cli("build", "--source", src, "--split", "train", "--sizes", 16, "--out", out,
                    "--shard-size", 4, "--num-tasks", 2, "--task-id", task, "--no-progress")
        assert r.returncode == 0 and "run `finalize`" in r.stdout, r.stderr
    r = run_cli("finalize", "--out", out, "--split", "train")
    assert r.returncode == 0 and "size 16: 12 samples, 3 shards" in r.stdout, r.stderr


def _error(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


@pytest.fixture()
def small_src(tmp_path):
    write(tmp_path / "src" / "a" / "x.png", encode(noise_image(20, 20), "PNG"))
    return tmp_path / "src"


def _build(src, out, *extra):
    return run_cli("build", "--source", src, "--split", "train", "--sizes", 32, "--out", out, *extra)


def test_errors_missing_source_and_no_images(tmp_path):
    _error(_build(tmp_path / "nope", tmp_path / "out"), "error: source", "does not exist")
    (tmp_path / "empty").mkdir()
    _error(_build(tmp_path / "empty", tmp_path / "out"), "no images found")
    (tmp_path / "empty" / "cls").mkdir()
    _error(_build(tmp_path / "empty", tmp_path / "out"), "no images found")
    text = write(tmp_path / "readme.txt", b"hello")
    _error(_build(text, tmp_path / "out"), "unrecognised source")


def test_errors_bad_sizes_and_shard_size(tmp_path, small_src):
    _error(run_cli("build", "--source", small_src, "--split", "train", "--sizes", 7, "--out", tmp_path / "o"),
           "unsupported size 7", "8..256")
    _error(run_cli("build", "--source", small_src, "--split", "train", "--sizes", 512, "--out", tmp_path / "o"),
           "unsupported size 512")
    _error(_build(small_src, tmp_path / "o", "--shard-size", 0), "--shard-size must be >= 1")
    _error(_build(small_src, tmp_path / "o", "--num-tasks", 2, "--task-id", 2), "--task-id")


def test_errors_val_labels(tmp_path):
    for i in (1, 2, 3):
        write(tmp_path / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", encode(noise_image(20, 20, i), "JPEG"))
    _error(run_cli("build", "--source", tmp_path / "val", "--split", "val", "--sizes", 32, "--out", tmp_path / "o"),
           "--val-labels")
    csv = write(tmp_path / "LOC_val_solution.csv",
                b"ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n")
    _error(run_cli("build", "--source", tmp_path / "val", "--split", "val", "--sizes", 32, "--out", tmp_path / "o",
                   "--val-labels", csv), "does not match the images", "no label for 2 of 3 images")
    gt = write(tmp_path / "gt" / "ILSVRC2012_validation_ground_truth.txt", b"1\n2\n3\n")
    _error(run_cli("build", "--source", tmp_path / "val", "--split", "val", "--sizes", 32, "--out", tmp_path / "o",
                   "--val-labels", gt), "--class-map")


def test_error_changed_parameters(tmp_path, small_src):
    assert _build(small_src, tmp_path / "o", "--no-progress").returncode == 0
    _error(_build(small_src, tmp_path / "o", "--resize", "center-crop"),
           "other parameters", "resize: 'box' -> 'center-crop'", "--overwrite")
    assert _build(small_src, tmp_path / "o", "--resize", "center-crop", "--overwrite").returncode == 0
    _error(run_cli("finalize", "--out", tmp_path / "o", "--split", "val"), "no val build state")
    _error(run_cli("verify", tmp_path / "nothing"), "not a directory")

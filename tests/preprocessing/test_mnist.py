"""MNIST-format sources (preprocessing/mnist.py): IDX (gzip and raw) and binarized-MNIST .amat, on small
generated files; the bad-input errors; --binarize; the installed Fashion-MNIST package; data.prepare."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from helpers import mnist_like, read_samples, run_cli, write, write_amat, write_idx

from pipeline.config import load_config

from preprocessing import PreprocessError, build, prepare_fashion_mnist
from preprocessing.mnist import IMAGES_MAGIC, LABELS_MAGIC
from preprocessing.prepare import FASHION_MNIST
from preprocessing.sources import open_source
from shardformat import check_manifest, manifest_path
from slurm.submit import prepare_data


def idx_folder(root, n_train=30, n_test=12, compress=True, seed=0):
    """train-* and t10k-* pairs in a folder; returns the arrays written."""
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = mnist_like(n, seed + len(prefix))
        gz = ".gz" if compress else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{gz}", images, IMAGES_MAGIC, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{gz}", labels, LABELS_MAGIC, compress)
        arrays[prefix] = images, labels
    return arrays


def by_index(samples):
    """{row of the IDX file: sample}: the key is <prefix>_<row>."""
    return {int(s["key"].rsplit("_", 1)[1]): s for s in samples}


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_idx_folder_becomes_1_channel_shards_of_the_same_pixels_and_labels(tmp_path, compress):
    arrays = idx_folder(tmp_path / "fashion", compress=compress)
    for split, prefix in (("train", "train"), ("val", "t10k")):
        manifest = build(tmp_path / "fashion", split, [28], tmp_path / "out", shard_size=7, progress=False)[28]
        check_manifest(manifest, 28)
        assert (manifest["channels"], manifest["levels"]) == (1, 256)
        assert manifest["variant"] == "fashion/grayscale" and manifest["source_kind"] == "mnist-idx"
        images, labels = arrays[prefix]
        m, samples = read_samples(tmp_path / "out", 28, split)
        assert m["num_samples"] == len(images) and m["classes"] == sorted({str(v) for v in labels.tolist()})
        for row, s in by_index(samples).items():
            assert s["mode"] == "L" and np.array_equal(s["pixels"], images[row])
            assert m["classes"][s["cls"]] == str(labels[row])


def test_gzip_and_raw_idx_give_the_same_samples_in_the_same_order(tmp_path):
    idx_folder(tmp_path / "gz", compress=True)
    idx_folder(tmp_path / "raw", compress=False)
    build(tmp_path / "gz", "train", [28], tmp_path / "a", shard_size=8, progress=False)
    build(tmp_path / "raw", "train", [28], tmp_path / "b", shard_size=8, progress=False)
    (_, a), (_, b) = read_samples(tmp_path / "a", 28, "train"), read_samples(tmp_path / "b", 28, "train")
    assert [(s["key"], s["cls"]) for s in a] == [(s["key"], s["cls"]) for s in b]
    assert all(np.array_equal(x["pixels"], y["pixels"]) for x, y in zip(a, b))
    assert a[0]["json"]["source"].startswith("train-images-idx3-ubyte.gz[")   # where each came from


def test_an_images_file_takes_the_labels_file_beside_it_and_resizes_in_mode_l(tmp_path):
    arrays = idx_folder(tmp_path / "d")
    src = open_source(tmp_path / "d" / "t10k-images-idx3-ubyte.gz", "anything")
    assert src.kind == "mnist-idx" and len(src.items) == 12 and src.channels == 1
    build(tmp_path / "d" / "t10k-images-idx3-ubyte.gz", "val", [14], tmp_path / "o", progress=False)
    _, samples = read_samples(tmp_path / "o", 14, "val")
    images = arrays["t10k"][0]
    for row, s in by_index(samples).items():  # the builder's BOX path, in mode L: 2x2 means, rounded
        box = (images[row].reshape(14, 2, 14, 2).astype(np.float64).mean(axis=(1, 3)))
        assert s["mode"] == "L" and np.abs(s["pixels"].astype(np.float64) - box).max() <= 1


def test_amat_is_binary_class_0_at_its_own_size(tmp_path):
    bits = (mnist_like(9, 3)[0] > 127).astype(np.uint8)
    write_amat(tmp_path / "bm" / "binarized_mnist_valid.amat", bits)
    write_amat(tmp_path / "bm" / "binarized_mnist_train.amat", bits[:4])
    manifest = build(tmp_path / "bm", "val", [28], tmp_path / "o", progress=False)[28]
    assert (manifest["channels"], manifest["levels"], manifest["classes"]) == (1, 2, ["0"])
    assert manifest["num_samples"] == 9 and manifest["variant"] == "binarized-mnist/fixed"
    _, samples = read_samples(tmp_path / "o", 28, "val")
    for row, s in by_index(samples).items():
        assert s["cls"] == 0 and np.array_equal(s["pixels"], bits[row] * 255)
    with pytest.raises(PreprocessError, match="binary at 28x28: build it at --sizes 28"):
        build(tmp_path / "bm", "val", [16], tmp_path / "o16", progress=False)
    with pytest.raises(PreprocessError, match="no binarized_mnist_test.amat for split 'test'"):
        build(tmp_path / "bm", "test", [28], tmp_path / "o", progress=False)


def test_threshold_binarization_is_v_over_127_recorded_in_the_manifest(tmp_path):
    images, _ = idx_folder(tmp_path / "fashion-mnist")["train"]
    m = build(tmp_path / "fashion-mnist", "train", [28], tmp_path / "o", binarize="threshold", progress=False)[28]
    assert (m["levels"], m["variant"], m["params"]["binarize"]) == (2, "fashion-mnist/binarized-threshold127",
                                                                    "threshold")
    _, samples = read_samples(tmp_path / "o", 28, "train")
    for row, s in by_index(samples).items():
        assert np.array_equal(s["pixels"], (images[row] > 127).astype(np.uint8) * 255)


def test_stochastic_binarization_is_seeded_per_sample_not_per_worker(tmp_path):
    images, _ = idx_folder(tmp_path / "f", n_train=40)["train"]
    one = build(tmp_path / "f", "train", [28], tmp_path / "w1", binarize="stochastic", seed=3, shard_size=10,
                progress=False)[28]
    two = build(tmp_path / "f", "train", [28], tmp_path / "w2", binarize="stochastic", seed=3, shard_size=10,
                workers=2, progress=False)[28]
    other = build(tmp_path / "f", "train", [28], tmp_path / "s4", binarize="stochastic", seed=4, shard_size=10,
                  progress=False)[28]
    assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in two["shards"]]
    assert one["variant"] == "f/binarized-stochastic-seed3" and one["levels"] == 2
    _, samples = read_samples(tmp_path / "w1", 28, "train")
    _, again = read_samples(tmp_path / "s4", 28, "train")
    a, b = by_index(samples), by_index(again)
    assert any(not np.array_equal(a[r]["pixels"], b[r]["pixels"]) for r in a)  # the seed matters
    on = np.stack([a[r]["pixels"] for r in sorted(a)]) == 255
    assert set(np.unique(np.stack([a[r]["pixels"] for r in a])).tolist()) <= {0, 255}
    assert not on[images == 0].any() and on[images == 255].all()  # Bernoulli(0) and Bernoulli(1)
    p = images.astype(np.float64) / 255
    assert abs(on.mean() - p.mean()) < 4 * np.sqrt((p * (1 - p)).sum()) / p.size  # Bernoulli(v/255) on average
    assert other["variant"] == "f/binarized-stochastic-seed4"


def _no_finished_output(out, split="train"):
    assert not manifest_path(out, 28, split).exists()
    assert not list((out / "28").glob(f"{split}-*.tar")) if (out / "28").is_dir() else True


@pytest.mark.parametrize("case, message", [
    ("magic", "wrong magic number 2049 (0x00000801); an IDX images file starts with 2051 (0x00000803)"),
    ("truncated", "truncated: the header gives 30 x 28 x 28 = 23520 bytes of data, the file holds 23000"),
    ("gzip", "gzip data is damaged or truncated"),
    ("counts", "holds 30 images but"),
    ("labels-magic", "wrong magic number 2051 (0x00000803); an IDX labels file starts with 2049"),
])
def test_bad_idx_files_are_named_with_what_is_wrong_and_leave_no_shard_set(tmp_path, case, message):
    root = tmp_path / "bad"
    idx_folder(root, compress=case == "gzip")
    gz = ".gz" if case == "gzip" else ""
    images, labels = root / f"train-images-idx3-ubyte{gz}", root / f"train-labels-idx1-ubyte{gz}"
    if case == "magic":
        images.write_bytes(struct.pack(">I", LABELS_MAGIC) + images.read_bytes()[4:])
    elif case == "truncated":
        images.write_bytes(images.read_bytes()[:16 + 23000])
    elif case == "gzip":
        images.write_bytes(images.read_bytes()[:-100])
    elif case == "counts":
        write_idx(labels, np.zeros(29, np.uint8), LABELS_MAGIC, False)
    elif case == "labels-magic":
        labels.write_bytes(struct.pack(">I", IMAGES_MAGIC) + labels.read_bytes()[4:])
    bad = labels if case == "labels-magic" else images
    with pytest.raises(PreprocessError) as e:
        build(root, "train", [28], tmp_path / "out", progress=False)
    assert str(bad) in str(e.value) and message in str(e.value)
    _no_finished_output(tmp_path / "out")
    r = run_cli("build", "--source", root, "--split", "train", "--sizes", 28, "--out", tmp_path / "cli")
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_amat_line_is_named(tmp_path):
    bits = (mnist_like(3)[0] > 127).astype(np.uint8)
    path = write_amat(tmp_path / "binarized_mnist_test.amat", bits)
    lines = path.read_text().splitlines()
    write(path, ("\n".join(lines[:2] + [lines[2].replace("0", "2", 1)]) + "\n").encode())
    with pytest.raises(PreprocessError, match=r"binarized_mnist_test.amat, line 3: expected 784 space-separated "
                                              r"0/1 values, got values other than 0 and 1"):
        build(path, "test", [28], tmp_path / "o", progress=False)
    write(path, ("\n".join(lines[:1] + [lines[1][:-2]]) + "\n").encode())
    with pytest.raises(PreprocessError, match="line 2: expected 784 space-separated 0/1 values, got 783 values"):
        build(path, "test", [28], tmp_path / "o", progress=False)


def test_a_failure_mid_build_leaves_no_manifest(tmp_path, monkeypatch):
    """The builder renders block by block; an error after some blocks are done writes no manifest (and no
    final shard), and the same command afterwards finishes the set."""
    import preprocessing.builder as builder   # monkeypatched: the render the workers=1 path calls
    idx_folder(tmp_path / "f", n_train=30)
    real, calls = builder.render, []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) > 20:
            raise RuntimeError("disk on fire")
        return real(*a, **kw)
    monkeypatch.setattr(builder, "render", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        build(tmp_path / "f", "train", [28], tmp_path / "out", shard_size=5, progress=False)
    _no_finished_output(tmp_path / "out")
    monkeypatch.setattr(builder, "render", real)
    m = build(tmp_path / "f", "train", [28], tmp_path / "out", shard_size=5, progress=False)[28]
    assert m["num_samples"] == 30


def test_binarize_refuses_an_rgb_source(synthetic_src, tmp_path):
    with pytest.raises(PreprocessError, match="--binarize needs a grayscale source"):
        build(synthetic_src, "train", [8], tmp_path / "o", binarize="threshold", progress=False)


def test_cli_builds_a_binarized_idx_folder(tmp_path):
    idx_folder(tmp_path / "f")
    r = run_cli("build", "--source", tmp_path / "f", "--split", "val", "--sizes", 28, "--out", tmp_path / "o",
                "--binarize", "threshold", "--no-progress")
    assert r.returncode == 0, r.stderr
    m = json.loads(manifest_path(tmp_path / "o", 28, "val").read_text())
    assert (m["num_samples"], m["channels"], m["levels"], m["variant"]) == (12, 1, 2, "f/binarized-threshold127")


def test_prepare_fashion_mnist_builds_train_and_val_once(tmp_path, capsys):
    idx_folder(tmp_path / "fashion-mnist", n_train=20, n_test=6)
    assert prepare_fashion_mnist(tmp_path / "data", 28, source=tmp_path / "fashion-mnist", shard_size=8)
    train, val = (json.loads(manifest_path(tmp_path / "data", 28, s).read_text()) for s in ("train", "val"))
    assert (train["num_samples"], val["num_samples"]) == (20, 6) and train["channels"] == val["channels"] == 1
    assert not prepare_fashion_mnist(tmp_path / "data", 28, source=tmp_path / "fashion-mnist")
    assert prepare_fashion_mnist(tmp_path / "bin", 28, binarize="threshold", source=tmp_path / "fashion-mnist")
    assert json.loads(manifest_path(tmp_path / "bin", 28, "val").read_text())["levels"] == 2
    with pytest.raises(PreprocessError, match=r"run `apt-get install dataset-fashion-mnist`"):
        prepare_fashion_mnist(tmp_path / "x", 28, source=tmp_path / "nowhere")


def test_the_installed_fashion_mnist_package_is_read():
    """Debian's dataset-fashion-mnist (`make install` installs it, so CI has it): 60,000 + 10,000 images in
    10 classes. Not skipped when missing: the project's data.prepare=fashion_mnist needs it."""
    assert (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), (
        f"{FASHION_MNIST} is missing: run `apt-get install dataset-fashion-mnist` (make install does)")
    train, test = open_source(FASHION_MNIST, "train"), open_source(FASHION_MNIST, "val")
    assert (len(train.items), len(test.items)) == (60000, 10000)
    assert train.classes == test.classes == [str(i) for i in range(10)]
    first = train.reader(train.items[0].ref)
    assert first.shape == (28, 28) and first.dtype == np.uint8 and 0 < first.max() <= 255
    assert train.variant == "fashion-mnist/grayscale"


def test_data_prepare_fashion_mnist_binarized_builds_the_package_before_submitting(tmp_path):
    """The launcher's `data.prepare: fashion_mnist_binarized` (slurm/submit.py prepare_data): the installed
    package's 60,000 + 10,000 images as binary 28x28 shards, the manifest saying so."""
    assert (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), (
        f"{FASHION_MNIST} is missing: run `apt-get install dataset-fashion-mnist` (make install does)")
    cfg = load_config("smoke", [f"data.root={tmp_path}", "data.prepare=fashion_mnist_binarized",
                                "model.image_size=28"])
    prepare_data(cfg)
    train, val = (json.loads(manifest_path(tmp_path, 28, s).read_text()) for s in ("train", "val"))
    assert (train["num_samples"], val["num_samples"]) == (60000, 10000)
    assert (val["channels"], val["levels"], val["variant"]) == (1, 2, "fashion-mnist/binarized-threshold127")
    assert len(train["shards"]) == 24   # the library's 2,500 a shard, not the smoke config's 16

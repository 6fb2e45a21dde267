"""The shard loader: deterministic, evenly split, resumable mid-epoch, and loud about bad shards."""
from __future__ import annotations

import dataclasses
import io
import itertools
import json
import shutil
import tarfile

import pytest
import torch

from helpers import mnist_like, read_samples, write_idx
from pipeline.data.plan import EvalPlan
from pipeline.data.shards import (ShardError, decode_sample, eval_batches, load_shard_set, read_spans,
                                  split_batches)
from pipeline.data.stream import TrainStream, train_loader
from pipeline.train.evaluate import evaluate_bits_per_dim
from preprocessing import build
from preprocessing.mnist import IMAGES_MAGIC, LABELS_MAGIC
from shardformat import FormatError, check_manifest


def stream(data, rank=0, world=2, workers=2, seed=0, micro=8, **kw):
    return TrainStream(load_shard_set(data, 8, "train"), micro, seed, rank, world, workers, 64, **kw)


def take(it, n):
    return [b.clone() for b in itertools.islice(it, n)]


def test_batches_are_uint8_images(smoke_data):
    b = next(train_loader(stream(smoke_data, workers=1)))
    assert b.dtype == torch.uint8 and b.shape == (8, 3, 8, 8)


def test_every_rank_gets_the_same_number_of_batches(smoke_data):
    counts = {stream(smoke_data, rank=r, world=w, workers=k).batches_per_epoch
              for w in (2,) for r in range(w) for k in (2,)}
    assert len(counts) == 1
    # 16 shards of 16: 4 readers get 4 shards = 64 samples = 8 batches each, 2 readers per rank.
    assert counts == {16}


def test_ranks_read_disjoint_samples_in_an_epoch(smoke_data):
    seen = []
    for rank in range(2):
        s = stream(smoke_data, rank=rank, workers=1, micro=1)
        for b in take(train_loader(s), s.batches_per_epoch):
            seen.append(b.numpy().tobytes())
    assert len(seen) == 256 and len(set(seen)) == len(seen)


def test_same_seed_same_stream_other_seed_other_stream(smoke_data):
    a = take(train_loader(stream(smoke_data)), 20)
    b = take(train_loader(stream(smoke_data)), 20)
    c = take(train_loader(stream(smoke_data, seed=1)), 20)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("start", [0, 3, 16, 21])
def test_resumed_stream_continues_exactly(smoke_data, start):
    """Position `start` (mid-epoch, at and past an epoch boundary) with 2 loader worker processes."""
    full = take(train_loader(stream(smoke_data)), start + 12)
    resumed = take(train_loader(stream(smoke_data), start=start), 12)
    assert all(torch.equal(x, y) for x, y in zip(full[start:], resumed))


def sample_positions(data, split="train"):
    """{pixels as [3, H, W] bytes: (shard index, position in the shard)} of every sample of the split,
    read with tarfile (not the loader)."""
    manifest, samples = read_samples(data, 8, split)
    where = [(i, j) for i, entry in enumerate(manifest["shards"]) for j in range(entry["count"])]
    index = {s["pixels"].transpose(2, 0, 1).tobytes(): w for s, w in zip(samples, where)}
    assert len(index) == len(samples)   # the generated images are all different
    return index


def planned(spans):
    return sorted((shard, j) for shard, first, end in spans for j in range(first, end))


def test_stream_reads_exactly_the_planned_samples_and_resumes_mid_epoch(smoke_data):
    """3 ranks × 2 loader workers × micro-batch 4 on 16 shards of 16: readers read 40 samples, so most
    start or end mid-shard. Over two epochs, each reader's batches (batch i from worker i % 2) hold exactly
    the samples its plan names, read through webdataset from the shards `preprocessing` built; a stream
    resumed mid-epoch gives exactly the remaining batches."""
    index = sample_positions(smoke_data)
    starts = []
    for rank in range(3):
        s = stream(smoke_data, rank=rank, world=3, workers=2, micro=4)
        n = s.batches_per_epoch
        assert n == 20 and s.plan.samples_per_epoch == 240
        batches = take(train_loader(s), 2 * n)
        for epoch in (0, 1):
            got = {w: [] for w in range(2)}
            for i, b in enumerate(batches[epoch * n:(epoch + 1) * n]):
                got[i % 2] += [index[x.numpy().tobytes()] for x in b]
            for w in range(2):
                assert sorted(got[w]) == planned(s.plan.spans(epoch, s.plan.reader(rank, w)))
        starts += [s.plan.spans(0, s.plan.reader(rank, w))[0][1] for w in range(2)]
        if rank == 1:
            for start in (7, n + 3):
                resumed = take(train_loader(stream(smoke_data, rank=1, world=3, workers=2, micro=4), start=start), 8)
                assert all(torch.equal(x, y) for x, y in zip(batches[start:start + 8], resumed))
    assert any(first > 0 for first in starts)   # readers that start mid-shard were among them


def test_more_readers_than_shards_are_fed(smoke_data):
    """16 shards, 4 ranks × 8 loader workers = 32 readers: each reads half a shard, none twice."""
    seen = []
    for rank in range(4):
        s = stream(smoke_data, rank=rank, world=4, workers=8, micro=8)
        assert s.batches_per_epoch == 8
        for w in range(8):
            (span,) = s.plan.spans(0, s.plan.reader(rank, w))
            seen.append(span)
    assert len(set(seen)) == 32 and {end - first for _, first, end in seen} == {8}
    b = take(train_loader(stream(smoke_data, rank=3, world=4, workers=1, micro=8)), 1)[0]
    assert b.shape == (8, 3, 8, 8)
    with pytest.raises(ShardError, match=r"256 train samples .* give 32 readers \(4 ranks × 8 loader workers\) "
                                         r"less than one micro-batch \(16\) each: lower train.micro_batch_size"):
        stream(smoke_data, world=4, workers=8, micro=16)


def test_missing_manifest_and_missing_shard_are_named(smoke_data, tmp_path):
    with pytest.raises(ShardError, match="no manifest"):
        load_shard_set(tmp_path, 8, "train")
    copy = tmp_path / "copy"
    shutil.copytree(smoke_data / "8", copy / "8")
    (copy / "8" / "train-000003.tar").unlink()
    with pytest.raises(ShardError, match="train-000003.tar is listed in train.json but missing"):
        load_shard_set(copy, 8, "train")


def test_corrupt_shard_error_names_the_shard(smoke_data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(smoke_data / "8", copy / "8")
    shard = copy / "8" / "val-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])  # truncated mid-sample
    with pytest.raises(ShardError, match="val-000001.tar"):
        list(split_batches(copy, 8, "val", 8))


def test_corrupt_image_is_named_or_skipped_as_configured(smoke_data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(smoke_data / "8", copy / "8")
    # Overwrite one PNG payload inside a tar with garbage of the same length (tar stays readable).
    shard = copy / "8" / "train-000000.tar"
    raw = bytearray(shard.read_bytes())
    at = raw.find(b"\x89PNG")
    raw[at:at + 40] = b"x" * 40
    shard.write_bytes(bytes(raw))
    shards = load_shard_set(copy, 8, "train")
    strict = TrainStream(shards, 8, 0, 0, 1, 1, 64)
    with pytest.raises(ShardError, match="train-000000.tar"):
        take(train_loader(strict), strict.batches_per_epoch)
    lenient = TrainStream(shards, 8, 0, 0, 1, 1, 64, on_corrupt="skip")
    assert len(take(train_loader(lenient), lenient.batches_per_epoch)) == lenient.batches_per_epoch


def test_eval_split_reads_each_sample_once_in_balanced_shares(smoke_data):
    shards = load_shard_set(smoke_data, 8, "val")
    index = sample_positions(smoke_data, "val")
    plan = EvalPlan(tuple(n for _, n in shards.shards), world=3, batch_size=5)  # 64 over 3 ranks: uneven
    seen = []
    for rank in range(3):
        batches = list(eval_batches(shards, plan.spans(rank), 5))
        assert len(batches) == plan.batches(rank) and sum(b.shape[0] for b in batches) in (21, 22)
        seen += [index[x.numpy().tobytes()] for b in batches for x in b]
    assert sorted(seen) == sorted(index.values())
    assert len(seen) == json.loads((smoke_data / "8" / "val.json").read_text())["num_samples"]


def _bits(x: torch.Tensor) -> torch.Tensor:
    """A float64 per-sample "bits/dim" that depends on every pixel (not a model: the reduction is tested)."""
    return torch.sin(x.double().flatten(1) / 7.0).mean(1) + x.double().flatten(1).std(1) / 3.0


def _evaluate_on_two_ranks(rank: int, port: int, data: str, out: str) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    r = evaluate_bits_per_dim(_bits, load_shard_set(data, 8, "val"), rank, 2, 5, "cpu")
    dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"hex": float.hex(r["bits_per_dim"]), "samples": r["samples"]}, f)


@pytest.mark.slow  # two processes
def test_distributed_evaluation_equals_the_single_rank_value(smoke_data, tmp_path):
    """2 real gloo ranks, each its contiguous half of the validation split: the same bits/dim as one rank
    to 1e-12 (float64), every sample counted once."""
    import torch.multiprocessing as mp
    from helpers import free_port
    one = evaluate_bits_per_dim(_bits, load_shard_set(smoke_data, 8, "val"), 0, 1, 5, "cpu")
    out = str(tmp_path / "eval")
    mp.spawn(_evaluate_on_two_ranks, args=(free_port(), str(smoke_data), out), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"eval.{r}").read_text()) for r in (0, 1)]
    assert results[0] == results[1] and results[0]["samples"] == one["samples"] == 64
    assert abs(float.fromhex(results[0]["hex"]) - one["bits_per_dim"]) <= 1e-12


def test_a_span_starts_at_its_sample_in_builder_shards_and_in_any_tar(smoke_data, tmp_path):
    """Starting at sample `first` seeks over the samples before it (headers only); a tar with members the
    fast header walk does not parse (GNU long names) is walked by tarfile instead, with the same result."""
    shards = load_shard_set(smoke_data, 8, "train")
    keys = [s["__key__"] for s in read_spans(shards, [(2, 0, 16)])]
    assert [s["__key__"] for s in read_spans(shards, [(2, 5, 11)])] == keys[5:11]
    long = tmp_path / "long.tar"
    with tarfile.open(long, "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(6):
            for ext, data in (("cls", b"1"), ("png", b"x" * (100 + i))):
                info = tarfile.TarInfo(f"{'k' * 120}{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    odd = dataclasses.replace(shards, shards=[(long, 6)])
    assert [s["png"] for s in read_spans(odd, [(0, 4, 6)])] == [b"x" * 104, b"x" * 105]
    with pytest.raises(ShardError, match="long.tar ends after 6 samples"):
        list(read_spans(odd, [(0, 5, 7)]))


# ---------------------------------------------------------------- 1-channel and binary shards (issue 22)
@pytest.fixture(scope="module")
def mnist_shards(tmp_path_factory):
    """A generated IDX folder built twice by the real builder: grayscale (levels 256) and thresholded (levels 2)."""
    root = tmp_path_factory.mktemp("mnist")
    images, labels = mnist_like(40, 1)
    write_idx(root / "src" / "train-images-idx3-ubyte.gz", images, IMAGES_MAGIC, True)
    write_idx(root / "src" / "train-labels-idx1-ubyte.gz", labels, LABELS_MAGIC, True)
    build(root / "src", "train", [28], root / "gray", shard_size=10, progress=False)
    build(root / "src", "train", [28], root / "bin", shard_size=10, progress=False, binarize="threshold")
    return root, images


def _all(shards):
    """Every sample of a split as spans, in shard order."""
    return [(i, 0, n) for i, (_, n) in enumerate(shards.shards)]


def _rows(shards):
    """The IDX row of every sample of a split, in shard order (keys are train_<row>)."""
    return [int(s["__key__"].rsplit("_", 1)[1]) for s in read_spans(shards, _all(shards))]


@pytest.mark.parametrize("variant, levels", [("gray", 256), ("bin", 2)])
def test_1_channel_shards_decode_to_values_0_to_levels_minus_1(mnist_shards, variant, levels):
    root, images = mnist_shards
    shards = load_shard_set(root / variant, 28, "train")
    assert (shards.channels, shards.levels) == (1, levels)
    x = torch.cat(list(eval_batches(shards, _all(shards), 16)))
    expected = images if levels == 256 else (images > 127).astype("uint8")
    assert x.dtype == torch.uint8 and x.shape == (40, 1, 28, 28)
    assert torch.equal(x[:, 0], torch.from_numpy(expected[_rows(shards)]))


def test_the_train_stream_gives_1_channel_batches(mnist_shards):
    root, _ = mnist_shards
    s = TrainStream(load_shard_set(root / "bin", 28, "train"), 8, 0, 0, 1, 1, 40)
    b = next(train_loader(s))
    assert b.shape == (8, 1, 28, 28) and int(b.max()) == 1 and int(b.min()) == 0


def test_a_png_value_that_is_no_level_is_a_shard_error(mnist_shards):
    root, _ = mnist_shards
    shards = load_shard_set(root / "gray", 28, "train")
    sample = next(read_spans(shards, [(0, 0, 1)]))
    with pytest.raises(ShardError, match="not multiples of 255 in 0..255: not a 2-level image"):
        decode_sample(sample, 28, 1, 2)   # grayscale pixels read as if binary
    rgb = decode_sample(sample, 28)[0]    # the defaults: 3 channels, 256 levels (older shard sets)
    assert rgb.shape == (3, 28, 28) and torch.equal(rgb[0], shards.decode(sample)[0][0])


@pytest.mark.parametrize("field, value, message", [
    ("channels", 2, "'channels' is 2, expected one of 1, 3"),
    ("channels", "1", "'channels' is '1'"),
    ("levels", 1, "'levels' is 1, expected an integer in 2..256"),
    ("levels", 257, "'levels' is 257"),
])
def test_check_manifest_refuses_bad_channels_and_levels(smoke_data, field, value, message):
    manifest = json.loads((smoke_data / "8" / "train.json").read_text())
    check_manifest(dict(manifest))
    without = {k: v for k, v in manifest.items() if k not in ("channels", "levels")}
    assert check_manifest(without) is without   # older manifests: 3 channels, 256 levels
    with pytest.raises(FormatError, match=message):
        check_manifest({**manifest, field: value})

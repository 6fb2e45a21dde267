"""The shard loader: deterministic, evenly split, resumable mid-epoch, and loud about bad shards."""
from __future__ import annotations

import itertools
import json
import shutil

import pytest
import torch

from pipeline.data.shards import ShardError, eval_batches, iterate_eval, load_shard_set
from pipeline.data.stream import TrainStream, train_loader


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


def test_too_few_shards_for_readers_is_refused(smoke_data):
    with pytest.raises(ShardError, match=r"16 train shards .* cannot feed 4 ranks × 8 loader workers"):
        stream(smoke_data, world=4, workers=8)


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
    shards = load_shard_set(copy, 8, "val")
    with pytest.raises(ShardError, match="val-000001.tar"):
        list(iterate_eval([p for p, _ in shards.shards], 8, 8))


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


def test_eval_split_counts_each_sample_once(smoke_data):
    shards = load_shard_set(smoke_data, 8, "val")
    total = 0
    for rank in range(3):  # 4 val shards over 3 ranks: uneven on purpose
        paths, _ = eval_batches(shards, rank, 3, 5)
        total += sum(b.shape[0] for b in iterate_eval(paths, 8, 5))
    assert total == shards.num_samples == json.loads((smoke_data / "8" / "val.json").read_text())["num_samples"]

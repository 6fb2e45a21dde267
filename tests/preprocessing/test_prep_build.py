"""Determinism, parallelism, array tasks, resume, refusal, verify, and webdataset readability."""

import json
import os
import signal
import tarfile

import pytest
from helpers import output_bytes, read_samples

import preprocessing.builder as build_mod
from preprocessing import PreprocessError, build, finalize, info, verify
from preprocessing.fsutil import read_json
from preprocessing.imaging import png_encoder

SIZES = [16, 32]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, odd_src):
    """Single-process build of the odd source: the bytes every other way must reproduce.
    The skipped files make later shards spliced from several parts (not plain renames)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    build(odd_src, "train", SIZES, out, shard_size=3, seed=7, progress=False)
    return output_bytes(out)


def test_oddities_handled_and_listed(tmp_path, odd_src, reference):
    manifest, samples = read_samples(_out(tmp_path, odd_src), 32, "train")
    reasons = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"b/empty.JPEG", "b/truncated.JPEG", "b/notes.txt"}
    assert "empty" in reasons["b/empty.JPEG"] and "not an image" in reasons["b/notes.txt"]
    assert "truncated" in reasons["b/truncated.JPEG"]
    kept = {s["json"]["source"] for s in samples}
    assert {"a/cmyk.JPEG", "a/png_as.JPEG", "b/gray.JPEG", "b/rgba.png", "b/gray16.png", "b/tiny.JPEG"} <= kept
    assert all(s["mode"] == "RGB" and s["pixels"].shape == (32, 32, 3) for s in samples)
    counts = [s["count"] for s in manifest["shards"]]
    assert manifest["num_samples"] == 12 and counts == [3, 3, 3, 3]


def _out(tmp_path, src, **kw):
    out = tmp_path / "out"
    build(src, "train", SIZES, out, **{"shard_size": 3, "seed": 7, "progress": False, **kw})
    return out


def test_two_builds_byte_identical(tmp_path, odd_src, reference):
    assert output_bytes(_out(tmp_path, odd_src)) == reference


@pytest.mark.parametrize("chunk", [None, 2, 5])
def test_workers_2_equals_workers_1(tmp_path, odd_src, reference, monkeypatch, chunk):
    # Worker tasks are runs of `chunk` inputs (with skipped files inside some): the bytes must not
    # depend on how the inputs were cut into tasks.
    if chunk:
        monkeypatch.setattr(build_mod, "_chunk_size", lambda total, workers: chunk)
    assert output_bytes(_out(tmp_path, odd_src, workers=2)) == reference


def test_three_tasks_plus_finalize_equal_single_run(tmp_path, odd_src, reference):
    out = tmp_path / "out"
    for task in (2, 0):
        res = build(odd_src, "train", SIZES, out, shard_size=3, seed=7, num_tasks=3, task_id=task, progress=False)
        assert all(b % 3 == task for b in res["blocks_built"])
    with pytest.raises(PreprocessError, match="not built yet"):
        finalize(out, "train")
    build(odd_src, "train", SIZES, out, shard_size=3, seed=7, num_tasks=3, task_id=1, progress=False)
    finalize(out, "train", SIZES)
    assert output_bytes(out) == reference


def test_resume_after_crash_mid_build(tmp_path, odd_src, reference, monkeypatch):
    calls = {"n": 0}
    real = build_mod.render

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt  # like a kill in the middle of block 2
        return real(*a, **k)

    monkeypatch.setattr(build_mod, "render", crashing)
    with pytest.raises(KeyboardInterrupt):
        _out(tmp_path, odd_src)
    monkeypatch.setattr(build_mod, "render", real)
    out = tmp_path / "out"
    assert not (out / "32" / "train.json").exists()
    (out / "32" / ".parts" / ".train-000004.tar.tmp-host-99").write_bytes(b"half a part")  # kill -9 leftover
    assert output_bytes(_out(tmp_path, odd_src)) == reference
    assert not list(out.rglob("*.tmp-*"))


def test_killed_worker_is_a_clear_error_and_rerun_resumes(tmp_path, odd_src, reference, monkeypatch):
    """A pool worker SIGKILLed mid-build (the OOM killer, say): the build stops with an error that
    says so instead of hanging, keeps the finished blocks, and a rerun gives the reference bytes."""
    real = build_mod.render
    parent = os.getpid()

    def dies_in_a_worker(data, *a, **k):
        if os.getpid() != parent and data == (odd_src / "b" / "tiny.JPEG").read_bytes():
            os.kill(os.getpid(), signal.SIGKILL)
        return real(data, *a, **k)

    monkeypatch.setattr(build_mod, "render", dies_in_a_worker)  # inherited by the forked workers
    with pytest.raises(PreprocessError, match="a worker process died while rendering block"):
        _out(tmp_path, odd_src, workers=2)
    monkeypatch.setattr(build_mod, "render", real)
    assert not (tmp_path / "out" / "32" / "train.json").exists()
    assert output_bytes(_out(tmp_path, odd_src, workers=2)) == reference


def test_resume_after_deleted_shard_and_temp_file(tmp_path, odd_src, reference):
    out = _out(tmp_path, odd_src)
    for name in ("train-000001.tar", "train-000003.tar"):
        (out / "32" / name).unlink()
    (out / "32" / ".train-000001.tar.tmp-host-1").write_bytes(b"partial")
    (out / "32" / "train.json").unlink()
    assert output_bytes(_out(tmp_path, odd_src)) == reference
    assert not list(out.rglob("*.tmp-*"))


def test_changed_parameters_refused_unless_overwrite(tmp_path, odd_src, reference):
    out = _out(tmp_path, odd_src, seed=1)
    with pytest.raises(PreprocessError, match=r"other parameters \(seed: 1 -> 7\)"):
        _out(tmp_path, odd_src)
    with pytest.raises(PreprocessError, match="--num-tasks"):
        _out(tmp_path, odd_src, overwrite=True, num_tasks=2)
    assert output_bytes(_out(tmp_path, odd_src, overwrite=True)) == reference
    assert out.exists()


def test_changed_png_encoder_refused_unless_overwrite(tmp_path, odd_src, reference):
    """A resume with another libpng/imagecodecs would give other bytes for the rest of the shards."""
    out = _out(tmp_path, odd_src)
    assert read_json(out / "32" / "train.json")["versions"]["png_encoder"] == png_encoder()
    state = out / "32" / ".train.params.json"
    st = read_json(state)
    st["png_encoder"] = "imagecodecs 0.1 (libpng 1.0), filter=paeth"
    state.write_text(json.dumps(st))
    with pytest.raises(PreprocessError, match=r"another PNG encoder \(imagecodecs 0\.1 \(libpng 1\.0\)"):
        _out(tmp_path, odd_src)
    del st["png_encoder"]  # a build started before the encoder was recorded (Pillow's encoder)
    state.write_text(json.dumps(st))
    with pytest.raises(PreprocessError, match=r"another PNG encoder \(Pillow's"):
        _out(tmp_path, odd_src)
    assert output_bytes(_out(tmp_path, odd_src, overwrite=True)) == reference


def test_verify_detects_corruption(tmp_path, odd_src):
    out = _out(tmp_path, odd_src)
    assert verify(out)["ok"]
    shard = out / "16" / "train-000002.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 1
    shard.write_bytes(bytes(data))
    res = verify(out)
    assert not res["ok"] and any("train-000002.tar" in p for p in res["problems"])


def test_shards_exact_sizes_and_plain_tar_headers(tmp_path, synthetic_src):
    out = tmp_path / "out"
    m = build(synthetic_src, "train", [32], out, shard_size=20, progress=False)[32]
    assert [s["count"] for s in m["shards"]] == [20, 20, 20, 20, 10]
    assert m["format"] == "pixelrnn-shards/1" and m["num_samples"] == 90
    assert set(m) >= {"split", "size", "shard_size", "shards", "classes", "num_classes", "skipped",
                      "params", "versions", "source_kind"}
    assert set(m["versions"]) >= {"pillow", "numpy", "webdataset", "python"}
    assert m["params"]["resize"] == "box" and m["params"]["seed"] == 0
    with tarfile.open(out / "32" / "train-000000.tar") as tf:
        members = tf.getmembers()
    assert len(members) == 60 and all(t.mtime == 0 and t.uid == 0 and t.mode == 0o444 for t in members)
    assert [t.name.split(".", 1)[1] for t in members[:3]] == ["cls", "json", "png"]
    rows = info(out)
    assert rows[0]["num_samples"] == 90 and rows[0]["complete"]


def test_webdataset_reads_shards(tmp_path, synthetic_src):
    wds = pytest.importorskip("webdataset")
    out = tmp_path / "out"
    m = build(synthetic_src, "train", [32], out, shard_size=40, progress=False)[32]
    urls = [str(out / "32" / s["name"]) for s in m["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == 90
    for s in samples:
        assert {"__key__", "png", "cls", "json"} <= set(s)
        assert s["png"].size == (32, 32) and s["png"].mode == "RGB"
        assert s["__key__"] == s["json"]["source"].rsplit("/", 1)[1].split(".")[0]
        assert m["classes"][int(s["cls"])] == s["json"]["class"]
        assert s["json"]["orig_size"][0] >= 20
    assert len({s["__key__"] for s in samples}) == 90

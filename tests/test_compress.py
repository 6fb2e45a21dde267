"""Lossless compression with the model (`python -m pipeline.compression`): exact round trips, the size bound,
and clear refusals of corrupted, truncated or mismatched files and of images of another size or mode.
Tiny randomly initialised models: exactness does not depend on training."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.compression import prc
from pipeline.compression.__main__ import main
from pipeline.compression.codec import (CompressError, decode_file, encode_images, load_model, probe_sha256,
                                        read_images)
from pipeline.models import ARCHITECTURES, build_model
from pipeline.tracking.baselines import split_codec_bits_per_dim

torch.set_num_threads(1)
SIZE = 8
TINY = dict(image_size=SIZE, layers=2, hidden=8, out_maps=32)


def export(path: Path, name: str = "diagonal_bilstm", seed: int = 0, **kw) -> str:
    """A tiny model written as `pipeline.tools.export` writes model.pt (kw: more of its config)."""
    torch.manual_seed(seed)
    m = build_model(name, **TINY, **kw)
    torch.save({"config": m.config, "state_dict": m.state_dict()}, path)
    return str(path)


def images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth images plus noise: not uniform, so a model's probabilities vary from sub-pixel to sub-pixel."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 200, SIZE)
    base = ramp[None, None, :, None] + ramp[None, None, None, :] * torch.rand(n, 3, 1, 1, generator=g)
    return (base + torch.randint(0, 40, (n, 3, SIZE, SIZE), generator=g)).clamp(0, 255).to(torch.uint8)


def encode(ckpt: str, x: torch.Tensor, batch_size: int = 3, **kw):
    model, sha = load_model(ckpt)
    return encode_images(model, sha, x, [f"im{k}" for k in range(len(x))], ckpt, batch_size, progress=False, **kw)


# Every registered architecture goes through the one walk protocol; the multi-scale model with each base.
CODED = [(name, {}) for name in ARCHITECTURES] + [("multiscale", {"base": b}) for b in ("pixelcnn", "row_lstm")]


@pytest.mark.parametrize("name,kw", CODED, ids=[n + "-" + kw.get("base", "") for n, kw in CODED])
def test_round_trip_is_exact(tmp_path, name, kw):
    ckpt = export(tmp_path / "model.pt", name, **kw)
    x = images(5)
    data, stats = encode(ckpt, x)  # chunks of 3 and 2 images: both batch sizes decode exactly
    y, names, _ = decode_file(data, ckpt, progress=False)
    assert y.dtype == torch.uint8 and torch.equal(x, y) and names == [f"im{k}" for k in range(5)]
    header, payloads, _ = prc.unpack(data)
    assert [c["images"] for c in header["chunks"]] == [3, 2]
    assert header["coder"]["precision_bits"] == 24 and header["coder"]["model"].endswith("(perfect=False)")
    # every stage was coded: the code length is the model's bits (both images' for the multi-scale model)
    model, _ = load_model(ckpt)
    forward_bits = (model.bits_per_dim(x).double() * 3 * SIZE * SIZE).sum().item()
    assert abs(forward_bits - stats["ideal_bits"]) < 1e-3 * stats["ideal_bits"]


# Issue 22: a grayscale and a binary model (MNIST-style), for a recurrent and the multi-scale model.
GRAY = [(name, levels) for name in ("diagonal_bilstm", "multiscale") for levels in (256, 2)]


@pytest.mark.parametrize("name,levels", GRAY, ids=[f"{n}-{lv}" for n, lv in GRAY])
def test_round_trip_of_one_channel_and_binary_images_is_exact(tmp_path, name, levels):
    """The coder takes `levels` symbols per sub-pixel, one channel per pixel; the header says 1 channel."""
    ckpt = export(tmp_path / "model.pt", name, channels=1, levels=levels, **({"base": "row_lstm"}
                                                                              if name == "multiscale" else {}))
    x = images(5)[:, :1] // (256 // levels)  # 0..levels-1
    assert len(x.unique()) == levels or levels == 256
    data, stats = encode(ckpt, x)
    y, _, _ = decode_file(data, ckpt, progress=False)
    assert y.shape == (5, 1, SIZE, SIZE) and torch.equal(x, y)
    header, _, _ = prc.unpack(data)
    assert header["images"]["channels"] == 1 and header["model"]["config"]["levels"] == levels
    model, _ = load_model(ckpt)
    forward_bits = (model.bits_per_dim(x).double() * SIZE * SIZE).sum().item()
    assert abs(forward_bits - stats["ideal_bits"]) < 1e-3 * stats["ideal_bits"]


def test_cli_round_trip_of_binary_grayscale_pngs_and_off_grid_values_refused(tmp_path, capsys):
    """A binary model reads mode-L PNGs of 0/255 (as the shards store them), decodes them to the same PNGs,
    and refuses a gray value that is neither (it has no exact 2-level form)."""
    ckpt = export(tmp_path / "model.pt", channels=1, levels=2)
    x = (images(3, seed=4)[:, 0] >= 128).to(torch.uint8) * 255
    paths = []
    for k, img in enumerate(x.numpy()):
        paths.append(str(tmp_path / f"digit{k}.png"))
        Image.fromarray(img, "L").save(paths[-1])
    out = tmp_path / "b.prc"
    assert main(["encode", "--checkpoint", ckpt, "--out", str(out), "--no-progress", *paths]) == 0
    assert prc.unpack(out.read_bytes())[0]["images"]["channels"] == 1
    assert main(["decode", str(out), "--out-dir", str(tmp_path / "dec"), "--no-progress"]) == 0
    for k, p in enumerate(paths):
        decoded = Image.open(tmp_path / "dec" / f"digit{k}.png")
        assert decoded.mode == "L" and np.array_equal(np.asarray(decoded), np.asarray(Image.open(p)))
    Image.fromarray(np.full((SIZE, SIZE), 128, dtype=np.uint8), "L").save(tmp_path / "gray.png")
    capsys.readouterr()
    assert main(["encode", "--checkpoint", ckpt, "--out", str(tmp_path / "c.prc"), "--no-progress",
                 str(tmp_path / "gray.png")]) != 0
    assert "not multiples of 255" in capsys.readouterr().err and not (tmp_path / "c.prc").exists()


def test_file_size_is_bits_per_dim_plus_stated_overhead(tmp_path):
    """total file bits <= 1.01 x (sum of -log2 p over every sub-pixel) + header bytes x 8."""
    ckpt = export(tmp_path / "model.pt", "row_lstm")
    x = images(8, seed=1)
    data, s = encode(ckpt, x, batch_size=8)
    header, payloads, header_bytes = prc.unpack(data)
    payload_bits = 8 * sum(len(p) for p in payloads)
    assert 8 * len(data) == payload_bits + 8 * header_bytes
    assert s["ideal_bits"] > 5000  # a real amount of information, not a degenerate case
    assert 8 * len(data) <= 1.01 * s["ideal_bits"] + 8 * header_bytes
    # and no less than the model's code length (a trained model can go below it where constriction's
    # 2^-24 floor lifts a tinier probability; this random one has none that small)
    assert payload_bits >= s["ideal_bits"] - 64
    # the same sum, from the whole-image forward pass (float32, other kernels): close, not bitwise
    model, _ = load_model(ckpt)
    forward_bits = (model.bits_per_dim(x).double() * 3 * SIZE * SIZE).sum().item()
    assert abs(forward_bits - s["ideal_bits"]) < 1e-3 * s["ideal_bits"]


def test_cli_round_trip_with_model_pt_and_recorded_checkpoint(tmp_path, capsys):
    ckpt = export(tmp_path / "model.pt")
    x = images(4, seed=2)
    paths = []
    for k, img in enumerate(x.permute(0, 2, 3, 1).numpy()):
        paths.append(str(tmp_path / f"photo{k}.png"))
        Image.fromarray(img).save(paths[-1])
    out = tmp_path / "a.prc"
    assert main(["encode", "--checkpoint", ckpt, "--out", str(out), "--no-progress", *paths]) == 0
    assert "bits/dim" in capsys.readouterr().out
    assert main(["decode", str(out), "--out-dir", str(tmp_path / "dec"), "--no-progress"]) == 0  # path from header
    for k, p in enumerate(paths):
        decoded = np.asarray(Image.open(tmp_path / "dec" / f"photo{k}.png"))
        assert np.array_equal(decoded, np.asarray(Image.open(p)))


def test_other_weights_are_refused(tmp_path):
    a, b = export(tmp_path / "a.pt", seed=0), export(tmp_path / "b.pt", seed=1)
    data, _ = encode(a, images(2))
    with pytest.raises(prc.PrcError, match="weights sha256 .* refused"):
        decode_file(data, b, progress=False)


def _repack(data: bytes, edit) -> bytes:
    header, payloads, _ = prc.unpack(data)
    edit(header)
    return prc.pack(header, payloads)


def test_other_coder_version_is_refused(tmp_path):
    ckpt = export(tmp_path / "model.pt")
    data, _ = encode(ckpt, images(2))
    other = _repack(data, lambda h: h["coder"].update(version="0.4.2"))
    with pytest.raises(prc.PrcError, match="constriction 0.4.2 .* refused"):
        decode_file(other, ckpt, progress=False)


def test_image_names_from_the_file_cannot_leave_the_output_folder(tmp_path):
    ckpt = export(tmp_path / "model.pt")
    data, _ = encode(ckpt, images(2))
    for names in (["../evil", "ok"], ["a/b", "ok"], [".profile", "ok"], ["same", "same"]):
        bad = _repack(data, lambda h: h["images"].update(names=names))
        with pytest.raises(prc.PrcError, match="not plain, distinct file names"):
            decode_file(bad, ckpt, progress=False)


def test_different_probabilities_are_caught_by_the_pixel_checksum(tmp_path):
    """A decoder whose probabilities differ from the encoder's (here: float64 instead of float32, as
    another machine's kernels might round) decodes other pixels; the checksum refuses them. (The probe
    would refuse first: the probe checksum is made to match float64's here, to reach the last guard.)"""
    ckpt = export(tmp_path / "model.pt")
    data, _ = encode(ckpt, images(3))
    model64, _ = load_model(ckpt, "float64")
    other = _repack(data, lambda h: h["compute"].update(dtype="float64", probe_sha256=probe_sha256(model64)))
    with pytest.raises(prc.PrcError, match="chunk 0 decoded to other pixels .* nothing was written"):
        decode_file(other, ckpt, progress=False)


def _flip_last_bits(model: torch.nn.Module) -> None:
    """The last mantissa bit of the output layer's weights flipped: what other kernels' rounding looks like
    to the coder (the logits move by an ulp or so)."""
    w = [p for p in model.parameters() if p.dim() > 1][-1]
    with torch.no_grad():
        w.view(torch.int32).bitwise_xor_(1)


def test_a_machine_computing_other_probabilities_is_refused_by_the_probe_first(tmp_path, monkeypatch, capsys):
    """The .prc header carries a checksum of the model's probabilities on a fixed probe input; decode checks
    it before any chunk and refuses a mismatch in well under a second, exit 2, naming what differs."""
    import time

    from pipeline.compression import codec
    ckpt = export(tmp_path / "model.pt")
    data, _ = encode(ckpt, images(3))
    header, _, _ = prc.unpack(data)
    assert len(header["compute"]["probe_sha256"]) == 32 and header["compute"]["blas"]
    real_load = codec.load_model

    def other_kernels(checkpoint, dtype="float32"):  # same weights (same sha256), probabilities a bit off
        model, sha = real_load(checkpoint, dtype)
        _flip_last_bits(model)
        return model, sha
    monkeypatch.setattr(codec, "load_model", other_kernels)
    t0 = time.perf_counter()
    with pytest.raises(prc.PrcError, match=r"the model's probabilities differ from the encoder's \(probe checksum "
                                           r".*refused before decoding.*nothing recorded differs"):
        decode_file(data, ckpt, progress=False)
    assert time.perf_counter() - t0 < 1.0
    monkeypatch.setattr(codec, "load_model", real_load)

    # the recorded checksum perturbed, and the file saying it came from another torch and other kernels
    elsewhere = _repack(data, lambda h: h["compute"].update(probe_sha256="0" * 32, torch="2.12.0",
                                                            cpu_capability="AVX2"))
    path = tmp_path / "elsewhere.prc"
    path.write_bytes(elsewhere)
    t0 = time.perf_counter()
    rc = main(["decode", str(path), "--out-dir", str(tmp_path / "never"), "--checkpoint", ckpt, "--no-progress"])
    took = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert (f"differs here: torch 2.12.0 there, {torch.__version__} here; CPU kernels AVX2 there, "
            f"{torch.backends.cpu.get_cpu_capability()} here") in err
    assert took < 1.0 and not (tmp_path / "never").exists()


def test_a_coder_failure_mid_stream_is_the_same_clear_error(tmp_path, monkeypatch, capsys):
    from pipeline.compression import codec
    ckpt = export(tmp_path / "model.pt")
    path = tmp_path / "x.prc"
    path.write_bytes(encode(ckpt, images(2))[0])

    def failing(*args, **kwargs):  # what constriction raises when the stream and the probabilities disagree
        raise ValueError("Invalid compressed data.")
    monkeypatch.setattr(codec, "decode_batch", failing)
    assert main(["decode", str(path), "--out-dir", str(tmp_path / "never"), "--checkpoint", ckpt,
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1, err
    assert ("chunk 0 could not be decoded: the range coder failed mid-stream (ValueError: Invalid compressed "
            "data.): the probabilities differed from the encoder's") in err
    assert not (tmp_path / "never").exists()


def test_a_format_1_file_without_the_probe_still_decodes(tmp_path):
    ckpt = export(tmp_path / "model.pt")
    x = images(3)
    data, _ = encode(ckpt, x)
    header, payloads, _ = prc.unpack(data)
    for key in ("probe_sha256", "blas"):
        header["compute"].pop(key)
    old = prc.pack(header, payloads)
    old = old[:4] + bytes([1]) + old[5:]  # as version 1 wrote it
    y, _, _ = decode_file(old, ckpt, progress=False)
    assert torch.equal(x, y)
    with pytest.raises(prc.PrcError, match=r"the header lacks compute.blas, compute.probe_sha256"):
        decode_file(prc.pack(header, payloads), ckpt, progress=False)  # version 2 requires them


def test_a_format_2_file_is_checked_with_its_own_probe(tmp_path):
    """Format 2's probe (96 sub-pixels of two full-size images) differs from format 3's (a few network
    steps on a tiny extent): a format-2 file is checked with its own, so it still decodes, and still
    refuses a checksum that is not its format's."""
    ckpt = export(tmp_path / "model.pt")
    x = images(3)
    data, _ = encode(ckpt, x)
    model, _ = load_model(ckpt)

    def as_format_2(probe: str) -> bytes:
        old = _repack(data, lambda h: h["compute"].update(probe_sha256=probe))
        return old[:4] + bytes([2]) + old[5:]
    y, _, _ = decode_file(as_format_2(probe_sha256(model, 2)), ckpt, progress=False)
    assert torch.equal(x, y)
    with pytest.raises(prc.PrcError, match="the model's probabilities differ from the encoder's"):
        decode_file(as_format_2(probe_sha256(model, 3)), ckpt, progress=False)


def test_corrupted_and_truncated_files_fail_clearly(tmp_path, capsys):
    ckpt = export(tmp_path / "model.pt")
    data, _ = encode(ckpt, images(4))
    _, payloads, header_bytes = prc.unpack(data)
    cases = {
        "payload of chunk 1 .* is corrupted": data[:-3] + bytes([data[-3] ^ 0x01]) + data[-2:],
        "payload of chunk 0 .* is corrupted": data[:header_bytes + 5] + bytes([data[header_bytes + 5] ^ 0x80])
        + data[header_bytes + 6:],
        "header is corrupted": data[:20] + bytes([data[20] ^ 0x04]) + data[21:],
        "truncated: header \\+ payloads": data[:-1],
        "truncated: its header needs": data[:header_bytes - 1],
        "truncated: 3 bytes": data[:3],
        "longer than its header says": data + b"\0",
        "not a .prc file": b"\x89PNG" + data[4:],
    }
    for message, bad in cases.items():
        with pytest.raises(prc.PrcError, match=message):
            decode_file(bad, ckpt, progress=False)
    bad_file = tmp_path / "bad.prc"
    bad_file.write_bytes(data[:-7])
    out_dir = tmp_path / "never"
    assert main(["decode", str(bad_file), "--out-dir", str(out_dir), "--checkpoint", ckpt]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "truncated" in err and "Traceback" not in err
    assert not out_dir.exists()  # nothing written


def test_a_header_without_the_decoders_fields_is_refused(tmp_path):
    ckpt = export(tmp_path / "model.pt")
    data, _ = encode(ckpt, images(3))
    for edit, what in ((lambda h: h.pop("compute"), "compute.dtype"),
                       (lambda h: h["chunks"][0].pop("pixels_sha256"), "chunks\\[\\].pixels_sha256"),
                       (lambda h: h["images"].update(count=4), "add up to images.count")):
        with pytest.raises(prc.PrcError, match=f"the header lacks .*{what}"):
            decode_file(_repack(data, edit), ckpt, progress=False)


def test_version_and_magic_prefix(tmp_path):
    ckpt = export(tmp_path / "model.pt")
    data, _ = encode(ckpt, images(1))
    assert data[:4] == prc.MAGIC and data[4] == prc.FORMAT_VERSION
    (n,) = struct.unpack_from("<I", data, 5)
    body = data[9:9 + n]
    assert json.loads(zlib.decompress(body))["images"]["count"] == 1
    assert struct.unpack_from("<I", data, 9 + n)[0] == zlib.crc32(body)
    with pytest.raises(prc.PrcError, match="format version 9"):
        decode_file(data[:4] + bytes([9]) + data[5:], ckpt, progress=False)


def test_wrong_size_or_mode_refused_or_converted_and_said(tmp_path, capsys):
    ckpt = export(tmp_path / "model.pt")
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((SIZE + 1, SIZE, 3), np.uint8)).save(big)
    with pytest.raises(CompressError, match=f"big.png is {SIZE}x{SIZE + 1}, the model codes {SIZE}x{SIZE}"):
        read_images([str(big)], SIZE)
    gray = tmp_path / "gray.png"
    Image.fromarray(np.arange(SIZE * SIZE, dtype=np.uint8).reshape(SIZE, SIZE) * 3, "L").save(gray)
    with pytest.raises(CompressError, match="gray.png is L, not RGB: refused \\(--convert"):
        read_images([str(gray)], SIZE)
    out = tmp_path / "g.prc"
    assert main(["encode", "--checkpoint", ckpt, "--out", str(out), "--convert", "--no-progress", str(gray)]) == 0
    assert "gray.png converted from L to RGB" in capsys.readouterr().err
    assert main(["decode", str(out), "--out-dir", str(tmp_path / "d"), "--no-progress"]) == 0
    decoded = np.asarray(Image.open(tmp_path / "d" / "gray.png"))
    assert np.array_equal(decoded, np.asarray(Image.open(gray).convert("RGB")))
    assert main(["encode", "--checkpoint", ckpt, "--out", str(tmp_path / "x.prc"), str(big)]) == 2
    assert "refused (resizing would not be lossless)" in capsys.readouterr().err
    assert not (tmp_path / "x.prc").exists()


def test_compare_prints_the_table_from_one_real_round_trip(tmp_path, smoke_data, capsys):
    """`compare` on a shard split: PNG, WebP, JPEG XL, the .prc file, its payload and the model, one table."""
    ckpt = export(tmp_path / "model.pt", "row_lstm")
    assert main(["compare", "--checkpoint", ckpt, "--data", str(smoke_data), "--batch-size", "32",
                 "--out", str(tmp_path / "val.prc"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| codec")}
    assert set(rows) == {"PNG (Pillow, optimize=True)", "WebP lossless (Pillow, method 6)",
                         "JPEG XL lossless (libjxl, effort 9)",
                         ".prc file, this coder (64 images in one file, header included)",
                         "range-coded payload alone", "model: sum of -log2 p (incremental pass, float32)",
                         "model: bits/dim of the whole-image forward (as validation)"}
    assert "round trip exact: yes (64 images)" in out
    assert rows["JPEG XL lossless (libjxl, effort 9)"] == pytest.approx(
        split_codec_bits_per_dim(smoke_data, 8, "val")["jpegxl"], abs=5e-5)
    file_bpd = rows[".prc file, this coder (64 images in one file, header included)"]
    assert (tmp_path / "val.prc").stat().st_size * 8 / (64 * 3 * 8 * 8) == pytest.approx(file_bpd, abs=1e-4)
    assert abs(rows["model: sum of -log2 p (incremental pass, float32)"]
               - rows["model: bits/dim of the whole-image forward (as validation)"]) < 1e-3


def test_encode_and_decode_write_lines_to_a_log(tmp_path, capsys):
    """stderr is not a terminal under capsys: what a SLURM output file gets."""
    ckpt, x = export(tmp_path / "model.pt"), images(5)
    model, sha = load_model(ckpt)
    data, _ = encode_images(model, sha, x, None, ckpt, batch_size=3, progress=True)
    y, _, _ = decode_file(data, ckpt, progress=True)
    assert torch.equal(x, y)
    err = capsys.readouterr().err
    assert "\r" not in err
    for step in ("encode", "decode"):
        lines = [line for line in err.splitlines() if line.startswith(f"{step}: ")]
        assert lines[0] == f"{step}: 0/5 images (0 %), ? images/s, ETA ?" and len(lines) == 2, err
        assert lines[1].startswith(f"{step}: 5/5 images (100 %), ") and lines[1].endswith(" images/s, ETA 00:00"), err

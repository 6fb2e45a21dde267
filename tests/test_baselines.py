"""Codec baselines (pipeline/tracking/baselines.py) for 1- and 3-channel images and binary ones."""
from __future__ import annotations

import io

import imagecodecs
import numpy as np
import torch
from PIL import Image

from pipeline.tracking.baselines import CODECS, codec_bits_per_dim, jpegxl_bytes, png_bytes, webp_bytes


def _gray(n=3, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8))


def test_every_codec_is_measured_per_subpixel_of_1_channel_images():
    x = _gray()
    r = codec_bits_per_dim([x[:2], x[2:]])
    assert set(r) == set(CODECS) | {"images"} and r["images"] == 3
    for name, nbytes in (("png", png_bytes), ("webp", webp_bytes), ("jpegxl", jpegxl_bytes)):
        direct = sum(8 * nbytes(img[0].numpy()) for img in x) / (3 * 28 * 28)
        assert r[name] == direct
    # noise costs about 8 bits a sub-pixel in any lossless file: the divisor is 1 x 28 x 28, not 3 x 28 x 28
    assert 7.5 < r["png"] < 9.5 and 7.5 < r["jpegxl"] < 9.5


def test_png_is_mode_l_and_jpeg_xl_is_lossless_2d():
    img = _gray(1)[0, 0].numpy()
    buf = io.BytesIO()
    Image.fromarray(img, "L").save(buf, format="PNG", optimize=True)
    assert png_bytes(img) == buf.tell()
    encoded = imagecodecs.jpegxl_encode(img, lossless=True, effort=9)
    assert len(encoded) == jpegxl_bytes(img) and np.array_equal(imagecodecs.jpegxl_decode(encoded), img)
    rgb = np.repeat(img[..., None], 3, -1)
    assert webp_bytes(img) == webp_bytes(rgb)          # WebP has no grayscale: the channel replicated


def test_binary_images_get_a_1_bit_png():
    bits = (_gray(4, 1) > 127).to(torch.uint8)
    r = codec_bits_per_dim([bits], levels=2)
    one_bit = 0
    for img in bits:
        buf = io.BytesIO()
        Image.fromarray(img[0].numpy().astype(bool)).save(buf, format="PNG", optimize=True)
        assert Image.open(io.BytesIO(buf.getvalue())).mode == "1"
        one_bit += 8 * buf.tell()
    assert r["png"] == one_bit / (4 * 28 * 28)
    assert r["png"] < codec_bits_per_dim([bits * 255])["png"]    # the 8-bit PNG of the same pixels is larger


def test_rgb_images_keep_their_baselines():
    x = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8))
    r = codec_bits_per_dim([x])
    arr = x.permute(0, 2, 3, 1).numpy()
    assert r["png"] == sum(8 * png_bytes(a) for a in arr) / (2 * 3 * 8 * 8)
    assert r["jpegxl"] == sum(8 * jpegxl_bytes(a) for a in arr) / (2 * 3 * 8 * 8)


def test_ranks_shares_of_the_encoding_add_up_to_the_whole():
    """codec_baselines splits the images over ranks (every world-th one) and sums integer bit counts."""
    from pipeline.tracking.baselines import _bit_sums  # the per-rank sums codec_baselines all_reduces
    x, names = _gray(5, 3), ["png", "jpegxl"]
    whole = _bit_sums([x[:2], x[2:]], names, 256)
    shares = [_bit_sums([x[:2], x[2:]], names, 256, rank, 2) for rank in (0, 1)]
    assert [s[2] for s in shares] == [3, 2]
    assert {c: shares[0][0][c] + shares[1][0][c] for c in names} == whole[0]
    assert shares[0][1] + shares[1][1] == whole[1] == 5 * 28 * 28


def test_end_of_run_baselines_of_a_split_equal_measuring_it_directly_under_their_prefix(smoke_data):
    """codec_baselines (training's tracking.codec_baselines, for val_split and each data.test_splits entry):
    the whole split's PNG / WebP / JPEG XL bits/dim, the keys after the prefix the trainer gives."""
    from pipeline.tracking.baselines import codec_baselines, split_codec_bits_per_dim
    for split, prefix in (("val", ""), ("train", "train_")):
        r = codec_baselines(smoke_data, 8, split, True, 1, prefix=prefix)
        direct = split_codec_bits_per_dim(smoke_data, 8, split)
        assert r == {f"{prefix}{c}_bits_per_dim": direct[c] for c in direct if c != "images"}

"""Resize exactness and the odd-input policy."""

import io

import numpy as np
import pytest
from helpers import encode, noise_image
from PIL import Image

from preprocessing.imaging import SkipImage, decode, render


def _png_pixels(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    assert img.mode == "RGB"
    return np.asarray(img)


@pytest.mark.parametrize("w,h", [(400, 350), (37, 91), (64, 64), (32, 20), (1000, 7)])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_box_equals_pillow_reference(w, h, fmt):
    data = encode(noise_image(w, h, w + h), fmt)
    pngs, orig = render(data, [32, 64], "box")
    assert orig == (w, h)
    for size in (32, 64):
        ref = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BOX)
        assert np.array_equal(_png_pixels(pngs[size]), np.asarray(ref))


@pytest.mark.parametrize("w,h", [(400, 350), (35, 90), (50, 50)])
def test_center_crop_equals_crop_then_box(w, h):
    data = encode(noise_image(w, h, 3), "JPEG")
    pngs, _ = render(data, [32], "center-crop")
    img = Image.open(io.BytesIO(data)).convert("RGB")
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    ref = img.crop((left, top, left + side, top + side)).resize((32, 32), Image.BOX)
    assert np.array_equal(_png_pixels(pngs[32]), np.asarray(ref))


def test_png_encoding_is_deterministic_and_clean():
    img = noise_image(100, 80, 1)
    data = encode(img, "JPEG", icc_profile=b"\0" * 200)
    a, _ = render(data, [32])
    b, _ = render(data, [32])
    assert a == b
    assert b"iCCP" not in a[32]  # no ancillary chunks copied from the source


def _png_chunks(data: bytes) -> list:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    names, i = [], 8
    while i < len(data):
        n = int.from_bytes(data[i:i + 4], "big")
        names.append(data[i + 4:i + 8])
        i += 12 + n
    return names


def test_png_critical_chunks_only_and_as_small_as_pillows():
    # A smooth photo-like image: a weak encoder (no filter) would be far bigger than Pillow's.
    yy, xx = np.mgrid[0:300, 0:400]
    arr = np.stack([xx * 0.6, yy * 0.8, 128 + 60 * np.sin((xx + yy) / 23.0)], -1)
    arr = np.clip(arr + np.random.default_rng(0).normal(0, 4, arr.shape), 0, 255).astype(np.uint8)
    data = encode(Image.fromarray(arr), "JPEG")
    pngs, _ = render(data, [32, 64])
    for size in (32, 64):
        assert _png_chunks(pngs[size]) == [b"IHDR", b"IDAT", b"IEND"]
        ref = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BOX)
        buf = io.BytesIO()
        ref.save(buf, format="PNG")  # Pillow's default, adaptive filtering
        assert len(pngs[size]) <= 1.03 * len(buf.getvalue()), (size, len(pngs[size]), len(buf.getvalue()))


@pytest.mark.parametrize("mode", ["CMYK", "L", "RGBA", "P", "LA", "1"])
def test_modes_convert_like_reference(mode):
    src = noise_image(45, 30, 2).convert(mode)
    data = encode(src, "JPEG" if mode in ("CMYK", "L") else "PNG")
    pngs, _ = render(data, [16])
    ref = Image.open(io.BytesIO(data)).convert("RGB").resize((16, 16), Image.BOX)
    assert np.array_equal(_png_pixels(pngs[16]), np.asarray(ref))


def test_array_input_taken_as_is_when_size_matches():
    arr = np.asarray(noise_image(32, 32, 4))
    pngs, orig = render(arr, [32, 16])
    assert orig == (32, 32)
    assert np.array_equal(_png_pixels(pngs[32]), arr)
    ref = Image.fromarray(arr).resize((16, 16), Image.BOX)
    assert np.array_equal(_png_pixels(pngs[16]), np.asarray(ref))


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"), (b"hello, not an image", "not an image"),
    (encode(noise_image(80, 60, 5), "JPEG")[:300], "cannot decode"),
])
def test_unusable_inputs_raise_skip(data, reason):
    with pytest.raises(SkipImage, match=reason):
        decode(data)


def test_exif_orientation_ignored_by_default():
    img = noise_image(40, 20, 6)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    data = encode(img, "JPEG", exif=exif.tobytes())
    assert decode(data)[0].size == (40, 20)
    assert decode(data, exif_transpose=True)[0].size == (20, 40)


@pytest.mark.parametrize("name,size", [("a.png", 0), ("n01440764_10026.json", 12345),
                                       ("x" * 99 + ".png", 7), ("é_ü.cls", 3), ("k.png", 8 ** 10)])
def test_fast_tar_header_equals_tarfile(name, size):
    from preprocessing.tario import _tarfile_header, header
    assert header(name, size) == _tarfile_header(name, size)

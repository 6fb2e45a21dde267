"""Fixtures for the preprocessing tests: a synthetic ImageFolder and one full of oddities."""

import numpy as np
import pytest
from helpers import encode, noise_image, write
from PIL import Image


@pytest.fixture(scope="session")
def synthetic_src(tmp_path_factory):
    from preprocessing import make_synthetic
    root = tmp_path_factory.mktemp("synthetic") / "src"
    make_synthetic(root, 90, 3, seed=5)
    return root


@pytest.fixture(scope="session")
def odd_src(tmp_path_factory):
    """An ImageFolder with every oddity the build must survive."""
    root = tmp_path_factory.mktemp("odd") / "src"
    a, b = root / "a", root / "b"
    for i in range(6):
        write(a / f"ok{i}.JPEG", encode(noise_image(50 + i, 40, i), "JPEG", quality=90))
    write(a / "cmyk.JPEG", encode(noise_image(60, 45, 10, "CMYK"), "JPEG"))
    write(a / "png_as.JPEG", encode(noise_image(33, 70, 11), "PNG"))
    write(b / "gray.JPEG", encode(noise_image(64, 48, 12, "L"), "JPEG"))
    rgba = noise_image(40, 40, 13).convert("RGBA")
    rgba.putalpha(Image.new("L", (40, 40), 30))
    write(b / "rgba.png", encode(rgba, "PNG"))
    write(b / "gray16.png", encode(Image.fromarray((np.arange(30 * 30).reshape(30, 30) * 70).astype(np.uint16)), "PNG"))
    write(b / "tiny.JPEG", encode(noise_image(1, 1, 14), "JPEG"))
    write(b / "empty.JPEG", b"")
    full = encode(noise_image(80, 60, 15), "JPEG")
    write(b / "truncated.JPEG", full[: len(full) // 2])
    write(b / "notes.txt", b"this is not an image\n")
    return root

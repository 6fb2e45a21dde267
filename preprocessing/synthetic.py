"""A small generated ImageFolder (no dataset can be downloaded): `DIR/<class>/<stem>.png|.jpg`.

Images are 20..90 px on each side (so every build resizes) and have learnable structure: a
smooth two-colour gradient background and one shape, where the colours and the shape type
(circle, square, diamond) depend on the class, plus mild noise. Even indices are PNG, odd JPEG.
Fully determined by (num_images, classes, seed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import PreprocessError


def class_name(k: int) -> str:
    return f"class_{k:03d}"


def make_synthetic(out, num_images: int, classes: int, seed: int = 0) -> dict:
    """Write the tree and return {"out", "num_images", "classes": [names]}."""
    if num_images < 1 or classes < 1:
        raise PreprocessError(f"need --num-images >= 1 and --classes >= 1, got {num_images}, {classes}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    # Per-class palette: background start/end colours and a shape colour, well separated.
    palette = rng.uniform(0, 255, size=(classes, 3, 3))
    names = [class_name(k) for k in range(classes)]
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        k = i % classes
        w, h = (int(v) for v in rng.integers(20, 91, size=2))
        img = _draw(rng, w, h, palette[k], k % 3)
        stem = f"{names[k]}_{i:06d}"
        if i % 2 == 0:
            Image.fromarray(img, "RGB").save(out / names[k] / f"{stem}.png", compress_level=6)
        else:
            Image.fromarray(img, "RGB").save(out / names[k] / f"{stem}.jpg", quality=90)
    return {"out": str(out), "num_images": num_images, "classes": names}


def _draw(rng, w: int, h: int, colours: np.ndarray, shape: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    xx, yy = xx / max(w - 1, 1), yy / max(h - 1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    img = colours[0] * (1 - t)[..., None] + colours[1] * t[..., None]
    cx, cy = rng.uniform(0.3, 0.7, size=2)
    r = rng.uniform(0.15, 0.3)
    dx, dy = np.abs(xx - cx), np.abs(yy - cy)
    if shape == 0:
        mask = dx ** 2 + dy ** 2 < r ** 2          # circle
    elif shape == 1:
        mask = np.maximum(dx, dy) < r              # square
    else:
        mask = dx + dy < r * 1.3                   # diamond
    shade = 0.85 + 0.3 * (yy - cy)                 # a little shading so the shape is not flat
    img[mask] = (colours[2][None, :] * shade[mask][:, None])
    img += rng.normal(0, 4, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)

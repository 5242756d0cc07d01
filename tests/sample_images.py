"""Synthetic test images shared by the model tests (no files, deterministic)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def shapes_image(w: int = 320, h: int = 200) -> Image.Image:
    """Flat shapes: resizing it changes little, so a deterministic model sees nearly the same input."""
    im = Image.new("RGB", (w, h), (40, 90, 160))
    draw = ImageDraw.Draw(im)
    draw.rectangle([w * 0.1, h * 0.2, w * 0.45, h * 0.8], fill=(220, 40, 40))
    draw.ellipse([w * 0.55, h * 0.1, w * 0.9, h * 0.6], fill=(30, 200, 60))
    return im


def odd_images() -> list[Image.Image]:
    """The usual 640x480 plus awkward sizes and modes: tall and narrow, grayscale, alpha."""
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)),  # the usual 640x480
        Image.new("RGB", (37, 211), (20, 200, 90)),  # tall and narrow, odd sizes
        Image.fromarray(rng.integers(0, 256, (64, 300), dtype=np.uint8), mode="L"),  # grayscale
        Image.new("RGBA", (120, 90), (255, 0, 0, 128)),  # alpha channel
    ]

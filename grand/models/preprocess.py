"""Image preparation shared by adapters, for inputs the models' own processors do not survive."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Longer side / shorter side beyond which an image is padded before prediction. Keep-aspect resizes
# (Depth Anything, GroundingDINO) turn a 256x4 strip into a 0-pixel-high tensor or into fewer
# feature tokens than the model has queries; at 4:1 every default processor size is safe.
MAX_ASPECT = 4.0


def pad_to_aspect(image: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """Pad the short side at the bottom / right (edge pixels repeated) so that the aspect ratio is at
    most `max_aspect`. Pixel coordinates of the original content do not move, so predictions on the
    padded image map back by cropping (maps) or clipping (boxes)."""
    w, h = image.size
    target_w, target_h = max(w, int(np.ceil(h / max_aspect))), max(h, int(np.ceil(w / max_aspect)))
    if (target_w, target_h) == (w, h):
        return image
    arr = np.asarray(image.convert("RGB"))
    arr = np.pad(arr, ((0, target_h - h), (0, target_w - w), (0, 0)), mode="edge")
    return Image.fromarray(arr)

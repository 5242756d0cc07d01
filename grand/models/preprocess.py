"""Image preparation shared by adapters, for inputs the models' own processors do not survive."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Longer side / shorter side beyond which an image is padded before prediction. Keep-aspect resizes
# (Depth Anything, GroundingDINO) turn a 256x4 strip into a 0-pixel-high tensor or into fewer
# feature tokens than the model has queries; at 4:1 every default processor size is safe.
MAX_ASPECT = 4.0


# The most pixels a padded image may have when the caller states no budget: PIL's hard limit, which
# is also the largest input.max_image_pixels (grand.io.images refuses inputs that would pad beyond
# the configured one, with the reason in the error row, before any model sees them).
MAX_PADDED_PIXELS = 178_956_970


def padded_size(width: int, height: int, max_aspect: float = MAX_ASPECT) -> tuple[int, int]:
    """The (width, height) `pad_to_aspect` pads a width x height image to."""
    return max(width, int(np.ceil(height / max_aspect))), max(height, int(np.ceil(width / max_aspect)))


def pad_to_aspect(image: Image.Image, max_aspect: float = MAX_ASPECT, max_pixels: int = MAX_PADDED_PIXELS) -> Image.Image:
    """Pad the short side at the bottom / right (edge pixels repeated) so that the aspect ratio is at
    most `max_aspect`. Pixel coordinates of the original content do not move, so predictions on the
    padded image map back by cropping (maps) or clipping (boxes). Raises ValueError rather than pad
    beyond `max_pixels` (a 40000x50 strip would become 400 megapixels)."""
    w, h = image.size
    target_w, target_h = padded_size(w, h, max_aspect)
    if (target_w, target_h) == (w, h):
        return image
    if target_w * target_h > max_pixels:
        raise ValueError(f"padding {w}×{h} to aspect {max_aspect:g}:1 would make {target_w}×{target_h} pixels, "
                         f"over {max_pixels}")
    arr = np.asarray(image.convert("RGB"))
    arr = np.pad(arr, ((0, target_h - h), (0, target_w - w), (0, 0)), mode="edge")
    return Image.fromarray(arr)

"""Export Set-of-Mark (SoM) images: a numeric mark on every region, plus the "list items one by one"
text of SoM-LLaVA (every mark in order with its label and attributes).

Mark placement (`place_marks`): each mark is a disc of radius r. It goes to the distance-transform
maximum of its region's mask (the point farthest from the region's edge, and from the image's),
among the points where the whole disc lies inside the mask and touches no mark placed before. A
region too small (or too crowded) for that gets its mark beside it: the free point nearest to the
region whose disc does not cover the region. Small regions are placed first, since they have the
fewest choices; marks are numbered in the order the regions are given. Only if the image has no
free point left does a mark overlap another (reported as `overlaps`).

Output folder `dest`:
    images/<image id>.png     the marked image (optional mask fills and box outlines)
    som.json (or the name given)   the records, one per image, LLaVA conversation style: a JSON list
        (what LLaVA's LazySupervisedDataset json.loads), or JSON Lines when the name ends in .jsonl:
        {"id", "image": "images/...png", "file_name", "width", "height",
         "marks": [{"mark", "object_id", "label", "attributes", "x", "y", "radius", "inside", "overlaps"}],
         "text": "1. dog: brown dog\\n2. ball: red ball",
         "conversations": [{"from": "human", "value": "<image>\\n" + LIST_PROMPT}, {"from": "gpt", "value": text}]}
"""

from __future__ import annotations

import colorsys
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import distance_transform_edt

from grand.core.rle import decode_mask, mask_area
from grand.export import shard_names
from grand.export.images import MIN_SIDE
from grand.export.rows import Committed, ImageReader, SampleWriter, has_mask, image_rows, ok, require_levels
from grand.io.images import open_rgb
from grand.io.output import OutputDir

LIST_PROMPT = ("I have labeled a bright numeric ID at the center for each visual object in the image. "
               "Please enumerate their names.")
_FILL_ALPHA = 0.4
_COLUMNS = {
    1: ["image_id", "status", "width", "height", "objects", "floating_objects"],
    2: ["image_id", "status", "objects", "floating_objects"],
}


@dataclass
class MarkPlacement:
    x: int  # centre column
    y: int  # centre row
    inside: bool  # the whole disc lies inside the region's mask
    overlaps: bool = False  # no free point was left: the disc touches another mark


def _disc(shape: tuple[int, int], cy: int, cx: int, radius: float) -> tuple[slice, slice, np.ndarray]:
    """(row slice, column slice, bool disc) of the pixels within `radius` of (cy, cx), clipped to shape."""
    h, w = shape
    r = int(np.ceil(radius))
    y0, y1, x0, x1 = max(0, cy - r), min(h, cy + r + 1), max(0, cx - r), min(w, cx + r + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    return slice(y0, y1), slice(x0, x1), (yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius


def place_marks(masks: Sequence[np.ndarray], radius: int, gap: int = 2,
                areas: Sequence[int] | None = None) -> list[MarkPlacement | None]:
    """A mark position per (H, W) bool mask (None for an empty mask); see the module docstring.
    Two marks' centres end up at least 2 * radius + gap apart, so their discs never overlap.
    `masks` is indexed one mask at a time (a lazy sequence keeps one decoded mask in memory when
    `areas`, the masks' pixel counts, is given)."""
    if not len(masks):
        return []
    areas = [int(a) for a in areas] if areas is not None else [int(m.sum()) for m in masks]
    shape = masks[0].shape
    h, w = shape
    # A centre inside `blocked` would put its disc within `gap` of a placed disc.
    blocked = np.zeros(shape, dtype=bool)
    margin = np.zeros(shape, dtype=bool)  # centres whose disc stays inside the image
    margin[radius:h - radius, radius:w - radius] = True
    placements: list[MarkPlacement | None] = [None] * len(masks)
    for i in sorted(range(len(masks)), key=lambda k: (areas[k], k)):
        mask = masks[i]
        if areas[i] == 0:
            continue
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        # Zero padding: outside the crop (and outside the image) counts as outside the region.
        dt = distance_transform_edt(np.pad(mask[y0:y1, x0:x1], 1))[1:-1, 1:-1]
        fits = (dt > radius) & ~blocked[y0:y1, x0:x1]
        if fits.any():
            # The maximum; among equal maxima (a band's ridge) the one nearest the region's centre.
            best = fits & (dt == dt[fits].max())
            yy, xx = np.nonzero(best)
            k = np.argmin(np.hypot(yy - (ys.mean() - y0), xx - (xs.mean() - x0)))
            placements[i] = MarkPlacement(int(x0 + xx[k]), int(y0 + yy[k]), True)
        else:
            placements[i] = _beside(mask, (y0, y1, x0, x1), dt, radius, blocked, margin)
        p = placements[i]
        rows, cols, disc = _disc(shape, p.y, p.x, 2 * radius + gap)
        blocked[rows, cols] |= disc
    return placements


def _beside(mask: np.ndarray, box: tuple[int, int, int, int], dt: np.ndarray, radius: int, blocked: np.ndarray,
            margin: np.ndarray) -> MarkPlacement:
    """The free centre nearest to the region whose disc leaves the region uncovered: first in a window
    around the region, then anywhere; with no free centre at all, the region's own best point."""
    h, w = mask.shape
    y0, y1, x0, x1 = box
    cy, cx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2
    reach = 4 * radius + 2
    for wy0, wy1, wx0, wx1 in ((max(0, y0 - reach), min(h, y1 + reach), max(0, x0 - reach), min(w, x1 + reach)),
                               (0, h, 0, w)):
        near = distance_transform_edt(~mask[wy0:wy1, wx0:wx1])  # distance to the nearest region pixel
        valid = (near > radius) & ~blocked[wy0:wy1, wx0:wx1] & margin[wy0:wy1, wx0:wx1]
        if valid.any():
            yy, xx = np.mgrid[wy0:wy1, wx0:wx1]
            # Nearest to the region; among equals, nearest to the region's centre.
            key = np.where(valid, near + 1e-3 * np.hypot(yy - cy, xx - cx), np.inf)
            ky, kx = np.unravel_index(np.argmin(key), key.shape)
            return MarkPlacement(int(wx0 + kx), int(wy0 + ky), False)
    ky, kx = np.unravel_index(np.argmax(dt), dt.shape)
    return MarkPlacement(int(x0 + kx), int(y0 + ky), bool(dt[ky, kx] > radius), overlaps=True)


# -- drawing -----------------------------------------------------------------------------------------
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _color(i: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def mark_radius(width: int, height: int, n_marks: int) -> tuple[int, int]:
    """(radius, font size): the font scales with the image; the disc holds the widest number."""
    size = int(np.clip(round(min(width, height) / 24), 10, 48))
    font = _font(size)
    left, top, right, bottom = font.getbbox(str(max(1, n_marks)))
    return int(np.ceil(max(right - left, bottom - top) / 2)) + 3, size


def render_marks(image: Image.Image, masks: Sequence[np.ndarray], boxes: list[list[float]], placements,
                 radius: int, font_size: int, fill_masks: bool = False, draw_boxes: bool = False) -> Image.Image:
    """The image with optional mask fills and box outlines, then a numbered disc per placement."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    if fill_masks:
        for i, m in enumerate(masks):
            pixels[m] = pixels[m] * (1 - _FILL_ALPHA) + np.asarray(_color(i), np.float32) * _FILL_ALPHA
    out = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    if draw_boxes:
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=_color(i), width=2)
    font = _font(font_size)
    for n, p in enumerate(placements, start=1):
        if p is None:
            continue
        draw.ellipse([p.x - radius, p.y - radius, p.x + radius, p.y + radius], fill=(0, 0, 0),
                     outline=(255, 255, 255), width=max(1, radius // 6))
        draw.text((p.x, p.y), str(n), fill=(255, 255, 255), font=font, anchor="mm")
    return out


def list_text(marks: list[dict]) -> str:
    """SoM-LLaVA's "list items one by one" answer: `N. label: attribute; attribute` per mark."""
    lines = []
    for m in marks:
        attrs = "; ".join(m["attributes"])
        lines.append(f"{m['mark']}. {m['label']}" + (f": {attrs}" if attrs else ""))
    return "\n".join(lines)


def _image_name(image_id: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id.rsplit(".", 1)[0] if "." in image_id else image_id)
    return f"images/{stem.strip('_') or 'image'}.png"


def export_som(output_uri: str, dest: str, fill_masks: bool = False, draw_boxes: bool = False,
               include_floating: bool = False, max_marks: int | None = None, radius: int | None = None,
               records_name: str = "som.json", min_side: int = MIN_SIDE) -> dict:
    """Write Set-of-Mark images and their records of `output_uri` into the folder `dest`.
    Regions: objects (and floating objects with `include_floating`) of level 2 where its row is ok,
    else level 1; at most `max_marks` per image (highest scores), numbered by object id.
    `radius`: mark radius in pixels (default: from the image size and the widest number).
    `records_name`: .json gives a JSON list, .jsonl JSON Lines. Images whose shorter side is under
    `min_side` pixels are skipped (counted)."""
    if max_marks is not None and max_marks < 1:
        raise ValueError(f"max_marks must be at least 1, got {max_marks}")
    if radius is not None and radius < 1:
        raise ValueError(f"the mark radius must be at least 1 pixel, got {radius}")
    out = OutputDir(output_uri)
    require_levels(out, [1], "grand export som")
    reader = ImageReader(out)
    fs, root = fsspec.core.url_to_fs(dest)
    root = root.rstrip("/")
    fs.makedirs(f"{root}/images", exist_ok=True)
    n_images = n_marks = beside = overlapping = unreadable = small = 0
    used_names: set[str] = set()
    committed = Committed(out)
    with SampleWriter(f"{dest.rstrip('/')}/{records_name}") as writer:
        for shard in shard_names(out, (1,)):
            images = reader.shard(shard)
            for rows in image_rows(out, shard, (1, 2), _COLUMNS, committed=committed):
                l1 = rows[1]
                if not ok(l1):
                    continue
                src = rows[2] if ok(rows.get(2)) else l1
                objects = list(src.get("objects") or []) + (list(src.get("floating_objects") or [])
                                                            if include_floating else [])
                if max_marks is not None and len(objects) > max_marks:
                    objects = sorted(objects, key=lambda o: -(o.get("score") or 0.0))[:max_marks]
                objects.sort(key=lambda o: o["id"])
                if not objects:
                    continue
                if min(int(l1["width"]), int(l1["height"])) < min_side:
                    small += 1
                    continue
                data = images.get(int(l1["index"]), l1["image_id"])
                if data is None:
                    unreadable += 1
                    continue
                image = open_rgb(data)
                w, h = image.size
                masks = _RegionMasks(objects, h, w)
                r, font_size = mark_radius(w, h, len(objects))
                if radius is not None:
                    r, font_size = int(radius), max(6, round(font_size * radius / r))
                placements = place_marks(masks, r, areas=masks.areas())
                marked = render_marks(image, masks, [o["bbox"] for o in objects], placements, r, font_size,
                                      fill_masks, draw_boxes)
                name = _image_name(l1["image_id"])
                k = 1
                while name in used_names:  # two ids that sanitise alike
                    k += 1
                    name = _image_name(f"{l1['image_id']}_{k}")
                used_names.add(name)
                buf = io.BytesIO()
                marked.save(buf, format="PNG")
                with fs.open(f"{root}/{name}", "wb") as f:
                    f.write(buf.getvalue())
                marks = []
                for n, (o, p) in enumerate(zip(objects, placements), start=1):
                    if p is None:
                        continue
                    marks.append({"mark": n, "object_id": o["id"], "label": o["label"],
                                  "attributes": list(o.get("attributes") or []), "x": p.x, "y": p.y,
                                  "radius": r, "inside": p.inside, "overlaps": p.overlaps})
                    beside += not p.inside
                    overlapping += p.overlaps
                text = list_text(marks)
                writer.write({"id": l1["image_id"], "image": name, "file_name": l1["image_id"], "width": w,
                              "height": h, "marks": marks, "text": text,
                              "conversations": [{"from": "human", "value": "<image>\n" + LIST_PROMPT},
                                                {"from": "gpt", "value": text}]})
                n_images += 1
                n_marks += len(marks)
    return {"dest": dest, "images": n_images, "marks": n_marks, "marks_beside_region": beside,
            "marks_overlapping": overlapping, "unreadable_images": unreadable, "small_images": small}


class _RegionMasks(Sequence):
    """The regions' masks, decoded one at a time when indexed: an image with a hundred
    full-resolution masks never holds them all at once."""

    def __init__(self, objects: list[dict], h: int, w: int):
        self.objects, self.h, self.w = objects, h, w

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, i):
        return _region_mask(self.objects[i], self.h, self.w)

    def areas(self) -> list[int]:
        return [mask_area(o["segmentation"]) if _has_mask(o, self.h, self.w) else int(_region_mask(o, self.h, self.w).sum())
                for o in self.objects]


def _has_mask(obj: dict, h: int, w: int) -> bool:
    return has_mask(obj.get("segmentation"), (h, w))  # an all-zero mask is none: the box stands in


def _region_mask(obj: dict, h: int, w: int) -> np.ndarray:
    """The object's mask, or its box as a mask when it has none (or one of another size)."""
    if _has_mask(obj, h, w):
        return decode_mask(obj["segmentation"])
    x1, y1, x2, y2 = obj["bbox"]
    m = np.zeros((h, w), dtype=bool)
    m[max(0, int(np.floor(y1))):max(0, int(np.ceil(y2))), max(0, int(np.floor(x1))):max(0, int(np.ceil(x2)))] = True
    return m

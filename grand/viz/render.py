"""Render one image of an output folder with its level-1 (and level-2) annotations.

The picture is the EXIF-oriented image (exactly as the pipeline saw it, so boxes and masks line
up) with a semi-transparent fill per mask, box outlines and an "id: label" tag per object, next
to a text panel: objects from near to far (`depth`, larger = nearer) and, with level 2, the short
captions with each grounded phrase highlighted in the colour of the object it names, the landmark
and the relationships. Only PIL is used: no plotting library is needed to look at a dataset.
"""

from __future__ import annotations

import colorsys
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from grand.config import InputSpec
from grand.core.rle import decode_mask
from grand.io.images import open_rgb, prepare_image
from grand.io.manifest import load_plan
from grand.io.output import OutputDir
from grand.io.sources import ShardSpec, read_shard

Color = tuple[int, int, int]

_FILL_ALPHA = 0.45  # mask fill opacity: strong enough to see, weak enough to see through
_PANEL_BG: Color = (255, 255, 255)
_TEXT: Color = (20, 20, 20)
_MUTED: Color = (110, 110, 110)
_UNLINKED: Color = (215, 215, 215)  # a phrase grounded to no drawn object
_KNOWN_IDS_SHOWN = 5


# -- finding rows ------------------------------------------------------------------------------
def find_rows(output_uri: str, image_id: str) -> tuple[dict, dict | None, ShardSpec]:
    """The level-1 row, the level-2 row (None when level 2 has no row for it) and the shard spec
    of `image_id`. Raises KeyError (naming the id and a few known ones) when no shard has it."""
    out = OutputDir(output_uri)
    specs = _plan_specs(out)
    committed = out.committed_shards(1)
    # Folder shards list their members, and a folder image's id is its member path: try the shard
    # that lists the id first, so the usual lookup reads one file instead of every shard.
    ordered = sorted(specs, key=lambda s: image_id not in s.members)
    known: list[str] = []
    for spec in ordered:
        if spec.name not in committed:
            continue
        row, ids = _read_row(out, out.shard_path(1, spec.name), image_id)
        if row is None:
            known.extend(ids)
            continue
        level2 = None
        path2 = out.shard_path(2, spec.name)
        if out.exists(path2):
            level2, _ = _read_row(out, path2, image_id)
        return row, level2, spec
    shown = ", ".join(map(repr, known[:_KNOWN_IDS_SHOWN]))
    hint = f"; some ids it has: {shown}" if known else "; it has no committed level-1 shards"
    raise KeyError(f"image_id {image_id!r} is not in the output {output_uri!r}{hint}")


def _plan_specs(out: OutputDir) -> list[ShardSpec]:
    plan = load_plan(out)
    if plan is None:
        raise FileNotFoundError(f"{out.uri!r} has no shard plan ({out.plan_path}); is it a grand output folder?")
    return plan[1]


def _read_row(out: OutputDir, path: str, image_id: str) -> tuple[dict | None, list[str]]:
    """(the row with this id or None, the shard's ids); only the id column is read unless it matches."""
    with out.fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        ids = pf.read(columns=["image_id"]).column("image_id")
        hit = pc.equal(ids, image_id)
        if not pc.any(hit).as_py():
            return None, [str(v) for v in ids.to_pylist()[:_KNOWN_IDS_SHOWN]]
        rows = pf.read().filter(hit).to_pylist()
    return rows[0], []


# -- loading the image -------------------------------------------------------------------------
def load_image(output_uri: str, shard_spec: ShardSpec | str, index_or_id: int | str) -> Image.Image:
    """Re-read one image's original bytes through the plan's shard and orient it as the pipeline
    did (grand.io.images), so the row's pixel coordinates apply. `shard_spec` may be a shard name."""
    spec = shard_spec if isinstance(shard_spec, ShardSpec) else _spec_by_name(output_uri, shard_spec)
    cfg = InputSpec()
    if spec.kind == "folder":
        # A folder shard can be narrowed to the one member: no need to fetch its neighbours.
        member = spec.members[index_or_id] if isinstance(index_or_id, int) else index_or_id
        if member not in spec.members:
            raise KeyError(f"image {member!r} is not in shard {spec.name!r}")
        spec = ShardSpec(spec.name, "folder", spec.uri, 1, (member,))
        index_or_id = 0
    for src in read_shard(spec, cfg):
        if src.index == index_or_id or src.image_id == index_or_id:
            if src.error:
                raise ValueError(f"cannot read image {src.image_id!r} of shard {spec.name!r}: {src.error}")
            data, _, _ = prepare_image(src.data, cfg.max_image_pixels)
            return open_rgb(data)
    raise KeyError(f"image {index_or_id!r} is not in shard {spec.name!r}")


def _spec_by_name(output_uri: str, name: str) -> ShardSpec:
    for spec in _plan_specs(OutputDir(output_uri)):
        if spec.name == name:
            return spec
    raise KeyError(f"shard {name!r} is not in the plan of {output_uri!r}")


# -- rendering ---------------------------------------------------------------------------------
def render(
    image: Image.Image,
    level1_row: dict,
    level2_row: dict | None = None,
    show_floating: bool = False,
    max_objects: int = 40,
) -> Image.Image:
    """The annotated image plus a text panel (right of tall/square images, below wide ones).

    With a level-2 row its objects are drawn: they are level 1's after phrase grounding, and the
    ids in its captions refer to them. The image keeps its size and sits at (0, 0) of the result.
    """
    image = image.convert("RGB")
    w, h = image.size
    has_l2_objects = bool(level2_row and (level2_row.get("objects") or level2_row.get("floating_objects")))
    source = level2_row if has_l2_objects else level1_row
    objects = list(source.get("objects") or [])
    if show_floating:
        objects += list(source.get("floating_objects") or [])
    # Keep the most confident when there are too many: the rest would only be clutter.
    hidden = max(0, len(objects) - max_objects)
    if hidden:
        objects = sorted(objects, key=lambda o: -(o.get("score") or 0.0))[:max_objects]
        objects.sort(key=lambda o: o["id"])
    colors = {o["id"]: _color(i) for i, o in enumerate(objects)}

    drawn = _draw_objects(image, objects, colors)

    font_size = int(np.clip(round(max(w, h) / 70), 13, 28))
    font = _font(font_size)
    below = w > 1.4 * h  # wide images get the panel underneath, others beside
    panel_w = max(w, 26 * font_size) if below else 26 * font_size
    panel = _Panel(panel_w, font, _font(font_size + 2))
    _describe_objects(panel, objects, colors, hidden, level1_row)
    if level2_row is not None:
        _describe_level2(panel, level2_row, colors)
    ph = panel.height()

    canvas_size = (max(w, panel_w), h + ph) if below else (w + panel_w, max(h, ph))
    canvas = Image.new("RGB", canvas_size, _PANEL_BG)
    canvas.paste(drawn, (0, 0))
    panel.draw(ImageDraw.Draw(canvas), (0, h) if below else (w, 0))
    return canvas


def render_to_file(output_uri: str, image_id: str, dest_png: str | Path, **kwargs: Any) -> Path:
    """Find `image_id`, re-read its image, render it (kwargs go to `render`) and save a PNG."""
    level1, level2, spec = find_rows(output_uri, image_id)
    if level1.get("status") == "error":
        raise ValueError(f"image {image_id!r} has no annotations: {level1.get('error')}")
    image = load_image(output_uri, spec, int(level1["index"]))
    dest = Path(dest_png)
    dest.parent.mkdir(parents=True, exist_ok=True)
    render(image, level1, level2, **kwargs).save(dest, format="PNG")
    return dest


# -- the image part ----------------------------------------------------------------------------
def _draw_objects(image: Image.Image, objects: list[dict], colors: dict[int, Color]) -> Image.Image:
    w, h = image.size
    pixels = np.asarray(image, dtype=np.float32).copy()
    # Far objects first, so the fill of a nearer object lies on top where masks overlap.
    for obj in sorted(objects, key=_depth_key):
        seg = obj.get("segmentation")
        if not seg or not seg.get("counts"):
            continue
        if [int(s) for s in seg["size"]] != [h, w]:
            continue  # a mask of another size would be misplaced: show the box only
        mask = decode_mask(seg)
        pixels[mask] = pixels[mask] * (1 - _FILL_ALPHA) + np.asarray(colors[obj["id"]], np.float32) * _FILL_ALPHA
    out = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))

    draw = ImageDraw.Draw(out)
    line = max(2, round(min(w, h) / 200))
    font = _font(int(np.clip(round(min(w, h) / 30), 10, 26)))
    for obj in objects:
        x1, y1, x2, y2 = (float(v) for v in obj["bbox"])
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colors[obj["id"]], width=line)
    # Tags after all boxes, so no outline crosses a tag's text.
    for obj in objects:
        x1, y1 = float(obj["bbox"][0]), float(obj["bbox"][1])
        text = f"{obj['id']}: {obj['label']}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        tx = min(max(0.0, x1), max(0.0, w - tw))
        ty = y1 - th if y1 - th >= 0 else y1  # above the box, or inside it at the top edge
        color = colors[obj["id"]]
        draw.rectangle([tx, ty, tx + tw, ty + th], fill=color)
        draw.text((tx + 2 - left, ty + 2 - top), text, fill=_ink(color), font=font)
    return out


# -- the text panel ----------------------------------------------------------------------------
@dataclass
class _Panel:
    """Text laid out top to bottom in a fixed width; drawing is deferred until its height is known."""

    width: int
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont
    title_font: ImageFont.ImageFont | ImageFont.FreeTypeFont
    margin: int = 10
    ops: list[tuple] = field(default_factory=list)
    y: int = 10

    def __post_init__(self) -> None:
        self._measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        self.line_h = int(self.font.getbbox("Ag")[3]) + 6
        self.y = self.margin

    def text_w(self, text: str) -> float:
        return self._measure.textlength(text, font=self.font)

    def title(self, text: str) -> None:
        self.y += self.line_h // 3
        self.ops.append(("text", (self.margin, self.y), text, _TEXT, self.title_font, None))
        self.y += int(self.title_font.getbbox("Ag")[3]) + 8

    def line(self, text: str, color: Color = _TEXT, swatch: Color | None = None) -> None:
        self.runs([(text, None)], text_color=color, swatch=swatch)

    def runs(
        self, runs: list[tuple[str, Color | None]], text_color: Color = _TEXT, swatch: Color | None = None
    ) -> None:
        """Wrap (text, highlight) runs into lines; highlighted words get a coloured background."""
        x0 = self.margin
        if swatch is not None:
            s = self.line_h - 8
            self.ops.append(("rect", (x0, self.y + 3, x0 + s, self.y + 3 + s), swatch))
            x0 += s + 6
        right = self.width - self.margin
        x = x0
        for text, hl in runs:
            for token in re.findall(r"\S+|\s+", text):
                if token.isspace():
                    if x > x0:  # no leading spaces on a wrapped line
                        tw = self.text_w(token)
                        if hl is not None:
                            self.ops.append(("rect", (x, self.y + 1, x + tw, self.y + self.line_h - 2), hl))
                        x += tw
                    continue
                for piece in self._split_long(token, right - x0):
                    tw = self.text_w(piece)
                    if x + tw > right and x > x0:
                        x, self.y = x0, self.y + self.line_h
                    if hl is not None:
                        self.ops.append(("rect", (x, self.y + 1, x + tw, self.y + self.line_h - 2), hl))
                    self.ops.append(("text", (x, self.y + 3), piece, _ink(hl) if hl else text_color, self.font, None))
                    x += tw
        self.y += self.line_h

    def _split_long(self, word: str, limit: float) -> list[str]:
        # A word wider than the panel (a URL, a long id) is broken by characters.
        if self.text_w(word) <= limit:
            return [word]
        pieces, cur = [], ""
        for ch in word:
            if cur and self.text_w(cur + ch) > limit:
                pieces.append(cur)
                cur = ""
            cur += ch
        return pieces + [cur] if cur else pieces

    def height(self) -> int:
        return self.y + self.margin

    def draw(self, draw: ImageDraw.ImageDraw, offset: tuple[int, int]) -> None:
        ox, oy = offset
        for op in self.ops:
            if op[0] == "rect":
                x1, y1, x2, y2 = op[1]
                draw.rectangle([x1 + ox, y1 + oy, x2 + ox, y2 + oy], fill=op[2])
            else:
                (x, y), text, color, font = op[1], op[2], op[3], op[4]
                top = font.getbbox(text)[1] if text else 0
                draw.text((x + ox, y + oy - min(top, 3)), text, fill=color, font=font)


def _describe_objects(panel: _Panel, objects: list[dict], colors: dict[int, Color], hidden: int, row: dict) -> None:
    panel.title(f"Objects: {len(objects)}" + (f" (+{hidden} not shown)" if hidden else ""))
    if not objects:
        panel.line("no objects" if row.get("status") != "error" else f"error: {row.get('error')}", _MUTED)
        return
    panel.line("depth layers, near -> far", _MUTED)
    depths = [float(o["depth"]) for o in objects if o.get("depth") is not None]
    lo, hi = (min(depths), max(depths)) if depths else (0.0, 0.0)
    for obj in sorted(objects, key=_depth_key, reverse=True):
        d = obj.get("depth")
        if d is None:
            layer, value = "no depth", ""
        else:
            layer, value = _layer(float(d), lo, hi), f" ({float(d):.3g})"
        panel.line(f"{layer}: {obj['id']}: {obj['label']}{value}", swatch=colors[obj["id"]])


def _describe_level2(panel: _Panel, row: dict, colors: dict[int, Color]) -> None:
    if row.get("status") == "error":
        panel.title("Level 2")
        panel.line(f"error: {row.get('error')}", _MUTED)
        return
    captions = row.get("short_captions") or []
    panel.title("Captions")
    if not captions:
        panel.line("no captions", _MUTED)
    for cap in captions:
        panel.line(f"[{cap.get('model')}]", _MUTED)
        panel.runs(_caption_runs(cap.get("caption") or "", cap.get("details") or [], colors))
    landmark = row.get("landmark") or {}
    panel.title("Landmark")
    parts = [p for p in (landmark.get("category"), landmark.get("fine_category")) if p]
    panel.line(" / ".join(parts) if parts else "unknown", _TEXT if parts else _MUTED)
    rels = row.get("relationships") or []
    if rels:
        panel.title("Relationships")
        for rel in rels:
            panel.line(f"{rel['phrase']} ({', '.join(map(str, rel.get('object_ids') or []))})")


def _caption_runs(caption: str, details: list[dict], colors: dict[int, Color]) -> list[tuple[str, Color | None]]:
    """Split a caption into runs of one highlight: a grounded phrase takes the colour of its first
    drawn object; one linked to no drawn object is marked grey; the first phrase wins overlaps."""
    marks: list[Color | None] = [None] * len(caption)
    for d in details:
        span = d.get("tokens_positive") or []
        if len(span) != 2:
            continue
        start, end = max(0, int(span[0])), min(len(caption), int(span[1]))
        color = next((colors[i] for i in d.get("ids") or [] if i in colors), _UNLINKED)
        for k in range(start, end):
            if marks[k] is None:
                marks[k] = color
    runs: list[tuple[str, Color | None]] = []
    for ch, mark in zip(caption, marks):
        if runs and runs[-1][1] == mark:
            runs[-1] = (runs[-1][0] + ch, mark)
        else:
            runs.append((ch, mark))
    return runs


# -- small helpers -----------------------------------------------------------------------------
def _depth_key(obj: dict) -> float:
    d = obj.get("depth")
    return float(d) if d is not None else float("-inf")  # unknown depth counts as farthest


def _layer(depth: float, lo: float, hi: float) -> str:
    """Near / middle / far by thirds of the shown objects' depth range (inverse depth: big = near)."""
    if hi - lo <= 1e-9:
        return "near"
    t = (depth - lo) / (hi - lo)
    return "near" if t >= 2 / 3 else "middle" if t >= 1 / 3 else "far"


def _color(i: int) -> Color:
    # Golden-ratio hue steps keep neighbouring ids far apart on the colour wheel.
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _ink(bg: Color | None) -> Color:
    """Black or white text, whichever reads better on `bg`."""
    if bg is None:
        return _TEXT
    r, g, b = bg
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size only
        return ImageFont.load_default()

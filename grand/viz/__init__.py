"""Pictures of grand's output rows: masks, boxes, labels, depth order and grounded captions."""

from grand.viz.render import find_rows, load_image, render, render_to_file

__all__ = ["find_rows", "load_image", "render", "render_to_file"]

"""SA-1B annotation sidecars (`sa_<id>.json` beside `sa_<id>.jpg` in each SA-1B tar).

GranD reuses these ground-truth masks for detected objects they overlap; this module only turns
the JSON into grand's mask form, it does no matching.
"""

from __future__ import annotations

import json

from grand.core.rle import ann_to_rle, mask_to_bbox


def parse_sa1b_sidecar(text: str) -> list[dict]:
    """Ground-truth masks of one SA-1B annotation file.

    Returns [{"bbox_xyxy": [x1, y1, x2, y2], "segmentation": {"size": [h, w], "counts": str}}, ...]
    in file order. Raises ValueError naming the problem (and the annotation index) when the file
    is not SA-1B-shaped, so a bad sidecar is reported instead of silently giving no masks.
    """
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"SA-1B sidecar is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
        raise ValueError("SA-1B sidecar has no 'annotations' list")
    image = doc.get("image") if isinstance(doc.get("image"), dict) else {}
    out = []
    for i, ann in enumerate(doc["annotations"]):
        try:
            out.append(_parse_annotation(ann, image))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"SA-1B sidecar annotations[{i}]: {exc}") from None
    return out


def _parse_annotation(ann: dict, image: dict) -> dict:
    if not isinstance(ann, dict) or not isinstance(ann.get("segmentation"), dict):
        raise ValueError("missing 'segmentation' object")
    seg = ann["segmentation"]
    size = seg.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        raise ValueError(f"segmentation.size must be [height, width], got {size!r}")
    # The image entry is authoritative when present: a mask of another size belongs elsewhere.
    height = int(image.get("height", size[0]))
    width = int(image.get("width", size[1]))
    rle = ann_to_rle(seg, height, width)
    bbox = ann.get("bbox")
    if bbox is None:
        xyxy = mask_to_bbox(rle)
    else:
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
            raise ValueError(f"bbox must be [x, y, w, h], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        xyxy = [x, y, x + w, y + h]
    return {"bbox_xyxy": xyxy, "segmentation": rle}

"""Level-1 attributes and final label (reference: docs/REFERENCE_PIPELINE.md, "Level 1 — Attributes"
and "Final label"): which objects get a region description, the crop shown to the describing model,
cleaning its answer, and picking the final label from the candidates by a similarity score.

Objects are the plain dicts that travel between pipeline steps (id, bbox [x1, y1, x2, y2], label,
labels, ...). The models themselves (VLM, CLIP) live in grand.models; this module only decides.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from grand.core.geometry import box_area, clip_boxes
from grand.schema import ObjectRecord

# -- which objects to describe ----------------------------------------------------------------------


def objects_to_describe(
    objects: Sequence[ObjectRecord],
    width: int,
    height: int,
    min_area_fraction: float = 0.02,
    max_objects: int = 32,
) -> list[int]:
    """Indices of the objects covering >= `min_area_fraction` of the image, largest first, at most
    `max_objects`; equal areas keep input order.

    Areas are measured after clipping to the image, so a box hanging off the edge counts only for
    what the describing model will actually see.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not objects or max_objects <= 0:
        return []
    boxes = np.array([o.bbox for o in objects], dtype=np.float64).reshape(-1, 4)
    areas = box_area(clip_boxes(boxes, width, height).astype(np.float64))
    areas = np.where(np.isfinite(areas), areas, -1.0)  # a non-finite box is never eligible
    eligible = areas >= min_area_fraction * float(width) * float(height)
    order = np.argsort(-areas, kind="stable")  # stable: ties keep input order
    return [int(i) for i in order if eligible[i]][:max_objects]


# -- the crop shown to the describing / scoring model -----------------------------------------------

# Coordinates are rounded to this many decimals before floor/ceil so that float noise
# (e.g. 10 - 0.1 * 30 = 6.999999999999999) does not grow a crop by a whole pixel.
_SNAP_DECIMALS = 6


def _span(lo: float, hi: float, margin: float, limit: int) -> tuple[int, int]:
    """Integer [start, end) of one axis: grown by margin, clipped to [0, limit], at least 1 px."""
    pad = margin * (hi - lo)
    start = math.floor(round(lo - pad, _SNAP_DECIMALS))
    end = math.ceil(round(hi + pad, _SNAP_DECIMALS))
    start = min(max(start, 0), limit)
    end = min(max(end, 0), limit)
    if end <= start:
        # Degenerate or fully outside the image: keep the 1-px line nearest to where the box is.
        start = min(start, limit - 1)
        end = start + 1
    return start, end


def crop_box(bbox: Sequence[float], width: int, height: int, margin: float = 0.1) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) integer pixel crop: the box grown by `margin` x its size on each side,
    covering every pixel it touches, clipped to the image, and at least 1 px wide and high.

    Corners given in the wrong order are swapped (the crop is the rectangle they span).
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be at least 1x1, got {width}x{height}")
    x1, y1, x2, y2 = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ValueError(f"crop_box: non-finite box {list(bbox)}")
    cx1, cx2 = _span(min(x1, x2), max(x1, x2), margin, int(width))
    cy1, cy2 = _span(min(y1, y2), max(y1, y2), margin, int(height))
    return cx1, cy1, cx2, cy2


# -- cleaning a VLM's region description ------------------------------------------------------------

MAX_DESCRIPTION_CHARS = 120

# Lead-ins a VLM puts before the actual description; removed (repeatedly) from the front.
_BOILERPLATE = (
    "a photo of",
    "a photograph of",
    "a picture of",
    "an image of",
    "a close-up photo of",
    "this is",
    "it is",
    "there is",
    "there are",
    "the region shows",
    "this region shows",
    "the region contains",
    "this region contains",
    "in this region",
    "in the region",
    "the image shows",
    "this image shows",
    "the highlighted region shows",
    "the object is",
    "answer:",
    "assistant:",
    "description:",
)
_BOILERPLATE_RE = re.compile(
    r"^(?:" + "|".join(re.escape(p) for p in sorted(_BOILERPLATE, key=len, reverse=True)) + r")(?![\w])[\s,:;\-]*",
    re.IGNORECASE,
)
_SPECIAL_TOKEN_RE = re.compile(r"</?(?:s|unk|pad|image|region\d*|bbox|im_start|im_end|\|[^|<>]*\|)>", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s)")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"
_TRAILING = " .,;:!?-" + _QUOTES
_ARTICLES = {"a", "an", "the", "some"}
# Whole answers that mean "no description" rather than describing anything.
_NON_ANSWERS = {"n/a", "na", "none", "null", "unknown", "nothing", "empty", "no description", "not sure", "object", "region"}
_REFUSALS = ("i'm sorry", "i am sorry", "sorry,", "i cannot", "i can't", "i can not", "i'm unable", "i am unable", "as an ai")


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip(" \t" + _QUOTES):
            return line
    return ""


def _strip_boilerplate(text: str) -> str:
    while True:
        text = text.strip().strip(_QUOTES).strip()
        stripped = _BOILERPLATE_RE.sub("", text, count=1)
        if stripped == text:
            return text
        text = stripped


def _cap(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1].rsplit(" ", 1)[0]  # +1: a word ending exactly at the cap is kept whole
    return cut if cut and len(cut) <= max_chars else text[:max_chars]


def _meaningful(text: str) -> bool:
    folded = text.casefold()
    if folded in _NON_ANSWERS or folded.startswith(_REFUSALS):
        return False
    words = [w for w in re.split(r"\s+", folded) if w]
    content = [w for w in words if w not in _ARTICLES]
    return any(ch.isalpha() for w in content for ch in w)


def clean_description(text: str | None, max_chars: int = MAX_DESCRIPTION_CHARS) -> str | None:
    """A VLM's region answer reduced to a short description, or None when nothing meaningful is left.

    Keeps the first non-empty line and its first sentence, removes special tokens, surrounding quotes
    and lead-ins such as "a photo of" / "the region shows" (case-insensitive, repeatedly), collapses
    whitespace, drops trailing punctuation and caps the length at a word boundary. Case is kept
    (proper nouns such as "Eiffel Tower" must survive).
    """
    if not isinstance(text, str):
        return None
    text = _SPECIAL_TOKEN_RE.sub(" ", text)
    text = _first_line(text)
    text = " ".join(text.split())
    text = _strip_boilerplate(text)
    text = _SENTENCE_END_RE.split(text, maxsplit=1)[0]
    text = _cap(text, max_chars).rstrip(_TRAILING).lstrip(" " + _QUOTES)
    return text if text and _meaningful(text) else None


# -- final label -------------------------------------------------------------------------------------


def label_candidates(obj: ObjectRecord) -> list[str]:
    """Distinct candidate final labels of an object: its `labels` (stripped, case-insensitive dedupe,
    first spelling and order kept); `label` alone when `labels` is empty. Attributes are not labels."""
    seen: set[str] = set()
    out: list[str] = []
    for raw in list(obj.labels or []) or [obj.label or ""]:
        label = str(raw).strip()
        key = label.casefold()
        if label and key not in seen:
            seen.add(key)
            out.append(label)
    return out


def choose_label(candidates: Sequence[str], scores: Sequence[float]) -> str:
    """The candidate with the best score; ties go to the earlier candidate, NaN scores never win
    over a number (the first candidate when every score is NaN)."""
    if len(candidates) != len(scores):
        raise ValueError(f"choose_label: {len(candidates)} candidates but {len(scores)} scores")
    if not candidates:
        raise ValueError("choose_label: no candidates")
    best = 0
    for i, s in enumerate(scores):
        s, b = float(s), float(scores[best])
        if not math.isnan(s) and (math.isnan(b) or s > b):
            best = i
    return candidates[best]

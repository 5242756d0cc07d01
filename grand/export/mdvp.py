"""Export visual-prompt instruction data in the style of Draw-and-Understand's MDVP-Data (SPHINX-V):
marks on an image (points, boxes or masks), a question about them, an answer naming every mark.

One JSON Lines record per sample:
    {"id", "image_id", "file_name", "image" (= file_name: SPHINX-V's loader key), "width", "height",
     "task", "prompts": [{"mark": 1, "object_id", "type": "point"|"box"|"mask",
                          "point": [x, y] | "box": [x1, y1, x2, y2] | "mask": COCO RLE}],
     "points": [[x, y], ...] (point tasks) | "bbox": [[x, y, w, h], ...] (box prompts),
     "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "<Mark 1>: ..."}]}

Marks are numbered 1..n within a sample, in the order of `prompts`; the answer names each mark once,
in that order. `points` / `bbox` repeat the prompts in the layout SPHINX-V's FinetuneDialogDataset
reads (it takes at most 10 prompts per sample, hence `max_prompts`).

Tasks (`TASKS`):
    point-label        K points strictly inside each masked object's mask -> "<Mark i>: label"
    box-label          each object's box (optionally jittered, `box_noise`) -> "<Mark i>: label"
    brief-description  objects with attributes -> "<Mark i>: attribute"
    relationship       level-2 relationships naming several objects, level-3 scene-graph groups
    inverse-grounding  level-3 dense-caption phrases: the regions of each phrase -> the phrase

Objects without a usable mask (none, empty, or of another size) get box prompts only, never
points or masks. Every random choice comes from a generator seeded by (seed, image id, task), so
two runs write identical files, whatever the shard order or the machine.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt

from grand.core.rle import decode_mask, mask_area
from grand.export.images import LEVEL1_COLUMNS, MIN_SIDE, ImageFiles
from grand.export.rows import SampleWriter, flagged_objects, good_images, has_mask, image_size, ok, require_levels
from grand.io.output import OutputDir

TASKS = ("point-label", "box-label", "brief-description", "relationship", "inverse-grounding")
REGION_PROMPTS = ("box", "mask")
MAX_PROMPTS = 10  # SPHINX-V's loader pads or cuts every sample's prompts to 10

_COLUMNS = {
    1: [*LEVEL1_COLUMNS, "objects", "floating_objects"],
    2: ["image_id", "status", "objects", "floating_objects", "relationships"],
    3: ["image_id", "status", "scene_graph", "dense_caption"],
}

# A few phrasings per task (one is drawn per sample), so a model does not learn one sentence.
QUESTIONS = {
    "point-label": ["Please identify the labels of each marked point in the image.",
                    "What is the object at each marked point? Answer with its label.",
                    "Name the object under every marked point in the image."],
    "box-label": ["Please identify the labels of each marked region in the image.",
                  "What is inside each marked box? Answer with a label per box.",
                  "Name the object in every marked region of the image."],
    "brief-description": ["Please provide a brief description of each marked region in the image.",
                          "Describe each marked region in a few words.",
                          "Give a short description of every marked region."],
    "relationship": ["Please describe the relationship between the marked regions in the image.",
                     "How are the marked regions related to each other?",
                     "What connects the marked regions in this image?"],
    "inverse-grounding": ["Which phrase of the image's description refers to each marked region?",
                          "Please give the phrase that describes each group of marked regions.",
                          "Describe what each marked region shows, as a short phrase."],
}


def rng_for(seed: int, image_id: str, task: str) -> np.random.Generator:
    """A generator that depends only on (seed, image, task): Python's hash() of str is salted per
    process, so the key goes through sha256."""
    digest = hashlib.sha256(f"{seed}\0{image_id}\0{task}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def mark(i: int) -> str:
    return f"<Mark {i}>"


def usable_mask(obj: dict, width: int | None, height: int | None) -> bool:
    """The object has a non-empty mask of the image's size (empty masks never count)."""
    return has_mask(obj.get("segmentation"), None if width is None or height is None else (height, width))


def points_inside(mask: np.ndarray, k: int, rng: np.random.Generator) -> list[list[int]]:
    """Up to `k` distinct pixels [x, y] of `mask`, away from its edge when it has an interior: a
    click on the boundary is ambiguous (which region was meant?), so pixels whose 4-neighbours are
    all inside are preferred; a region one or two pixels thick uses any of its pixels."""
    ys, xs = np.nonzero(mask)
    y0, x0 = ys.min(), xs.min()
    crop = mask[y0:ys.max() + 1, x0:xs.max() + 1]  # the distance transform of the region's box only
    interior = distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1] > 1.0
    if interior.any():
        ys, xs = np.nonzero(interior)
        ys, xs = ys + y0, xs + x0
    take = rng.choice(len(ys), size=min(k, len(ys)), replace=False)
    return [[int(xs[i]), int(ys[i])] for i in sorted(take)]


def noisy_box(box: Sequence[float], noise: float, rng: np.random.Generator, width: int | None,
              height: int | None) -> list[float]:
    """The box jittered as Draw-and-Understand does to make boxes look hand-drawn: the corner moves
    by up to `noise` x its width / height, the size scales by 1 +- `noise` (their recipe is about
    0.125 for the shift and 0.15 for the size). Clipped to the image, never empty."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    if noise <= 0 or w <= 0 or h <= 0:
        return [x1, y1, x2, y2]
    x1 += rng.uniform(-noise, noise) * w
    y1 += rng.uniform(-noise, noise) * h
    w *= 1 + rng.uniform(-noise, noise)
    h *= 1 + rng.uniform(-noise, noise)
    x2, y2 = x1 + w, y1 + h
    if width is not None:
        x1, x2 = min(max(x1, 0.0), width - 1.0), min(max(x2, 1.0), float(width))
    if height is not None:
        y1, y2 = min(max(y1, 0.0), height - 1.0), min(max(y2, 1.0), float(height))
    x2, y2 = max(x2, x1 + 1.0), max(y2, y1 + 1.0)
    return [round(v, 2) for v in (x1, y1, x2, y2)]


def region_prompt(obj: dict, kind: str, masked: bool) -> dict:
    """A box prompt, or a mask prompt where asked for and the object has a usable mask."""
    if kind == "mask" and masked:
        return {"object_id": obj["id"], "type": "mask", "mask": obj["segmentation"]}
    return {"object_id": obj["id"], "type": "box", "box": [float(v) for v in obj["bbox"]]}


def chunks(groups: list[list], limit: int) -> list[list]:
    """Consecutive groups packed into lists of at most `limit` items; a group is never split (an
    object's points, a phrase's regions stay together); a group larger than `limit` is dropped."""
    out, cur = [], []
    for g in groups:
        if len(g) > limit:
            continue
        if len(cur) + len(g) > limit:
            out.append(cur)
            cur = []
        cur = cur + g
    if cur:
        out.append(cur)
    return out


def _label_word(label: str, text: str, start: int) -> re.Match | None:
    return re.compile(r"\b" + re.escape(label) + r"s?\b", re.IGNORECASE).search(text, start)


def refer_in_text(text: str, labels: list[str]) -> str | None:
    """`text` with "<Mark i>" written after the words naming region i, when each region's label
    occurs in order ("a dog next to a tree" -> "a dog <Mark 1> next to a tree <Mark 2>"); None
    when they do not (the caller then lists the marks before the text)."""
    pieces, pos = [], 0
    for i, label in enumerate(labels, start=1):
        m = _label_word(label, text, pos)
        if m is None:
            return None
        pieces.append(text[pos:m.end()] + f" {mark(i)}")
        pos = m.end()
    return "".join(pieces) + text[pos:]


class _Sample:
    """Prompts of one sample being built, numbered as they are added."""

    def __init__(self):
        self.prompts: list[dict] = []

    def add(self, prompt: dict) -> int:
        self.prompts.append({"mark": len(self.prompts) + 1, **prompt})
        return len(self.prompts)


def _record(head: dict, task: str, n: int, sample: _Sample, question: str, answer: str) -> dict:
    rec = {"id": f"{head['image_id']}#{task}#{n}", **head, "task": task, "prompts": sample.prompts}
    types = {p["type"] for p in sample.prompts}
    if types == {"point"}:
        rec["points"] = [p["point"] for p in sample.prompts]
    elif types == {"box"}:
        rec["bbox"] = [[b[0], b[1], round(b[2] - b[0], 2), round(b[3] - b[1], 2)] for b in (p["box"] for p in sample.prompts)]
    rec["conversations"] = [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}]
    return rec


def image_samples(rows: dict, tasks: Sequence[str], points_per_object: int = 1, box_noise: float = 0.0,
                  region_prompt_type: str = "box", max_prompts: int = MAX_PROMPTS, include_floating: bool = True,
                  seed: int = 0) -> list[dict]:
    """Every sample of one image (its rows at levels 1-3, as `good_images` yields them)."""
    l1 = rows[1]
    image_id = l1["image_id"]
    width, height = image_size(rows)
    # file_name / image: the image's id here; export_mdvp replaces them by grand.export.images' file name
    head = {"image_id": image_id, "file_name": image_id, "image": image_id, "width": width, "height": height}
    objects = sorted((o for o, _ in flagged_objects(rows, include_floating)), key=lambda o: o["id"])
    by_id = {o["id"]: o for o in objects}
    masked = {o["id"]: usable_mask(o, width, height) for o in objects}
    out: list[dict] = []

    def emit(task: str, groups: list[list[tuple[dict, str | None]]], rng: np.random.Generator) -> None:
        """Samples of `groups` (lists of (prompt, text) kept in one sample), packed `max_prompts` marks
        at a time. A prompt with a text starts an answer line; a prompt with None joins the line
        before it (a phrase naming several regions: "<Mark 3>, <Mark 4>: two trees")."""
        for n, chunk in enumerate(chunks(groups, max_prompts)):
            sample, lines, line_marks = _Sample(), [], []
            for prompt, text in chunk:
                i = sample.add(prompt)
                if text is not None:  # a new answer line starts with this prompt
                    line_marks.append([i])
                    lines.append(text)
                else:
                    line_marks[-1].append(i)
            answer = "\n".join(", ".join(mark(i) for i in ms) + f": {t}" for ms, t in zip(line_marks, lines))
            out.append(_record(head, task, n, sample, QUESTIONS[task][rng.integers(len(QUESTIONS[task]))], answer))

    def grouped(items: list[tuple[list[dict], str]]) -> list[list[tuple[dict, str | None]]]:
        return [[(p, text if j == 0 else None) for j, p in enumerate(prompts)] for prompts, text in items]

    if "point-label" in tasks:
        rng = rng_for(seed, image_id, "point-label")
        groups = []
        for o in objects:
            if masked[o["id"]]:
                pts = points_inside(decode_mask(o["segmentation"]), points_per_object, rng)
                # Each point is a mark of its own (a click) answered with the object's label; an
                # object's points stay in one sample.
                groups.append([({"object_id": o["id"], "type": "point", "point": p}, o["label"]) for p in pts])
        emit("point-label", groups, rng)

    if "box-label" in tasks:
        rng = rng_for(seed, image_id, "box-label")
        groups = [[({"object_id": o["id"], "type": "box", "box": noisy_box(o["bbox"], box_noise, rng, width, height)},
                    o["label"])] for o in objects]
        emit("box-label", groups, rng)

    if "brief-description" in tasks:
        rng = rng_for(seed, image_id, "brief-description")
        groups = []
        for o in objects:
            attrs = [a.strip() for a in o.get("attributes") or [] if a.strip()]
            if attrs:
                groups.append([(region_prompt(o, region_prompt_type, masked[o["id"]]), attrs[rng.integers(len(attrs))])])
        emit("brief-description", groups, rng)

    if "relationship" in tasks:
        rng = rng_for(seed, image_id, "relationship")
        for n, (ids, kind, text) in enumerate(_relations(rows, by_id)):
            if len(ids) > max_prompts:
                continue
            sample = _Sample()
            for oid in ids:
                sample.add(region_prompt(by_id[oid], region_prompt_type, masked[oid]))
            labels = [by_id[oid]["label"] for oid in ids]
            if kind == "group":
                named = ", ".join(f"{mark(i)} ({lab})" for i, lab in enumerate(labels, start=1))
                answer = f"{named} are close together in the {text}."
            else:
                answer = refer_in_text(text, labels) or (", ".join(mark(i) for i in range(1, len(ids) + 1)) + f": {text}")
            q = QUESTIONS["relationship"][rng.integers(len(QUESTIONS["relationship"]))]
            out.append(_record(head, "relationship", n, sample, q, answer))

    if "inverse-grounding" in tasks and ok(rows.get(3)):
        rng = rng_for(seed, image_id, "inverse-grounding")
        dense = rows[3].get("dense_caption") or {}
        caption = dense.get("caption") or ""
        items, seen = [], set()
        # Span order, as the phrases read in the caption; an object marked by an earlier phrase is
        # not marked again (one object, one mark).
        for d in sorted(dense.get("details") or [], key=lambda d: list(d.get("tokens_positive") or [0])):
            ids = [i for i in dict.fromkeys(d.get("ids") or []) if i in by_id]
            start, end = (list(d.get("tokens_positive") or []) + [None, None])[:2]
            text = caption[start:end] if start is not None and end is not None else d.get("phrase") or ""
            if not ids or not text.strip() or seen & set(ids):
                continue
            seen |= set(ids)
            items.append(([region_prompt(by_id[i], region_prompt_type, masked[i]) for i in ids], text.strip()))
        emit("inverse-grounding", grouped(items), rng)
    return out


def _relations(rows: dict, by_id: dict) -> list[tuple[list[int], str, str]]:
    """(object ids, "phrase" | "group", text): level 2's relationships naming two or more of the
    image's objects, then level 3's scene-graph groups of two or more (text: the depth layer)."""
    found, seen = [], set()
    if ok(rows.get(2)):
        for r in rows[2].get("relationships") or []:
            ids = [i for i in dict.fromkeys(r.get("object_ids") or []) if i in by_id]
            if len(ids) >= 2 and (r.get("phrase") or "").strip():
                found.append((ids, "phrase", r["phrase"].strip()))
    if ok(rows.get(3)):
        for layer in (rows[3].get("scene_graph") or {}).get("layers") or []:
            for group in layer.get("groups") or []:
                ids = [i for i in dict.fromkeys(group or []) if i in by_id]
                key = (tuple(ids), layer.get("name"))
                if len(ids) >= 2 and key not in seen:
                    seen.add(key)
                    found.append((ids, "group", layer.get("name") or "same depth layer"))
    return found


def export_mdvp(output_uri: str, dest: str, tasks: Sequence[str] = TASKS, points_per_object: int = 1,
                box_noise: float = 0.0, region_prompt_type: str = "box", max_prompts: int = MAX_PROMPTS,
                include_floating: bool = True, seed: int = 0, images_dir: str | None = None,
                min_side: int = MIN_SIDE, check_images: bool = True) -> dict:
    """Write the visual-prompt samples of `output_uri` to `dest` (.json: a list; else JSON Lines).
    `images_dir`, `min_side`, `check_images`: which image files samples point at (grand.export.images)."""
    tasks = tuple(dict.fromkeys(tasks))
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"tasks must be among {', '.join(TASKS)}; got {list(tasks)}")
    if points_per_object < 1:
        raise ValueError(f"--points-per-object must be at least 1, got {points_per_object}")
    if not 0.0 <= box_noise < 1.0:
        raise ValueError(f"--box-noise is a fraction of the box size in [0, 1), got {box_noise}")
    if region_prompt_type not in REGION_PROMPTS:
        raise ValueError(f"--region-prompt must be one of {REGION_PROMPTS}, got {region_prompt_type!r}")
    if max_prompts < 1:
        raise ValueError(f"--max-prompts must be at least 1, got {max_prompts}")
    out = OutputDir(output_uri)
    require_levels(out, [1], "grand export mdvp")
    if set(tasks) <= {"inverse-grounding"}:
        require_levels(out, [3], "grand export mdvp --tasks inverse-grounding")
    counts = dict.fromkeys(tasks, 0)
    n_images = 0
    files = ImageFiles(out, images_dir, min_side, check_images)
    with SampleWriter(dest) as writer:
        for rows in good_images(out, _COLUMNS, levels=(1, 2, 3)):
            samples = image_samples(rows, tasks, points_per_object, box_noise, region_prompt_type, max_prompts,
                                    include_floating, seed)
            samples = files.attach(rows[1], samples, keys=("file_name", "image"))
            n_images += bool(samples)
            for s in samples:
                counts[s["task"]] += 1
                writer.write(s)
    return {"dest": dest, "images": n_images, "samples": sum(counts.values()), "per_task": counts,
            **files.summary()}

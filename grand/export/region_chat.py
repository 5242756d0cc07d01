"""Multi-region conversations in the published layouts of GPT4RoI and Osprey (`grand export regions
--format gpt4roi|osprey`): one record per image (or per group of at most `max_regions` regions),
its regions numbered 1..n in object-id order, a question and answer per region (its description),
then one per level-2 relationship that names two or more of those regions.

gpt4roi (what GPT4RoI's region datasets hand to its `preprocess_multimodal`):
    {"id", "file_name", "image_id", "height", "width", "bboxes": [[x1, y1, x2, y2] px, ...],
     "labels", "object_ids",
     "conversations": [{"from": "human", "value": "The <image> provides an overview of the picture.\\n"
                                                  "... region1 <bbox> ..."}, {"from": "gpt", ...}, ...]}
    Region i is introduced once as "region{i} <bbox>" (one <bbox> per box, in box order: GPT4RoI
    swaps each for that box's RoI feature) and named "region{i}" after that.
osprey (the Osprey-724K annotation layout its ConversationDataset / OspreyDetailedDescription read):
    {"id", "file_name", "image_id", "height", "width",
     "annotation": [{"bbox" [x, y, w, h], "segmentation" (COCO RLE; a box polygon when the region has
                     no mask), "area", "category_name", "object_id", "has_mask"}],
     "description": ["<region1>: ...", ...],
     "conversations": [{"from": "human", "value": "... <region1> ..."}, {"from": "gpt", ...}, ...]}
    Regions are written `<region{i}>`; Osprey's loader adds the image token and the
    "region1<mask><pos>" list itself, so no "<image>" is written.
"""

from __future__ import annotations

from grand.core.rle import mask_area
from grand.export.mdvp import chunks, rng_for, usable_mask
from grand.export.refexp import coco_box
from grand.export.images import LEVEL1_COLUMNS, MIN_SIDE, ImageFiles
from grand.export.rows import SampleWriter, flagged_objects, good_images, image_size, ok, require_levels
from grand.io.output import OutputDir

FORMATS = ("gpt4roi", "osprey")
MAX_REGIONS = 15  # GPT4RoI's and Osprey's loaders keep at most 15-20 regions per image
GPT4ROI_BEGIN = "The <image> provides an overview of the picture.\n"

_COLUMNS = {
    1: [*LEVEL1_COLUMNS, "objects", "floating_objects"],
    2: ["image_id", "status", "objects", "floating_objects", "relationships"],
}

# {r}: the region as the format writes it.
DESCRIBE = ["Can you give me a brief description of the area marked by {r}?",
            "What is shown in {r}? Describe it briefly.",
            "Please describe {r} in a few words.",
            "What can you tell me about {r} in the picture?"]
RELATE = ["What is the relationship between {rs}?",
          "How are {rs} related?",
          "Describe how {rs} relate to each other."]


def _names(refs: list[str]) -> str:
    return refs[0] if len(refs) == 1 else ", ".join(refs[:-1]) + " and " + refs[-1]


def _box_polygon(box) -> list[list[float]]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def conversation(fmt: str, regions: list[tuple[dict, str]], relationships: list[dict], rng) -> list[dict]:
    """The turns about `regions` ((object, description), numbered from 1) in format `fmt`."""
    index = {o["id"]: i for i, (o, _) in enumerate(regions, start=1)}
    introduced: set[int] = set()

    def ref(i: int) -> str:
        if fmt == "osprey":
            return f"<region{i}>"
        if i in introduced:
            return f"region{i}"
        introduced.add(i)
        return f"region{i} <bbox>"

    turns = []
    for i, (_, text) in enumerate(regions, start=1):
        turns.append({"from": "human", "value": DESCRIBE[rng.integers(len(DESCRIBE))].format(r=ref(i))})
        turns.append({"from": "gpt", "value": text})
    for r in relationships:
        ids = [index[i] for i in dict.fromkeys(r.get("object_ids") or []) if i in index]
        if len(ids) < 2 or not (r.get("phrase") or "").strip():
            continue
        turns.append({"from": "human", "value": RELATE[rng.integers(len(RELATE))].format(rs=_names([ref(i) for i in ids]))})
        turns.append({"from": "gpt", "value": r["phrase"].strip()})
    if fmt == "gpt4roi":
        turns[0]["value"] = GPT4ROI_BEGIN + turns[0]["value"]
    return turns


def image_records(rows: dict, fmt: str, all_regions: bool = False, include_floating: bool = True,
                  max_regions: int = MAX_REGIONS, seed: int = 0) -> list[dict]:
    image_id = rows[1]["image_id"]
    width, height = image_size(rows)
    rng = rng_for(seed, image_id, f"regions-{fmt}")
    described = []
    for o, _ in sorted(flagged_objects(rows, include_floating), key=lambda p: p[0]["id"]):
        attrs = [a.strip() for a in o.get("attributes") or [] if a.strip()]
        if attrs:
            described.append([(o, attrs[rng.integers(len(attrs))])])
        elif all_regions:
            described.append([(o, o["label"])])
    rels = (rows[2].get("relationships") or []) if ok(rows.get(2)) else []
    records = []
    for n, regions in enumerate(chunks(described, max_regions)):
        head = {"id": f"{image_id}#{n}", "file_name": image_id, "image_id": image_id, "height": height, "width": width}
        turns = conversation(fmt, regions, rels, rng)
        if fmt == "gpt4roi":
            records.append({**head, "bboxes": [[float(v) for v in o["bbox"]] for o, _ in regions],
                            "labels": [o["label"] for o, _ in regions], "object_ids": [o["id"] for o, _ in regions],
                            "conversations": turns})
            continue
        annotation = []
        for o, _ in regions:
            masked = usable_mask(o, width, height)
            box = coco_box(o["bbox"])
            annotation.append({"bbox": box, "segmentation": o["segmentation"] if masked else _box_polygon(o["bbox"]),
                               "area": float(mask_area(o["segmentation"])) if masked else box[2] * box[3],
                               "category_name": o["label"], "object_id": o["id"], "has_mask": masked})
        records.append({**head, "annotation": annotation,
                        "description": [f"<region{i}>: {text}" for i, (_, text) in enumerate(regions, start=1)],
                        "conversations": turns})
    return records


def export_region_chat(output_uri: str, dest: str, fmt: str, all_regions: bool = False, include_floating: bool = True,
                       max_regions: int = MAX_REGIONS, seed: int = 0, images_dir: str | None = None,
                       min_side: int = MIN_SIDE, check_images: bool = True) -> dict:
    """Write `output_uri`'s multi-region conversations in format `fmt` to `dest` (.json: a list, what
    both projects' loaders json.load; else JSON Lines). `images_dir`, `min_side`, `check_images`:
    which image files records point at (grand.export.images)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of grand, {', '.join(FORMATS)}; got {fmt!r}")
    if max_regions < 1:
        raise ValueError(f"max_regions must be at least 1, got {max_regions}")
    out = OutputDir(output_uri)
    require_levels(out, [1], "grand export regions")
    n_records = n_regions = n_turns = 0
    files = ImageFiles(out, images_dir, min_side, check_images)
    with SampleWriter(dest) as writer:
        for rows in good_images(out, _COLUMNS):
            records = image_records(rows, fmt, all_regions, include_floating, max_regions, seed)
            for rec in files.attach(rows[1], records):
                n_records += 1
                n_regions += len(rec.get("bboxes") or rec.get("annotation") or [])
                n_turns += len(rec["conversations"]) // 2
                writer.write(rec)
    return {"dest": dest, "format": fmt, "records": n_records, "regions": n_regions, "questions": n_turns,
            **files.summary()}

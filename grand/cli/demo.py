"""`grand demo`: a few real photos (shipped inside scikit-image) through the tiny pipeline."""

from __future__ import annotations

import shutil
from pathlib import Path

from grand.core.dense_caption import NOTE

# Real photographs that scikit-image ships inside its wheel (no download needed).
SAMPLE_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "camera.png")


def write_sample_images(folder: Path) -> Path:
    """Copy the sample photos into `folder`, plus one broken file to show how bad inputs end up."""
    import skimage

    src = Path(skimage.__file__).parent / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_PHOTOS:
        if (src / name).exists():
            shutil.copyfile(src / name, folder / name)
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    return folder


def show_example(output: str) -> str:
    """A short, readable rendering of one row of the results."""
    import pyarrow.dataset as pads

    table = pads.dataset(str(Path(output) / "level1"), format="parquet").to_table()
    rows = table.to_pylist()
    def level(n: int) -> dict:
        folder = Path(output) / f"level{n}"
        if not folder.is_dir():
            return {}
        return {r["image_id"]: r for r in pads.dataset(str(folder), format="parquet").to_table().to_pylist()}

    level2, level3, level4 = level(2), level(3), level(4)
    lines = ["", "example rows:"]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"  {row['image_id']}: status=error ({row['error']})")
            continue
        lines.append(
            f"  {row['image_id']}: {row['width']}x{row['height']}, tags={row['tags'][:4]}, "
            f"{len(row['objects'])} objects, {len(row['floating_objects'])} floating"
        )
        # described objects first: attributes only go to the larger ones
        shown = sorted(row["objects"] + row["floating_objects"], key=lambda o: not o["attributes"])[:2]
        for obj in shown:
            seg = obj["segmentation"]
            lines.append(
                f"      id={obj['id']} label={obj['label']!r} models={obj['models']} bbox={[round(v) for v in obj['bbox']]} "
                f"depth={'-' if obj['depth'] is None else format(obj['depth'], '.3g')} mask={seg['size'] if seg else None} ({obj['segmentation_source']}) "
                f"attributes={obj['attributes'][:1]}"
            )
        l2 = level2.get(row["image_id"])
        if l2 is not None and l2["status"] == "ok":
            for cap in l2["short_captions"]:
                spans = [(d["phrase"][:30], d["tokens_positive"], d["ids"]) for d in cap["details"][:2]]
                lines.append(f"      {cap['model']} caption: {cap['caption'][:60]!r} phrases={spans}")
            lm = l2["landmark"] or {}
            lines.append(f"      landmark: {lm.get('category')} / {lm.get('fine_category')}, "
                         f"{len(l2['relationships'])} relationships")
        l3 = level3.get(row["image_id"])
        if l3 is not None:
            lines += _dense_caption_lines(l3)
        l4 = level4.get(row["image_id"])
        if l4 is not None:
            text = l4["additional_context"]
            lines += (_wrapped("extra context: ", text) if text is not None
                      else [f"      extra context: error ({l4['error']})"])
    lines.append("(levels 1-2 of tiny.yaml use random-weight models: the pipeline is real, their predictions are"
                 " noise; levels 3-4 write with the real SmolLM2-135M-Instruct from what those models found."
                 " pipelines/grand.yaml has the real checkpoints)")
    return "\n".join(lines)


def _dense_caption_lines(l3: dict) -> list[str]:
    """The dense caption, its verdict, and what each attempt's check found."""
    dc = l3["dense_caption"]
    if dc is None:
        return [f"      dense caption: error ({l3['error']})"]
    attempts = dc["attempts"]
    verdict = f"verified at attempt {len(attempts)}" if dc["verified"] else f"flagged after {len(attempts)} attempts"
    lines = _wrapped(f"dense caption ({verdict}, {len(dc['details'])} grounded phrases): ", dc["caption"])
    for k, attempt in enumerate(attempts, 1):
        # grand's own notes say why a check gave no verdict ("[grand] checklist could not be parsed ...")
        notes = [ln[len(NOTE):] for ln in (attempt["reasoning"] or "").splitlines() if ln.startswith(NOTE)]
        if attempt["passed"]:
            found = f"checklist {attempt['checklist'][:6]}: all in the scene graph"
        elif attempt["missing"]:
            found = f"checklist {attempt['checklist'][:6]}: absent {attempt['missing'][:4]}"
        else:
            found = notes[-1] if notes else f"checklist {attempt['checklist'][:6]}"
        lines.append(f"        attempt {k}: {found}")
    return lines


def _wrapped(label: str, text: str, limit: int = 400) -> list[str]:
    """`label` and the text (cut at `limit` characters), wrapped under it."""
    import textwrap

    shown = text if len(text) <= limit else text[:limit].rstrip() + " ..."
    return textwrap.wrap(repr(shown), width=110, initial_indent="      " + label, subsequent_indent="        ")

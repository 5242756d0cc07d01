"""`grand eval captions`: object hallucination of grand's captions, CHAIR-style (Rohrbach et al.
2018), against a COCO or LVIS ground truth of the same images (matched by file name).

For each caption, the object words it mentions are found and mapped to GT categories
(`CategoryVocabulary.mentions`: category names, LVIS synonyms, plural forms, the synonym tables;
grand.eval.categories documents the rules). Each category counts once per caption. A mention is
hallucinated when its category has no instance (crowd instances included) in the image's GT.
Words that map to no GT category are not counted: the GT cannot say whether they are there.
LVIS (federated): only categories annotated for the image (its instances or its
`neg_category_ids`) are judged; a mention of any other category is not counted.

- CHAIR_i: hallucinated mentions / mentions.
- CHAIR_s: captions with at least one hallucinated mention / captions.
- coverage: GT categories of the image mentioned / GT categories of the image (summed over captions).

Reported for each short captioner (level 2), and for the level-3 dense caption: its first attempt
versus the kept (final) caption, both over the images that have one, and the kept caption split by
verified versus flagged. `regenerated` repeats first versus final on the images whose caption was
regenerated at least once: what the chain-of-thought verification changed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from grand.eval.categories import (
    CategoryVocabulary, GroundTruth, load_ground_truth, load_label_map, match_images, output_image_ids,
)
from grand.export import shard_names
from grand.export.rows import Committed, image_rows, ok, require_levels
from grand.io.output import OutputDir


@dataclass
class HallucinationTally:
    """CHAIR counts of one group of captions."""

    captions: int = 0
    mentions: int = 0
    hallucinated: int = 0
    captions_with_hallucination: int = 0
    gt_categories: int = 0
    covered: int = 0
    words: Counter = field(default_factory=Counter)  # hallucinated words, for the examples

    def add(self, mentions: list[tuple[str, int]], present: set[int], judged: set[int] | None) -> None:
        self.captions += 1
        seen: dict[int, str] = {}
        for word, cat in mentions:
            if judged is not None and cat not in judged:
                continue
            seen.setdefault(cat, word)
        bad = [w for c, w in seen.items() if c not in present]
        self.mentions += len(seen)
        self.hallucinated += len(bad)
        self.captions_with_hallucination += bool(bad)
        self.gt_categories += len(present)
        self.covered += len(present & set(seen))
        self.words.update(bad)

    def result(self) -> dict:
        return {
            "captions": self.captions, "mentions": self.mentions, "hallucinated": self.hallucinated,
            "captions_with_hallucination": self.captions_with_hallucination,
            "CHAIR_i": self.hallucinated / self.mentions if self.mentions else None,
            "CHAIR_s": self.captions_with_hallucination / self.captions if self.captions else None,
            "coverage": self.covered / self.gt_categories if self.gt_categories else None,
            "top_hallucinated": dict(self.words.most_common(10)),
        }


def evaluate_captions(output_uri: str, gt: str | GroundTruth, label_map: dict[str, str] | str | None = None) -> dict:
    """CHAIR_i / CHAIR_s / coverage per captioner and for the dense caption (module doc)."""
    truth = gt if isinstance(gt, GroundTruth) else load_ground_truth(gt)
    vocab = CategoryVocabulary(truth.categories, label_map=load_label_map(label_map) if isinstance(label_map, str)
                               else label_map)
    present: dict[int, set[int]] = {}
    for ann in truth.dataset["annotations"]:
        present.setdefault(ann["image_id"], set()).add(int(ann["category_id"]))
    judged: dict[int, set[int]] | None = None
    if truth.is_lvis:
        judged = {im["id"]: set(present.get(im["id"], set())) | {int(c) for c in im.get("neg_category_ids") or []}
                  for im in truth.dataset["images"]}

    out = OutputDir(output_uri)
    levels = (2, 3)
    require_levels(out, levels, "grand eval captions")
    committed = Committed(out)
    columns = {2: ["image_id", "status", "short_captions"], 3: ["image_id", "status", "dense_caption"]}
    # Match on the ids first: only the matched images' captions are then read into the tallies.
    image_ids = output_image_ids(output_uri, levels)
    matched = match_images(truth, image_ids)
    if not matched:
        raise ValueError(f"no image of {output_uri!r} matches a file_name of the ground truth: give the "
                         "annotations of the images that were run")

    def matched_rows():
        for shard in shard_names(out, levels):
            for rows in image_rows(out, shard, levels, columns, committed=committed):
                base = rows.get(2) or rows.get(3)
                if base["image_id"] in matched:
                    yield base["image_id"], rows.get(2), rows.get(3)

    short: dict[str, HallucinationTally] = {}
    dense = {k: HallucinationTally() for k in ("first_attempt", "final", "verified", "flagged",
                                               "regenerated_first", "regenerated_final")}
    for image_id, l2, l3 in matched_rows():
        gid = matched[image_id]
        here = present.get(gid, set())
        judge = judged.get(gid, set()) if judged is not None else None
        if ok(l2):
            for cap in l2.get("short_captions") or []:
                text = cap.get("caption") or ""
                short.setdefault(cap.get("model") or "?", HallucinationTally()).add(vocab.mentions(text), here, judge)
        dc = (l3 or {}).get("dense_caption") if ok(l3) else None
        if dc and dc.get("caption"):
            attempts = dc.get("attempts") or []
            first = attempts[0]["caption"] if attempts else dc["caption"]
            final_m, first_m = vocab.mentions(dc["caption"]), vocab.mentions(first)
            dense["first_attempt"].add(first_m, here, judge)
            dense["final"].add(final_m, here, judge)
            dense["verified" if dc.get("verified") else "flagged"].add(final_m, here, judge)
            if len(attempts) > 1:
                dense["regenerated_first"].add(first_m, here, judge)
                dense["regenerated_final"].add(final_m, here, judge)
    gt_ids = {im["id"] for im in truth.dataset["images"]}
    return {
        "output": output_uri,
        "ground_truth": "lvis" if truth.is_lvis else "coco",
        "images": {"gt": len(gt_ids), "evaluated": len(matched), "output_without_gt": len(image_ids) - len(matched)},
        "short": {name: t.result() for name, t in sorted(short.items())},
        "dense": {k: t.result() for k, t in dense.items()},
    }


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def captions_text(r: dict) -> str:
    """Human-readable table of `evaluate_captions`' result."""
    im = r["images"]
    lines = [f"images: {im['evaluated']} evaluated of {im['gt']} in the ground truth "
             f"({im['output_without_gt']} output images without GT)",
             f"{'captions':28s}{'n':>6s}{'mentions':>10s}{'halluc.':>9s}{'CHAIR_i':>9s}{'CHAIR_s':>9s}{'coverage':>10s}"]

    def row(name: str, s: dict) -> str:
        return (f"{name:28s}{s['captions']:6d}{s['mentions']:10d}{s['hallucinated']:9d}{_pct(s['CHAIR_i']):>9s}"
                f"{_pct(s['CHAIR_s']):>9s}{_pct(s['coverage']):>10s}")

    for name, s in r["short"].items():
        lines.append(row(f"short: {name}", s))
    names = {"first_attempt": "dense: first attempt", "final": "dense: kept (final)", "verified": "dense: verified",
             "flagged": "dense: flagged", "regenerated_first": "dense, regenerated: first",
             "regenerated_final": "dense, regenerated: final"}
    for key, name in names.items():
        if r["dense"][key]["captions"]:
            lines.append(row(name, r["dense"][key]))
    worst = Counter()
    for s in [*r["short"].values(), r["dense"]["final"]]:
        worst.update(s["top_hallucinated"])
    if worst:
        lines.append("most hallucinated words: " + ", ".join(f"{w} ({n})" for w, n in worst.most_common(8)))
    return "\n".join(lines)

"""Hard negatives for referring expressions (`grand export refexp --negatives N`), as Ferret trains
on: questions about something that is not in the image, answered "not present".

Two kinds, per image:
    absent_label       a label of the dataset's vocabulary (every final label of the output) that no
                       model found in this image: not an object's label or candidate label, not a tag
    swapped_attribute  a present label with a modifier taken from another object's attribute
                       ("red" of "red ball" on the dog: "red dog"), kept only when every object with
                       that label has attributes and none of them holds the modifier's words

Records look like refexp's, with no object: `object_id`, `bbox`, `segmentation` null, `negative: true`,
`negative_kind`, and a `question` / `answer` pair ("Is there a red dog in the image?" -> "No, there
is no red dog in the image.").
"""

from __future__ import annotations

import re

from grand.export.mdvp import rng_for
from grand.export.rows import flagged_objects, good_images
from grand.io.output import OutputDir

KINDS = ("absent_label", "swapped_attribute")
_ARTICLES = {"a", "an", "the", "this", "that", "some", "two", "three", "several", "many"}
_MAX_MODIFIER_WORDS = 2


def norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+(?:'[a-z]+)?", (text or "").lower()))


def _variants(label: str) -> set[str]:
    """The label and its simple plural/singular, so "dogs" counts as present when "dog" is."""
    n = norm(label)
    if not n:
        return set()
    out = {n, n + "s", n + "es"}
    if n.endswith("es"):
        out.add(n[:-2])
    if n.endswith("s"):
        out.add(n[:-1])
    return out


def label_vocabulary(out: OutputDir, include_floating: bool = True) -> list[str]:
    """Every final label of the output's good images (sorted): the first of refexp's two passes.
    Bounded by the number of distinct labels, not by the number of images."""
    columns = {1: ["image_id", "status", "objects", "floating_objects"], 2: ["image_id", "status", "objects",
                                                                             "floating_objects"]}
    vocab: set[str] = set()
    for rows in good_images(out, columns):
        vocab.update(norm(o["label"]) for o, _ in flagged_objects(rows, include_floating))
    vocab.discard("")
    return sorted(vocab)


def present_labels(rows: dict, include_floating: bool = True) -> set[str]:
    """Every label any model gave anything in the image (final and candidate labels, tags), with
    simple plural forms. Floating objects count even when left out of the export: a model saw them."""
    found: set[str] = set()
    for o, _ in flagged_objects(rows, True):
        for lab in [o["label"], *(o.get("labels") or [])]:
            found |= _variants(lab)
    for tag in (rows.get(1) or {}).get("tags") or []:
        found |= _variants(tag)
    return found


def modifier(attribute: str, labels: list[str]) -> str | None:
    """The words before the object's label in its attribute, articles dropped ("a red ball" ->
    "red"); None when the label does not occur or nothing (or too much) precedes it."""
    words = norm(attribute).split()
    for lab in labels:
        lab_words = norm(lab).split()
        for k in range(len(words) - len(lab_words) + 1):
            if words[k:k + len(lab_words)] in (lab_words, lab_words[:-1] + [lab_words[-1] + "s"]):
                mods = [w for w in words[:k] if w not in _ARTICLES]
                if 1 <= len(mods) <= _MAX_MODIFIER_WORDS:
                    return " ".join(mods)
                return None
    return None


def negative_expressions(rows: dict, vocabulary: list[str], n: int, seed: int = 0,
                         include_floating: bool = True) -> list[tuple[str, str, str]]:
    """Up to `n` (kind, expression, label) hard negatives of one image, a seeded draw from both kinds."""
    if n <= 0:
        return []
    image_id = rows[1]["image_id"]
    rng = rng_for(seed, image_id, "negatives")
    present = present_labels(rows, include_floating)
    absent = [("absent_label", lab, lab) for lab in vocabulary if not (_variants(lab) & present)]
    objects = [o for o, _ in flagged_objects(rows, include_floating)]
    own: dict[str, set[str]] = {}  # label -> every word its objects' attributes hold
    undescribed: set[str] = set()  # labels with an object nothing is known about: it might be red
    for o in objects:
        if not o.get("attributes"):
            undescribed.add(norm(o["label"]))
        for a in o.get("attributes") or []:
            own.setdefault(norm(o["label"]), set()).update(norm(a).split())
    swapped, seen = [], set()
    for o in objects:
        for a in o.get("attributes") or []:
            mod = modifier(a, [o["label"], *(o.get("labels") or [])])
            if mod is None:
                continue
            for other in objects:
                lab = norm(other["label"])
                if not lab or lab == norm(o["label"]) or lab in undescribed or set(mod.split()) & own.get(lab, set()):
                    continue
                expr = f"{mod} {lab}"
                if expr not in seen:
                    seen.add(expr)
                    swapped.append(("swapped_attribute", expr, lab))
    # Half of each kind where both have enough, the rest from whichever has more.
    picks = [[pool[i] for i in rng.permutation(len(pool))] for pool in (absent, swapped)]
    half = n // 2
    take_swapped = min(len(picks[1]), max(half, n - len(picks[0])))
    chosen = picks[1][:take_swapped] + picks[0][:n - take_swapped]
    return sorted(chosen, key=lambda c: (KINDS.index(c[0]), c[1]))


def article(expr: str) -> str:
    return ("an " if expr[:1] in "aeiou" else "a ") + expr


def negative_record(head: dict, ref_id: int, sent_id: int, kind: str, expr: str, label: str) -> dict:
    words = expr.split()
    return {"ref_id": ref_id, **head, "object_id": None, "category": label, "floating": None, "bbox": None,
            "bbox_xyxy": None, "segmentation": None, "area": 0.0,
            "sentences": [{"sent_id": sent_id, "raw": expr, "sent": expr, "tokens": words, "kind": "negative"}],
            "negative": True, "negative_kind": kind,
            "question": f"Is there {article(expr)} in the image?",
            "answer": f"No, there is no {expr} in the image."}


"""Ground truth in COCO or LVIS format, and the mapping from grand's words (final labels, caption
words) to its categories. `grand eval objects` and `grand eval captions` share both.

Images are matched by file name: a GT image's `file_name` (LVIS has none: the last part of its
`coco_url`) equals an output row's `image_id`, or the last path part of it ("photos/a.jpg" meets
"a.jpg" when no other image has that name).

How a word or label maps to a GT category (`CategoryVocabulary`), first rule that holds wins:

1. `label_map`: an explicit {word: category name} table given by the user (`--label-map`).
2. Name: the words' plural-insensitive keys (`grand.core.verification.singular_key`, the key the
   level-3 verification uses) equal those of a category's name or, for LVIS, of one of its
   `synonyms`; underscores read as spaces. So "dogs" -> dog, "traffic lights" -> traffic light,
   "people" -> person.
3. Synonym group: the words are in a group of `SYNONYMS` (the verification's table: person / man /
   woman / child ..., sofa / couch, tv / television ...) or of `EVAL_SYNONYMS` (below), and another
   member of that group is a category's name. So "man" -> person, "couch" -> couch, "table" ->
   dining table, "plant" -> potted plant.
4. Labels only: the label's last word (its head noun: "wooden table" -> table) by rules 1-3.

In captions (`mentions`), every run of up to `MAX_NGRAM` consecutive words is looked up by rules
1-3, longest first and left to right, so "hot dog" is one mention (category hot dog), not a dog,
and "traffic light" is not a light. Words that map to no category are not counted at all: an
object the GT's vocabulary cannot name cannot be judged.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from grand.core.verification import SYNONYMS, singular_key, words_of

MAX_NGRAM = 4

# Groups added for evaluation: the everyday word for a COCO category whose name is a longer or
# rarer phrase. Like SYNONYMS, each group is an equivalence: keep it to words that mean the same.
EVAL_SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("dining table", "table"),
    ("potted plant", "plant", "houseplant", "flowerpot"),
    ("sports ball", "ball", "football", "soccer ball", "basketball", "baseball", "tennis ball"),
    ("hair drier", "hair dryer", "hairdryer", "blow dryer"),
    ("wine glass", "wineglass"),
    ("tennis racket", "racket", "racquet", "tennis racquet"),
    ("baseball glove", "mitt"),
    ("fire hydrant", "hydrant"),
    ("motorcycle", "scooter", "moped"),
    ("truck", "lorry"),
    ("bench", "park bench"),
    ("teddy bear", "teddy", "stuffed animal"),
    ("donut", "doughnut"),
    ("laptop", "notebook computer"),
    ("keyboard", "computer keyboard"),
    ("mouse", "computer mouse"),
    ("remote", "remote control"),
    ("skis", "ski"),
    ("surfboard", "surf board"),
    ("skateboard", "skate board"),
    ("refrigerator", "fridge"),
    ("boat", "ship", "sailboat", "canoe", "kayak"),
    ("bird", "pigeon", "seagull", "gull", "duck", "parrot"),
)


@dataclass
class GroundTruth:
    """A COCO/LVIS instances file, normalised: every annotation has `iscrowd` and `area`, every
    image a `file_name`. `dataset` is what pycocotools' COCO reads."""

    dataset: dict
    is_lvis: bool

    @property
    def categories(self) -> list[dict]:
        return self.dataset["categories"]

    def coco(self):
        """A pycocotools COCO of the ground truth (its progress prints silenced)."""
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = self.dataset
            gt.createIndex()
        return gt


def load_ground_truth(path: str) -> GroundTruth:
    """Read a COCO or LVIS instances JSON; raises ValueError saying what is wrong with it."""
    import fsspec

    try:
        with fsspec.open(str(path), "r", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"ground truth {path!r} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"ground truth {path!r} is not JSON ({err}); give a COCO or LVIS instances file") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"ground truth {path!r} lacks {', '.join(missing)}: give a COCO or LVIS instances JSON "
                         "(the one with images, annotations and categories)")
    is_lvis = any("neg_category_ids" in im for im in data["images"])
    for im in data["images"]:
        if not im.get("file_name"):
            url = im.get("coco_url") or im.get("flickr_url") or ""
            if not url:
                raise ValueError(f"ground truth {path!r}: image {im.get('id')!r} has neither file_name nor coco_url")
            im["file_name"] = PurePosixPath(url.split("?")[0]).name
    for ann in data["annotations"]:
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    return GroundTruth(data, is_lvis)


def match_images(gt: GroundTruth, image_ids: Iterable[str]) -> dict[str, int]:
    """{output image_id: GT image id} by file name (module doc). Ambiguous base names are skipped."""
    by_name = {im["file_name"]: im["id"] for im in gt.dataset["images"]}
    by_base: dict[str, list[int]] = {}
    for name, gid in by_name.items():
        by_base.setdefault(PurePosixPath(name).name, []).append(gid)
    ids = list(image_ids)
    base_count: dict[str, int] = {}
    for image_id in ids:
        base = PurePosixPath(image_id).name
        base_count[base] = base_count.get(base, 0) + 1
    out: dict[str, int] = {}
    for image_id in ids:
        if image_id in by_name:
            out[image_id] = by_name[image_id]
            continue
        base = PurePosixPath(image_id).name
        cands = by_base.get(base) or []
        if len(cands) == 1 and base_count[base] == 1:
            out[image_id] = cands[0]
    return out


def output_image_ids(output_uri: str, levels: Sequence[int]) -> list[str]:
    """Every image id of an output folder at the lowest of `levels` each shard has (only the id
    column is read), so an evaluation can match the GT first and then keep only matched rows."""
    from grand.export import iter_rows, shard_names
    from grand.io.output import OutputDir

    out = OutputDir(output_uri)
    ids: list[str] = []
    committed = {lv: out.committed_shards(lv) for lv in levels}
    for shard in shard_names(out, levels):
        base = next(lv for lv in sorted(levels) if shard in committed[lv])
        ids.extend(r["image_id"] for r in iter_rows(out, base, shard, ["image_id"]))
    return ids


def _key(text: str) -> tuple[str, ...]:
    return tuple(singular_key(w) for w in words_of(text.replace("_", " ")))


class CategoryVocabulary:
    """Maps labels and caption words to GT category ids (rules: module doc)."""

    def __init__(
        self,
        categories: Sequence[Mapping],
        synonyms: Sequence[Sequence[str]] = SYNONYMS + EVAL_SYNONYMS,
        label_map: Mapping[str, str] | None = None,
    ) -> None:
        self.names = {int(c["id"]): str(c["name"]) for c in categories}
        by_name: dict[tuple[str, ...], int] = {}
        for c in categories:
            for text in [c["name"], *(c.get("synonyms") or [])]:
                by_name.setdefault(_key(str(text)), int(c["id"]))
        self._table: dict[tuple[str, ...], int] = dict(by_name)
        for group in synonyms:
            keys = [_key(w) for w in group]
            target = next((by_name[k] for k in keys if k in by_name), None)
            if target is None:
                continue
            for k in keys:
                self._table.setdefault(k, target)  # a category's own name keeps its category
        name_ids = {_key(n): i for i, n in self.names.items()}
        for word, cat in (label_map or {}).items():
            cid = name_ids.get(_key(str(cat)))
            if cid is None:
                raise ValueError(f"label map: {word!r} -> {cat!r}, which is not a category of the ground truth")
            self._table[_key(str(word))] = cid  # the user's table wins
        self._longest = max((len(k) for k in self._table), default=1)

    def category_of(self, label: str | None) -> int | None:
        """The category of a final label (rules 1-4), or None."""
        if not label:
            return None
        key = _key(label)
        if not key:
            return None
        if key in self._table:
            return self._table[key]
        return self._table.get(key[-1:])

    def mentions(self, text: str) -> list[tuple[str, int]]:
        """(matched words, category id) of each object word in a caption, in order (rules 1-3)."""
        words = words_of(text.replace("_", " "))
        keys = [singular_key(w) for w in words]
        out: list[tuple[str, int]] = []
        i = 0
        limit = min(MAX_NGRAM, self._longest)
        while i < len(words):
            for n in range(min(limit, len(words) - i), 0, -1):
                cat = self._table.get(tuple(keys[i:i + n]))
                if cat is not None:
                    out.append((" ".join(words[i:i + n]), cat))
                    i += n
                    break
            else:
                i += 1
        return out


def load_label_map(path: str | None) -> dict[str, str] | None:
    """A {word: GT category name} JSON object, or None."""
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"label map {path!r} must be a JSON object {{word: category name}}")
    return data


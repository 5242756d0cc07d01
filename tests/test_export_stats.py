"""dataset_stats on the hand-built fixture of test_export_coco; expected numbers counted by hand."""

from __future__ import annotations

import json
from pathlib import Path

from test_export_coco import build_fixture

from grand.export import dataset_stats, stats_text


def test_stats_counts(tmp_path: Path) -> None:
    stats = dataset_stats(str(build_fixture(tmp_path / "out")))
    assert stats["level1"] == {
        "shards": 2, "images": 5, "ok": 3, "errors": 2, "error_reasons": {"decode: bad jpeg": 2},
        "regions": 5, "objects": 3, "floating": 2, "regions_with_attributes": 2, "attributes": 3,
        "concepts": 4,  # dog, ball, cat, tree
    }
    assert stats["level2"] == {
        "shards": 1, "images": 2, "ok": 1, "errors": 1, "error_reasons": {"vlm: timeout": 1},
        "short_captions": 2, "caption_tokens": 9, "phrases": 3,  # tokens: 6 + 3 words
        "grounded_phrases": 2, "relationships": 1,
        "objects": 1, "floating": 2, "landmark_categories": {"Outdoor": 1},
    }
    json.dumps(stats)  # JSON-ready (no Counters)


def test_stats_text(tmp_path: Path) -> None:
    text = stats_text(dataset_stats(str(build_fixture(tmp_path / "out"))))
    assert "level 1" in text and "level 2" in text
    assert "unique labels (concepts): 4" in text and "Outdoor: 1" in text and "decode: bad jpeg: 2" in text


def test_stats_empty(tmp_path: Path) -> None:
    stats = dataset_stats(str(tmp_path / "nothing"))
    assert "level1" not in stats and "level2" not in stats
    assert "no committed shards" in stats_text(stats)


def test_levels_3_4_and_summary_table(tmp_path: Path) -> None:
    from export_fixtures import CONTEXT_A, DENSE_A, SHORT_A, SHORT_C, build_output

    from grand.export.stats import summary_table

    stats = dataset_stats(str(build_output(tmp_path)))
    assert stats["level3"] == {
        "shards": 1, "images": 2, "ok": 1, "errors": 1, "error_reasons": {"decode: cannot identify image": 1},
        "dense_captions": 1, "verified": 1, "dense_caption_tokens": 14, "dense_phrases": 4,
        "dense_grounded_phrases": 3, "caption_attempts": 1,  # "them" is grounded to nothing
    }
    assert stats["level4"]["contexts"] == 1 and stats["level4"]["context_tokens"] == 17
    tokens = sum(len(t.split()) for t in (SHORT_A, SHORT_C, DENSE_A, CONTEXT_A))
    assert tokens == 8 + 5 + 14 + 17
    assert dict(summary_table(stats)) == {
        "images": 2, "regions": 6,  # level 2's: a has dog, ball, tree, frisbee; c has person, cat
        "unique concepts": 5, "referring expressions": 4 + 3,  # 4 attributes, 3 relationships
        "short captions": 2, "dense captions": 1, "tokens": tokens,
    }
    text = stats_text(stats)
    assert "level 3" in text and "verified dense captions: 1" in text and "context tokens: 17" in text
    assert "level3" not in dataset_stats(str(tmp_path / "out"), levels=(1, 2))

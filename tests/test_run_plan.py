"""Which shards each pass of a run computes: a committed level is never redone (unless a level it
reads is), and a level alone only runs where the level it reads is committed."""

from __future__ import annotations

import pytest

from grand.config import ConfigError
from grand.io.sources import ShardSpec
from grand.runtime.pipeline import parse_levels, plan_passes


def _shards(n: int) -> list[ShardSpec]:
    return [ShardSpec(name=f"s{k}", kind="folder", uri="/x", num_images=1, members=(f"{k}.jpg",)) for k in range(n)]


def _names(p) -> list[str]:
    return [s.name for s in p.shards]


def test_parse_levels_accepts_lists_and_rejects_unknown_levels():
    assert parse_levels("2,1") == (1, 2) and parse_levels("1") == (1,) and parse_levels([2]) == (2,)
    assert parse_levels("4,3") == (3, 4) and parse_levels("1,2,4") == (1, 2, 4) and parse_levels("4") == (4,)
    for bad in ("", "5", "0", "1,3", "1,4", "x"):
        with pytest.raises(ConfigError, match="--levels"):
            parse_levels(bad)


def test_levels_1_2_compute_both_where_level1_is_missing_and_only_level2_elsewhere():
    shards = _shards(4)
    committed = {1: {"s0", "s1"}, 2: {"s0"}}
    passes, missing = plan_passes((1, 2), shards, committed, force=False)
    assert [(p.levels, _names(p)) for p in passes] == [((1, 2), ["s2", "s3"]), ((2,), ["s1"])]
    assert missing == {}


def test_force_redoes_everything_in_one_pass():
    passes, _ = plan_passes((1, 2), _shards(3), {1: {"s0"}, 2: {"s0"}}, force=True)
    assert [(p.levels, _names(p)) for p in passes] == [((1, 2), ["s0", "s1", "s2"])]


def test_level2_alone_runs_over_committed_level1_and_reports_the_rest():
    passes, missing = plan_passes((2,), _shards(3), {1: {"s0", "s2"}, 2: {"s2"}}, force=False)
    assert [(p.levels, _names(p)) for p in passes] == [((2,), ["s0"])]
    assert missing == {1: ["s1"]}
    forced, _ = plan_passes((2,), _shards(3), {1: {"s0", "s2"}, 2: {"s2"}}, force=True)
    assert [_names(p) for p in forced] == [["s0", "s2"]]


def test_nothing_to_do_gives_no_passes():
    passes, missing = plan_passes((1,), _shards(2), {1: {"s0", "s1"}, 2: set()}, force=False)
    assert passes == [] and missing == {}


def test_levels_1_to_4_start_each_shard_where_its_committed_levels_end():
    committed = {1: {"s1", "s2", "s3", "s4"}, 2: {"s2", "s3", "s4"}, 3: {"s3"}, 4: {"s4"}}
    passes, missing = plan_passes((1, 2, 3, 4), _shards(5), committed, force=False)
    assert [(p.levels, _names(p), p.reads) for p in passes] == [
        ((1, 2, 3, 4), ["s0"], 0), ((2, 3, 4), ["s1"], 1), ((3,), ["s4"], 2), ((3, 4), ["s2"], 2), ((4,), ["s3"], 2),
    ]
    assert missing == {}


def test_redoing_a_level_redoes_the_requested_levels_that_read_it():
    # level 1 missing but 2 and 3 on disk (deleted by hand): 2 and 3 would be stale, so they are redone
    passes, _ = plan_passes((1, 2, 3), _shards(1), {1: set(), 2: {"s0"}, 3: {"s0"}}, force=False)
    assert [p.levels for p in passes] == [(1, 2, 3)]
    # level 3 missing: level 4 reads level 2, not 3, so it is kept
    passes, _ = plan_passes((3, 4), _shards(1), {2: {"s0"}, 3: set(), 4: {"s0"}}, force=False)
    assert [p.levels for p in passes] == [(3,)]


def test_levels_3_4_alone_need_level_2():
    passes, missing = plan_passes((3, 4), _shards(3), {1: {"s0", "s1"}, 2: {"s0"}}, force=False)
    assert [(p.levels, _names(p)) for p in passes] == [((3, 4), ["s0"])]
    assert missing == {2: ["s1", "s2"]}


# -- parallel planning (grand.runtime.plan.RayMapper, without Ray) -------------------------------------
class _RecordingMapper:
    """RayMapper with its Ray part replaced by a record of what it would send."""

    def __init__(self, parallel_after_s: float):
        from grand.runtime.plan import RayMapper

        class Recording(RayMapper):
            def _remote(self, fn, items, progress):
                self.sent = list(items)
                progress.advance(len(items))
                return [fn(*args) for args in items]

        self.mapper = Recording(None, 0.25, parallel_after_s=parallel_after_s)


def test_planning_stays_in_the_driver_while_it_is_quick_and_sends_the_rest_to_ray_otherwise():
    import time

    items = [(k,) for k in range(5)]
    quick = _RecordingMapper(parallel_after_s=60).mapper
    assert quick(lambda k: k * 10, items, "tars") == [0, 10, 20, 30, 40]
    assert quick.remote_items == 0 and not hasattr(quick, "sent")  # a few quick scans never start Ray

    def slow(k):
        time.sleep(0.02)
        return k * 10

    eager = _RecordingMapper(parallel_after_s=0.01).mapper  # 4 scans left at 0.02 s each > 0.01 s
    assert eager(slow, items, "tars") == [0, 10, 20, 30, 40]  # results in input order
    assert eager.remote_items == 4 and eager.sent == items[1:]

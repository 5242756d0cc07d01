"""ShardSink, manifest and status: a shard becomes visible only when complete, exactly once."""

import dataclasses

import pyarrow.parquet as pq
import pytest

from grand.io.manifest import Manifest, save_plan
from grand.io.output import OutputDir
from grand.io.sink import ShardSink, error_reason
from grand.io.sources import ShardSpec
from grand.io.status import output_status
from grand.schema import LEVEL1_SCHEMA, Level1Row, ObjectRecord


def _row(shard: str, index: int, status: str = "ok") -> dict:
    row = Level1Row(image_id=f"{shard}/{index}", source="x", shard=shard, index=index, status=status,
                    error=None if status == "ok" else "decode: empty file", width=4, height=3,
                    objects=[ObjectRecord(id=0, bbox=[0, 0, 2, 2], label="cat", labels=["cat"], score=0.9,
                                          models=["a", "b"])])
    return dataclasses.asdict(row)


@pytest.fixture
def out(tmp_path):
    return OutputDir(str(tmp_path / "out"))


def test_shard_is_committed_only_when_every_row_arrived(out):
    sink = ShardSink(out, 1, LEVEL1_SCHEMA, {"a": 3, "b": 1}, Manifest.load(out))
    assert sink.add("a", 2, _row("a", 2))
    assert sink.add("a", 0, _row("a", 0, "error"))
    assert not out.exists(out.shard_path(1, "a"))  # 2 of 3: nothing visible yet
    assert out.committed_shards(1) == set()
    sink.add("a", 1, _row("a", 1))
    assert out.committed_shards(1) == {"a"}
    table = pq.read_table(out.shard_path(1, "a"))
    assert table["index"].to_pylist() == [0, 1, 2]  # written in shard order whatever the arrival order
    assert table.schema.equals(LEVEL1_SCHEMA, check_metadata=False)
    entry = Manifest.load(out).shard_entry(1, "a")
    assert (entry["rows"], entry["ok"], entry["errors"]) == (3, 2, 1)
    assert entry["error_reasons"] == {"decode: empty file": 1}
    assert sink.incomplete() == {}


def test_duplicates_are_dropped_and_unknown_shards_refused(out):
    sink = ShardSink(out, 1, LEVEL1_SCHEMA, {"a": 2}, Manifest.load(out))
    assert sink.add("a", 0, _row("a", 0))
    assert not sink.add("a", 0, _row("a", 0))
    assert sink.duplicates == 1
    assert sink.incomplete() == {"a": 1}
    with pytest.raises(KeyError):
        sink.add("zzz", 0, _row("zzz", 0))


def test_no_temp_files_left_in_level_folder(out):
    sink = ShardSink(out, 1, LEVEL1_SCHEMA, {"a": 1}, Manifest.load(out))
    sink.add("a", 0, _row("a", 0))
    assert sorted(p.rsplit("/", 1)[-1] for p in out.fs.ls(out.path("level1"), detail=False)) == ["a.parquet"]


def test_status_reports_done_pending_failed_and_errors(out):
    shards = [ShardSpec(name=n, kind="folder", uri="/in", num_images=k, members=tuple(f"{n}{i}.jpg" for i in range(k)))
              for n, k in (("a", 2), ("b", 1), ("c", 1))]
    save_plan(out, "/in", shards)
    manifest = Manifest.load(out)
    sink = ShardSink(out, 1, LEVEL1_SCHEMA, {"a": 2}, manifest)
    sink.add("a", 0, _row("a", 0))
    sink.add("a", 1, _row("a", 1, "error"))
    manifest.record_failure(1, "c", "RuntimeError: boom")
    manifest.save()
    st = output_status(out.uri)["levels"]["level1"]
    assert (st["done"], st["pending"], st["failed"]) == (1, 1, 1)
    assert (st["images_done"], st["images_planned"], st["errors"]) == (2, 4, 1)
    assert st["failed_shards"] == {"c": "RuntimeError: boom"}


def test_status_of_a_non_output_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a grand output folder"):
        output_status(str(tmp_path))


def test_error_reason_groups_by_the_first_two_parts():
    assert error_reason("decode: not an image: cannot identify image file") == "decode: not an image"
    assert error_reason("detector 'owlv2': RuntimeError: x") == "detector 'owlv2': RuntimeError"


def test_arrow_rows_commit_the_same_file_as_dict_rows(tmp_path):
    """The driver hands rows on as the workers' Arrow structs (never parsed): the committed shard is
    byte-identical to the one built from the same rows as dicts, in any arrival order, duplicates dropped."""
    import pyarrow as pa

    rows = [_row("a", i, "error" if i == 1 else "ok") for i in range(3)]
    as_dicts, as_arrow = OutputDir(str(tmp_path / "d")), OutputDir(str(tmp_path / "a"))
    dict_sink = ShardSink(as_dicts, 1, LEVEL1_SCHEMA, {"a": 3}, Manifest.load(as_dicts))
    for r in rows:
        dict_sink.add("a", r["index"], r)
    sink = ShardSink(as_arrow, 1, LEVEL1_SCHEMA, {"a": 3}, Manifest.load(as_arrow))
    structs = pa.array(rows, type=pa.struct(list(LEVEL1_SCHEMA)))
    assert sink.add_arrow(["a", "a"], [2, 0], structs.take([2, 0])) == [True, True]
    assert sink.incomplete() == {"a": 2} and not as_arrow.exists(as_arrow.shard_path(1, "a"))
    assert sink.add_arrow(["a", "a"], [0, 1], structs.take([0, 1])) == [False, True]
    assert sink.duplicates == 1 and sink.committed == ["a"] and sink.incomplete() == {}
    assert sink.add_arrow(["a"], [2], structs.take([2])) == [False]  # a late copy of a committed row
    assert as_arrow.fs.cat(as_arrow.shard_path(1, "a")) == as_dicts.fs.cat(as_dicts.shard_path(1, "a"))
    entry = Manifest.load(as_arrow).shard_entry(1, "a")
    assert (entry["rows"], entry["ok"], entry["errors"]) == (3, 2, 1)
    with pytest.raises(KeyError):
        sink.add_arrow(["zzz"], [0], structs.take([0]))

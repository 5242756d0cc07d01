"""Planning inputs into shards and reading them back with exact counts."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grand.config import InputSpec
from grand.io.errors import TransientReadError
from grand.io.sources import ShardSpec, SourceImage, plan_shards, read_shard


def _cfg(**kw) -> InputSpec:
    return InputSpec(**kw)


def _fake_image(tag: str) -> bytes:
    # Sources never decode: any bytes identify the file, which keeps these tests independent.
    return f"image:{tag}".encode()


def _read_all(spec: ShardSpec, cfg: InputSpec) -> list[SourceImage]:
    rows = list(read_shard(spec, cfg))
    assert [r.index for r in rows] == list(range(spec.num_images))
    return rows


# -- folders -----------------------------------------------------------------------------------
@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    root = tmp_path / "my photos"
    files = ["b.jpg", "a.png", "sub/c.JPG", "sub/deeper/d.webp", "z/e.jpeg"]
    ignored = [".hidden.jpg", ".cache/x.jpg", "sub/.thumbs/y.png", "notes.txt", "sub/readme.md"]
    for rel in files + ignored:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_fake_image(rel))
    return root


def test_folder_is_planned_recursively_sorted_and_sharded(photo_folder: Path):
    specs = plan_shards(str(photo_folder), _cfg(shard_size=2))
    assert [s.name for s in specs] == ["my_photos-00000", "my_photos-00001", "my_photos-00002"]
    assert [s.members for s in specs] == [
        ("a.png", "b.jpg"),
        ("sub/c.JPG", "sub/deeper/d.webp"),
        ("z/e.jpeg",),
    ]
    assert [s.num_images for s in specs] == [2, 2, 1]
    assert all(s.kind == "folder" and s.uri == str(photo_folder) for s in specs)
    assert plan_shards(str(photo_folder) + "/", _cfg(shard_size=2)) == specs  # stable


def test_shard_spec_round_trips_through_json(photo_folder: Path):
    for spec in plan_shards(str(photo_folder), _cfg(shard_size=2)):
        assert ShardSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_shard_spec_rejects_inconsistent_plans():
    with pytest.raises(ValueError, match="kind"):
        ShardSpec("s", "zip", "/x", 1)
    with pytest.raises(ValueError, match="num_images"):
        ShardSpec("s", "folder", "/x", 2, ("a.jpg",))


def test_folder_shard_reads_bytes_with_relative_ids(photo_folder: Path):
    cfg = _cfg(shard_size=10)
    (spec,) = plan_shards(str(photo_folder), cfg)
    rows = _read_all(spec, cfg)
    assert [r.image_id for r in rows] == list(spec.members)
    for r in rows:
        assert r.error is None and r.sidecar is None
        assert r.data == _fake_image(r.image_id)
        assert r.source == f"{photo_folder}/{r.image_id}"


def test_unreadable_file_becomes_an_error_row_and_a_vanished_one_fails_the_shard(photo_folder: Path):
    cfg = _cfg(shard_size=10, read_attempts=2, read_backoff_s=0)
    (spec,) = plan_shards(str(photo_folder), cfg)
    (photo_folder / "b.jpg").unlink()
    (photo_folder / "b.jpg").mkdir()  # a folder where the file was: its content can never be read
    rows = _read_all(spec, cfg)
    bad = {r.image_id: r for r in rows if r.error}
    assert set(bad) == {"b.jpg"}
    assert bad["b.jpg"].data == b"" and bad["b.jpg"].error.startswith("cannot read file")
    assert sum(r.error is None for r in rows) == 4

    (photo_folder / "sub/c.JPG").unlink()  # missing: storage trouble, not content
    with pytest.raises(TransientReadError, match=r"sub/c\.JPG after 2 tries: FileNotFoundError") as err:
        list(read_shard(spec, cfg))
    assert err.value.shard == spec.name


def test_extensions_and_single_image_input(photo_folder: Path):
    specs = plan_shards(str(photo_folder), _cfg(extensions=["PNG", ".webp"]))
    assert specs[0].members == ("a.png", "sub/deeper/d.webp")
    (single,) = plan_shards(str(photo_folder / "b.jpg"), _cfg())
    assert (single.name, single.members, single.num_images) == ("my_photos-00000", ("b.jpg",), 1)
    assert _read_all(single, _cfg())[0].data == _fake_image("b.jpg")


def test_missing_or_empty_inputs_raise_saying_what_was_looked_for(tmp_path: Path):
    with pytest.raises(ValueError, match="does not exist"):
        plan_shards(str(tmp_path / "nope"), _cfg())
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    (tmp_path / "empty" / ".hidden" / "a.jpg").write_bytes(b"x")
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"holds no images: looked for files ending in .*\.jpg.*\.tar or \.parquet"):
        plan_shards(str(tmp_path / "empty"), _cfg())
    (tmp_path / "doc.txt").write_text("hi")
    with pytest.raises(ValueError, match="not an image folder"):
        plan_shards(str(tmp_path / "doc.txt"), _cfg())
    with pytest.raises(ValueError, match="matches no files"):
        plan_shards(str(tmp_path / "*.tar"), _cfg())


# -- SA-1B tars --------------------------------------------------------------------------------
def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _sa1b_members(first: int, count: int, sidecar_every: int = 1) -> list[tuple[str, bytes]]:
    members = []
    for i in range(first, first + count):
        members.append((f"./sa_{i}.jpg", _fake_image(f"sa_{i}") + bytes(600)))  # > one tar block
        if (i - first) % sidecar_every == 0:
            members.append((f"./sa_{i}.json", json.dumps({"image": {"image_id": i}, "annotations": []}).encode()))
    return members


def test_folder_of_tars_gives_one_shard_per_tar_with_sidecars(tmp_path: Path):
    root = tmp_path / "sa1b"
    extra = [("./._sa_9.jpg", b"macos resource fork"), ("README.txt", b"hi"), ("./sa_99.json", b"{}")]
    _write_tar(root / "sa_000000.tar", _sa1b_members(0, 3, sidecar_every=2) + extra)
    _write_tar(root / "sa_000001.tar", _sa1b_members(10, 2))
    (root / "sa_000000.txt").write_text("checksums")  # neither image nor container: ignored
    cfg = _cfg()
    specs = plan_shards(str(root), cfg)
    assert [(s.name, s.kind, s.num_images) for s in specs] == [("sa_000000", "tar", 3), ("sa_000001", "tar", 2)]
    assert specs[0].uri == str(root / "sa_000000.tar")

    rows = _read_all(specs[0], cfg)
    assert [r.image_id for r in rows] == ["sa_0", "sa_1", "sa_2"]
    assert [r.error for r in rows] == [None] * 3
    assert rows[1].data == _fake_image("sa_1") + bytes(600)
    assert json.loads(rows[0].sidecar)["image"]["image_id"] == 0
    assert rows[1].sidecar is None  # no sa_1.json in this tar
    assert json.loads(rows[2].sidecar)["image"]["image_id"] == 2
    assert rows[2].source == f"{root / 'sa_000000.tar'}::./sa_2.jpg"
    assert [r.image_id for r in _read_all(specs[1], cfg)] == ["sa_10", "sa_11"]


def test_sidecar_before_its_image_is_paired(tmp_path: Path):
    tar = _write_tar(
        tmp_path / "t.tar",
        [("sa_1.json", b'{"a": 1}'), ("sa_1.jpg", b"one"), ("sa_2.jpg", b"two"), ("sa_2.json", b'{"a": 2}')],
    )
    (spec,) = plan_shards(str(tar), _cfg())
    assert [(r.image_id, r.sidecar) for r in _read_all(spec, _cfg())] == [("sa_1", '{"a": 1}'), ("sa_2", '{"a": 2}')]


def test_single_tar_and_glob_of_tars(tmp_path: Path):
    a = _write_tar(tmp_path / "part_a" / "shard.tar", _sa1b_members(0, 2))
    _write_tar(tmp_path / "part_b" / "shard.tar", _sa1b_members(5, 1))
    (spec,) = plan_shards(str(a), _cfg())
    assert (spec.name, spec.num_images) == ("shard", 2)
    specs = plan_shards(str(tmp_path / "part_*" / "*.tar"), _cfg())
    assert [(s.name, s.num_images) for s in specs] == [("part_a-shard", 2), ("part_b-shard", 1)]


def test_truncated_tar_keeps_the_planned_count_with_error_rows(tmp_path: Path):
    tar = _write_tar(tmp_path / "sa_000007.tar", _sa1b_members(0, 6))
    cfg = _cfg()
    (spec,) = plan_shards(str(tar), cfg)
    assert spec.num_images == 6
    with tarfile.open(tar) as t:
        cut = t.getmember("./sa_3.jpg").offset_data + 100
    tar.write_bytes(tar.read_bytes()[:cut])  # cut in the middle of sa_3.jpg's data

    rows = _read_all(spec, cfg)
    assert [r.image_id for r in rows] == ["sa_0", "sa_1", "sa_2", "sa_3", "sa_000007:4", "sa_000007:5"]
    assert [r.error is None for r in rows] == [True, True, True, False, False, False]
    assert rows[2].data == _fake_image("sa_2") + bytes(600) and rows[2].sidecar is not None
    assert rows[3].error.startswith("cannot read tar member") and rows[3].data == b""
    for r in rows[4:]:
        assert r.data == b"" and r.error == "tar is damaged (read 4 of 6 planned images)"


def test_tar_cut_between_members_is_padded(tmp_path: Path):
    tar = _write_tar(tmp_path / "t.tar", _sa1b_members(0, 4))
    (spec,) = plan_shards(str(tar), _cfg())
    with tarfile.open(tar) as t:
        cut = t.getmember("./sa_2.jpg").offset  # the header block of the third image
    tar.write_bytes(tar.read_bytes()[:cut])
    rows = _read_all(spec, _cfg())
    assert [r.error is None for r in rows] == [True, True, False, False]
    assert rows[2].error == "tar ended early (read 2 of 4 planned images)"


def test_tar_replaced_by_garbage_gives_all_error_rows(tmp_path: Path):
    tar = _write_tar(tmp_path / "x.tar", _sa1b_members(0, 3))
    cfg = _cfg()
    (spec,) = plan_shards(str(tar), cfg)
    tar.write_bytes(b"not a tar at all")
    rows = _read_all(spec, cfg)
    assert [r.image_id for r in rows] == ["x:0", "x:1", "x:2"]
    assert all(r.error.startswith("cannot read tar") and r.data == b"" for r in rows)
    tar.unlink()  # a vanished tar is not damaged content: its shard fails, nothing is committed
    with pytest.raises(TransientReadError, match="FileNotFoundError"):
        list(read_shard(spec, _cfg(read_attempts=1)))


def test_tar_with_fewer_images_than_planned_is_padded(tmp_path: Path):
    tar = _write_tar(tmp_path / "x.tar", _sa1b_members(0, 3))
    (spec,) = plan_shards(str(tar), _cfg())
    _write_tar(tar, _sa1b_members(0, 2))
    rows = _read_all(spec, _cfg())
    assert [r.error is None for r in rows] == [True, True, False]
    assert "tar ended early" in rows[2].error


def _read_ids_and_sidecars(specs: list[ShardSpec], cfg: InputSpec) -> list[tuple[str, str | None]]:
    return [(r.image_id, r.sidecar) for spec in specs for r in _read_all(spec, cfg)]


def test_tar_larger_than_shard_size_becomes_member_ranges_that_read_every_image_once(tmp_path: Path):
    # 11 images with sidecars but sa_2 and sa_7, some before their image (either order pairs)
    members = []
    for i in range(11):
        image = (f"./sa_{i}.jpg", _fake_image(f"sa_{i}") + bytes(600))
        sidecar = (f"./sa_{i}.json", json.dumps({"image": {"image_id": i}}).encode())
        members += [image] if i % 5 == 2 else ([sidecar, image] if i % 8 == 0 else [image, sidecar])
    members.insert(7, ("README.txt", b"not a sample"))
    tar = _write_tar(tmp_path / "sa_000042.tar", members)
    cfg = _cfg(shard_size=4)
    specs = plan_shards(str(tar), cfg)
    assert [(s.name, s.num_images, s.start) for s in specs] == [
        ("sa_000042-00000", 4, 0), ("sa_000042-00001", 4, 4), ("sa_000042-00002", 3, 8)]
    assert all(s.kind == "tar" and s.uri == str(tar) and s.container == "sa_000042" for s in specs)
    with tarfile.open(tar) as t:
        headers = {m.name: m.offset for m in t.getmembers()}
    assert specs[1].offset == headers["./sa_4.jpg"]  # sa_4's sidecar comes after it
    assert specs[2].offset == headers["./sa_8.json"]  # sa_8's sidecar comes first: the range starts there

    whole = _read_ids_and_sidecars(plan_shards(str(tar), _cfg()), cfg)
    assert [i for i, _ in whole] == [f"sa_{i}" for i in range(11)]
    assert _read_ids_and_sidecars(specs, cfg) == whole  # each image once, with its own sidecar
    for image_id, sidecar in whole:
        n = int(image_id.split("_")[1])
        assert (sidecar is None) == (n % 5 == 2)
        assert sidecar is None or json.loads(sidecar)["image"]["image_id"] == n


def test_tar_ranges_are_ceil_n_over_k_stable_and_survive_the_plan_file(tmp_path: Path):
    root = tmp_path / "tars"
    _write_tar(root / "a.tar", _sa1b_members(0, 7))
    _write_tar(root / "b.tar", _sa1b_members(100, 3))  # fits one shard: named by its stem as before
    for k, expected in ((1, 7), (2, 4), (3, 3), (6, 2), (7, 1), (50, 1)):
        names = [s.name for s in plan_shards(str(root), _cfg(shard_size=k)) if s.uri.endswith("a.tar")]
        assert len(names) == expected, k
    specs = plan_shards(str(root), _cfg(shard_size=3))
    assert [s.name for s in specs] == ["a-00000", "a-00001", "a-00002", "b"]
    assert plan_shards(str(root), _cfg(shard_size=3)) == specs  # the same input plans the same
    for spec in specs:
        assert ShardSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    # A plan saved before ranges existed has neither start nor offset: its shard is the whole tar.
    old = {"name": "a", "kind": "tar", "uri": str(root / "a.tar"), "num_images": 7, "members": []}
    assert [r.image_id for r in _read_all(ShardSpec.from_dict(old), _cfg())] == [f"sa_{i}" for i in range(7)]
    with pytest.raises(ValueError, match="must be >= 0"):
        ShardSpec("a-00000", "tar", str(root / "a.tar"), 3, offset=-512)
    # a split name clashing with another tar's stem is made unique
    _write_tar(root / "a-00001.tar", _sa1b_members(200, 1))
    names = [s.name for s in plan_shards(str(root), _cfg(shard_size=3))]
    assert len(set(names)) == len(names) == 5 and "a-00001-1" in names


def test_tar_gz_ranges_read_from_their_offset_in_the_decompressed_stream(tmp_path: Path):
    import gzip

    raw = _write_tar(tmp_path / "plain.tar", _sa1b_members(0, 5))
    gz = tmp_path / "packed.tar.gz"
    gz.write_bytes(gzip.compress(raw.read_bytes()))
    specs = plan_shards(str(gz), _cfg(shard_size=2))
    assert [s.num_images for s in specs] == [2, 2, 1]
    assert [s.offset for s in specs] == [s.offset for s in plan_shards(str(raw), _cfg(shard_size=2))]
    rows = [r for spec in specs for r in _read_all(spec, _cfg())]
    assert [(r.image_id, r.error) for r in rows] == [(f"sa_{i}", None) for i in range(5)]
    assert rows[3].data == _fake_image("sa_3") + bytes(600)


def test_tar_changed_after_planning_gives_error_rows_for_a_range(tmp_path: Path):
    tar = _write_tar(tmp_path / "t.tar", _sa1b_members(0, 6))
    specs = plan_shards(str(tar), _cfg(shard_size=2))
    _write_tar(tar, [("other.bin", bytes(10_000))])  # the planned offsets now point into member data
    for spec in specs[1:]:
        rows = _read_all(spec, _cfg())
        assert all(r.error and r.data == b"" for r in rows)


# -- Parquet -----------------------------------------------------------------------------------
def _write_parquet(path: Path, table: pa.Table, row_group_size: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_parquet_binary_column_with_row_index_ids(tmp_path: Path):
    images = [_fake_image(str(i)) for i in range(7)]
    table = pa.table({"image": pa.array(images, pa.binary()), "caption": [f"c{i}" for i in range(7)]})
    path = _write_parquet(tmp_path / "data.parquet", table)  # 3 row groups
    cfg = _cfg()
    (spec,) = plan_shards(str(path), cfg)
    assert (spec.name, spec.kind, spec.num_images) == ("data", "parquet", 7)
    rows = _read_all(spec, cfg)
    assert [r.data for r in rows] == images
    assert [r.image_id for r in rows] == [f"data/{i}" for i in range(7)]
    assert rows[4].source == f"{path}::4"


def test_parquet_is_planned_in_whole_row_group_ranges_with_file_row_ids(tmp_path: Path):
    images = [_fake_image(str(i)) for i in range(7)]
    path = _write_parquet(tmp_path / "data.parquet", pa.table({"image": pa.array(images, pa.binary())}))
    # row groups of 3, 3, 1 rows: ranges take whole groups up to shard_size rows (one group may exceed it)
    for k, sizes in ((1, [3, 3, 1]), (3, [3, 3, 1]), (4, [3, 4]), (6, [6, 1]), (7, [7])):
        assert [s.num_images for s in plan_shards(str(path), _cfg(shard_size=k))] == sizes, k
    specs = plan_shards(str(path), _cfg(shard_size=4))
    assert [(s.name, s.start, s.offset, s.container) for s in specs] == [
        ("data-00000", 0, 0, "data"), ("data-00001", 3, 1, "data")]
    rows = [r for spec in specs for r in _read_all(spec, _cfg())]
    assert [r.data for r in rows] == images
    assert [r.image_id for r in rows] == [f"data/{i}" for i in range(7)]  # as when the file is one shard
    assert rows[5].source == f"{path}::5"


def test_parquet_hf_image_struct_with_id_column_and_null_rows(tmp_path: Path):
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    values = [
        {"bytes": _fake_image("a"), "path": "a.jpg"},
        {"bytes": None, "path": "/elsewhere/b.jpg"},  # HF rows may only reference a file
        None,
        {"bytes": _fake_image("d"), "path": None},
    ]
    table = pa.table({"img": pa.array(values, image_type), "key": ["a", "b", "c", "d"]})
    root = tmp_path / "hf_dataset"
    _write_parquet(root / "data" / "train" / "part-0.parquet", table)
    _write_parquet(root / "data" / "test" / "part-0.parquet", table.slice(0, 1))
    cfg = _cfg(image_column="img", id_column="key")
    specs = plan_shards(str(root), cfg)
    assert [(s.name, s.num_images) for s in specs] == [("test-part-0", 1), ("train-part-0", 4)]
    rows = _read_all(specs[1], cfg)
    assert [r.image_id for r in rows] == ["a", "b", "c", "d"]
    assert [r.data for r in rows] == [_fake_image("a"), b"", b"", _fake_image("d")]
    assert "only" in rows[1].error and "/elsewhere/b.jpg" in rows[1].error
    assert rows[2].error == "image value is null"


def test_parquet_missing_columns_are_named(tmp_path: Path):
    path = _write_parquet(tmp_path / "x.parquet", pa.table({"pixels": [b"1"], "label": ["cat"]}))
    with pytest.raises(ValueError, match=r"no image column 'image' .*columns are: pixels, label"):
        plan_shards(str(path), _cfg())
    with pytest.raises(ValueError, match=r"no id column 'uid'"):
        plan_shards(str(path), _cfg(image_column="pixels", id_column="uid"))
    with pytest.raises(ValueError, match="must be binary"):
        plan_shards(str(path), _cfg(image_column="label"))


def test_parquet_damaged_after_planning_keeps_count(tmp_path: Path):
    table = pa.table({"image": pa.array([_fake_image(str(i)) for i in range(5)], pa.binary())})
    path = _write_parquet(tmp_path / "x.parquet", table)
    (spec,) = plan_shards(str(path), _cfg())
    path.write_bytes(b"garbage")
    rows = _read_all(spec, _cfg())
    assert [r.image_id for r in rows] == [f"x:{i}" for i in range(5)]
    assert all(r.error.startswith("cannot read Parquet file") for r in rows)


def test_mixed_containers_are_refused(tmp_path: Path):
    _write_tar(tmp_path / "a.tar", _sa1b_members(0, 1))
    _write_parquet(tmp_path / "b.parquet", pa.table({"image": [b"x"]}))
    with pytest.raises(ValueError, match="mixes .tar and .parquet"):
        plan_shards(str(tmp_path), _cfg())


# -- parallel planning -------------------------------------------------------------------------
def _thread_mapper(calls: list):
    """A mapper that runs each scan in a thread, out of order, as Ray tasks would."""
    from concurrent.futures import ThreadPoolExecutor

    def mapper(fn, items, what):
        calls.append((fn.__name__, len(items), what))
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(fn, *args) for args in reversed(items)]
            return [f.result() for f in reversed(futures)]

    return mapper


def test_planning_with_a_mapper_gives_the_sequential_plan(tmp_path: Path, photo_folder: Path):
    root = tmp_path / "tars"
    for n in range(6):
        _write_tar(root / f"part{n % 2}" / f"sa_{n:06d}.tar", _sa1b_members(10 * n, n + 1))
    calls: list = []
    for input_uri in (str(root), str(root / "part*" / "*.tar")):
        assert plan_shards(input_uri, _cfg(shard_size=2), mapper=_thread_mapper(calls)) == \
            plan_shards(input_uri, _cfg(shard_size=2))
    assert calls == [("_find_visible", 2, "folders"), ("_scan_tar", 6, "tars"), ("_scan_tar", 6, "tars")]
    (photo_folder / "more").mkdir()
    (photo_folder / "more" / "f.jpg").write_bytes(b"f")
    calls.clear()
    assert plan_shards(str(photo_folder), _cfg(shard_size=2), mapper=_thread_mapper(calls)) == \
        plan_shards(str(photo_folder), _cfg(shard_size=2))
    assert calls == [("_find_visible", 3, "folders")]  # more, sub, z; .cache is hidden
    # a refused tar fails planning through the mapper as it does here
    (root / "part0" / "sa_000000.tar").write_bytes(b"garbage" * 100)
    with pytest.raises(ValueError, match="cannot read tar"):
        plan_shards(str(root), _cfg(), mapper=_thread_mapper(calls))


def test_plan_progress_reports_counts_on_stderr():
    from grand.io.sources import PlanProgress

    stream = io.StringIO()
    progress = PlanProgress("tars", 3, interval_s=0.0, stream=stream)
    progress.advance()
    progress.advance(2)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[grand] planning: 1/3 tars read") and lines[-1].startswith("[grand] planning: 3/3 tars")
    quiet = io.StringIO()
    PlanProgress("tars", 1, stream=quiet).close()  # fast planning stays silent
    assert quiet.getvalue() == ""


# -- other filesystems and the decode corpus ---------------------------------------------------
def test_fsspec_uris_are_kept_in_the_plan(tmp_path: Path):
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/grand-test-{tmp_path.name}"
    try:
        fs.pipe(f"{root}/imgs/a.jpg", b"a")
        fs.pipe(f"{root}/imgs/sub/b.png", b"b")
        (spec,) = plan_shards(f"memory://{root}/imgs", _cfg())
        assert spec.uri == f"memory://{root}/imgs" and spec.members == ("a.jpg", "sub/b.png")
        rows = _read_all(spec, _cfg())
        assert [(r.data, r.source) for r in rows] == [(b"a", f"{spec.uri}/a.jpg"), (b"b", f"{spec.uri}/sub/b.png")]
    finally:
        fs.rm(root, recursive=True)


def test_decode_corpus_read_from_a_folder_keeps_every_file(tmp_path: Path):
    from bad_inputs import write_bad_input_corpus
    from grand.io.images import ImageDecodeError, prepare_image

    expected = write_bad_input_corpus(tmp_path / "corpus")
    cfg = _cfg(shard_size=5)
    specs = plan_shards(str(tmp_path / "corpus"), cfg)
    assert sum(s.num_images for s in specs) == len(expected)  # text.png, empty.jpg... all planned
    got = {}
    for spec in specs:
        for row in _read_all(spec, cfg):
            try:
                prepare_image(row.data, cfg.max_image_pixels)
                got[row.image_id] = "ok"
            except ImageDecodeError:
                got[row.image_id] = "error"
    assert got == expected

"""Hostile inputs (issue 13): every file that could hang a read, exhaust memory or reach outside
the input ends as an error row with its reason, the readers finish, and storage failures are told
apart from content (retried, then TransientReadError instead of error rows)."""

from __future__ import annotations

import errno
import gzip
import io
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from bad_inputs import (
    EPS_BYTES,
    HOSTILE_REASONS,
    good_jpeg,
    tar_header,
    tar_member,
    write_hostile_folder,
)
from grand.config import InputSpec
from grand.io.bounded import Retry, open_container
from grand.io.errors import TransientReadError, is_transient, with_retries
from grand.io.images import ImageDecodeError, prepare_image
from grand.io.sources import plan_shards, read_shard

MAX_FILE = 64 * 1024

pytestmark = pytest.mark.usefixtures("no_hang")


def _cfg(**kw) -> InputSpec:
    return InputSpec(**{"max_file_bytes": MAX_FILE, "read_attempts": 2, "read_backoff_s": 0, **kw})


def _rows(input_path: Path, cfg: InputSpec) -> dict[str, tuple[str, str]]:
    """image_id -> (status, reason) after reading and decoding, as the pipeline's first two steps."""
    out = {}
    for spec in plan_shards(str(input_path), cfg):
        rows = list(read_shard(spec, cfg))
        assert [r.index for r in rows] == list(range(spec.num_images))
        for r in rows:
            if r.error:
                out[r.image_id] = ("error", r.error)
                continue
            try:
                prepare_image(r.data, cfg.max_image_pixels)
                out[r.image_id] = ("ok", "")
            except ImageDecodeError as err:
                out[r.image_id] = ("error", err.reason)
    return out


def test_hostile_folder_files_become_error_rows_without_being_read(tmp_path: Path):
    expected = write_hostile_folder(tmp_path / "in", tmp_path / "elsewhere", MAX_FILE)
    got = _rows(tmp_path / "in", _cfg())
    assert {k: v[0] for k, v in got.items()} == expected
    for name, reason in HOSTILE_REASONS.items():
        assert reason in got[name][1], (name, got[name])


def test_devices_are_not_read_even_inside_the_root():
    from grand.io.bounded import read_file_bytes
    from grand.io.errors import ContentError

    with pytest.raises(ContentError, match=r"not a regular file \(character device\)"):
        read_file_bytes(LocalFileSystem(), "/dev", "zero", MAX_FILE)


def test_eps_is_refused_although_pil_could_open_it():
    assert Image.open(io.BytesIO(EPS_BYTES)).format == "EPS"  # what PIL alone would do
    with pytest.raises(ImageDecodeError, match="not an image.*accepted: JPEG, MPO, PNG, WEBP, BMP, TIFF, GIF"):
        prepare_image(EPS_BYTES, 10**6)


def test_strip_within_the_padding_budget_is_kept():
    data = io.BytesIO()
    Image.new("L", (4000, 50), 0).save(data, "PNG")  # pads to 4000×1000 = 4 Mpx
    assert prepare_image(data.getvalue(), 4_000_000)[1:] == (4000, 50)
    with pytest.raises(ImageDecodeError, match="extreme aspect ratio.*4000×1000"):
        prepare_image(data.getvalue(), 3_999_999)


def test_pad_to_aspect_refuses_to_pad_beyond_its_budget():
    from grand.models.preprocess import pad_to_aspect

    with pytest.raises(ValueError, match="40000×10000 pixels"):
        pad_to_aspect(Image.new("RGB", (40000, 50)), max_pixels=10**8)
    assert pad_to_aspect(Image.new("RGB", (400, 50))).size == (400, 100)


# -- tars ----------------------------------------------------------------------------------------
def test_sparse_and_oversize_tar_members_are_error_rows_and_the_rest_reads(tmp_path: Path):
    tar = tmp_path / "t.tar"
    tar.write_bytes(
        tar_member("a.jpg", good_jpeg())
        + tar_header("holes.jpg", 512, sparse_realsize=10**10) + bytes(512)  # 512 bytes stand for 10 GB
        + tar_member("big.jpg", bytes(MAX_FILE + 1))
        + tar_member("b.jpg", good_jpeg())
        + bytes(1024)
    )
    got = _rows(tar, _cfg())
    assert got["a"] == got["b"] == ("ok", "")
    assert got["holes"] == ("error", "cannot read tar member: sparse tar member; not read")
    assert got["big"][0] == "error" and f"over input.max_file_bytes={MAX_FILE}" in got["big"][1]


def test_tar_headers_that_would_loop_fail_planning_naming_the_tar(tmp_path: Path):
    negative = tmp_path / "negative.tar"
    # the second header's size points back at the first: a reader that trusts it walks in circles
    negative.write_bytes(tar_member("a.jpg", good_jpeg()) + tar_header("b.jpg", raw_size=-4096) + bytes(2048))
    with pytest.raises(ValueError, match=r"negative\.tar.*'b\.jpg' has a negative size"):
        plan_shards(str(negative), _cfg())


def _tar_gz(path: Path, members: list[tuple[str, bytes]]) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(raw.getvalue()))
    assert path.stat().st_size * 20 < MAX_FILE  # so the byte budget is max_file_bytes
    return path


def test_tar_gz_bomb_is_bounded_by_its_byte_budget(tmp_path: Path):
    bomb = _tar_gz(tmp_path / "bomb.tar.gz", [("a.jpg", good_jpeg()), ("z1.jpg", bytes(MAX_FILE // 2)),
                                             ("z2.jpg", bytes(20 * MAX_FILE))])
    got = _rows(bomb, _cfg())  # planning and reading stop at the budget instead of inflating it all
    assert got == {"a": ("ok", ""), "z1": ("error", "not an image: cannot identify image format (accepted: "
                                                    "JPEG, MPO, PNG, WEBP, BMP, TIFF, GIF)"),
                   "z2": ("error", f"cannot read tar member: member is {20 * MAX_FILE} bytes, over "
                                   f"input.max_file_bytes={MAX_FILE}; not read")}
    # members each under max_file_bytes still cannot inflate the stream beyond its budget
    bomb = _tar_gz(tmp_path / "many.tar.gz", [("a.jpg", good_jpeg())] + [(f"z{i}.jpg", bytes(MAX_FILE * 3 // 4))
                                                                         for i in range(1, 5)])
    got = _rows(bomb, _cfg())
    assert set(got) == {"a", "z1", "z2"} and got["a"] == ("ok", "")
    assert "gzip data expands beyond" in got["z2"][1] and "compression bomb" in got["z2"][1]


# -- Parquet -------------------------------------------------------------------------------------
def test_zstd_parquet_bomb_is_refused_from_the_metadata(tmp_path: Path):
    path = tmp_path / "p.parquet"
    table = pa.table({"image": pa.array([good_jpeg(), bytes(50 * MAX_FILE), bytes(MAX_FILE + 1)], pa.binary())})
    pq.write_table(table, path, compression="zstd", row_group_size=1)
    (spec,) = plan_shards(str(path), _cfg())
    rows = list(read_shard(spec, _cfg(max_compression_ratio=1000)))
    assert rows[0].error is None and rows[0].data == good_jpeg()
    assert "compression bomb" in rows[1].error and rows[1].data == b""
    assert f"over input.max_file_bytes={MAX_FILE}" in rows[2].error


# -- storage failures: retried, then transient ---------------------------------------------------
class _FlakyFS(LocalFileSystem):
    """Local files whose reads fail with EIO `failures` times (a dropped object-store connection)."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures = failures

    def _open(self, path, mode="rb", **kw):
        f = super()._open(path, mode, **kw)
        fs, read = self, f.read

        def flaky_read(n=-1):
            if fs.failures > 0 and f.tell() > 0:
                fs.failures -= 1
                raise OSError(errno.EIO, "connection reset")
            return read(n)

        f.read = flaky_read
        return f


def test_a_read_that_fails_mid_stream_resumes_at_the_same_position(tmp_path: Path):
    members = b"".join(tar_member(f"sa_{i}.jpg", good_jpeg(16 + i, 16)) for i in range(5)) + bytes(1024)
    (tmp_path / "t.tar").write_bytes(members)
    fs = _FlakyFS(failures=3)
    with open_container(fs, str(tmp_path / "t.tar"), Retry("t", 4, 0), "t.tar", 20, MAX_FILE, True) as f:
        chunks = []
        while chunk := f.read(700):
            chunks.append(chunk)
    assert b"".join(chunks) == members and fs.failures == 0
    fs.failures = 10
    with pytest.raises(TransientReadError, match="t.tar after 4 tries: OSError"):
        with open_container(fs, str(tmp_path / "t.tar"), Retry("t", 4, 0), "t.tar", 20, MAX_FILE, True) as f:
            while f.read(700):
                pass


def test_transient_and_content_errors_are_told_apart():
    assert is_transient(FileNotFoundError(2, "gone")) and is_transient(TimeoutError()) and is_transient(OSError(5, "EIO"))
    assert not is_transient(IsADirectoryError(21, "a folder"))
    calls = []

    def content():
        calls.append(1)
        raise IsADirectoryError(21, "a folder")

    with pytest.raises(IsADirectoryError):
        with_retries(content, shard="s", uri="u", attempts=5, backoff_s=0)
    assert len(calls) == 1  # content is not retried


def test_transient_error_survives_pickling_for_ray():
    import pickle

    err = TransientReadError("sa_1", "s3://b/sa_1.tar", FileNotFoundError(2, "gone"), 5)
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, TransientReadError) and (back.shard, back.reason) == (err.shard, err.reason)

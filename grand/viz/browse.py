"""`grand browse`: a local web viewer over an output folder (standard library HTTP server, static
page and script in grand/viz/static/, no external URL).

At start it reads a narrow index of every shard: per image its id, shard, row position in each
level's file, status and error, the labels of its objects (only the `label` leaf of the nested
object columns, never the masks), and whether its dense caption is verified. That is a few columns
per shard, so a 100k-image output starts in seconds and the filters run in memory. Everything else
is read when asked for: one image's rows (one row group of each level's file), its picture (through
the run's shard plan, upright as the pipeline saw it) and its masks (rendered to small PNGs).

Routes (anything else is a 404; the URL never names a file):
    /  /app.js  /app.css        the page, from grand/viz/static/
    /api/images?offset&limit&errors=1&unverified=1&label=TEXT&min_objects=N   one page of the list
    /api/image/<n>              image n of the index: rows, objects with masks, captions, ...
    /image/<n>                  its picture
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from grand.core.rle import decode_mask
from grand.export import shard_names
from grand.export.rows import LEVELS, input_spec
from grand.io.images import open_rgb, prepare_image
from grand.io.manifest import load_plan
from grand.io.output import OutputDir
from grand.io.sources import ShardSpec, read_shard
from grand.viz.render import _color

log = logging.getLogger(__name__)

PAGE_LIMIT = 200  # most list entries one request returns
_STATIC = {"/": ("browse.html", "text/html; charset=utf-8"), "/app.js": ("browse.js", "text/javascript; charset=utf-8"),
           "/app.css": ("browse.css", "text/css; charset=utf-8")}
_IMAGE_API = re.compile(r"/api/image/([0-9]{1,9})")
_IMAGE = re.compile(r"/image/([0-9]{1,9})")
_INDEX_COLUMNS = {
    1: ["image_id", "index", "status", "error", "objects.list.element.label", "floating_objects.list.element.label"],
    2: ["image_id", "index", "status", "error", "objects.list.element.label", "floating_objects.list.element.label"],
    3: ["index", "status", "error", "dense_caption.verified"],
    4: ["index", "status", "error"],
}


@dataclass
class Entry:
    """One image of the index."""

    image_id: str
    shard: str
    index: int
    positions: dict[int, int] = field(default_factory=dict)  # level -> row position in that level's file
    status: str = "ok"
    errors: dict[int, str] = field(default_factory=dict)  # level -> error reason
    objects: int = 0
    floating: int = 0
    labels: tuple[str, ...] = ()
    verified: bool | None = None  # dense caption verified; None without one
    search: str = ""  # lower-case labels and id, what the label search looks in

    def summary(self, key: int) -> dict:
        return {"key": key, "image_id": self.image_id, "shard": self.shard, "status": self.status,
                "errors": {str(k): v for k, v in self.errors.items()}, "objects": self.objects,
                "floating": self.floating, "labels": list(self.labels[:8]), "verified": self.verified}


def _labels(objs) -> list[str]:
    return [o["label"] for o in objs or [] if o and o.get("label")]


class BrowseIndex:
    """The narrow index of an output folder (module doc) and lazy readers of one image."""

    def __init__(self, output_uri: str):
        self.out = OutputDir(output_uri)
        if not self.out.exists(self.out.root):
            raise ValueError(f"{output_uri!r} does not exist: give the output folder of a `grand run`")
        plan = load_plan(self.out)
        self.specs: dict[str, ShardSpec] = {s.name: s for s in plan[1]} if plan else {}
        self.cfg = input_spec(self.out)
        self.entries: list[Entry] = []
        self._last_query: tuple[tuple, list[int]] | None = None
        self.committed = {lv: self.out.committed_shards(lv) for lv in LEVELS}
        if not any(self.committed.values()):
            raise ValueError(f"{output_uri!r} has no committed shards yet (`grand status {output_uri}` shows why)")
        for shard in shard_names(self.out, LEVELS):
            self._index_shard(shard)

    def _read(self, level: int, shard: str, columns: list[str]) -> list[dict]:
        with self.out.fs.open(self.out.shard_path(level, shard), "rb") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            cols = [c for c in columns if c.split(".")[0] in names]
            return pf.read(columns=cols).to_pylist()

    def _index_shard(self, shard: str) -> None:
        by_index: dict[int, Entry] = {}
        for level in LEVELS:
            if shard not in self.committed[level]:
                continue
            for pos, row in enumerate(self._read(level, shard, _INDEX_COLUMNS[level])):
                entry = by_index.get(row["index"])
                if entry is None:
                    if "image_id" not in row:
                        continue  # levels 3-4 name no image the lower levels lack
                    entry = by_index[row["index"]] = Entry(row["image_id"], shard, int(row["index"]))
                entry.positions[level] = pos
                if row.get("status") != "ok":
                    entry.errors[level] = row.get("error") or "error"
                    if level == min(entry.positions):
                        entry.status = "error"
                if level in (1, 2) and row.get("status") == "ok":
                    objects, floating = _labels(row.get("objects")), _labels(row.get("floating_objects"))
                    entry.objects, entry.floating = len(objects), len(floating)  # level 2 overrides level 1
                    entry.labels = tuple(dict.fromkeys(objects + floating))
                if level == 3 and row.get("status") == "ok" and row.get("dense_caption") is not None:
                    entry.verified = bool(row["dense_caption"].get("verified"))
        for i in sorted(by_index):
            e = by_index[i]
            e.search = "\n".join((e.image_id, *e.labels)).lower()
            self.entries.append(e)

    # -- the list --------------------------------------------------------------------------------
    def page(self, offset: int = 0, limit: int = 50, errors: bool = False, unverified: bool = False,
             label: str = "", min_objects: int = 0) -> dict:
        needle = label.strip().lower()
        query = (errors, unverified, needle, int(min_objects))
        if self._last_query is not None and self._last_query[0] == query:
            hits = self._last_query[1]  # paging through one filter scans the index once
        else:
            hits = [key for key, e in enumerate(self.entries)
                    if (not errors or e.errors) and (not unverified or e.verified is False)
                    and e.objects >= min_objects and (not needle or needle in e.search)]
            self._last_query = (query, hits)
        limit = max(1, min(int(limit), PAGE_LIMIT))
        offset = max(0, int(offset))
        return {"total": len(hits), "images": len(self.entries), "offset": offset, "limit": limit,
                "items": [self.entries[k].summary(k) for k in hits[offset:offset + limit]]}

    # -- one image -------------------------------------------------------------------------------
    def rows(self, key: int) -> dict[int, dict]:
        """{level: the image's full row} for each level that has it, one row group read per level."""
        e = self.entries[key]
        out = {}
        for level, pos in e.positions.items():
            with self.out.fs.open(self.out.shard_path(level, e.shard), "rb") as f:
                pf = pq.ParquetFile(f)
                start = 0
                for g in range(pf.metadata.num_row_groups):
                    n = pf.metadata.row_group(g).num_rows
                    if pos < start + n:
                        out[level] = pf.read_row_group(g).slice(pos - start, 1).to_pylist()[0]
                        break
                    start += n
        return out

    def detail(self, key: int) -> dict:
        e = self.entries[key]
        rows = self.rows(key)
        l1, l2, l3, l4 = (rows.get(lv) for lv in LEVELS)
        src = l2 if l2 and l2.get("status") == "ok" else l1
        objects = []
        if src and src.get("status") == "ok":
            all_objs = [(o, False) for o in src.get("objects") or []] + [(o, True) for o in src.get("floating_objects") or []]
            for i, (o, floating) in enumerate(all_objs):
                color = _color(i)
                objects.append({
                    "id": o["id"], "label": o["label"], "labels": o.get("labels") or [], "score": o.get("score"),
                    "models": o.get("models") or [], "bbox": o["bbox"], "depth": o.get("depth"),
                    "attributes": o.get("attributes") or [], "floating": floating,
                    "color": "#%02x%02x%02x" % color, "segmentation_source": o.get("segmentation_source"),
                    "mask": _mask_png(o.get("segmentation"), color),
                })
        width = (l1 or {}).get("width")
        height = (l1 or {}).get("height")
        dense = (l3 or {}).get("dense_caption") if l3 and l3.get("status") == "ok" else None
        return {
            **e.summary(key), "width": width, "height": height, "objects_list": objects,
            "short_captions": (l2 or {}).get("short_captions") or [] if l2 and l2.get("status") == "ok" else [],
            "landmark": (l2 or {}).get("landmark"), "relationships": (l2 or {}).get("relationships") or [],
            "dense_caption": dense,
            "additional_context": (l4 or {}).get("additional_context") if l4 and l4.get("status") == "ok" else None,
            "tags": (l1 or {}).get("tags") or [],
            "rows": {f"level{lv}": _abridged(r) for lv, r in rows.items()},
        }

    def image_bytes(self, key: int) -> tuple[bytes, str]:
        """The picture of image `key` (upright, as the pipeline saw it) and its content type."""
        e = self.entries[key]
        spec = self.specs.get(e.shard)
        if spec is None:
            raise LookupError(f"shard {e.shard!r} is not in the plan")
        index = e.index
        if spec.kind == "folder":
            # A folder shard narrows to the one member: no need to read its neighbours.
            if index >= len(spec.members):
                raise LookupError("image not in its shard")
            spec = ShardSpec(spec.name, "folder", spec.uri, 1, (spec.members[index],))
            index = 0
        for src in read_shard(spec, self.cfg):
            if src.index < index:
                continue
            if src.index > index or src.error or src.image_id != e.image_id:
                break
            data, _, _ = prepare_image(src.data, self.cfg.max_image_pixels)
            kind = _web_type(data)
            if kind is None:  # TIFF, BMP ...: browsers need PNG
                buf = io.BytesIO()
                open_rgb(data).save(buf, format="PNG")
                data, kind = buf.getvalue(), "image/png"
            return data, kind
        raise LookupError(f"image {e.image_id!r} can no longer be read from its input")


def _abridged(row: dict) -> dict:
    """The raw row for display: a stored depth map (kilobytes of base64) becomes its length."""
    stats = row.get("depth_stats")
    if stats and stats.get("map_png"):
        row = {**row, "depth_stats": {**stats, "map_png": f"<{len(stats['map_png']):,} base64 characters>"}}
    return row


def _web_type(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"GIF8":
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _mask_png(seg: dict | None, color: tuple[int, int, int]) -> str | None:
    """The mask as a two-colour PNG data URI (transparent outside, the object's colour inside)."""
    if not seg or not seg.get("counts"):
        return None
    mask = decode_mask(seg).astype(np.uint8)
    img = Image.fromarray(mask, mode="L").convert("P")
    img.putpalette([0, 0, 0, *color] + [0] * (3 * 254))
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0, optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _static(name: str) -> bytes:
    return resources.files("grand.viz").joinpath("static", name).read_bytes()


def make_handler(index: BrowseIndex):
    class Handler(BaseHTTPRequestHandler):
        server_version = "grand-browse"

        def log_message(self, fmt, *args):  # requests at debug level, not on stderr
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj, status: int = 200) -> None:
            self._send(status, json.dumps(obj, default=str).encode("utf-8"), "application/json")

        def _not_found(self) -> None:
            self._send(404, b"not found", "text/plain; charset=utf-8")

        def do_HEAD(self):  # noqa: N802
            self.do_GET()

        def do_GET(self):  # noqa: N802
            # The raw path is matched exactly: "..", "%2e%2e" and friends match no route.
            url = urlsplit(self.path)
            path = url.path
            try:
                if path in _STATIC:
                    name, kind = _STATIC[path]
                    return self._send(200, _static(name), kind)
                if path == "/api/images":
                    q = {k: v[-1] for k, v in parse_qs(url.query).items()}
                    return self._json(index.page(
                        offset=_int(q.get("offset"), 0), limit=_int(q.get("limit"), 50),
                        errors=q.get("errors") == "1", unverified=q.get("unverified") == "1",
                        label=q.get("label", ""), min_objects=_int(q.get("min_objects"), 0)))
                m = _IMAGE_API.fullmatch(path)
                if m and int(m[1]) < len(index.entries):
                    return self._json(index.detail(int(m[1])))
                m = _IMAGE.fullmatch(path)
                if m and int(m[1]) < len(index.entries):
                    data, kind = index.image_bytes(int(m[1]))
                    return self._send(200, data, kind)
                return self._not_found()
            except LookupError as err:
                return self._send(404, str(err).encode("utf-8"), "text/plain; charset=utf-8")
            except (BrokenPipeError, ConnectionResetError):
                return None
            except Exception as err:  # one bad row must not stop the viewer
                log.exception("browse: %s failed", path)
                return self._send(500, f"error: {err}".encode("utf-8"), "text/plain; charset=utf-8")

    return Handler


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def make_server(output_uri: str, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """The viewer's HTTP server, index built, not yet serving (`serve_forever` it, or use `serve`)."""
    index = BrowseIndex(output_uri)
    server = ThreadingHTTPServer((host, port), make_handler(index))
    server.daemon_threads = True
    server.index = index  # type: ignore[attr-defined]
    return server


def serve(output_uri: str, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Build the index, print the URL and serve until Ctrl-C."""
    start = time.monotonic()
    print(f"indexing {output_uri} ...", flush=True)
    try:
        server = make_server(output_uri, host, port)
    except OSError as err:  # port taken, address not on this machine
        raise ValueError(f"cannot listen on {host}:{port} ({err.strerror or err}): pick another --port") from None
    n = len(server.index.entries)  # type: ignore[attr-defined]
    h, p = server.server_address[:2]
    print(f"indexed {n:,} images in {time.monotonic() - start:.1f}s; viewer on http://{h}:{p}/  (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def serve_in_thread(output_uri: str, host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start the viewer in a daemon thread; returns (server, base URL). For tests and notebooks."""
    server = make_server(output_uri, host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    h, p = server.server_address[:2]
    return server, f"http://{h}:{p}"

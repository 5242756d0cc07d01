"""Stored depth maps (level1.depth.store_map) and `grand eval depth`: the 16-bit PNG round trip,
the per-image scale-and-shift alignment (a map with a known scale and shift scores AbsRel 0), a
case worked out by hand, and the real depth step (tiny Depth Anything) through the schema."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image

from export_fixtures import write_level
from grand.cli.main import main
from grand.config import DepthSpec
from grand.core.depth import decode_depth_map, depth_stats, encode_depth_map
from grand.eval.depth import evaluate_depth, image_depth_metrics
from grand.io.output import OutputDir
from grand.schema import DepthStats, Level1Row


def _inverse_depth(h=48, w=64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (0.2 + xx / w + 0.5 * yy / h).astype(np.float32)


def test_png_round_trip_keeps_values_and_invalid_pixels():
    inv = _inverse_depth()
    inv[3, 4] = 0  # no measurement
    inv[5, 6] = np.nan
    stats = depth_stats(inv)
    stats["map_png"] = encode_depth_map(inv, stats["min"], stats["max"], max_side=512)
    back = decode_depth_map(stats)
    valid = np.isfinite(inv) & (inv != 0)
    assert back.shape == inv.shape and (back[~valid] == 0).all()
    assert np.abs(back[valid] - inv[valid]).max() <= (stats["max"] - stats["min"]) / 65534 + 1e-6
    small = decode_depth_map({**stats, "map_png": encode_depth_map(inv, stats["min"], stats["max"], max_side=16)})
    assert small.shape == (12, 16)  # longer side 16, aspect kept


def test_known_scale_and_shift_scores_absrel_zero():
    inv = _inverse_depth().astype(np.float64)
    gt_depth = 1.0 / (2.5 * inv + 0.3)  # what a metric sensor would see
    m = image_depth_metrics(inv, gt_depth)
    assert m["AbsRel"] == pytest.approx(0, abs=1e-9) and m["delta1"] == 1.0
    assert (m["scale"], m["shift"]) == (pytest.approx(2.5), pytest.approx(0.3))
    # the GT at twice the resolution: grand's map is resized, the fit still holds closely
    big = np.kron(gt_depth, np.ones((2, 2)))
    assert image_depth_metrics(inv, big)["AbsRel"] < 0.02


def test_by_hand_a_flat_prediction_of_a_two_plane_scene():
    gt = np.array([1.0] * 10 + [2.0] * 10).reshape(4, 5)  # inverse depths 1 and 0.5
    m = image_depth_metrics(np.ones((4, 5)), gt)
    # the best affine fit of a constant is the mean inverse depth 0.75: depth 4/3 everywhere;
    # |4/3 - 1| / 1 = |4/3 - 2| / 2 = 1/3, and 4/3 > 1.25 everywhere
    assert m["AbsRel"] == pytest.approx(1 / 3) and m["delta1"] == 0.0


def test_depth_step_stores_the_map_and_eval_reads_it(tmp_path, capsys):
    import dataclasses

    from grand.runtime.columns import Batch
    from grand.runtime.stages import DepthStep

    img = Image.fromarray((np.stack([_inverse_depth() * 100] * 3, -1)).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    spec = DepthSpec(name="depth_anything", checkpoint="tiny:depth-anything", store_map=True)
    step = DepthStep(spec)
    batch = {"image_id": ["a.png"], "shard": ["s0"], "index": [0], "status": ["ok"], "error": [""],
             "image": [buf.getvalue()], "objects": [[]], "floating_objects": [[]], "step_seconds": [{}]}
    stats = dataclasses.asdict(Batch(step(batch))["depth_stats"][0])
    raw = np.asarray(step.model.estimate([img])[0], np.float32)
    stored = decode_depth_map(stats)
    assert stored.shape == raw.shape
    assert np.abs(stored - raw).max() <= (stats["max"] - stats["min"]) / 65534 * 1.01 + 1e-6

    # Through the level-1 schema and back, then against GT built from it with a known scale and shift.
    out = OutputDir(str(tmp_path / "out"))
    write_level(out, 1, "s0", [Level1Row("sub/a.png", "x", "s0", 0, "ok", width=64, height=48,
                                         depth_stats=DepthStats(**stats))])
    (tmp_path / "gt").mkdir()
    np.save(tmp_path / "gt" / "a.npy", 1.0 / (3.0 * stored.astype(np.float64) + 1.0))
    r = evaluate_depth(str(out.uri), str(tmp_path / "gt"))
    assert r["images"] == 1 and r["AbsRel"] == pytest.approx(0, abs=1e-5) and r["delta1"] == 1.0
    assert main(["eval", "depth", str(out.uri), "--gt-depth", str(tmp_path / "gt")]) == 0
    assert "AbsRel:    0.0000" in capsys.readouterr().out

    # Without stored maps the error says which setting to turn on.
    plain = OutputDir(str(tmp_path / "plain"))
    write_level(plain, 1, "s0", [Level1Row("a.png", "x", "s0", 0, "ok", depth_stats=DepthStats(**depth_stats(raw)))])
    assert main(["eval", "depth", str(plain.uri), "--gt-depth", str(tmp_path / "gt")]) == 2
    assert "level1.depth.store_map=true" in capsys.readouterr().err


def test_store_map_is_off_by_default_and_validated():
    assert DepthSpec(name="d", checkpoint="x").store_map is False
    with pytest.raises(Exception, match="map_max_side"):
        DepthSpec(name="d", checkpoint="x", map_max_side=2)
    assert dataclasses.fields(DepthStats)[-1].name == "map_png"

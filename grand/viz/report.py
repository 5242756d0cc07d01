"""`grand report`: one self-contained HTML page about an output folder, for someone who will not run
anything: the runs and models, the dataset statistics (grand.export.stats), distributions as inline
SVG charts (labels and objects per image, mask areas, verification outcomes per attempt, error
reasons per level), the `grand eval` tables when ground truth is given, and a few rendered example
images embedded as PNG data URIs. The page references no external URL.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import logging
from collections import Counter
from dataclasses import dataclass, field

from grand.core.rle import mask_area
from grand.export import shard_names
from grand.export.rows import Committed, image_rows, objects_of, ok
from grand.export.stats import dataset_stats, summary_table
from grand.io.output import OutputDir
from grand.viz import charts

log = logging.getLogger(__name__)

_L1 = ["image_id", "status", "width", "height", "objects", "floating_objects"]
_L2 = ["image_id", "status", "objects", "floating_objects"]
_L3 = ["image_id", "status", "dense_caption"]


@dataclass
class Distributions:
    """What the charts show, gathered in one streaming pass over levels 1-3."""

    # Histograms as counters ({value or bin: images}), so memory stays flat on any output size.
    labels_per_image: Counter = field(default_factory=Counter)
    objects_per_image: Counter = field(default_factory=Counter)
    floating_per_image: Counter = field(default_factory=Counter)
    mask_area_bins: Counter = field(default_factory=Counter)  # charts.log_bin of mask area / image area
    top_labels: Counter = field(default_factory=Counter)
    attempts: Counter = field(default_factory=Counter)  # (attempt number, passed) -> captions
    examples: list[tuple[str, str, int]] = field(default_factory=list)  # (image_id, shard, index)


def collect(out: OutputDir, max_examples: int = 4) -> Distributions:
    d = Distributions()
    committed = Committed(out)
    levels = (1, 2, 3)
    columns = {1: _L1, 2: _L2, 3: _L3}
    for shard in shard_names(out, levels):
        for rows in image_rows(out, shard, levels, columns, committed=committed):
            l1 = rows.get(1)
            if ok(l1):
                solid, everything = objects_of(rows, floating=False), objects_of(rows, floating=True)
                d.objects_per_image[len(solid)] += 1
                d.floating_per_image[len(everything) - len(solid)] += 1
                labels = {o["label"] for o in everything}
                d.labels_per_image[len(labels)] += 1
                d.top_labels.update(labels)
                pixels = (l1.get("width") or 0) * (l1.get("height") or 0)
                for o in everything:
                    seg = o.get("segmentation")
                    if pixels and seg and seg.get("counts"):
                        d.mask_area_bins[charts.log_bin(mask_area(seg) / pixels)] += 1
                if len(d.examples) < max_examples and solid:
                    d.examples.append((l1["image_id"], shard, int(l1["index"])))
            l3 = rows.get(3)
            dense = (l3 or {}).get("dense_caption") if ok(l3) else None
            for k, attempt in enumerate((dense or {}).get("attempts") or [], start=1):
                d.attempts[(k, bool(attempt.get("passed")))] += 1
    return d


def _esc(v: object) -> str:
    return html.escape(str(v), quote=True)


def _num(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return _esc(v)


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _stats_section(stats: dict) -> str:
    parts = ["<h2>Dataset</h2><div class='row'><div>", _table(["", "count"], [[_esc(k), _num(v)] for k, v in summary_table(stats)]), "</div>"]
    for level in (1, 2, 3, 4):
        s = stats.get(f"level{level}")
        if not s:
            continue
        rows = []
        for key, value in s.items():
            if isinstance(value, dict):
                value = ", ".join(f"{_esc(k)}: {n:,}" for k, n in value.items()) or "none"
                rows.append([_esc(key.replace("_", " ")), value])
            else:
                rows.append([_esc(key.replace("_", " ")), _num(value)])
        parts.append(f"<div><h3>Level {level}</h3>" + _table(["", ""], rows, "kv") + "</div>")
    return "\n".join(parts) + "</div>"


def _charts_section(d: Distributions, stats: dict) -> str:
    any_floating = any(k > 0 for k in d.floating_per_image)
    labels, series = _paired_counts(d.objects_per_image, d.floating_per_image)
    if not any_floating:  # one detector, or min_models 1: a bar of zeros would dwarf the rest
        series.pop("floating objects")
    svgs = [
        charts.count_histogram("Distinct labels per image", d.labels_per_image, "labels (objects + floating)"),
        charts.bar_chart("Objects per image", labels, series, x_label="objects in the image", y_label="images",
                         stacked=False),
    ]
    if d.mask_area_bins:
        svgs.append(charts.log_histogram("Mask area / image area", d.mask_area_bins, "fraction of the image (log bins)"))
    svgs += [
        charts.bar_chart("Most frequent labels (images with the label)", [k for k, _ in d.top_labels.most_common(20)],
                         {"images": [v for _, v in d.top_labels.most_common(20)]}, y_label="images"),
    ]
    if d.attempts:
        n = max(k for k, _ in d.attempts)
        attempts = [str(k) for k in range(1, n + 1)]
        svgs.append(charts.bar_chart(
            "Dense caption verification per attempt", attempts,
            {"passed": [d.attempts[(k, True)] for k in range(1, n + 1)],
             "failed": [d.attempts[(k, False)] for k in range(1, n + 1)]}, x_label="attempt", y_label="captions"))
    reasons: dict[str, dict[str, int]] = {}
    for level in (1, 2, 3, 4):
        for reason, count in ((stats.get(f"level{level}") or {}).get("error_reasons") or {}).items():
            reasons.setdefault(reason, {})[f"level {level}"] = count
    if reasons:
        series_names = sorted({lv for r in reasons.values() for lv in r})
        names = list(reasons)
        svgs.append(charts.bar_chart("Error reasons per level", names,
                                     {lv: [reasons[r].get(lv, 0) for r in names] for lv in series_names},
                                     y_label="images"))
    return "<h2>Distributions</h2>\n" + "\n".join(f'<div class="chart">{s}</div>' for s in svgs)


def _paired_counts(objects: Counter, floating: Counter) -> tuple[list[str], dict[str, list[int]]]:
    """Shared bins for the objects and floating-objects histograms (one bar pair per bin)."""
    hi = max([*objects, *floating], default=0)
    labels, a = charts.integer_bins({hi: 0, **objects})
    _, b = charts.integer_bins({hi: 0, **floating})
    return labels, {"objects": a, "floating objects": b}


def _objects_eval_section(r: dict) -> str:
    rows = []
    for kind, name in (("box", "box"), ("segm", "mask")):
        block = r.get(kind)
        if not block:
            continue
        for mode in ("class_aware", "class_agnostic"):
            rows.append([f"{name} {mode.replace('_', '-')}", _num(block[mode]["AP"]), _num(block[mode]["AP50"])])
    im = r["images"]
    facts = [
        ["images evaluated", f"{im['evaluated']:,} of {im['gt']:,} GT images ({im['error_rows']} error rows)"],
        ["GT instances (not crowd)", _num(r["gt_instances"])],
        ["recall@0.5, objects", _pct(r["recall50"]["objects"])],
        ["recall@0.5, objects + floating", _pct(r["recall50"]["objects_and_floating"])],
        ["mean mask IoU on matched GT", f"{_num(r['mask_iou']['mean'])} ({r['mask_iou']['pairs']} pairs)"],
        ["label accuracy (final / any candidate)",
         f"{_pct(r['label_accuracy']['final'])} / {_pct(r['label_accuracy']['any_candidate'])}"],
        ["labels mapped to no GT category", f"{r['unmapped']['predictions']:,} ({_pct(r['unmapped']['share'])})"
         + (": " + _esc(", ".join(list(r["unmapped"]["top_labels"])[:8])) if r["unmapped"]["top_labels"] else "")],
    ]
    models = [[_esc(n), _num(m["voted"]), _num(m["true_positives"]), _pct(m["precision"]),
               _num(m["only_model_true_positives"])] for n, m in r["per_model"].items()]
    notes = "".join(f"<p class='note'>{_esc(n)}</p>" for n in r.get("notes") or [])
    return ("<h2>Objects against ground truth</h2>" + _table(["", "AP", "AP50"], rows)
            + _table(["", ""], facts, "kv")
            + "<h3>Per detector</h3>" + _table(["model", "voted", "true positives", "precision", "TPs no other model saw"], models)
            + notes)


def _captions_eval_section(r: dict) -> str:
    def row(name: str, s: dict) -> list[str]:
        return [_esc(name), _num(s["captions"]), _num(s["mentions"]), _num(s["hallucinated"]), _pct(s["CHAIR_i"]),
                _pct(s["CHAIR_s"]), _pct(s["coverage"]), _esc(", ".join(list(s["top_hallucinated"])[:5]))]

    rows = [row(f"short: {n}", s) for n, s in r["short"].items()]
    names = {"first_attempt": "dense: first attempt", "final": "dense: kept (final)", "verified": "dense: verified",
             "flagged": "dense: flagged", "regenerated_first": "dense, regenerated: first attempt",
             "regenerated_final": "dense, regenerated: final"}
    rows += [row(n, r["dense"][k]) for k, n in names.items() if r["dense"][k]["captions"]]
    return ("<h2>Caption hallucination (CHAIR)</h2>"
            + _table(["captions", "n", "mentions", "hallucinated", "CHAIR_i", "CHAIR_s", "coverage", "e.g."], rows))


def _depth_eval_section(r: dict) -> str:
    facts = [["images evaluated", _num(r["images"])], ["AbsRel", _num(r["AbsRel"])],
             ["δ < 1.25", _pct(r["delta1"])]]
    return "<h2>Depth against ground truth</h2>" + _table(["", ""], facts, "kv")


def _runs_section(out: OutputDir) -> str:
    manifest = out.read_json(out.manifest_path) or {}
    rows = []
    for run in manifest.get("runs") or []:
        models = []
        for level, ms in sorted((run.get("models") or {}).items()):
            models += [f"{m.get('name')} ({m.get('role')}: {m.get('checkpoint')})" for m in ms or []]
        rows.append([_esc(run.get("started", "")), _esc((run.get("config") or {}).get("name", "")),
                     _esc(",".join(map(str, run.get("levels") or []))), _esc(run.get("state", "")),
                     _esc("; ".join(dict.fromkeys(models)))])
    if not rows:
        return ""
    return "<h2>Runs</h2>" + _table(["started", "config", "levels", "state", "models"], rows)


def _examples_section(out_uri: str, d: Distributions, max_width: int = 900) -> str:
    from grand.viz.render import find_rows, load_image, render

    figures = []
    for image_id, _shard, index in d.examples:
        try:
            level1, level2, spec = find_rows(out_uri, image_id)
            picture = render(load_image(out_uri, spec, index), level1, level2)
        except Exception as err:  # the input moved or changed: the page is still useful without it
            log.warning("example %r not rendered: %s", image_id, err)
            figures.append(f"<p class='note'>{_esc(image_id)}: not rendered ({_esc(err)})</p>")
            continue
        if picture.width > max_width:
            picture = picture.resize((max_width, round(picture.height * max_width / picture.width)))
        buf = io.BytesIO()
        picture.save(buf, format="PNG", optimize=True)
        uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        figures.append(f'<figure><img alt="{_esc(image_id)}" src="{uri}"><figcaption>{_esc(image_id)}</figcaption></figure>')
    return "<h2>Examples</h2>" + "".join(figures) if figures else ""


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}table.kv td:last-child{text-align:left}
th{background:#f4f4f4}.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}.chart{display:inline-block;margin:6px}.note{color:#777}
figure{margin:12px 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{color:#555}
"""


def build_report(output_uri: str, gt: str | None = None, gt_depth: str | None = None, max_examples: int = 4) -> str:
    """The report page as one HTML string (module doc)."""
    out = OutputDir(output_uri)
    if not out.exists(out.root):
        raise ValueError(f"{output_uri!r} does not exist: give the output folder of a `grand run`")
    stats = dataset_stats(output_uri)
    d = collect(out, max_examples)
    sections = [_runs_section(out), _stats_section(stats), _charts_section(d, stats)]
    if gt:
        from grand.eval.captions import evaluate_captions
        from grand.eval.categories import load_ground_truth
        from grand.eval.objects import evaluate_objects

        truth = load_ground_truth(gt)
        sections.append(_objects_eval_section(evaluate_objects(output_uri, truth)))
        if out.committed_shards(2) or out.committed_shards(3):
            sections.append(_captions_eval_section(evaluate_captions(output_uri, truth)))
    if gt_depth:
        from grand.eval.depth import evaluate_depth

        sections.append(_depth_eval_section(evaluate_depth(output_uri, gt_depth)))
    if max_examples:
        sections.append(_examples_section(output_uri, d))
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    source = f" against {_esc(gt)}" if gt else ""
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>grand report: {_esc(output_uri)}</title><style>{_CSS}</style></head><body>"
            f"<h1>grand report: {_esc(output_uri)}</h1><p class='note'>written {when}{source}; metrics: "
            "docs/quality.md</p>" + "\n".join(s for s in sections if s) + "</body></html>")


def write_report(output_uri: str, dest: str, **kwargs) -> str:
    """Write `build_report` to `dest` (temp name, then rename); returns dest."""
    import fsspec

    page = build_report(output_uri, **kwargs)
    fs, path = fsspec.core.url_to_fs(dest)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path + ".partial", "w", encoding="utf-8") as f:
        f.write(page)
    fs.mv(path + ".partial", path)
    return dest

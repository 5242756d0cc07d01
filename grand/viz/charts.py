"""Small bar charts as inline SVG text, for the HTML report: no plotting library, no external file.

Each function returns one `<svg>` element sized in pixels, with a title, labelled axes and a
`<title>` tooltip per bar, so a page stays readable and self-contained.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2")
_W, _H = 520, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 28, 52


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * exp >= v:
            return m * exp
    return 10 * exp


def bar_chart(title: str, categories: Sequence[str], series: dict[str, Sequence[float]], x_label: str = "",
              y_label: str = "", stacked: bool = True, width: int = _W, height: int = _H) -> str:
    """Vertical bars, one group per category; several series are stacked (or side by side)."""
    names = list(series)
    n = len(categories)
    totals = [sum(series[s][i] for s in names) if stacked else max((series[s][i] for s in names), default=0)
              for i in range(n)]
    top = _nice_max(max(totals, default=0))
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}" class="chart">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{_esc(title)}</text>']
    for k in range(5):  # grid lines and y ticks
        v = top * k / 4
        y = _TOP + plot_h - plot_h * k / 4
        parts.append(f'<line x1="{_LEFT}" x2="{width - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        label = f"{v:g}" if v < 1e4 else f"{v:.2g}"
        parts.append(f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{label}</text>')
    if n:
        slot = plot_w / n
        bar_w = max(1.0, slot * 0.8 / (1 if stacked else max(1, len(names))))
        for i, cat in enumerate(categories):
            base = _TOP + plot_h
            for j, s in enumerate(names):
                v = float(series[s][i])
                h = plot_h * v / top
                x = _LEFT + i * slot + slot * 0.1 + (0 if stacked else j * bar_w)
                y = base - h if stacked else _TOP + plot_h - h
                parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                             f'fill="{PALETTE[j % len(PALETTE)]}"><title>{_esc(cat)}: {_esc(s)} {v:g}</title></rect>')
                if stacked:
                    base -= h
            every = max(1, math.ceil(n / 20))  # at most ~20 tick labels
            if i % every == 0:
                cx = _LEFT + i * slot + slot / 2
                text = str(cat) if len(str(cat)) <= 12 else str(cat)[:11] + "…"
                rotate = n > 8
                anchor = "end" if rotate else "middle"
                transform = f' transform="rotate(-40 {cx:.1f} {_TOP + plot_h + 12})"' if rotate else ""
                parts.append(f'<text x="{cx:.1f}" y="{_TOP + plot_h + 12}" text-anchor="{anchor}" font-size="10"'
                             f'{transform}>{_esc(text)}</text>')
    parts.append(f'<line x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{_TOP + plot_h}" stroke="#333"/>')
    if x_label:
        parts.append(f'<text x="{_LEFT + plot_w / 2}" y="{height - 4}" text-anchor="middle" font-size="11">{_esc(x_label)}</text>')
    if y_label:
        parts.append(f'<text x="12" y="{_TOP + plot_h / 2}" text-anchor="middle" font-size="11" '
                     f'transform="rotate(-90 12 {_TOP + plot_h / 2})">{_esc(y_label)}</text>')
    if len(names) > 1:
        x = _LEFT + 6
        for j, s in enumerate(names):
            parts.append(f'<rect x="{x}" y="{_TOP - 2}" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>'
                         f'<text x="{x + 14}" y="{_TOP + 7}" font-size="10">{_esc(s)}</text>')
            x += 24 + 7 * len(str(s))
    parts.append("</svg>")
    return "".join(parts)


def count_histogram(title: str, counts: Mapping[int, int], x_label: str, max_bins: int = 30) -> str:
    """Histogram of non-negative integers given as {value: how many} (e.g. objects per image): one
    bar per value, or per range of values when they span more than `max_bins`."""
    labels, bins = integer_bins(counts, max_bins)
    return bar_chart(title, labels, {"images": bins}, x_label, "images")


def integer_bins(counts: Mapping[int, int], max_bins: int = 30) -> tuple[list[str], list[int]]:
    """(bin labels, totals) of {value: how many}, values 0..max in at most `max_bins` equal ranges."""
    hi = max(counts, default=0)
    step = max(1, math.ceil((hi + 1) / max_bins))
    bins = [0] * (hi // step + 1)
    for value, n in counts.items():
        bins[value // step] += n
    labels = [str(b * step) if step == 1 else f"{b * step}-{b * step + step - 1}" for b in range(len(bins))]
    return labels, bins


LOG_LO, LOG_BINS_PER_DECADE = 1e-4, 3


def log_bin(value: float, lo: float = LOG_LO, bins_per_decade: int = LOG_BINS_PER_DECADE) -> int:
    """The logarithmic bin of a value in (0, 1] (values below `lo` fall in the first bin)."""
    n = int(round(-math.log10(lo))) * bins_per_decade
    k = int(math.floor((math.log10(max(value, lo)) - math.log10(lo)) * bins_per_decade))
    return min(max(k, 0), n - 1)


def log_histogram(title: str, bins: Mapping[int, int], x_label: str, lo: float = LOG_LO,
                  bins_per_decade: int = LOG_BINS_PER_DECADE) -> str:
    """Histogram on logarithmic bins from `lo` to 1, given as {`log_bin` index: how many}."""
    n = int(round(-math.log10(lo))) * bins_per_decade
    labels = [f"{lo * 10 ** (k / bins_per_decade):.2g}" for k in range(n)]
    return bar_chart(title, labels, {"masks": [bins.get(k, 0) for k in range(n)]}, x_label, "masks")

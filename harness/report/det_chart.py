"""Inline SVG charts for the ``evaluate`` page: DET curves on probit axes, as the field draws them,
and each system's score histogram (bona fide vs spoof). Plain SVG text: no scripts, no
external assets, every user string escaped (``markup_text``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

from harness.report.html_page import markup_text

SVG_NAMESPACE = "http://www.w3.org/2000/svg"

# Okabe-Ito: told apart by colour-blind readers too (its yellow left out: unreadable on white); the
# dash patterns tell the curves apart in greyscale as well.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
DASHES = ("", "9 4", "2 3", "10 3 2 3", "5 5", "1 2", "12 2 2 2 2 2")
BONAFIDE_COLOUR, SPOOF_COLOUR = "#0072B2", "#D55E00"

# The DET axes (fractions): ASVspoof-era detectors sit between 0.1 % and 40 %; 0.05 % leaves the
# first tick off the corner. A system whose EER is past 50 % (a chance-level or inverted one)
# gets the upper range, so its EER point stays on the chart.
DET_LOWER = 0.0005
DET_UPPER, DET_UPPER_WIDE = 0.6, 0.95
DET_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6)
DET_TICKS_WIDE = (0.8, 0.9)

_STANDARD_NORMAL = NormalDist()


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:max(1, limit - 1)] + "\u2026"


def probit_fraction(rate: float, lower: float, upper: float) -> float:
    """Where ``rate`` sits along a probit axis from ``lower`` (0.0) to ``upper`` (1.0); a rate past
    either end (0 and 1 included) is clipped to that end."""
    low, high = _STANDARD_NORMAL.inv_cdf(lower), _STANDARD_NORMAL.inv_cdf(upper)
    clipped = min(max(rate, lower), upper)
    return (_STANDARD_NORMAL.inv_cdf(clipped) - low) / (high - low)


@dataclass(frozen=True)
class DetAxes:
    """The DET plot's square: x the false alarm rate, y the miss rate, both on one probit scale, so
    the y = x diagonal runs corner to corner."""

    left: float
    top: float
    side: float
    lower: float = DET_LOWER
    upper: float = DET_UPPER

    def x(self, pfa: float) -> float:
        return self.left + self.side * probit_fraction(pfa, self.lower, self.upper)

    def y(self, pmiss: float) -> float:
        return self.top + self.side * (1.0 - probit_fraction(pmiss, self.lower, self.upper))

    def point(self, pfa: float, pmiss: float) -> tuple[float, float]:
        return round(self.x(pfa), 1), round(self.y(pmiss), 1)


def _polyline_points(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points without repeats and without the inner points of a horizontal or vertical run
    (a DET curve is a staircase, and its clipped parts run along the axes): the same line, drawn."""
    unique = [p for i, p in enumerate(points) if i == 0 or p != points[i - 1]]
    kept = []
    for i, p in enumerate(unique):
        if 0 < i < len(unique) - 1:
            before, after = unique[i - 1], unique[i + 1]
            if before[0] == p[0] == after[0] or before[1] == p[1] == after[1]:
                continue
        kept.append(p)
    return kept


def _percent_label(rate: float) -> str:
    return f"{100 * rate:g}"


def det_svg(systems: Mapping[str, Mapping], width: int = 640, height: int = 700) -> str:
    """DET curves of ``systems`` (name -> {"det": {"pmiss", "pfa"}, "eer"}; rates are fractions) in
    one SVG of ``width`` x ``height``: probit axes, one polyline per system (colour and dash), a
    circle at each EER on the dashed y = x diagonal, a legend with each EER."""
    names = list(systems)
    wide = any(systems[n]["eer"] > 0.5 for n in names)
    upper = DET_UPPER_WIDE if wide else DET_UPPER
    ticks = DET_TICKS + (DET_TICKS_WIDE if wide else ())
    legend_row, left, right, top, bottom = 20, 64, 24, 36, 56
    legend_height = legend_row * len(names) + 8
    side = max(120, min(width - left - right, height - top - bottom - legend_height))
    axes = DetAxes(left=left, top=top, side=side, upper=upper)
    x_end, y_end = left + side, top + side
    parts = [f'<svg xmlns="{SVG_NAMESPACE}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             'font-family="system-ui, sans-serif" font-size="12" role="img">',
             "<title>DET curves</title>",
             f'<text x="{left + side / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">'
             "DET curves (probit axes)</text>",
             f'<rect x="{left}" y="{top}" width="{side}" height="{side}" fill="#fff" stroke="#444"/>']
    for tick in ticks:
        x, y = axes.point(tick, tick)
        label = _percent_label(tick)
        parts += [f'<line x1="{x}" y1="{top}" x2="{x}" y2="{y_end}" stroke="#ddd"/>',
                  f'<line x1="{left}" y1="{y}" x2="{x_end}" y2="{y}" stroke="#ddd"/>',
                  f'<text x="{x}" y="{y_end + 16}" text-anchor="middle">{label}</text>',
                  f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{label}</text>']
    parts += [f'<line x1="{left}" y1="{y_end}" x2="{x_end}" y2="{top}" stroke="#888" '
              'stroke-dasharray="4 4"/>',
              f'<text x="{left + side / 2}" y="{y_end + 38}" text-anchor="middle">'
              "False alarm rate (%): spoof accepted as bona fide</text>",
              f'<text transform="translate({left - 44} {top + side / 2}) rotate(-90)" text-anchor="middle">'
              "Miss rate (%): bona fide rejected</text>"]
    legend_top = y_end + bottom + 4
    name_room = max(8, int((width - left - 140) / 7))  # ~7 px per character at 12 px
    for i, name in enumerate(names):
        colour, dash = COLOURS[i % len(COLOURS)], DASHES[(i + i // len(COLOURS)) % len(DASHES)]
        dashing = f' stroke-dasharray="{dash}"' if dash else ""
        det, eer = systems[name]["det"], systems[name]["eer"]
        points = _polyline_points([axes.point(f, m) for m, f in zip(det["pmiss"], det["pfa"], strict=True)])
        if points:
            text = " ".join(f"{x:g},{y:g}" for x, y in points)
            parts.append(f'<polyline points="{text}" fill="none" stroke="{colour}" stroke-width="2"'
                         f'{dashing}><title>{markup_text(name)}</title></polyline>')
        cx, cy = axes.point(eer, eer)
        parts.append(f'<circle cx="{cx}" cy="{cy}" r="4.5" fill="{colour}" stroke="#fff" stroke-width="1.5">'
                     f"<title>{markup_text(name)}: EER {100 * eer:.2f} %</title></circle>")
        y = legend_top + legend_row * i
        parts += [f'<line x1="{left}" y1="{y}" x2="{left + 36}" y2="{y}" stroke="{colour}" stroke-width="2"'
                  f"{dashing}/>",
                  f'<circle cx="{left + 18}" cy="{y}" r="4" fill="{colour}"/>',
                  f'<text x="{left + 44}" y="{y + 4}">{markup_text(_shortened(name, name_room))}: '
                  f"EER {100 * eer:.2f} %<title>{markup_text(name)}</title></text>"]
    parts.append("</svg>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- histograms


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart) within [low, high]."""
    if not high > low:
        return [low]
    raw = (high - low) / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9)
    values = []
    k = first
    while k * step <= high + 1e-9 * step:
        values.append(round(k * step, 12) + 0.0)  # + 0.0: no "-0"
        k += 1
    return values


def histogram_svg(name: str, histogram: Mapping, threshold: float | None = None, width: int = 460,
                  height: int = 260) -> str:
    """``histogram`` ({"edges", "bonafide", "spoof"}: counts on shared bins of the oriented score) as
    one SVG: each class as its share per bin (classes of any size compare), two colours, the
    ``threshold`` (e.g. the system's EER threshold) as a vertical line."""
    edges = [float(e) for e in histogram["edges"]]
    low, high = edges[0], edges[-1]
    if not high > low:
        low, high = low - 0.5, high + 0.5  # one score for everything: a bin of width 1 around it
    left, right, top, bottom = 52, 12, 44, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    shares = {}
    for label in ("bonafide", "spoof"):
        counts = histogram[label]
        total = sum(counts)
        shares[label] = [100.0 * c / total if total else 0.0 for c in counts]
    peak = max([*shares["bonafide"], *shares["spoof"], 1e-9])
    y_ticks = nice_ticks(0.0, peak, 4)
    if len(y_ticks) > 1 and y_ticks[-1] < peak:  # the axis ends on a round value above the tallest bar
        y_ticks.append(round(2 * y_ticks[-1] - y_ticks[-2], 12))
    y_top = max(y_ticks[-1], peak)

    def x(value: float) -> float:
        return round(left + plot_w * (min(max(value, low), high) - low) / (high - low), 1)

    def y(share: float) -> float:
        return round(top + plot_h * (1.0 - share / y_top), 1)

    title = _shortened(name, max(8, int((width - left) / 8)))  # ~8 px per character, 13 px bold
    parts = [f'<svg xmlns="{SVG_NAMESPACE}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             'font-family="system-ui, sans-serif" font-size="11" role="img">',
             f"<title>Scores of {markup_text(name)}</title>",
             f'<text x="{left}" y="16" font-size="13" font-weight="bold">{markup_text(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#444"/>']
    for tick in y_ticks:
        parts += [f'<line x1="{left}" y1="{y(tick)}" x2="{left + plot_w}" y2="{y(tick)}" stroke="#eee"/>',
                  f'<text x="{left - 4}" y="{y(tick) + 4}" text-anchor="end">{tick:g}</text>']
    for tick in nice_ticks(low, high, 5):
        parts.append(f'<text x="{x(tick)}" y="{top + plot_h + 14}" text-anchor="middle">{tick:g}</text>')
    for label, colour in (("bonafide", BONAFIDE_COLOUR), ("spoof", SPOOF_COLOUR)):
        for i, share in enumerate(shares[label]):
            if share > 0:
                x0, x1 = x(edges[i]), x(edges[i + 1])
                parts.append(f'<rect x="{x0}" y="{y(share)}" width="{max(x1 - x0, 0.5):g}" '
                             f'height="{round(top + plot_h - y(share), 1):g}" fill="{colour}" '
                             'fill-opacity="0.5"/>')
    if threshold is not None and low <= threshold <= high:
        parts.append(f'<line x1="{x(threshold)}" y1="{top}" x2="{x(threshold)}" y2="{top + plot_h}" '
                     'stroke="#222" stroke-dasharray="4 3"><title>EER threshold</title></line>')
    parts += [f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">'
              "score, oriented: higher = bona fide</text>",
              f'<text transform="translate(12 {top + plot_h / 2}) rotate(-90)" text-anchor="middle">'
              "% of class</text>"]
    legend = [("bona fide", BONAFIDE_COLOUR, sum(histogram["bonafide"])),
              ("spoof", SPOOF_COLOUR, sum(histogram["spoof"]))]
    lx = left
    for words, colour, count in legend:  # one row under the title: classes, their sizes, the line
        text = f"{words} (n {count:,})"
        parts += [f'<rect x="{lx}" y="23" width="12" height="10" fill="{colour}" fill-opacity="0.5"/>',
                  f'<text x="{lx + 16}" y="32">{text}</text>']
        lx += 16 + 6.5 * len(text) + 14
    if threshold is not None:
        parts += [f'<line x1="{lx}" y1="28" x2="{lx + 14}" y2="28" stroke="#222" stroke-dasharray="4 3"/>',
                  f'<text x="{lx + 18}" y="32">EER threshold</text>']
    parts.append("</svg>")
    return "\n".join(parts)

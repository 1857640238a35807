"""Rendering the ``evaluate`` document: Markdown (a pull-request comment, the gate's verdict on
its first line), JSON (the document itself) and HTML (one self-contained page: the same
tables, a DET chart and a score histogram per system, inline SVG, no scripts)."""

from __future__ import annotations

import json
import re

from harness.core.errors import HarnessError
from harness.report.det_chart import det_svg, histogram_svg
from harness.report.evaluation_schema import validate_evaluation
from harness.report.html_page import markup_text, page
from harness.report.render import Table

EVALUATION_FORMATS = ("markdown", "json", "html")
FLIPS_SHOWN = 10  # flipped files listed per pair in Markdown and HTML; the JSON holds them all


def _percent(rate: float) -> str:
    return f"{100 * rate:.2f}"


def _score(value: float) -> str:
    return f"{value:.6g}"


def _diff(value: float) -> str:
    return "0" if value == 0 else f"{value:.3g}"


def _natural(text: str) -> list:
    """A7 before A10: attack ids sorted as people number them."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


# --------------------------------------------------------------------------- sections as tables


def _gate_line(doc: dict) -> str:
    gate = doc["gate"]
    conditions = gate["conditions"]
    said = []
    if conditions["max_eer_increase_pp"] is not None:
        said.append(f"EER increase vs {doc['reference']} \u2264 {conditions['max_eer_increase_pp']:g} pp")
    if conditions["max_flips"] is not None:
        said.append(f"decision flips \u2264 {conditions['max_flips']}")
    return (f"Gate: {'PASSED' if gate['passed'] else 'FAILED'} ("
            + ("; ".join(said) if said else "no conditions: --max-eer-increase, --max-flips") + ")")


def _context_lines(doc: dict) -> list[str]:
    protocol, threshold = doc["protocol"], doc["threshold"]
    where = protocol["path"] if protocol["path"] is not None else "(no path)"
    lines = [f"Protocol {where} ({protocol['kind']}): {protocol['n_utterances']:,} utterances, "
             f"{protocol['n_bonafide']:,} bona fide, {protocol['n_spoof']:,} spoof.",
             f"Reference system: {doc['reference']}. Decisions compared at threshold "
             f"{_score(threshold['value'])} ({threshold['source']}); a score above it is bona fide."]
    tdcf = doc["tdcf"]
    if tdcf is None:
        lines.append("min t-DCF: not computed (no --asv-scores).")
    else:
        asv = tdcf["asv"]
        keys = ("pfa", "pmiss", "pmiss_spoof", "pfa_spoof")
        rates = ", ".join(f"{key} {_percent(asv[key])} %" for key in keys)
        lines.append(f"min t-DCF: the {tdcf['name']}, --tdcf {tdcf['definition']}; ASV scores "
                     f"{tdcf['asv_scores'] or '(unnamed)'}: ASV EER {_percent(asv['eer'])} % at its "
                     f"threshold {_score(asv['threshold'])}; there {rates}.")
    return lines


def _tdcf_cell(system: dict) -> str:
    if system["min_tdcf"] is not None:
        return f"{system['min_tdcf']:.4f}"
    return f"n/a ({system['min_tdcf_note']})" if system.get("min_tdcf_note") else "n/a"


def _systems_table(doc: dict) -> Table:
    tdcf = doc["tdcf"]
    tdcf_name = f"min t-DCF ({tdcf['definition']})" if tdcf is not None else "min t-DCF"
    rows = tuple((name, _percent(s["eer"]), _score(s["eer_threshold"]), _tdcf_cell(s),
                  "n/a" if s["min_tdcf_threshold"] is None else _score(s["min_tdcf_threshold"]),
                  f"{s['n_bonafide']:,}", f"{s['n_spoof']:,}", f"{s['not_in_protocol']:,}",
                  s["score_means"], s["source"])
                 for name, s in doc["systems"].items())
    return Table("Systems", ("Thresholds are on the oriented scale (higher = bona fide).",),
                 ("system", "EER %", "EER threshold", tdcf_name, "min t-DCF threshold", "bona fide", "spoof",
                  "scores not in protocol", "high score meant", "scores from"), rows)


def _attack_table(doc: dict) -> Table:
    systems = doc["systems"]
    attacks = sorted({a for s in systems.values() for a in s["per_attack"]}, key=_natural)
    rows = []
    for attack in attacks:
        cells = []
        for system in systems.values():
            entry = system["per_attack"].get(attack)
            cells.append("-" if entry is None else f"{_percent(entry['eer'])} (n {entry['n']:,})")
        rows.append((attack, *cells))
    return Table("EER per attack (%)", ("Every bona fide utterance against one attack's spoofs; n: that "
                                        "attack's spoof utterances.",),
                 ("attack", *systems), tuple(rows))


def _pairs_table(doc: dict) -> Table:
    rows = tuple((p["a"], p["b"], p["kind"], _score(p["threshold"]), f"{p['flips']:,}",
                  f"{p['bonafide_to_spoof']:,}", f"{p['spoof_to_bonafide']:,}",
                  _diff(p["max_abs_score_diff"])) for p in doc["pairs"])
    return Table("Decision flips", ("Each pair at its threshold: bf→spoof counts utterances a decides bona "
                                    "fide and b spoof, spoof→bf the reverse; 'form' pairs are deployment "
                                    "forms of one variant.",),
                 ("a", "b", "kind", "threshold", "flips", "bf→spoof", "spoof→bf", "max |score diff|"), rows)


def _flip_tables(doc: dict) -> list[Table]:
    tables = []
    for pair in doc["pairs"]:
        if not pair["flips"]:
            continue
        files = pair["files"]
        rows = tuple((f["file"], f["label"], _score(f["a"]), _score(f["b"])) for f in files[:FLIPS_SHOWN])
        more = len(files) - len(rows)
        changed = f"{pair['flips']:,} decisions change at threshold {_score(pair['threshold'])}."
        tables.append(Table(f"Flipped: {pair['a']} vs {pair['b']}", (changed,),
                            ("file", "label", f"score {pair['a']}", f"score {pair['b']}"), rows,
                            (f"... and {more:,} more (the JSON output lists them all)",) if more else ()))
    return tables


# --------------------------------------------------------------------------- Markdown

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&#!])")


def markdown_text(text: str) -> str:
    """``text`` shown as itself in Markdown, table cells included: Markdown's metacharacters
    backslash-escaped (a pipe would end the cell, a backtick open code, ``<`` start HTML) and line
    breaks as spaces (a newline would end the row)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", re.sub(r"[\x00-\x1f\x7f]+", " ", str(text)))


def _markdown_table(table: Table, level: str = "##") -> list[str]:
    lines = [f"{level} {markdown_text(table.title)}", "", *map(markdown_text, table.intro), ""]
    lines.append("| " + " | ".join(map(markdown_text, table.header)) + " |")
    lines.append("|" + "---|" * len(table.header))
    lines += ["| " + " | ".join(map(markdown_text, row)) + " |" for row in table.rows]
    lines += ["", *map(markdown_text, table.notes)] if table.notes else []
    return [*lines, ""]


def render_markdown(doc: dict) -> str:
    """The gate's verdict first (each failed condition a bullet), then the tables."""
    gate = doc["gate"]
    lines = [f"**{markdown_text(_gate_line(doc))}**", *(f"- {markdown_text(r)}" for r in gate["reasons"]), "",
             markdown_text(f"Orientation: {doc['orientation']}"), "",
             *(markdown_text(line) + "  " for line in _context_lines(doc)), ""]
    for table in (_systems_table(doc), _attack_table(doc), _pairs_table(doc)):
        lines += _markdown_table(table)
    for table in _flip_tables(doc):
        lines += _markdown_table(table, "###")
    return "\n".join(lines)


# --------------------------------------------------------------------------- JSON


def render_json(doc: dict) -> str:
    # allow_nan=False: NaN/Infinity are not JSON (the schema refuses them before this).
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


# --------------------------------------------------------------------------- HTML

_HTML_STYLE = """td.number { white-space: nowrap; text-align: right; }
td.long { max-width: 24rem; min-width: 10rem; overflow-wrap: anywhere; }
p.gate { font-size: 1.2rem; font-weight: bold; padding: 0.5rem 0.75rem; display: inline-block; }
p.passed { background: #e3f6e3; } p.failed { background: #fde2e2; }
figure { margin: 0.5rem 1rem 1rem 0; display: inline-block; vertical-align: top; }
figcaption { color: #555; font-size: 0.85rem; }
figure.det { width: 640px; } figure.histogram { width: 460px; }
"""


_NUMBER_CELL = re.compile(r"(-?[\d.,]+(e[-+]\d+)?( \(n [\d,]+\))?|n/a|-)\Z")


def _html_row(tag: str, cells: tuple[str, ...]) -> str:
    """A row; figures right-aligned and never broken, long names and paths broken anywhere to fit."""

    def cell_html(cell: str) -> str:
        kind = "number" if _NUMBER_CELL.match(cell) else "long" if len(cell) > 24 else ""
        attribute = f' class="{kind}"' if kind and tag == "td" else ""
        return f"<{tag}{attribute}>{markup_text(cell)}</{tag}>"

    return "<tr>" + "".join(map(cell_html, cells)) + "</tr>"


def _html_table(table: Table, level: str = "h2") -> list[str]:
    parts = [f"<{level}>{markup_text(table.title)}</{level}>",
             *(f"<p>{markup_text(line)}</p>" for line in table.intro), "<table>",
             _html_row("th", table.header), *(_html_row("td", row) for row in table.rows)]
    parts.append("</table>")
    return parts + [f'<p class="note">{markup_text(note)}</p>' for note in table.notes]


def _det_figure(doc: dict) -> str:
    return ('<figure class="det">' + det_svg(doc["systems"]) + "<figcaption>Detection error trade-off of "
            "every system on the protocol (probit axes; each circle sits at the system's EER on the y = x "
            "diagonal). Rates of 0 or 1 are drawn at the axis ends.</figcaption></figure>")


def _histogram_figures(doc: dict) -> list[str]:
    figures = []
    for name, system in doc["systems"].items():
        svg = histogram_svg(name, system["histogram"], threshold=system["eer_threshold"])
        figures.append(f'<figure class="histogram">{svg}<figcaption>{markup_text(name)}: share of each class '
                       "per score bin; dashed line: its EER threshold.</figcaption></figure>")
    return figures


def render_html(doc: dict) -> str:
    """One self-contained page: inline CSS and SVG, no scripts, no external assets."""
    gate = doc["gate"]
    verdict = "passed" if gate["passed"] else "failed"
    parts = ["<h1>Decisions on a labelled protocol</h1>",
             f'<p class="gate {verdict}">{markup_text(_gate_line(doc))}</p>']
    if gate["reasons"]:
        parts += ["<ul>", *(f"<li>{markup_text(r)}</li>" for r in gate["reasons"]), "</ul>"]
    parts += [f"<p>Orientation: {markup_text(doc['orientation'])}</p>",
              *(f"<p>{markup_text(line)}</p>" for line in _context_lines(doc))]
    parts += _html_table(_systems_table(doc))
    parts += ["<h2>DET curves</h2>", _det_figure(doc),
              "<h2>Score distributions</h2>", *_histogram_figures(doc)]
    parts += _html_table(_attack_table(doc)) + _html_table(_pairs_table(doc))
    for table in _flip_tables(doc):
        parts += _html_table(table, "h3")
    return page("rawnet2-harness evaluate", parts, extra_style=_HTML_STYLE)


_RENDERERS = {"markdown": render_markdown, "json": render_json, "html": render_html}


def render_evaluation(doc: dict, fmt: str) -> str:
    """``doc`` (validated here: a document that validates renders) as ``fmt``, one of
    ``EVALUATION_FORMATS``."""
    if fmt not in _RENDERERS:
        raise HarnessError(f"--format {fmt!r}: expected one of {', '.join(EVALUATION_FORMATS)}")
    validate_evaluation(doc)
    return _RENDERERS[fmt](doc)

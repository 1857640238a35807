"""Rendering the report: the same tables as Markdown (a pull-request comment), JSON (the data
itself) and HTML (one self-contained page, no scripts)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from harness.core.audits import FAIL
from harness.core.text import first_few
from harness.report.html_page import markup_text, page

# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Table:
    """One section of the report as the Markdown and HTML renderings lay it out."""

    title: str
    intro: tuple[str, ...]
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _diff(value: float | None) -> str:
    return "n/a" if value is None else ("0" if value == 0 else f"{value:.3g}")


def _verdict_table(report: dict) -> Table:
    rows = tuple((name, v["verdict"]) for name, v in report["variants"].items())
    return Table("Verdict", ("Derived from the structure facts and the audit results below, "
                             "against each variant's declared defects.",), ("variant", "verdict"), rows)


def _structure_table(report: dict) -> Table:
    rows = []
    for name, v in report["variants"].items():
        forward = "runs" if v["forward_error"] is None else f"raises {v['forward_error']}"
        norms = f"{v['batchnorms_reached_by_eval']}/{v['batchnorms']}"
        rows.append((name, _count(v["registered_parameters"]), _count(v["used_parameters"]),
                     str(v["state_dict_keys"]), norms, forward))
    return Table("Structure", ("Counted on a fresh model; 'used' are the parameters one forward really "
                               "touches (n/a where the forward raises).",),
                 ("variant", "registered params", "used params", "state_dict keys",
                  "BatchNorms reached by eval", "fresh forward"), tuple(rows))


def _audit_table(report: dict) -> Table:
    names = list(report["variants"])
    rows = []
    for check in report["meta"]["checks"]:
        cells = []
        for name in names:
            variant = report["variants"][name]
            result = variant["audit"].get(check, "n/a")
            declared = check in variant["declared_defects"]
            mark = " (undeclared)" if result == FAIL and not declared else \
                " (declared, not seen)" if result != FAIL and declared else ""
            cells.append(result + mark)
        rows.append((check, *cells))
    shapes = ", ".join(f"{name} {'x'.join(map(str, v['input_shape']))}"
                       for name, v in report["variants"].items() if v["input_shape"])
    return Table("Audit matrix", (f"harness.core.audits on each variant's own input contract ({shapes}); "
                                  "`python -m harness audit NAME` prints every finding.",),
                 ("check", *names), tuple(rows))


def _equivalence_table(report: dict) -> Table:
    rows = tuple((e["a"], e["b"], e["mode"], e["weights"], _diff(e["max_abs_diff"]), e["tolerance"]["name"],
                  ("yes" if e["equivalent"] else "no") + ("" if e.get("required", True) else " (not needed)"),
                  e.get("first_divergence") or e.get("detail") or "")
                 for e in report["equivalence"])
    notes = tuple(f"not run: {item}" for item in report["meta"]["not_run"])
    batch = report["meta"]["compare_batch"]
    return Table("Equivalence", (f"Same weights in both (seeded, BatchNorm statistics away from their "
                                 f"defaults), {batch} examples of the reference's input contract.",),
                 ("a", "b", "mode", "b's weights", "max abs diff", "tolerance", "equivalent",
                  "where they part"), rows, notes)


def _checkpoint_table(report: dict) -> Table:
    targets = list(dict.fromkeys(r["target"] for r in report["checkpoints"]))
    policies = list(dict.fromkeys(r["policy"] for r in report["checkpoints"]))
    cells = {(r["source"], r["target"], r["policy"]): r for r in report["checkpoints"]}
    rows = []
    for source in dict.fromkeys(r["source"] for r in report["checkpoints"]):
        row = [source]
        for target in targets:
            for policy in policies:
                r = cells.get((source, target, policy))
                if r is None:
                    row.append("-")  # another model's checkpoint: not compared across groups
                elif not r["loads"]:
                    row.append("refused")
                elif r["function_preserved"]:
                    row.append("loads, same function")
                else:
                    row.append(f"loads, function changes (max abs diff {_diff(r['max_abs_diff'])})")
        rows.append(tuple(row))
    refusals = dict.fromkeys(r["detail"] for r in report["checkpoints"] if not r["loads"])
    return Table("Checkpoint compatibility",
                 ("A seeded checkpoint of each layout (rows), converted with convert_state_dict and "
                  "loaded strictly with get_audio_model into each layout (columns, per policy); "
                  "'same function' means bit-identical outputs.",),
                 ("checkpoint", *(f"-> {t} ({p})" for t in targets for p in policies)), tuple(rows),
                 tuple(f"refused: {reason}" for reason in refusals))


def _timing_tables(report: dict) -> list[Table]:
    timing = report["timing"]
    machine = timing["machine"]
    where = machine["gpu"] if timing["device"] == "cuda" else machine["cpu"]
    peak = timing["matmul_peak_gflops_per_s"]
    intro = (f"{timing['device']} ({where}), torch {machine['torch_version']}, {machine['torch_threads']} "
             f"threads; matmul peak {peak:.0f} GFLOP/s measured in the same run. Eval mode under "
             "torch.inference_mode(); every held module (tuple_blocks' too) placed in eval mode on the "
             "device. FLOPs: 2 per multiply-accumulate of the convolutions and linear layers "
             "(harness.flops).", timing["caveat"])
    rows = tuple((f"{b['batch']} x {b['length']}", b["variant"], f"{b['median_ms']:.1f}",
                  f"{b['iqr_ms']:.1f}", str(b["repeats"]), f"{b['samples_per_s']:.1f}",
                  f"{b['real_time_factor']:.4f}", f"{b['gflops_per_s']:.1f}", f"{b['peak_fraction']:.0%}",
                  b["form"])
                 for b in report["benchmarks"])
    table = Table("Forward timing", intro,
                  ("batch x length", "variant", "median ms", "IQR ms", "repeats", "samples/s",
                   "real-time factor", "GFLOP/s", "of matmul peak", "form"), rows)
    ratio_rows = tuple((f"{r['batch']} x {r['length']}", r["kind"], f"{r['a']} / {r['b']}" if
                        r["kind"].startswith("time") else f"{r['a']} eager / {r['b']}", _ratio(r["ratio"]))
                       for r in timing["ratios"])
    ratios = Table("Targets as measured",
                   ("Median time of each variant over its reference's (target 0.95-1.05: a fix should cost "
                    "what the model it must equal costs) and each eager form over its optimized form (target "
                    ">= 1.3 at batch 4-8 on CPU).",),
                   ("batch x length", "ratio", "of", "value"), ratio_rows)
    return [table, ratios]


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _decisions_table(report: dict) -> Table:
    decisions = report["decisions"]
    rows = tuple((r["a"], r["b"], r["kind"], r["how"], f"{r['threshold']:.4g}",
                  f"{r['flips']} of {r['n']}", f"{r['bonafide_to_spoof']} / {r['spoof_to_bonafide']}",
                  _diff(r["max_abs_score_diff"]), _diff(r["margin"]),
                  f"{100 * r['eer_a']:.1f} % / {100 * r['eer_b']:.1f} %",
                  first_few(r["flipped"]))
                 for r in decisions["rows"])
    quick = " --quick: every clip cut to the variant's declared input length." if decisions["quick"] else ""
    intro = (f"On {decisions['corpus']}: {decisions['n_bonafide']} bona fide, {decisions['n_spoof']} spoof. "
             "Each variant next to its reference holding the same weights, each deployment form next to "
             "its eager form; decisions at the first one's EER threshold on this corpus. Seeded random "
             "weights: the EERs mean nothing and the scores crowd the threshold, so a decision flips "
             "wherever b moves a score further than a's 'margin' (its nearest score to the threshold); "
             f"`python -m harness evaluate --checkpoint` judges a trained model.{quick}")
    return Table("Decisions", (intro,),
                 ("a", "b", "kind", "b's weights / form", "threshold", "flips", "bona fide->spoof / "
                  "spoof->bona fide", "max abs score diff", "margin", "EER a / b", "flipped files"), rows,
                 tuple(f"not run: {item}" for item in decisions["not_run"]))


def tables(report: dict) -> list[Table]:
    """The report's sections in reading order, as tables of strings."""
    return [_verdict_table(report), _structure_table(report), _audit_table(report),
            _equivalence_table(report), _decisions_table(report), _checkpoint_table(report),
            *_timing_tables(report)]


def _title(report: dict) -> str:
    return "RawNet2 variants side by side" + (" (--quick: short inputs, few repeats)"
                                                if report["meta"]["quick"] else "")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict) -> str:
    """Markdown for a pull-request comment."""
    lines = [f"# {_title(report)}", "", f"Generated {report['meta']['generated_utc']} by "
             "`python -m harness report`.", ""]
    for table in tables(report):
        lines += [f"## {table.title}", ""]
        lines += [*table.intro, ""] if table.intro else []
        lines.append("| " + " | ".join(map(_md_cell, table.header)) + " |")
        lines.append("|" + "---|" * len(table.header))
        lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
        lines += ["", *(f"- {_md_cell(note)}" for note in table.notes)] if table.notes else []
        lines.append("")
    return "\n".join(lines)


def render_json(report: dict) -> str:
    # allow_nan=False: NaN/Infinity are not JSON; a non-finite figure is a bug to surface.
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


_HTML_STYLE = """td.fail { background: #fde2e2; } td.pass { background: #e3f6e3; }
"""


def _html_cell(text: str) -> str:
    head = text.split(" ", 1)[0].rstrip(":")
    css = {"fail": "fail", "refused": "fail", "no": "fail", "do": "fail",
           "pass": "pass", "ship": "pass", "yes": "pass", "loads,": "pass"}.get(head)
    return f"<td class=\"{css}\">{markup_text(text)}</td>" if css else f"<td>{markup_text(text)}</td>"


def _static_svg(chart: object) -> str:
    """The chart's SVG without pygal's script elements (its config script comes even with ``js=[]``)."""
    from xml.etree import ElementTree

    # Default namespaces, so the SVG is inline-able in HTML (a prefixed <ns0:svg> is not SVG there).
    ElementTree.register_namespace("", "http://www.w3.org/2000/svg")
    ElementTree.register_namespace("xlink", "http://www.w3.org/1999/xlink")
    tree = ElementTree.fromstring(chart.render(is_unicode=True))
    for parent in list(tree.iter()):
        for child in list(parent):
            if child.tag.rpartition("}")[2] == "script":
                parent.remove(child)
    return ElementTree.tostring(tree, encoding="unicode")


def _svg_charts(report: dict) -> list[tuple[str, str, str]]:
    """(section title, caption, inline SVG) for the charts a reviewer would rather look at than read.

    pygal (it comes with pytest-benchmark[histogram]) renders them; its scripts are stripped
    (``_static_svg``), so the page stays one self-contained file with no scripts. Without
    pygal: no charts.
    """
    try:
        import pygal
    except ImportError:
        return []
    style = dict(js=[], disable_xml_declaration=True, width=960, height=420, explicit_size=True,
                 legend_at_bottom=True, truncate_legend=-1, x_label_rotation=30)
    charts = []
    rows = report["benchmarks"]
    if rows:
        forms = list(dict.fromkeys(r["variant"] for r in rows))
        chart = pygal.Bar(title="Median forward time (ms; whiskers: interquartile range)", **style)
        chart.x_labels = forms
        for config in dict.fromkeys((r["batch"], r["length"]) for r in rows):
            by_form = {r["variant"]: r for r in rows if (r["batch"], r["length"]) == config}
            chart.add(f"{config[0]} x {config[1]}", [
                {"value": by_form[f]["median_ms"],
                 "ci": {"low": max(0.0, by_form[f]["median_ms"] - by_form[f]["iqr_ms"] / 2),
                        "high": by_form[f]["median_ms"] + by_form[f]["iqr_ms"] / 2}} if f in by_form else None
                for f in forms])
        charts.append(("Forward timing", "Median time per form and configuration, the bar's whisker spans "
                       "the interquartile range.", _static_svg(chart)))
    staged = [e for e in report["equivalence"] if e.get("stages") and not e["equivalent"]]
    for e in staged:
        chart = pygal.Line(title=f"{e['b']} vs {e['a']} ({e['mode']}): max abs difference per stage",
                           show_dots=True, **style)
        chart.x_labels = [s["ref"] for s in e["stages"]]
        chart.add("max abs diff", [s["max_abs_diff"] for s in e["stages"]])
        charts.append(("Equivalence", f"Where {e['b']} parts from {e['a']} in {e['mode']} mode, stage by "
                       "stage "
                       "(each weight-owning module's output, in the reference's forward order).",
                       _static_svg(chart)))
    return charts


def render_html(report: dict) -> str:
    """One self-contained page: inline CSS and SVG charts, no scripts, no external assets."""
    charts: dict[str, list[tuple[str, str]]] = {}
    for section, caption, svg in _svg_charts(report):
        charts.setdefault(section, []).append((caption, svg))
    parts = [f"<h1>{markup_text(_title(report))}</h1>",
             f"<p class=\"note\">Generated {markup_text(report['meta']['generated_utc'])} by "
             "<code>python -m harness report</code>.</p>"]
    for table in tables(report):
        parts.append(f"<h2>{markup_text(table.title)}</h2>")
        parts += [f"<p>{markup_text(line)}</p>" for line in table.intro]
        for caption, svg in charts.get(table.title, ()):
            parts.append(f"<figure>{svg}<figcaption>{markup_text(caption)}</figcaption></figure>")
        parts.append("<table>")
        parts.append("<tr>" + "".join(f"<th>{markup_text(h)}</th>" for h in table.header) + "</tr>")
        parts += ["<tr>" + "".join(_html_cell(cell) for cell in row) + "</tr>" for row in table.rows]
        parts.append("</table>")
        parts += [f"<p class=\"note\">{markup_text(note)}</p>" for note in table.notes]
    return page(_title(report), parts, extra_style=_HTML_STYLE)


RENDERERS: Mapping[str, Callable[[dict], str]] = {
    "markdown": render_markdown,
    "json": render_json,
    "html": render_html,
}

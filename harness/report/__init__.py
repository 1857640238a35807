"""The reviewer report: built as plain data, then rendered as Markdown, JSON or HTML.

``build_report()`` measures everything and returns a JSON-ready dict (the shape of
``REPORT_SCHEMA``, which other tools read). Nothing in it is written by hand per
variant: structure comes from ``harness.core.introspect.describe``, the audit matrix
from ``harness.core.audits.audit``, each verdict from those two against the variant's
declared defects, equivalence from ``harness.rawnet2.equivalence``, checkpoint
compatibility from actually converting and loading checkpoints
(``harness.rawnet2.checkpoints``), and timing from ``harness.core.bench``.

``render_markdown`` / ``render_html`` lay the same tables out; ``render_json`` is
the data itself. ``cli_report`` is ``python -m harness report``.
"""

from __future__ import annotations

import argparse
import datetime
import html
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from harness.core import bench
from harness.core.audits import FAIL, NOT_APPLICABLE, PASS
from harness.core.errors import HarnessError
from harness.core.fileio import check_writable_target, write_text_atomically
from harness.core.forms import DEPLOYMENT_FORMS, compare_form, max_differences
from harness.core.introspect import Structure, describe
from harness.core.tolerances import DEPLOYMENT_TOLERANCES, EXACT, Tolerance
from harness.rawnet2 import bench as rawnet2_bench
from harness.rawnet2.audits import CHECKS, audit
from harness.rawnet2.checkpoints import POLICIES, convert_state_dict, get_audio_model
from harness.rawnet2.equivalence import compare_variants, seed_weights
from harness.rawnet2.inputs import NUM_SAMPLES, SAMPLE_RATE
from harness.rawnet2.layouts import declared_layouts
from harness.rawnet2.registry import SUBJECTS, build

Progress = Callable[[str], None]

# The JSON contract (issue 6). Other tools read these keys; extra keys are allowed
# everywhere. used_parameters is null for a model whose forward raises (legacy):
# it uses no defined set of parameters.
REPORT_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "rawnet2-harness report",
    "type": "object",
    "required": ["variants", "equivalence", "benchmarks"],
    "properties": {
        "variants": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {
                "type": "object",
                "required": ["registered_parameters", "used_parameters", "state_dict_keys", "audit",
                             "verdict"],
                "properties": {
                    "registered_parameters": {"type": "integer", "minimum": 0},
                    "used_parameters": {"type": ["integer", "null"], "minimum": 0},
                    "state_dict_keys": {"type": "integer", "minimum": 0},
                    "audit": {
                        "type": "object",
                        "additionalProperties": {"enum": [PASS, FAIL, NOT_APPLICABLE]},
                    },
                    "verdict": {"type": "string", "minLength": 1},
                },
            },
        },
        "equivalence": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["a", "b", "mode", "max_abs_diff", "equivalent"],
                "properties": {
                    "a": {"type": "string", "minLength": 1},
                    "b": {"type": "string", "minLength": 1},
                    "mode": {"enum": ["train", "eval"]},
                    "max_abs_diff": {"type": "number", "minimum": 0},
                    "equivalent": {"type": "boolean"},
                },
            },
        },
        "benchmarks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["variant", "device", "batch", "length", "median_ms"],
                "properties": {
                    "variant": {"type": "string", "minLength": 1},
                    "device": {"type": "string", "minLength": 1},
                    "batch": {"type": "integer", "minimum": 1},
                    "length": {"type": "integer", "minimum": 1},
                    "median_ms": {"type": "number", "exclusiveMinimum": 0},
                },
            },
        },
    },
}


# --------------------------------------------------------------------------- how much to measure


@dataclass(frozen=True)
class Plan:
    """How much the report measures. ``QUICK`` is for CI (seconds), ``FULL`` for reviewers."""

    audit_shape: tuple[int, ...]  # example input of the audits and the structure counts
    compare_shape: tuple[int, ...]  # input of the equivalence comparisons and checkpoint loads
    lengths: tuple[int, ...]
    batches: tuple[int, ...]
    warmup: int
    min_repeats: int
    max_repeats: int
    budget_s: float  # timed seconds per configuration, within min/max repeats
    peak_size: int  # matmul side for the peak measurement
    peak_min_run_time: float
    compile: bool  # time and compare the torch.compile'd form (5-15 s of compiling per shape)


FULL = Plan(audit_shape=(2, 1, 4000), compare_shape=(3, 1, 4000), lengths=(16_000, NUM_SAMPLES),
            batches=(1, 8), warmup=1, min_repeats=3, max_repeats=15, budget_s=2.5,
            peak_size=2048, peak_min_run_time=1.0, compile=True)
QUICK = Plan(audit_shape=(2, 1, 1000), compare_shape=(2, 1, 1000), lengths=(2000,), batches=(1, 4),
             warmup=1, min_repeats=3, max_repeats=3, budget_s=0.0, peak_size=512, peak_min_run_time=0.05,
             compile=False)

NOISE_CAVEAT = ("Timings are wall-clock medians and share the machine with whatever else runs: on a "
                "busy 2-core CPU they move by tens of percent, and multi-threaded runs can slow down "
                "several-fold when other processes take the cores (OpenMP threads wait on each other). "
                "Compare runs taken on a quiet machine (or with OMP_NUM_THREADS=1 on a busy one); "
                "keep baselines with the pytest-benchmark suite (tests/benchmarks).")


# --------------------------------------------------------------------------- verdict


@dataclass(frozen=True)
class Verdict:
    """Ship or not, and why: derived from structure facts and audit results, never hand-written."""

    ship: bool
    reasons: tuple[str, ...]

    @property
    def line(self) -> str:
        return ("ship: " if self.ship else "do not ship: ") + "; ".join(self.reasons)


def verdict(structure: Structure, results: Mapping[str, str], declared: Mapping[str, str]) -> Verdict:
    """The verdict for one model from its structure, its audit results and its declared defects.

    Any failed audit, a forward that raises, parameters the forward uses but does not
    register, or BatchNorms that ``eval()`` misses means "do not ship". A failure the
    variant does not declare is named as such: it is a change nobody has explained.
    """
    reasons = []
    used, registered = structure.used_parameters, structure.registered_parameters
    if structure.forward_error is not None:
        error_type = structure.forward_error.partition(":")[0]
        reasons.append(f"forward raises {error_type} on a fresh model")
    elif used is not None and used > registered:
        reasons.append(f"{used - registered:,} of the {used:,} parameters the forward uses are unregistered")
    if structure.batchnorms_reached_by_eval < structure.batchnorms:
        missed = structure.batchnorms - structure.batchnorms_reached_by_eval
        reasons.append(f"eval() misses {missed} of {structure.batchnorms} BatchNorms")
    failed = [check for check, result in results.items() if result == FAIL]
    if failed:
        reasons.append(f"fails {len(failed)} of {len(results)} audits: {', '.join(failed)}")
    undeclared = [check for check in failed if check not in declared]
    if undeclared:
        reasons.append(f"undeclared failure{'s' * (len(undeclared) > 1)}: {', '.join(undeclared)}")
    if reasons:
        return Verdict(False, tuple(reasons))
    applied = sum(result == PASS for result in results.values())
    return Verdict(True, (
        f"passes {applied} of {len(results)} audits ({len(results) - applied} n/a)",
        f"registers all {structure.registered_parameters:,} parameters its forward uses",
        f"eval() reaches all {structure.batchnorms} BatchNorms",
    ))


# --------------------------------------------------------------------------- sections


def _example(shape: tuple[int, ...]) -> torch.Tensor:
    return bench.waveform(shape[0], shape[-1])


def _variants_section(plan: Plan, progress: Progress) -> dict:
    example = _example(plan.audit_shape)
    variants = {}
    for i, (name, info) in enumerate(SUBJECTS.items(), 1):
        progress(f"auditing {name} ({i}/{len(SUBJECTS)})")
        with torch.random.fork_rng():
            torch.manual_seed(0)
            structure = describe(info.build(), example)
        result = audit(info.build, example)
        judged = verdict(structure, result.results, info.expected_defects)
        variants[name] = {
            **asdict(structure),
            "audit": dict(result.results),
            "verdict": judged.line,
            "ship": judged.ship,
            "reasons": list(judged.reasons),
            "description": info.description,
            "source": info.source,
            "declared_defects": dict(info.expected_defects),
            "findings": {check: result.messages(check) for check in result.failed},
            "audit_notes": dict(result.notes),
        }
    return variants


def _tolerance(name: str, tol: Tolerance) -> dict:
    return {"name": name, "rtol": tol.rtol, "atol": tol.atol, "reason": tol.reason}


# Variant pairs the reviewer asks about: does the fix compute what the other layout or the
# legacy model computes, holding the same weights (harness.rawnet2.equivalence.compare_variants)?
VARIANT_PAIRS = (("tuple_blocks", "skip_modules"), ("legacy_effective", "skip_modules"))


def _equivalence_section(plan: Plan, device: str, progress: Progress) -> tuple[list[dict], list[str]]:
    x = _example(plan.compare_shape)
    rows, skipped = [], []
    for a, b in VARIANT_PAIRS:
        for mode in ("train", "eval"):
            progress(f"comparing {a} with {b} ({mode})")
            diff = compare_variants(a, b, mode, x=x)
            rows.append({"a": a, "b": b, "mode": mode, "max_abs_diff": diff.max_abs,
                         "equivalent": diff.identical, "max_rel_diff": diff.max_rel,
                         "weights": diff.weights, "tolerance": _tolerance("EXACT", EXACT)})
    forms = [name for name, form in DEPLOYMENT_FORMS.items() if not form.needs_cuda or device == "cuda"]
    if not plan.compile:
        forms.remove("compiled")
        skipped.append("compiled (--quick: compiling takes 5-15 s per input shape)")
    model = seed_weights(build("skip_modules"), 0)
    for form in forms:
        progress(f"comparing skip_modules eager with its {form} form")
        diff = compare_form(model, x, form)
        tolerance = _tolerance(f"DEPLOYMENT_TOLERANCES[{form!r}]", DEPLOYMENT_TOLERANCES[form])
        # Label by what really ran: a compile that fell back to eager must not read "compiled".
        rows.append({"a": "skip_modules", "b": f"skip_modules ({diff.ran or form})", "mode": "eval",
                     "max_abs_diff": diff.max_abs, "equivalent": diff.within, "max_rel_diff": diff.max_rel,
                     "form": form, "ran": diff.ran or form, "weights": "same model", "tolerance": tolerance})
    return rows, skipped


def _source_checkpoints(seed: int) -> dict[str, tuple[torch.nn.Module, dict]]:
    """Layout -> (a model with seeded weights, the checkpoint it saves) for every layout."""
    sources = {}
    for layout in declared_layouts():
        # get_audio_model builds each layout's runnable form (legacy: legacy_effective).
        model = seed_weights(get_audio_model(layout), seed).eval()
        sources[layout] = (model, {k: v.clone() for k, v in model.state_dict().items()})
    return sources


def _checkpoints_section(plan: Plan, progress: Progress) -> list[dict]:
    """Every source layout's checkpoint into every target layout under every policy, really loaded."""
    progress("converting and loading checkpoints between layouts")
    x = _example(plan.compare_shape)
    rows = []
    for source, (model, state) in _source_checkpoints(seed=0).items():
        with torch.no_grad():
            expected = model(x)
        for target in declared_layouts():
            for policy in POLICIES:
                row = {"source": source, "target": target, "policy": policy, "loads": False,
                       "max_abs_diff": None, "function_preserved": None}
                try:
                    converted, conversion = convert_state_dict(state, target, source=source, policy=policy)
                    loaded = get_audio_model(target, checkpoint=converted, policy=policy)
                except HarnessError as exc:
                    row["detail"] = str(exc)
                else:
                    with torch.no_grad():
                        max_abs, _ = max_differences(loaded(x), expected)
                    row.update(loads=True, max_abs_diff=max_abs, function_preserved=max_abs == 0.0,
                               detail=conversion.lines()[0])
                rows.append(row)
    return rows


def _timing_section(plan: Plan, device: str, progress: Progress) -> tuple[list[dict], dict]:
    progress(f"measuring the {device} matmul peak ({plan.peak_size}x{plan.peak_size} float32)")
    peak = bench.matmul_peak(device, size=plan.peak_size, min_run_time=plan.peak_min_run_time)
    configs = [(batch, length) for length in plan.lengths for batch in plan.batches]
    rows = []
    for i, (batch, length) in enumerate(configs, 1):
        x = bench.waveform(batch, length, device)
        flops = {subject: bench.flops(build(subject), x.shape)
                 for subject in dict.fromkeys(form.subject for form in rawnet2_bench.TIMED_FORMS)}
        progress(f"timing batch {batch} x {length} on {device} ({i}/{len(configs)}): "
                 f"{', '.join(form.name for form in rawnet2_bench.TIMED_FORMS)}, interleaved")
        models = {f.name: rawnet2_bench.build_timed(f, device, compile=plan.compile)
                  for f in rawnet2_bench.TIMED_FORMS}
        timings = bench.time_calls({name: bench.inference_call(m, x) for name, m in models.items()},
                                   warmup=plan.warmup, min_repeats=plan.min_repeats,
                                   max_repeats=plan.max_repeats, budget_s=plan.budget_s,
                                   on_round=_slow_rounds(progress))
        for form in rawnet2_bench.TIMED_FORMS:
            timing, info = timings[form.name], getattr(models[form.name], "info", None)
            rates = bench.throughput(model_flops=flops[form.subject], batch=batch, length=length,
                                     sample_rate=SAMPLE_RATE, seconds=timing.median_s,
                                     peak_flops_per_s=peak)
            rows.append({
                "variant": form.name, "device": device, "batch": batch, "length": length,
                "median_ms": timing.median_s * 1e3, "iqr_ms": timing.iqr_s * 1e3,
                "repeats": len(timing.times_s), "flops": flops[form.subject], **asdict(rates),
                "form": info.form if info is not None else "eager",
            })
        progress("  median ms: " + ", ".join(f"{name} {t.median_s * 1e3:.1f}" for name, t in timings.items()))
    meta = {"device": device, "matmul_peak_gflops_per_s": peak / 1e9, "plan": asdict(plan),
            "machine": bench.machine_info(), "caveat": NOISE_CAVEAT,
            "ratios": _ratios(rows)}
    return rows, meta


def _slow_rounds(progress: Progress, threshold_s: float = 2.0) -> Callable[[int], None]:
    """Progress per timing round, only where rounds are slow enough for a reader to wait on."""
    last = time.monotonic()

    def on_round(i: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= threshold_s:
            progress(f"  round {i + 1} done ({now - last:.1f} s)")
        last = now

    return on_round


def _ratios(rows: list[dict]) -> list[dict]:
    """Per configuration: the issue's targets as measured (tuple/skip cost, optimized speed-up)."""
    by_config: dict[tuple[int, int], dict[str, float]] = {}
    for row in rows:
        by_config.setdefault((row["batch"], row["length"]), {})[row["variant"]] = row["median_ms"]
    out = []
    for (batch, length), medians in by_config.items():
        eager = medians.get("skip_modules")
        if not eager:
            continue
        out.append({
            "batch": batch, "length": length,
            "tuple_blocks_over_skip_modules": medians["tuple_blocks"] / eager if "tuple_blocks" in medians
            else None,
            "speedup_optimized_over_eager": eager / medians["skip_modules_optimized"]
            if "skip_modules_optimized" in medians else None,
        })
    return out


def build_report(*, quick: bool = False, device: str = "cpu", progress: Progress | None = None) -> dict:
    """The report as plain data (see ``REPORT_SCHEMA``).

    ``quick`` uses short inputs, few repeats and no compiling (seconds, for CI);
    otherwise inputs of 16000 and 64600 samples, batches 1 and 8, repeated to a
    time budget (a few minutes on 2 cores). ``progress`` receives a line per step.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise HarnessError("--device cuda: CUDA is not available on this machine")
    plan = QUICK if quick else FULL
    say = progress or (lambda message: None)
    variants = _variants_section(plan, say)
    equivalence, skipped = _equivalence_section(plan, device, say)
    checkpoints = _checkpoints_section(plan, say)
    benchmarks, timing = _timing_section(plan, device, say)
    return {
        "variants": variants,
        "equivalence": equivalence,
        "benchmarks": benchmarks,
        "checkpoints": checkpoints,
        "timing": timing,
        "meta": {
            "quick": quick,
            "generated_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "audit_input_shape": list(plan.audit_shape),
            "compare_input_shape": list(plan.compare_shape),
            "checks": list(CHECKS),
            "not_run": skipped,
        },
    }


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
    shape = "x".join(map(str, report["meta"]["audit_input_shape"]))
    return Table("Audit matrix", (f"harness.core.audits on an example input of {shape}; "
                                  "`python -m harness audit --variant NAME` prints every finding.",),
                 ("check", *names), tuple(rows))


def _equivalence_table(report: dict) -> Table:
    rows = tuple((e["a"], e["b"], e["mode"], e["weights"], _diff(e["max_abs_diff"]), e["tolerance"]["name"],
                  "yes" if e["equivalent"] else "no") for e in report["equivalence"])
    notes = tuple(f"not run: {item}" for item in report["meta"]["not_run"])
    shape = "x".join(map(str, report["meta"]["compare_input_shape"]))
    return Table("Equivalence", (f"Same weights in both (seeded, BatchNorm statistics away from their "
                                 f"defaults), input {shape}.",),
                 ("a", "b", "mode", "b's weights", "max abs diff", "tolerance", "equivalent"), rows, notes)


def _checkpoint_table(report: dict) -> Table:
    targets = list(dict.fromkeys(r["target"] for r in report["checkpoints"]))
    policies = list(dict.fromkeys(r["policy"] for r in report["checkpoints"]))
    cells = {(r["source"], r["target"], r["policy"]): r for r in report["checkpoints"]}
    rows = []
    for source in dict.fromkeys(r["source"] for r in report["checkpoints"]):
        row = [source]
        for target in targets:
            for policy in policies:
                r = cells[(source, target, policy)]
                if not r["loads"]:
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
    ratio_rows = tuple((f"{r['batch']} x {r['length']}", _ratio(r["tuple_blocks_over_skip_modules"]),
                        _ratio(r["speedup_optimized_over_eager"])) for r in timing["ratios"])
    ratios = Table("Targets as measured",
                   ("tuple_blocks / skip_modules median time (target 0.95-1.05); "
                    "skip_modules eager / optimize_for_inference median time (target >= 1.3 at batch 4-8 on "
                    "CPU).",),
                   ("batch x length", "tuple_blocks / skip_modules", "optimized speed-up"), ratio_rows)
    return [table, ratios]


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def tables(report: dict) -> list[Table]:
    """The report's sections in reading order, as tables of strings."""
    return [_verdict_table(report), _structure_table(report), _audit_table(report),
            _equivalence_table(report), _checkpoint_table(report), *_timing_tables(report)]


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


_HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 90rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.fail { background: #fde2e2; } td.pass { background: #e3f6e3; }
p.note { color: #555; font-size: 0.85rem; }
"""


def _html_cell(text: str) -> str:
    head = text.split(" ", 1)[0].rstrip(":")
    css = {"fail": "fail", "refused": "fail", "no": "fail", "do": "fail",
           "pass": "pass", "ship": "pass", "yes": "pass", "loads,": "pass"}.get(head)
    return f"<td class=\"{css}\">{html.escape(text)}</td>" if css else f"<td>{html.escape(text)}</td>"


def render_html(report: dict) -> str:
    """One self-contained page: inline CSS, no scripts, no external assets."""
    title = html.escape(_title(report))
    parts = ["<!DOCTYPE html>", "<html lang=\"en\">", "<head>", "<meta charset=\"utf-8\">",
             f"<title>{title}</title>", f"<style>{_HTML_STYLE}</style>", "</head>", "<body>",
             f"<h1>{title}</h1>",
             f"<p class=\"note\">Generated {html.escape(report['meta']['generated_utc'])} by "
             "<code>python -m harness report</code>.</p>"]
    for table in tables(report):
        parts.append(f"<h2>{html.escape(table.title)}</h2>")
        parts += [f"<p>{html.escape(line)}</p>" for line in table.intro]
        parts.append("<table>")
        parts.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in table.header) + "</tr>")
        parts += ["<tr>" + "".join(_html_cell(cell) for cell in row) + "</tr>" for row in table.rows]
        parts.append("</table>")
        parts += [f"<p class=\"note\">{html.escape(note)}</p>" for note in table.notes]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


RENDERERS: Mapping[str, Callable[[dict], str]] = {
    "markdown": render_markdown,
    "json": render_json,
    "html": render_html,
}


# --------------------------------------------------------------------------- command line


def _stderr_progress() -> Progress:
    start = time.monotonic()

    def say(message: str) -> None:
        print(f"report [{time.monotonic() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    return say


def cli_report(args: argparse.Namespace) -> int:
    """``python -m harness report``: measure, render in ``--format``, print or write ``--output``."""
    output = Path(args.output) if args.output else None
    if output is not None:
        check_writable_target(output)  # before measuring for minutes
    progress = _stderr_progress()
    report = build_report(quick=args.quick, device=args.device, progress=progress)
    text = RENDERERS[args.format](report)
    if output is None:
        sys.stdout.write(text)
    else:
        write_text_atomically(output, text)
        progress(f"wrote {output}")
    return 0

"""Building the report: measure everything and return it as plain data.

Nothing is written by hand per variant: every list comes from the registry
(``harness.rawnet2.registry``). Structure comes from ``harness.core.introspect.describe``,
the audit matrix from the audits with each spec's output kind, each verdict from those
two against the declared defects and from the equivalence with the declared reference,
equivalence from structural matching (``compare_specs``) and the guide's layouts
(``compare_variants``), checkpoint compatibility from actually converting and loading
checkpoints, and timing from ``harness.core.bench``. The result has the shape of
``harness.report.schema.REPORT_SCHEMA``.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch

from harness.core import bench
from harness.core.audits import FAIL, PASS
from harness.core.errors import HarnessError, error_line
from harness.core.forms import DEPLOYMENT_FORMS, compare_form, max_differences
from harness.core.introspect import Structure, describe
from harness.core.tolerances import DEPLOYMENT_TOLERANCES, EXACT, Tolerance
from harness.rawnet2 import bench as rawnet2_bench
from harness.rawnet2.audits import CHECKS, audit_spec
from harness.rawnet2.checkpoints import (
    CANONICAL_LAYOUT,
    POLICIES,
    get_audio_model,
    load_into,
)
from harness.rawnet2.equivalence import compare_specs, compare_variants, seed_weights
from harness.rawnet2.inputs import NUM_SAMPLES, SAMPLE_RATE
from harness.rawnet2.layouts import declared_layouts
from harness.rawnet2.registry import MODES, SUBJECTS, build, in_family, spec
from harness.report.decisions import decisions_section

Progress = Callable[[str], None]


# --------------------------------------------------------------------------- how much to measure


@dataclass(frozen=True)
class Plan:
    """How much the report measures. ``QUICK`` is for CI (seconds), ``FULL`` for reviewers."""

    audit_batch: int  # examples of each variant's own input contract (spec.example) the audits take
    compare_batch: int  # the same for equivalence comparisons and checkpoint loads
    lengths: tuple[int, ...]  # timed lengths (raised to a variant's declared length where it is longer)
    batches: tuple[int, ...]
    warmup: int
    min_repeats: int
    max_repeats: int
    budget_s: float  # timed seconds per configuration, within min/max repeats
    peak_size: int  # matmul side for the peak measurement
    peak_min_run_time: float
    compile: bool  # time and compare the torch.compile'd form (5-15 s of compiling per shape)
    int8: bool  # time the int8 form and take its decisions (seconds of quantizing per variant)


FULL = Plan(audit_batch=2, compare_batch=3, lengths=(16_000, NUM_SAMPLES),
            batches=(1, 8), warmup=1, min_repeats=3, max_repeats=15, budget_s=2.5,
            peak_size=2048, peak_min_run_time=1.0, compile=True, int8=True)
QUICK = Plan(audit_batch=2, compare_batch=2, lengths=(2000,), batches=(1,),
             warmup=1, min_repeats=3, max_repeats=3, budget_s=0.0, peak_size=512, peak_min_run_time=0.05,
             compile=False, int8=False)

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


def verdict(structure: Structure, results: Mapping[str, str], declared: Mapping[str, str],
            departures: Mapping[str, str] | None = None) -> Verdict:
    """The verdict for one model from its structure, its audit results, its declared defects
    and its equivalence with its declared reference.

    Any failed audit, a forward that raises, parameters the forward uses but does not
    register, BatchNorms that ``eval()`` misses, or a function that departs from the
    reference it declares (``departures``: mode -> where) means "do not ship". A failure
    the variant does not declare is named as such: it is a change nobody has explained.
    """
    reasons = []
    for mode, where in (departures or {}).items():
        reasons.append(f"computes another function than its reference in {mode} mode ({where})")
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
    equal = () if departures is None else ("computes exactly its reference's function",)
    return Verdict(True, (
        f"passes {applied} of {len(results)} audits ({len(results) - applied} n/a)", *equal,
        f"registers all {structure.registered_parameters:,} parameters its forward uses",
        f"eval() reaches all {structure.batchnorms} BatchNorms",
    ))


# --------------------------------------------------------------------------- sections


def _example(name: str, batch: int) -> torch.Tensor:
    """``batch`` examples of ``name``'s own input contract: every model is fed what it takes."""
    return spec(name).example(batch)


def _group(name: str) -> str:
    """Which variants compute comparable functions: the family, or a team model and the variants
    that name it (followed through references)."""
    variant = spec(name)
    if in_family(variant):
        return "rawnet2"
    while variant.reference is not None:
        variant = spec(variant.reference)
    return variant.name


def _reference_rows(subjects: list[str], plan: Plan, progress: Progress) -> list[dict]:
    """Every subject that declares a reference, compared with it in both modes (weights matched
    by structure, ``harness.rawnet2.equivalence.compare_specs``)."""
    rows = []
    for name in subjects:
        variant = spec(name)
        if variant.reference is None:
            continue
        progress(f"comparing {name} with its reference {variant.reference}")
        try:
            x = _example(variant.reference, plan.compare_batch)
            result = compare_specs(spec(variant.reference), variant, x)
        except HarnessError as exc:
            rows += [{"a": variant.reference, "b": name, "mode": mode, "max_abs_diff": None,
                      "equivalent": False, "required": mode in variant.reference_modes,
                      "weights": "structural match", "detail": str(exc),
                      "tolerance": _tolerance("EXACT", EXACT)} for mode in MODES]
            continue
        for row in result.modes:
            rows.append({"a": variant.reference, "b": name, "mode": row.mode,
                         "max_abs_diff": _finite(row.max_abs_diff), "equivalent": row.equivalent,
                         "required": row.mode in variant.reference_modes,
                         "first_divergence": row.first_divergence, "weights": "structural match",
                         "stages": [{"ref": r, "other": o, "max_abs_diff": _finite(d)}
                                    for r, o, d in row.stages],
                         "tolerance": _tolerance("EXACT", EXACT)})
    return rows


def _finite(value: float) -> float | None:
    # JSON has no inf/NaN: a difference that is not a number (NaN against a value) is null.
    return value if math.isfinite(value) else None


def _departures(name: str, reference_rows: list[dict]) -> dict[str, str] | None:
    """Mode -> where ``name`` parts from its reference, in the modes its spec requires; None without one."""
    rows = [r for r in reference_rows if r["b"] == name]
    if spec(name).reference is None:
        return None
    return {r["mode"]: r.get("first_divergence") or r.get("detail") or f"max abs diff {r['max_abs_diff']}"
            for r in rows if r["required"] and not r["equivalent"]}


def _variants_section(subjects: list[str], plan: Plan, reference_rows: list[dict],
                      progress: Progress) -> dict:
    variants = {}
    for i, name in enumerate(subjects, 1):
        info = spec(name)
        progress(f"auditing {name} ({i}/{len(subjects)})")
        try:
            example = _example(name, plan.audit_batch)
            with torch.random.fork_rng():
                torch.manual_seed(0)
                structure = describe(info.build_or_refuse(), example)
            result = audit_spec(info, example)
        except HarnessError as exc:
            # A model the harness cannot even run is a verdict, never a crash of the whole report.
            variants[name] = _cannot_run(info, str(exc))
            continue
        judged = verdict(structure, result.results, info.declared_defects, _departures(name, reference_rows))
        variants[name] = {
            **asdict(structure),
            "audit": dict(result.results),
            "verdict": judged.line,
            "ship": judged.ship,
            "reasons": list(judged.reasons),
            **_facts(info),
            "input_shape": list(example.shape),
            "findings": {check: result.messages(check) for check in result.failed},
            "audit_notes": dict(result.notes),
        }
    return variants


def _facts(info) -> dict:
    """What the spec declares, as the report shows it."""
    transform = info.score_transform
    return {"description": info.description, "source": info.source, "origin": info.origin,
            "reference": info.reference, "output": info.output,
            "score": None if transform is None else f"{transform} (high = {transform.means})",
            "declared_defects": dict(info.expected_defects)}


def _cannot_run(info, why: str) -> dict:
    judged = Verdict(False, (f"cannot run: {why}",))
    return {"registered_parameters": 0, "used_parameters": None, "state_dict_keys": 0, "batchnorms": 0,
            "batchnorms_reached_by_eval": 0, "forward_error": why, "audit": {}, "verdict": judged.line,
            "ship": False, "reasons": list(judged.reasons), **_facts(info), "input_shape": None,
            "findings": {}, "audit_notes": {}}


def _tolerance(name: str, tol: Tolerance) -> dict:
    return {"name": name, "rtol": tol.rtol, "atol": tol.atol, "reason": tol.reason}


def _equivalence_section(subjects: list[str], plan: Plan, device: str, reference_rows: list[dict],
                         progress: Progress) -> tuple[list[dict], list[str]]:
    """Reference rows, every other runnable subject against the canonical layout's variant (what the
    fix changes, e.g. legacy_effective), then every subject's deployment forms vs its eager form."""
    rows, skipped = list(reference_rows), []
    for name in subjects:
        variant = spec(name)
        if (variant.reference is not None or not variant.runs or name == CANONICAL_LAYOUT
                or _group(name) != _group(CANONICAL_LAYOUT)):
            continue
        x = _example(CANONICAL_LAYOUT, plan.compare_batch)
        for mode in MODES:
            progress(f"comparing {name} with {CANONICAL_LAYOUT} ({mode})")
            try:
                diff = compare_variants(name, CANONICAL_LAYOUT, mode, x=x)
            except HarnessError as exc:
                skipped.append(f"{name} vs {CANONICAL_LAYOUT}: {exc}")
                break
            rows.append({"a": name, "b": CANONICAL_LAYOUT, "mode": mode, "max_abs_diff": diff.max_abs,
                         "equivalent": diff.identical, "max_rel_diff": diff.max_rel, "required": False,
                         "weights": diff.weights, "tolerance": _tolerance("EXACT", EXACT)})
    forms, not_available = _deployment_forms(plan, device)
    skipped += not_available
    for name in subjects:
        variant = spec(name)
        if not variant.runs:
            continue
        try:
            model, x = seed_weights(variant.build_or_refuse(), 0), _example(name, plan.compare_batch)
        except HarnessError as exc:
            skipped.append(f"{name} forms: {exc}")
            continue
        for form in (f for f in forms if f in variant.forms):
            progress(f"comparing {name} eager with its {form} form")
            tolerance = _tolerance(f"DEPLOYMENT_TOLERANCES[{form!r}]", DEPLOYMENT_TOLERANCES[form])
            try:
                diff = compare_form(model, x, form)
            except HarnessError as exc:
                skipped.append(f"{name} {form}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - the model's own failure in that form is a finding
                rows.append({"a": name, "b": f"{name} ({form})", "mode": "eval", "max_abs_diff": None,
                             "equivalent": False, "form": form, "ran": form, "weights": "same model",
                             "tolerance": tolerance, "required": True,
                             "detail": f"the {form} form raises {error_line(exc)}"})
                continue
            # Label by what really ran: a compile that fell back to eager must not read "compiled".
            rows.append({"a": name, "b": f"{name} ({diff.ran or form})", "mode": "eval",
                         "max_abs_diff": _finite(diff.max_abs), "equivalent": diff.within,
                         "max_rel_diff": _finite(diff.max_rel), "form": form, "ran": diff.ran or form,
                         "weights": "same model", "tolerance": tolerance, "required": True})
    return rows, skipped


def _checkpoint_ends(subjects: list[str]) -> list[str]:
    """The declared layouts (when the family is reported on), then every runnable subject that declares
    none (its own keys)."""
    family = any(_group(name) == _group(CANONICAL_LAYOUT) for name in subjects)
    layouts = list(declared_layouts()) if family else []
    return layouts + [n for n in subjects if spec(n).runs and spec(n).layout is None and n not in layouts]


def _checkpoints_section(subjects: list[str], plan: Plan, progress: Progress) -> list[dict]:
    """A seeded checkpoint of every layout and layout-less variant, converted into every other one
    of its group (``_group``: the family, or a team model and its refactors) under every policy
    (``load_into``: layouts by key maps, the rest matched by structure) and really loaded;
    compared by outputs on the source's own input contract."""
    progress("converting and loading checkpoints between layouts and variants")
    ends = _checkpoint_ends(subjects)
    rows = []
    for source in ends:
        # get_audio_model builds each runnable form (legacy: legacy_effective).
        try:
            model = seed_weights(get_audio_model(source), 0).eval()
        except HarnessError:
            continue  # a model that cannot be built has its verdict in the variants section
        x = _example(source if spec(source).runs else CANONICAL_LAYOUT, plan.compare_batch)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            expected = model(x)
        for target in (t for t in ends if _group(t) == _group(source)):
            for policy in POLICIES:
                row = {"source": source, "target": target, "policy": policy, "loads": False,
                       "max_abs_diff": None, "function_preserved": None}
                try:
                    loaded, lines = load_into(spec(target), state, policy=policy, source=spec(source))
                except HarnessError as exc:
                    row["detail"] = str(exc)
                else:
                    with torch.no_grad():
                        max_abs, _ = max_differences(loaded.eval()(x), expected)
                    row.update(loads=True, max_abs_diff=max_abs, function_preserved=max_abs == 0.0,
                               detail=lines[0])
                rows.append(row)
    return rows


def _timing_section(subjects: list[str], plan: Plan, device: str,
                    progress: Progress) -> tuple[list[dict], dict]:
    progress(f"measuring the {device} matmul peak ({plan.peak_size}x{plan.peak_size} float32)")
    peak = bench.matmul_peak(device, size=plan.peak_size, min_run_time=plan.peak_min_run_time)
    configs = [(batch, length) for length in plan.lengths for batch in plan.batches]
    # The ONNX Runtime form runs on the CPU: a cuda report times the torch forms only.
    timed = [form for form in rawnet2_bench.timed_forms(int8=plan.int8)
             if form.subject in subjects and not (form.onnxruntime and device != "cpu")]
    rows = []
    per_example: dict[tuple[str, tuple[int, ...]], int] = {}  # one example's FLOPs: they scale with the batch
    for i, (batch, length) in enumerate(configs, 1):
        # Each form at its own input contract, at this length or its declared one where that is longer
        # (a model is not timed on inputs shorter than it declares: a GRU would see a step or two).
        inputs = {s: spec(s).input_contract().example(batch, max(length, spec(s).input_contract().length))
                  .to(device) for s in dict.fromkeys(form.subject for form in timed)}
        for subject, x in inputs.items():
            if (subject, x.shape[1:]) not in per_example:
                per_example[subject, x.shape[1:]] = bench.flops(build(subject), (1, *x.shape[1:]))
        flops = {subject: batch * per_example[subject, x.shape[1:]] for subject, x in inputs.items()}
        progress(f"timing batch {batch} x {length} on {device} ({i}/{len(configs)}): "
                 f"{', '.join(form.name for form in timed)}, interleaved")
        models = {}
        for form in list(timed):
            try:
                models[form.name] = rawnet2_bench.build_timed(form, device, compile=plan.compile)
            except HarnessError as exc:  # a form this model cannot take: its equivalence row says why
                progress(f"  not timed: {form.name}: {exc}")
                timed.remove(form)
        timings = bench.time_calls({f.name: bench.inference_call(models[f.name], inputs[f.subject])
                                    for f in timed},
                                   warmup=plan.warmup, min_repeats=plan.min_repeats,
                                   max_repeats=plan.max_repeats, budget_s=plan.budget_s,
                                   on_round=_slow_rounds(progress))
        for form in timed:
            timing, info = timings[form.name], getattr(models[form.name], "info", None)
            length_run = inputs[form.subject].shape[-1]
            rates = bench.throughput(model_flops=flops[form.subject], batch=batch, length=length_run,
                                     sample_rate=SAMPLE_RATE, seconds=timing.median_s,
                                     peak_flops_per_s=peak)
            rows.append({
                "variant": form.name, "device": device, "batch": batch, "length": length_run,
                "median_ms": timing.median_s * 1e3, "iqr_ms": timing.iqr_s * 1e3,
                "repeats": len(timing.times_s), "flops": flops[form.subject], **asdict(rates),
                "form": info.form if info is not None else form.kind,
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
    """Per configuration, the ratios a reviewer reads: each variant's median time over its
    reference's (a fix should cost what the reference costs) and each optimized form's
    speed-up over its eager form. Derived from the timed forms, named by the registry."""
    by_config: dict[tuple[int, int], dict[str, float]] = {}
    for row in rows:
        by_config.setdefault((row["batch"], row["length"]), {})[row["variant"]] = row["median_ms"]
    out = []
    forms = {form.name: form for form in rawnet2_bench.timed_forms(int8=True)}
    for (batch, length), medians in by_config.items():
        for name, median in medians.items():
            form = forms[name]
            reference = spec(form.subject).reference
            if form.kind != "eager" and form.subject in medians:
                out.append({"batch": batch, "length": length, "kind": f"speed-up of the {form.kind} form",
                            "a": form.subject, "b": name, "ratio": medians[form.subject] / median})
            elif form.kind == "eager" and reference in medians:
                out.append({"batch": batch, "length": length, "kind": "time over its reference's",
                            "a": name, "b": reference, "ratio": median / medians[reference]})
    return out


def _deployment_forms(plan: Plan, device: str) -> tuple[list[str], list[str]]:
    """The deployment forms the report compares with eager on this machine, and why others are not."""
    forms = [name for name, form in DEPLOYMENT_FORMS.items() if form.missing is None]
    skipped = [f"{name} ({form.missing})" for name, form in DEPLOYMENT_FORMS.items()
               if form.missing is not None and not (name == "cuda" and device != "cuda")]
    if device != "cuda" and "cuda" in forms:
        forms.remove("cuda")  # a CPU report compares CPU forms; --device cuda adds the GPU
    if not plan.compile:
        forms.remove("compiled")
        skipped.append("compiled (--quick: compiling takes 5-15 s per input shape)")
    return forms, skipped


def build_report(*, quick: bool = False, device: str = "cpu", progress: Progress | None = None,
                 variants: list[str] | None = None, protocol: str | None = None,
                 audio_root: str | None = None) -> dict:
    """The report as plain data (see ``harness.report.schema.REPORT_SCHEMA``).

    ``variants``: registered names to report on (default: every registered subject).
    ``quick`` uses short inputs, few repeats and no compiling (seconds, for CI);
    otherwise inputs of 16000 and 64600 samples, batches 1 and 8, repeated to a
    time budget (a few minutes on 2 cores). ``progress`` receives a line per step.
    ``protocol``/``audio_root``: a labelled corpus for the decisions section (default: the
    bundled fixture corpus).
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise HarnessError("--device cuda: CUDA is not available on this machine")
    subjects = list(SUBJECTS) if variants is None else [spec(name).name for name in variants]
    plan = QUICK if quick else FULL
    say = progress or (lambda message: None)
    reference_rows = _reference_rows(subjects, plan, say)
    variant_rows = _variants_section(subjects, plan, reference_rows, say)
    equivalence, skipped = _equivalence_section(subjects, plan, device, reference_rows, say)
    checkpoints = _checkpoints_section(subjects, plan, say)
    forms, _ = _deployment_forms(plan, device)
    decisions = decisions_section(subjects, quick=quick, forms=[f for f in forms if f != "cuda"],
                                  progress=say, protocol=protocol, audio_root=audio_root, int8=plan.int8)
    benchmarks, timing = _timing_section(subjects, plan, device, say)
    return {
        "variants": variant_rows,
        "equivalence": equivalence,
        "benchmarks": benchmarks,
        "checkpoints": checkpoints,
        "decisions": decisions,
        "timing": timing,
        "meta": {
            "quick": quick,
            "generated_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "audit_batch": plan.audit_batch,
            "compare_batch": plan.compare_batch,
            "checks": list(CHECKS),
            "not_run": skipped,
        },
    }


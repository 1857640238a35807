"""The mutation report: every mutant with its status, diff, killer, equivalence reason, or why it did
not run; the survivors with the contract that should have caught each; the summary and the score.

``ReportWriter`` keeps ``mutation-report.json`` on disk while a run goes on: rewritten
atomically as results arrive (``"status": "partial"``) and once at the end (``"complete"``),
so a stopped or timed-out run leaves valid JSON saying what it learnt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from harness.core.mutation.attribution import attribute
from harness.core.mutation.mutants import TOOL, Mutant, equivalence_of

if TYPE_CHECKING:
    from harness.core.mutation.config import MutationRun

# What the report says of a mutant. Detected: the gate notices it.
DETECTED = ("killed", "timeout", "crashed")
UNDETECTED = ("survived", "no_tests")
STATUSES = (*DETECTED, *UNDETECTED, "equivalent", "not_run")
RUN_STATUSES = ("partial", "complete")
REPORT_VERSION = 2


def file_section(run: MutationRun, mutants: list[Mutant], results: Mapping[str, tuple[str, float]],
                 killers: Mapping[str, Mapping[str, str]], finished: Mapping[str, Mapping] | None = None, *,
                 tests: Sequence[str], tool_version: str, duration_s: float,
                 load: tuple[float | None, float | None] = (None, None),
                 not_run: Mapping[str, str] | None = None,
                 coverage: Mapping[str, Sequence[str]] | None = None,
                 status: str = "complete") -> dict:
    """One file's report: every mutant with its status, diff, killer or equivalence reason.

    ``run`` is the ``MutationRun``; a mutant without a result is ``not_run`` with the reason
    ``not_run`` gives (default: the run stopped before it).
    """
    from harness.core.mutation.operators import operator_names

    entries, refuted, survivors = [], [], []
    finished = finished or {}
    not_run = not_run or {}
    contracts = run.contracts
    for mutant in mutants:
        declared = equivalence_of(mutant, run.equivalences)
        state, seconds = results.get(mutant.id, ("not_run", 0.0))
        ran = finished.get(mutant.id, {})
        entry = {"id": mutant.id, "function": mutant.function,
                 "line": mutant.lines[0] if mutant.lines else None,
                 "operator": mutant.operator, "engine": mutant.engine, "status": state,
                 "killed_by": killers.get(mutant.id) if state in DETECTED else None,
                 "tested": mutant.id in results, "tests_run": ran.get("tests_run"),
                 "duration_s": round(ran.get("duration_s", seconds), 2), "diff": mutant.diff}
        if declared is not None:
            if state in (*UNDETECTED, "not_run"):
                entry["status"], entry["reason"] = "equivalent", declared.reason
            else:  # a test told it apart: the declaration is wrong, and the tool's verdict stands
                entry["refutes_equivalence"] = declared.reason
                refuted.append(mutant.id)
        elif state == "not_run":
            entry["why"] = not_run.get(mutant.id, "the run stopped before it")
        if entry["status"] in UNDETECTED:
            survivors.append({"id": mutant.id, "function": mutant.function, "line": entry["line"],
                              "operator": mutant.operator, "status": entry["status"], "diff": mutant.diff,
                              **attribute(mutant, contracts, coverage, tests)})
        entries.append(entry)
    counts = {s: sum(e["status"] == s for e in entries) for s in STATUSES}
    limit = run.max_mutants
    return {
        "path": run.shown_path or run.path,
        "status": status,
        "tool": {"name": TOOL, "version": tool_version, "operators_added": operator_names(),
                 "module_level": "run by the harness (mutmut mutates functions only)"},
        "tests": {"selection": [*run.selection, *run.pytest_args], "count": len(tests),
                  "excluded": [{"path": p, "why": why} for p, why in run.excluded.items()]},
        "sample": {"max_mutants": limit, "time_budget_s": run.time_budget_s,
                   "method": "all mutants" if limit is None else
                   "evenly across functions, model operators first within each (deterministic)"},
        "workers": run.workers,
        "timeout_rule": f"{run.timeout_factor:g} x (clean duration of the mutant's tests + "
                        f"{run.timeout_constant_s:g} s)",
        "duration_s": round(duration_s, 1),
        "load_average": {"start": load[0], "end": load[1], "cpus": os.cpu_count()},
        "summary": summarize(counts),
        "refuted_equivalences": refuted,
        "mutants": entries,
        "survivors": survivors,
    }


def summarize(counts: Mapping[str, int]) -> dict:
    """Counts per status, the total, and the score: detected / (total - equivalent - not run)."""
    total = sum(counts.values())
    detected = sum(counts.get(s, 0) for s in DETECTED)
    judged = total - counts.get("equivalent", 0) - counts.get("not_run", 0)
    return {**{s: counts.get(s, 0) for s in STATUSES}, "total": total, "detected": detected,
            "judged": judged, "score": round(100.0 * detected / judged, 2) if judged else None}


def build_report(sections: Sequence[dict], status: str = "complete") -> dict:
    counts = {s: sum(section["summary"][s] for section in sections) for s in STATUSES}
    return {"version": REPORT_VERSION, "status": status,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tool": TOOL, "summary": summarize(counts), "files": list(sections)}


class ReportWriter:
    """Keeps the JSON report at ``path``, rewritten atomically: valid JSON whenever it is read."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.done: list[dict] = []  # sections of the files already finished

    def write(self, current: dict | None = None, *, status: str = "partial") -> dict:
        from harness.core.fileio import write_text_atomically

        sections = [*self.done, *([current] if current is not None else [])]
        report = build_report(sections, status)
        write_text_atomically(self.path, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        return report

    def finish_file(self, section: dict) -> None:
        self.done.append(section)
        self.write(status="partial")


def render_summary(report: Mapping) -> str:
    """The stdout summary: per file the counts, the score, the time, each survivor with its diff and
    the contract that should have caught it."""
    out = []
    for section in report["files"]:
        s, tests, tool = section["summary"], section["tests"], section["tool"]
        excluded = ", ".join(e["path"] for e in tests["excluded"]) or "none"
        load = section["load_average"]
        sample = section.get("sample", {})
        out += [f"mutation testing of {section['path']} ({tool['name']} {tool['version']} "
                f"+ {len(tool['operators_added'])} model operators)"
                + (" [PARTIAL]" if section.get("status") == "partial" else ""),
                f"  tests: {tests['count']} selected by {' '.join(tests['selection'])} "
                f"(excluded: {excluded})",
                f"  mutants {s['total']}: killed {s['killed']}, timeout {s['timeout']}, "
                f"crashed {s['crashed']}, survived {s['survived']}, no tests {s['no_tests']}, "
                f"equivalent {s['equivalent']}" + (f", not run {s['not_run']}" if s["not_run"] else "")]
        if sample.get("max_mutants") is not None or sample.get("time_budget_s") is not None:
            out.append(f"  sample: --max-mutants {sample.get('max_mutants')} ({sample.get('method')}), "
                       f"--time-budget {sample.get('time_budget_s')}")
        out += [f"  score {_pct(s['score'])}: {s['detected']} of {s['judged']} judged mutants detected",
                f"  time {section['duration_s']:.0f} s with {section['workers']} workers on {load['cpus']} "
                f"CPUs (load average {load['start']} at start, {load['end']} at end)"]
        for survivor in section["survivors"]:
            out.append(f"  {survivor['status'].upper()} {survivor['id']} "
                       f"(line {survivor['line']}, {survivor['operator']})")
            out += [f"      {line}" for line in survivor["diff"].splitlines()[2:]]
            out.append(f"    -> {survivor['verdict']}")
        if section["refuted_equivalences"]:
            out.append(f"  declared equivalent but killed (fix the declaration): "
                       f"{', '.join(section['refuted_equivalences'])}")
    if len(report["files"]) > 1:
        s = report["summary"]
        out.append(f"all files: {s['detected']} of {s['judged']} judged mutants detected "
                   f"({_pct(s['score'])}), {s['equivalent']} equivalent, {s['not_run']} not run")
    if report.get("status") == "partial":
        out.append("the run did not finish: the report is partial (status \"partial\")")
    return "\n".join(out)


def _pct(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.1f} %"


_COUNTS = {s: {"type": "integer", "minimum": 0} for s in (*STATUSES, "total", "detected", "judged")}
_SUMMARY = {"type": "object", "required": [*STATUSES, "total", "detected", "judged", "score"],
            "properties": {**_COUNTS, "score": {"type": ["number", "null"]}}}
_KILLER = {"type": ["object", "null"], "required": ["test", "message"],
           "properties": {"test": {"type": "string"}, "message": {"type": "string"}}}
_MUTANT = {
    "type": "object",
    "required": ["id", "function", "line", "operator", "engine", "status", "killed_by", "duration_s", "diff"],
    "properties": {
        "id": {"type": "string", "pattern": "__mutmut_[0-9]+$"}, "function": {"type": "string"},
        "line": {"type": ["integer", "null"]}, "operator": {"type": "string"},
        "engine": {"enum": [TOOL, "harness"]}, "status": {"enum": list(STATUSES)}, "killed_by": _KILLER,
        "duration_s": {"type": "number"}, "tests_run": {"type": ["integer", "null"]},
        "tested": {"type": "boolean"},
        "diff": {"type": "string", "minLength": 1},
        "reason": {"type": "string", "minLength": 1}, "refutes_equivalence": {"type": "string"},
        "why": {"type": "string", "minLength": 1},
    },
    "allOf": [
        # an equivalent mutant always says why it is one; a mutant that did not run, why it did not
        {"if": {"properties": {"status": {"const": "equivalent"}}}, "then": {"required": ["reason"]}},
        {"if": {"properties": {"status": {"const": "not_run"}}}, "then": {"required": ["why"]}},
    ],
}
_SURVIVOR = {
    "type": "object",
    "required": ["id", "function", "line", "operator", "status", "diff", "reached_by", "claimed_by",
                 "should_have_caught", "missing_contracts", "verdict"],
    "properties": {
        "status": {"enum": list(UNDETECTED)},
        "reached_by": {"type": "object", "required": ["how", "count"]},
        "should_have_caught": {"type": "array", "items": {"type": "object",
                                                          "required": ["contract", "why", "tests", "count"]}},
        "missing_contracts": {"type": "array", "items": {"type": "object", "required": ["contract", "why"]}},
        "verdict": {"type": "string", "minLength": 1},
    },
}
MUTATION_REPORT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "mutation-report.json",
    "type": "object",
    "required": ["version", "status", "created", "tool", "summary", "files"],
    "properties": {
        "version": {"const": REPORT_VERSION}, "status": {"enum": list(RUN_STATUSES)},
        "created": {"type": "string"}, "tool": {"const": TOOL},
        "summary": _SUMMARY,
        "files": {"type": "array", "items": {
            "type": "object",
            "required": ["path", "status", "tool", "tests", "sample", "workers", "duration_s", "summary",
                         "mutants", "survivors", "refuted_equivalences", "load_average", "timeout_rule"],
            "properties": {
                "path": {"type": "string"}, "status": {"enum": list(RUN_STATUSES)},
                "tool": {"type": "object", "required": ["name", "version", "operators_added"]},
                "tests": {"type": "object", "required": ["selection", "count", "excluded"],
                          "properties": {"count": {"type": "integer", "minimum": 0}}},
                "sample": {"type": "object", "required": ["max_mutants", "time_budget_s", "method"]},
                "summary": _SUMMARY,
                "mutants": {"type": "array", "items": _MUTANT},
                "survivors": {"type": "array", "items": _SURVIVOR},
                "refuted_equivalences": {"type": "array", "items": {"type": "string"}},
            },
        }},
    },
}

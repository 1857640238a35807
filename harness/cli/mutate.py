"""``python -m harness mutate PATH...``: mutation testing of model source files against the behavioural
tests (mutmut plus the model operators)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.cli.options import percent, positive_finite, positive_int
from harness.core.errors import HarnessError

# 128 + SIGINT: a run stopped by Ctrl-C, its partial report kept.
INTERRUPTED_EXIT = 130


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mutate", help="mutation testing of a model source file against the behavioural tests "
                                      "(minutes; mutmut plus model operators)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="model source file, e.g. fixed/skip_modules.py "
                                                            "(several: one run each, one report)")
    p.add_argument("--tests", metavar="EXPR",
                   help="pytest -k expression selecting the tests that judge PATH (default: the registered "
                        "variants whose source is PATH; text-pinning tests are always left out)")
    p.add_argument("--output", default="mutation-report.json", metavar="PATH",
                   help="the JSON report (default mutation-report.json, written atomically)")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="mutants tested at once (default: one per CPU)")
    p.add_argument("--timeout-factor", type=positive_finite, default=5.0, metavar="X",
                   help="a mutant times out after X times (its tests' clean duration + 30 s) (default 5)")
    p.add_argument("--equivalences", metavar="FILE",
                   help="JSON list of declared equivalent mutants: {path, first, anchor, reason, ...}")
    p.add_argument("--fail-under", type=percent, metavar="SCORE",
                   help="exit 1 when a file's score (percent of non-equivalent mutants detected) is lower")
    p.add_argument("--max-mutants", type=positive_int, metavar="N",
                   help="run a deterministic sample of N mutants spread evenly across functions; the rest "
                        "are reported as not run")
    p.add_argument("--time-budget", type=positive_finite, metavar="SECONDS",
                   help="stop when spent; the report stays partial and names what never ran")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Summary on stdout, JSON report (partial while it runs); 1 when a score is under --fail-under;
    130 on Ctrl-C (the partial report kept)."""
    from harness.core.fileio import check_output_path
    from harness.core.mutation import ReportWriter, render_summary, run_mutation
    from harness.rawnet2.mutation import EQUIVALENCES, load_equivalences, model_file, plan_run

    root = Path.cwd().resolve()
    output = check_output_path(args.output)
    registry = args.registry
    _never_an_input(output, [Path(p) for p in args.paths] + [Path(p) for p in (registry, args.equivalences)
                                                             if p is not None])
    workers = args.workers or os.cpu_count() or 1
    equivalences = [*EQUIVALENCES, *(load_equivalences(args.equivalences) if args.equivalences else [])]
    for path in args.paths:  # every file checked (a syntax error named file:line) before any run
        model_file(path, root=root)
    writer = ReportWriter(output)
    for path in args.paths:
        planned = plan_run(path, root=root, tests=args.tests, registry=registry, workers=workers,
                           timeout_factor=args.timeout_factor, equivalences=equivalences,
                           max_mutants=args.max_mutants, time_budget_s=args.time_budget)
        planned.on_update = writer.write
        try:
            section = run_mutation(planned)
        except KeyboardInterrupt:
            print(f"interrupted: the partial report is {output}", file=sys.stderr)
            return INTERRUPTED_EXIT
        writer.finish_file(section)
    status = "complete" if all(s["status"] == "complete" for s in writer.done) else "partial"
    report = writer.write(status=status)
    print(render_summary(report))
    print(f"report: {output}")
    sys.stdout.flush()
    low = [s["path"] for s in report["files"]
           if args.fail_under is not None and (s["summary"]["score"] or 0.0) < args.fail_under]
    if low:
        print(f"score under {args.fail_under:g} %: {', '.join(low)}", file=sys.stderr)
        return 1
    return 0


def _never_an_input(output: Path, inputs: list[Path]) -> None:
    """The report is never written over a file the run reads (the model, the registry, equivalences)."""
    for read in inputs:
        try:
            same = output.exists() and read.exists() and os.path.samefile(output, read)
        except OSError:
            same = False
        if same or output.resolve() == read.resolve():
            raise HarnessError(f"{output}: is {read}, which the run reads; give another --output")

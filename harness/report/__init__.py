"""The reviewer report: built as plain data, checked against its schema, rendered.

* ``harness.report.build``: ``build_report()`` measures everything and returns a JSON-ready
  dict; every list in it comes from the registry.
* ``harness.report.schema``: ``REPORT_SCHEMA``, the contract other tools read; complete,
  so a report that validates renders.
* ``harness.report.render``: Markdown, JSON and HTML renderings of the same tables.

``cli_report`` is ``python -m harness report``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.fileio import check_output_path, write_text_atomically
from harness.core.protocols import audio_files, read_protocol
from harness.report.build import FULL, QUICK, Plan, Progress, Verdict, build_report, verdict
from harness.report.render import RENDERERS, Table, render_html, render_json, render_markdown, tables
from harness.report.schema import REPORT_SCHEMA, validate

__all__ = ["FULL", "QUICK", "REPORT_SCHEMA", "RENDERERS", "Plan", "Table", "Verdict", "build_report",
           "cli_report", "render_html", "render_json", "render_markdown", "tables", "validate", "verdict"]


def _stderr_progress() -> Progress:
    start = time.monotonic()

    def say(message: str) -> None:
        print(f"report [{time.monotonic() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    return say


def cli_report(args: argparse.Namespace) -> int:
    """``python -m harness report``: measure, render in ``--format``, print or write ``--output``."""
    from harness.rawnet2.registry import SUBJECTS, register, resolve

    force = bool(getattr(args, "force", False))
    output: Path | None = None
    if args.output is not None:
        # Before measuring for minutes: a regular file or a new path in a writable directory;
        # never a directory, device, FIFO or socket, nor a symlink without --force.
        output = check_output_path(args.output, force=force, overwrite=True)
    names = None
    if args.variant:
        names = []
        for target in args.variant:
            variant = resolve(target)
            if variant.name not in SUBJECTS:
                register(variant)  # an ad-hoc MODULE:ATTR, for this run
            names.append(variant.name)
    progress = _stderr_progress()
    protocol, audio_root = getattr(args, "protocol", None), getattr(args, "audio_root", None)
    if audio_root is not None and protocol is None:
        raise HarnessError("--audio-root applies to --protocol, and none was given")
    if protocol is not None:  # before measuring for minutes: the labels and every file they name
        audio_files(read_protocol(protocol), audio_root)
    report = build_report(quick=args.quick, device=args.device, progress=progress, variants=names,
                          protocol=protocol, audio_root=audio_root)
    text = RENDERERS[args.format](report)
    if output is None:
        sys.stdout.write(text)
    else:
        write_text_atomically(args.output, text, force=force, overwrite=True)
        progress(f"wrote {output}")
    return 0

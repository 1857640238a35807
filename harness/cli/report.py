"""``python -m harness report``: the side-by-side report of the variants, measured and rendered."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from harness.cli.options import MODEL_HELP
from harness.core.errors import HarnessError

if TYPE_CHECKING:
    from harness.report.build import Progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="side-by-side report of the variants (the main job)")
    p.add_argument("--format", choices=("markdown", "json", "html"), default="markdown")
    p.add_argument("--output", metavar="PATH", help="write here instead of stdout (atomically): a regular "
                   "file (replaced) or a new path, never a directory, device or FIFO")
    p.add_argument("--force", action="store_true",
                   help="let --output replace a symbolic link: the link itself, never what it points to")
    p.add_argument("--quick", action="store_true", help="short inputs, few repeats (seconds)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--variant", action="append", metavar="NAME",
                   help=f"report on this model only ({MODEL_HELP}); repeatable; default: every registered "
                        "one")
    p.add_argument("--protocol", metavar="FILE",
                   help="take the decisions section's flips on this labelled protocol (as evaluate reads "
                        "it) instead of the bundled fixture corpus")
    p.add_argument("--audio-root", metavar="DIR", help="where --protocol's audio is (as for evaluate)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Measure, render in ``--format``, print or write ``--output``."""
    from harness.core.fileio import check_output_path, write_text_atomically
    from harness.core.protocols import audio_files, read_protocol
    from harness.rawnet2.registry import SUBJECTS, register, resolve
    from harness.report import RENDERERS, build_report

    output: Path | None = None
    if args.output is not None:
        # Before measuring for minutes: a regular file or a new path in a writable directory;
        # never a directory, device, FIFO or socket, nor a symlink without --force.
        output = check_output_path(args.output, force=args.force, overwrite=True)
    names = None
    if args.variant:
        names = []
        for target in args.variant:
            variant = resolve(target)
            if variant.name not in SUBJECTS:
                register(variant)  # an ad-hoc MODULE:ATTR, for this run
            names.append(variant.name)
    progress = _stderr_progress()
    if args.audio_root is not None and args.protocol is None:
        raise HarnessError("--audio-root applies to --protocol, and none was given")
    if args.protocol is not None:  # before measuring for minutes: the labels and every file they name
        audio_files(read_protocol(args.protocol), args.audio_root)
    report = build_report(quick=args.quick, device=args.device, progress=progress, variants=names,
                          protocol=args.protocol, audio_root=args.audio_root)
    text = RENDERERS[args.format](report)
    if output is None:
        sys.stdout.write(text)
    else:
        write_text_atomically(args.output, text, force=args.force, overwrite=True)
        progress(f"wrote {output}")
    return 0


def _stderr_progress() -> Progress:
    """Progress lines on stderr, each with the seconds since the run began."""
    start = time.monotonic()

    def say(message: str) -> None:
        print(f"report [{time.monotonic() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    return say

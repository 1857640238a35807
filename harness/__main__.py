"""Command line: ``python -m harness {report,audit,migrate,score} ...``.

Thin: each subcommand parses its arguments here and calls one ``cli_*`` function
in the library module that owns it. A ``HarnessError`` becomes one line on stderr
and its exit code; nothing else is caught, so real bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from harness.core.errors import HarnessError

# subcommand -> "module:function" taking the parsed args and returning an exit code
_HANDLERS = {
    "report": "harness.report:cli_report",
    "audit": "harness.rawnet2.audits:cli_audit",
    "migrate": "harness.rawnet2.checkpoints:cli_migrate",
    "score": "harness.rawnet2.audio:cli_score",
}


def _report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="side-by-side report of the variants (the main job)")
    p.add_argument("--format", choices=("markdown", "json", "html"), default="markdown")
    p.add_argument("--output", metavar="PATH", help="write here instead of stdout (atomically)")
    p.add_argument("--quick", action="store_true", help="short inputs, few repeats (seconds)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")


def _audit_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="run the contract audits on a model factory")
    p.add_argument("target", nargs="?", metavar="MODULE:ATTR", help="importable factory")
    p.add_argument("--variant", help="audit a registered variant by name instead")
    p.add_argument("--input-shape", default="2,1,16000", help="example input shape (default 2,1,16000)")
    p.add_argument("--checks", help="comma-separated check names (default: all that apply)")


def _migrate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("migrate", help="convert a checkpoint between variant layouts")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    # Layout names are validated by harness.rawnet2.checkpoints, which explains each refusal in one line.
    p.add_argument("--to", required=True, metavar="LAYOUT",
                   help="target layout: skip_modules or legacy (tuple_blocks cannot hold a checkpoint)")
    p.add_argument("--from", dest="source", default="auto", metavar="LAYOUT",
                   help="source layout: auto (detect from the keys, default), legacy or skip_modules")
    p.add_argument("--policy", default="preserve-function",
                   choices=("preserve-function", "preserve-weights"),
                   help="preserve-function (default): the result computes what the source computed; "
                        "preserve-weights: carry every weight that has a place")
    p.add_argument("--force", action="store_true", help="overwrite an existing DST (never SRC itself)")


def _score_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score audio files with a variant")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--variant", default="skip_modules")
    p.add_argument("--checkpoint", metavar="PATH")
    p.add_argument("--policy", default="preserve-function",
                   choices=("preserve-function", "preserve-weights"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--format", choices=("table", "json"), default="table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_report_parser, _audit_parser, _migrate_parser, _score_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = _HANDLERS[args.command].split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    try:
        return handler(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())

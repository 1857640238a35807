"""Command line: ``python -m harness [--registry FILE] VERB ...``, VERB one of report, audit, compare,
migrate, score, export, mutate, evaluate.

One module per verb (``harness.cli.audit``, ``compare``, ...), each with its options
(``add_parser``) and its ``run(args)``, importing the library inside ``run`` so that the parser
(and ``score`` from a warm export cache) loads without torch; shared argument types and model
resolution are ``harness.cli.options``. ``main`` is the top-level guard: a ``HarnessError`` is
one line on stderr and its exit code, anything else one ``internal error`` line and exit 2
(``--debug`` re-raises it). The exit codes: docs/index.md, "Commands and exit codes".
"""

from __future__ import annotations

import argparse
import os
import select
import sys

from harness.cli import audit, compare, evaluate, export, migrate, mutate, report, score
from harness.core.errors import HarnessError, error_line

# Exit codes besides a HarnessError's own: a bug (never 1, which means findings), Ctrl-C (128 + SIGINT).
INTERNAL_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130
# stdout's reader went away (``| head``): what a tool killed by SIGPIPE reports (128 + 13); not a bug.
STDOUT_CLOSED_EXIT = 141
# In the order ``--help`` lists them.
VERBS = (report, audit, compare, migrate, score, export, mutate, evaluate)


def build_parser() -> argparse.ArgumentParser:
    summary = " ".join(__doc__.split("\n\n")[0].split())  # the docstring's first paragraph, one line
    parser = argparse.ArgumentParser(prog="python -m harness", description=summary)
    parser.add_argument("--registry", metavar="FILE",
                        help="TOML file with [tool.rawnet2-harness.variants.NAME] tables "
                             "(default: ./pyproject.toml when present)")
    parser.add_argument("--debug", action="store_true",
                        help="let an internal error (a bug, not a refusal) end with its traceback")
    sub = parser.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        verb.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except HarnessError as exc:  # an argument type's own refusal (--kwargs): before any verb ran
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        if args.command == "score":  # a warm export cache scores without torch, the registry or the model
            if (code := score.from_cache(args)) is not None:
                return code
        from harness.rawnet2.registry import load_project_registry

        load_project_registry(args.registry)
        return args.func(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"error: interrupted (Ctrl-C) during {args.command}", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_reader_gone():
            return STDOUT_CLOSED_EXIT
        if args.debug:
            raise
        print(f"error: internal error in {args.command}: {error_line(exc)}", file=sys.stderr)
        return INTERNAL_ERROR_EXIT


def _stdout_reader_gone() -> bool:
    """Whether stdout's reader went away (``| head``): then stdout is pointed at /dev/null, so that
    the interpreter's own flush at exit does not fail a second time, and True. A broken pipe
    elsewhere (a worker's) is not this: stdout's own descriptor must report the error."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll here, or stdout is no file (captured)
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return gone

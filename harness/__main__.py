"""Command line: ``python -m harness [--registry FILE] {report,audit,compare,migrate,score,export} ...``.

Thin: each subcommand parses its arguments here and calls one ``cli_*`` function in the
library module that owns it. Every command that takes a model takes a registered name or
``MODULE:ATTR``; the registry is the built-in variants plus ``--registry FILE`` (default:
``./pyproject.toml``'s ``[tool.rawnet2-harness.variants.*]`` tables). A ``HarnessError``
becomes one line on stderr and its exit code; any other exception is a bug of ours and
becomes one ``error: internal error in VERB: ...`` line and exit 2, never 1 (which means
findings); ``--debug`` re-raises it for the traceback. Ctrl-C is exit 130; stdout closed by
its reader (``| head``) is exit 141, silently.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import select
import sys

from harness.core.errors import HarnessError, error_line

# subcommand -> "module:function" taking the parsed args and returning an exit code
_HANDLERS = {
    "report": "harness.report:cli_report",
    "audit": "harness.rawnet2.audits:cli_audit",
    "compare": "harness.rawnet2.equivalence:cli_compare",
    "migrate": "harness.rawnet2.checkpoints:cli_migrate",
    "score": "harness.rawnet2.audio:cli_score",
    "mutate": "harness.rawnet2.mutation:cli_mutate",
    "export": "harness.rawnet2.deploy:cli_export",
    "evaluate": "harness.report.evaluate_command:cli_evaluate",
}
# Exit codes besides a HarnessError's own: a bug (never 1, which means findings), Ctrl-C (128 + SIGINT).
INTERNAL_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130
# stdout's reader went away (``| head``): what a tool killed by SIGPIPE reports (128 + 13); not a bug.
STDOUT_CLOSED_EXIT = 141
_MODEL = "a registered variant name or MODULE:ATTR (a class or function building the model)"
_KWARGS = "constructor arguments as a JSON object, or @FILE holding one"


def _model_options(p: argparse.ArgumentParser, *, weights: bool = True) -> None:
    p.add_argument("--kwargs", metavar="JSON", help=_KWARGS)
    if weights:
        p.add_argument("--weights", metavar="CKPT",
                       help="load this checkpoint into every instance (weights_only)")


def _report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="side-by-side report of the variants (the main job)")
    p.add_argument("--format", choices=("markdown", "json", "html"), default="markdown")
    p.add_argument("--output", metavar="PATH", help="write here instead of stdout (atomically): a regular "
                   "file (replaced) or a new path, never a directory, device or FIFO")
    p.add_argument("--force", action="store_true",
                   help="let --output replace a symbolic link: the link itself, never what it points to")
    p.add_argument("--quick", action="store_true", help="short inputs, few repeats (seconds)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--variant", action="append", metavar="NAME",
                   help=f"report on this model only ({_MODEL}); repeatable; default: every registered one")
    p.add_argument("--protocol", metavar="FILE",
                   help="take the decisions section's flips on this labelled protocol (as evaluate reads "
                        "it) instead of the bundled fixture corpus")
    p.add_argument("--audio-root", metavar="DIR", help="where --protocol's audio is (as for evaluate)")


def _audit_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="run the contract audits on a model")
    p.add_argument("target", nargs="?", metavar="MODEL", help=_MODEL)
    p.add_argument("--variant", help="audit a registered variant by name (same as MODEL)")
    _model_options(p)
    p.add_argument("--output", choices=("probability", "logits", "any"),
                   help="what the forward returns (default: the spec's, else any)")
    p.add_argument("--input-shape", default=None,
                   help="example input shape, batch first (default: 2 examples of the model's input "
                        "contract: its declared input_shape, else the first of [B, 1, 16000] and [B, 16000] "
                        "it takes)")
    p.add_argument("--checks", help="comma-separated check names (default: all that apply)")
    p.add_argument("--format", choices=("text", "json"), default="text")


def _compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="do two models compute the same function? (weights matched by "
                                       "structure)")
    p.add_argument("ref", metavar="REF", help=f"the reference: {_MODEL}")
    p.add_argument("other", metavar="OTHER", help=f"the model held to it: {_MODEL}")
    p.add_argument("--weights", metavar="CKPT", help="REF's weights (default: seeded random weights)")
    p.add_argument("--ref-kwargs", metavar="JSON", help=f"REF's {_KWARGS}")
    p.add_argument("--other-kwargs", metavar="JSON", help=f"OTHER's {_KWARGS}")
    p.add_argument("--input-shape", default=None,
                   help="input shape, batch first (default: 3 examples of REF's input contract)")
    p.add_argument("--mode", choices=("train", "eval", "both"), default="both")
    p.add_argument("--tolerance", default="EXACT", metavar="NAME",
                   help="a tolerance of harness.core.tolerances (default EXACT: bit for bit)")
    p.add_argument("--format", choices=("text", "json"), default="text")


def _migrate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("migrate", help="convert a checkpoint to another layout or model")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    # Layout names are validated by harness.rawnet2.checkpoints, which explains each refusal in one line.
    p.add_argument("--to", required=True, metavar="TARGET",
                   help="a declared layout (skip_modules, legacy; tuple_blocks cannot hold a checkpoint), "
                        f"or {_MODEL}: the weights are matched into it by structure and proven")
    p.add_argument("--from", dest="source", default="auto", metavar="SOURCE",
                   help="what SRC is a checkpoint of: auto (default: a declared layout detected from the "
                        "keys, else the registered variant whose own state_dict has exactly its keys), a "
                        f"layout (legacy, skip_modules), or {_MODEL} whose own state_dict SRC holds")
    p.add_argument("--policy", default="preserve-function",
                   choices=("preserve-function", "preserve-weights"),
                   help="preserve-function (default): the result computes what the source computed; "
                        "preserve-weights: carry every weight that has a place")
    _model_options(p, weights=False)
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing DST file, or replace a symbolic link DST (the link itself, "
                        "never what it points to); never SRC itself")


def _score_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score audio files with a model")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--variant", default="skip_modules", help=_MODEL)
    p.add_argument("--checkpoint", metavar="PATH")
    p.add_argument("--policy", default="preserve-function",
                   choices=("preserve-function", "preserve-weights"))
    _model_options(p, weights=False)
    p.add_argument("--score", metavar="TRANSFORM",
                   help="how a score comes from the output: probability, sigmoid[k], softmax[k] or "
                        "log_softmax[k] (column k) (default: the variant's declared score)")
    p.add_argument("--score-means", choices=("spoof", "bonafide"),
                   help="what a high score means (default: the variant's declared score_means)")
    p.add_argument("--input-shape", metavar="SHAPE",
                   help="one clip's model input without the batch axis, the last axis its length: 1,64600 "
                        "([B, 1, T]) or 64600 ([B, T]) (default: the variant's input_shape; the RawNet2 "
                        "family at the ASVspoof 64,600 samples)")
    p.add_argument("--form", choices=("auto", "eager", "optimized", "onnxruntime"), default="auto",
                   help="deployment form: auto (default) takes the fastest this machine and the model allow "
                        "(onnxruntime, else optimized, else eager), verified against eager on the first "
                        "batch (auto falls back to eager on a difference, a named form is refused); stderr "
                        "names the one that ran")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch-size", type=int, default=8, help="usable files per forward (default 8)")
    p.add_argument("--format", choices=("table", "json"),
                   help="what stdout gets without --output (default: table)")
    p.add_argument("--output", metavar="PATH",
                   help="write a score log here instead: a header line with the run's fingerprint, then one "
                        "JSON line per file in input order, fsync'd after each batch, locked while the run "
                        "lasts: a new path, or an existing regular file with --resume or --force; never a "
                        "file the run reads")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="finish the --output log a stopped run left (same options, same files): skip the "
                            "files it records, append the rest")
    again.add_argument("--force", action="store_true",
                       help="overwrite an existing --output file (a symbolic link: replace the link itself)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", metavar="DIR",
                       help="keep verified ONNX exports here, so that the next run skips the export "
                            "(default: $RAWNET2_HARNESS_CACHE_DIR, else $XDG_CACHE_HOME/rawnet2-harness, "
                            "else ~/.cache/rawnet2-harness; created mode 0700; one that is a file, a "
                            "symbolic link, another user's or writable by others is refused)")
    cache.add_argument("--no-cache", action="store_true",
                       help="export afresh and keep nothing: the export cache is neither read nor written")


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX, verified against eager before it is kept")
    p.add_argument("model", metavar="MODEL", help=_MODEL)
    p.add_argument("out", metavar="OUT.onnx")
    _model_options(p)
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--force", action="store_true", help="overwrite an existing OUT")


def _mutate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mutate", help="mutation testing of a model source file against the behavioural tests "
                                      "(minutes; mutmut plus model operators)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="model source file, e.g. fixed/skip_modules.py "
                                                            "(several: one run each, one report)")
    p.add_argument("--tests", metavar="EXPR",
                   help="pytest -k expression selecting the tests that judge PATH (default: the registered "
                        "variants whose source is PATH; text-pinning tests are always left out)")
    p.add_argument("--output", default="mutation-report.json", metavar="PATH",
                   help="the JSON report (default mutation-report.json, written atomically)")
    p.add_argument("--workers", type=_positive_int, metavar="N",
                   help="mutants tested at once (default: one per CPU)")
    p.add_argument("--timeout-factor", type=_positive_finite, default=5.0, metavar="X",
                   help="a mutant times out after X times (its tests' clean duration + 30 s) (default 5)")
    p.add_argument("--equivalences", metavar="FILE",
                   help="JSON list of declared equivalent mutants: {path, first, anchor, reason, ...}")
    p.add_argument("--fail-under", type=_percent, metavar="SCORE",
                   help="exit 1 when a file's score (percent of non-equivalent mutants detected) is lower")
    p.add_argument("--max-mutants", type=_positive_int, metavar="N",
                   help="run a deterministic sample of N mutants spread evenly across functions; the rest "
                        "are reported as not run")
    p.add_argument("--time-budget", type=_positive_finite, metavar="SECONDS",
                   help="stop when spent; the report stays partial and names what never ran")


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="EER, min t-DCF, per-attack EER and decision flips on a labelled "
                                        "protocol, with a metric gate")
    p.add_argument("--protocol", required=True, metavar="FILE",
                   help="labels: an ASVspoof 2019 protocol (SPEAKER UTT - ATTACK KEY), an ASVspoof 2021 "
                        "LA/PA/DF key, or a CSV with file and label columns (In-the-Wild's meta.csv)")
    p.add_argument("--audio-root", metavar="DIR",
                   help="where each utterance's audio is: DIR/UTT.flac or .wav (also DIR/flac/, DIR/wav/); "
                        "the CSV's file column is relative to it (default: the CSV's folder)")
    p.add_argument("--variant", action="append", metavar="NAME",
                   help=f"a system scored here: {_MODEL}; repeatable; every one holds the same weights")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="the weights every --variant holds (through its layout conversion, else copied from "
                        "the first variant's loaded model by structural matching)")
    p.add_argument("--policy", default="preserve-function", choices=("preserve-function", "preserve-weights"))
    p.add_argument("--form", action="append", choices=("auto", "eager", "optimized", "onnxruntime"),
                   help="deployment form each --variant is scored in (default auto); repeatable: every form "
                        "is a system, and its decisions are compared with the others'")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="files per forward (default 8)")
    p.add_argument("--scores", action="append", metavar="NAME=FILE",
                   help="a system from a score file: score's JSON Lines log or JSON, an ASVspoof 2019 CM "
                        "score file (UTT ATTACK KEY SCORE) or two columns (UTT SCORE); repeatable")
    p.add_argument("--higher-means", choices=("bonafide", "spoof"),
                   help="what a high score in a --scores file means when the file does not say "
                        "(default bonafide, the ASVspoof convention)")
    p.add_argument("--asv-scores", metavar="FILE",
                   help="ASV scores in the ASVspoof 2019 format (KEY_SOURCE KEY SCORE): adds min t-DCF")
    p.add_argument("--tdcf", choices=("2021", "2019"), default="2021",
                   help="t-DCF definition: 2021 (revised, the ASVspoof 2021 evaluation package; default) or "
                        "2019 (the original ASVspoof 2019 t-DCF)")
    p.add_argument("--reference", metavar="NAME",
                   help="the system the others are held to (default: the first)")
    p.add_argument("--threshold", type=_finite, metavar="T",
                   help="decide flips at this oriented score (higher = bona fide) instead of the reference's "
                        "EER threshold")
    p.add_argument("--max-eer-increase", type=_non_negative, metavar="PP",
                   help="gate: no system's EER more than PP percentage points above the reference's")
    p.add_argument("--max-flips", type=_non_negative_int, metavar="N",
                   help="gate: at most N decisions flip between the reference and each system, and between "
                        "the forms of one variant")
    p.add_argument("--format", choices=("markdown", "json", "html"), default="markdown")
    p.add_argument("--output", metavar="PATH",
                   help="write here instead of stdout (atomically); the variants' score logs go to the "
                        "folder PATH's stem + .scores beside it, and a killed run resumes from them")
    p.add_argument("--force", action="store_true",
                   help="let --output replace a symbolic link: the link itself, never what it points to")


def _non_negative(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive_finite(text: str) -> float:
    """A finite number > 0 (nan, inf, 0 and negatives would make every mutant time out, or none)."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _percent(text: str) -> float:
    value = _finite(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage from 0 to 100, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__.splitlines()[0])
    parser.add_argument("--registry", metavar="FILE",
                        help="TOML file with [tool.rawnet2-harness.variants.NAME] tables "
                             "(default: ./pyproject.toml when present)")
    parser.add_argument("--debug", action="store_true",
                        help="let an internal error (a bug, not a refusal) end with its traceback")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_report_parser, _audit_parser, _compare_parser, _migrate_parser, _score_parser,
                _export_parser, _mutate_parser, _evaluate_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = _HANDLERS[args.command].split(":")
    try:
        if args.command == "score":  # a warm export cache scores without torch, the registry or the model
            from harness.rawnet2.score_cached import score_from_cache

            if (code := score_from_cache(args)) is not None:
                return code
        from harness.rawnet2.registry import load_project_registry

        load_project_registry(args.registry)
        handler = getattr(importlib.import_module(module_name), func_name)
        return handler(args)
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


if __name__ == "__main__":
    sys.exit(main())

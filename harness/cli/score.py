"""``python -m harness score FILE...``: a model's detection scores for audio files."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from harness.cli.options import MODEL_HELP, POLICIES, SCORE_FORMS, add_model_options

if TYPE_CHECKING:
    from harness.rawnet2.score_request import ScoreRequest


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score audio files with a model")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--variant", default="skip_modules", help=MODEL_HELP)
    p.add_argument("--checkpoint", metavar="PATH")
    p.add_argument("--policy", default="preserve-function", choices=POLICIES)
    add_model_options(p, weights=False)
    p.add_argument("--score", metavar="TRANSFORM",
                   help="how a score comes from the output: probability, sigmoid[k], softmax[k] or "
                        "log_softmax[k] (column k) (default: the variant's declared score)")
    p.add_argument("--score-means", choices=("spoof", "bonafide"),
                   help="what a high score means (default: the variant's declared score_means)")
    p.add_argument("--input-shape", metavar="SHAPE",
                   help="one clip's model input without the batch axis, the last axis its length: 1,64600 "
                        "([B, 1, T]) or 64600 ([B, T]) (default: the variant's input_shape; the RawNet2 "
                        "family at the ASVspoof 64,600 samples)")
    p.add_argument("--form", choices=SCORE_FORMS, default="auto",
                   help="deployment form: auto (default) takes the fastest this machine and the model allow "
                        "(onnxruntime, else optimized, else eager), verified against eager on the first "
                        "batch (auto falls back to eager on a difference, a named form is refused); stderr "
                        "names the one that ran")
    p.add_argument("--calibrate-on", nargs="+", metavar="FILE",
                   help="--form onnxruntime-int8 only: the audio its activation ranges are calibrated on "
                        "(default: the bundled recordings); the int8 form changes scores, so judge it by "
                        "its decisions (evaluate), and auto never picks it")
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
    p.set_defaults(func=run)


def score_request(args: argparse.Namespace) -> ScoreRequest:
    """The parsed command line as a ``harness.rawnet2.score_request.ScoreRequest``."""
    from harness.rawnet2.score_request import ScoreRequest

    return ScoreRequest(
        files=list(args.files), variant=args.variant, checkpoint=args.checkpoint, policy=args.policy,
        kwargs=args.kwargs.value if args.kwargs is not None else None,
        kwargs_text=args.kwargs.text if args.kwargs is not None else None, score=args.score,
        score_means=args.score_means, input_shape=args.input_shape, form=args.form, device=args.device,
        calibrate_on=args.calibrate_on, batch_size=args.batch_size, format=args.format, output=args.output,
        resume=args.resume,
        force=args.force, cache_dir=args.cache_dir, no_cache=args.no_cache, registry=args.registry)


def from_cache(args: argparse.Namespace) -> int | None:
    """The run's exit code when a warm export cache scores it without torch, the registry or the model;
    else None, and nothing done."""
    from harness.rawnet2 import score_cached

    return score_cached.score_from_cache(score_request(args))


def run(args: argparse.Namespace) -> int:
    """0 when every file scored, 1 when any failed, 2 refused."""
    from harness.rawnet2.score_command import run_score

    return run_score(score_request(args))

"""``python -m harness evaluate``: EER, min t-DCF, per-attack EER and decision flips on a labelled
protocol, with a metric gate."""

from __future__ import annotations

import argparse
import os
import sys

from harness.cli.options import (
    MODEL_HELP,
    POLICIES,
    SCORE_FORMS,
    finite,
    non_negative,
    non_negative_int,
    positive_int,
)
from harness.core.errors import HarnessError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="EER, min t-DCF, per-attack EER and decision flips on a labelled "
                                        "protocol, with a metric gate")
    p.add_argument("--protocol", required=True, metavar="FILE",
                   help="labels: an ASVspoof 2019 protocol (SPEAKER UTT - ATTACK KEY), an ASVspoof 2021 "
                        "LA/PA/DF key, or a CSV with file and label columns (In-the-Wild's meta.csv)")
    p.add_argument("--audio-root", metavar="DIR",
                   help="where each utterance's audio is: DIR/UTT.flac or .wav (also DIR/flac/, DIR/wav/); "
                        "the CSV's file column is relative to it (default: the CSV's folder)")
    p.add_argument("--variant", action="append", metavar="NAME",
                   help=f"a system scored here: {MODEL_HELP}; repeatable; every one holds the same weights")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="the weights every --variant holds (through its layout conversion, else copied from "
                        "the first variant's loaded model by structural matching)")
    p.add_argument("--policy", default="preserve-function", choices=POLICIES)
    p.add_argument("--form", action="append", choices=SCORE_FORMS,
                   help="deployment form each --variant is scored in (default auto); repeatable: every form "
                        "is a system, and its decisions are compared with the others'")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch-size", type=positive_int, default=8, help="files per forward (default 8)")
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
    p.add_argument("--threshold", type=finite, metavar="T",
                   help="decide flips at this oriented score (higher = bona fide) instead of the reference's "
                        "EER threshold")
    p.add_argument("--max-eer-increase", type=non_negative, metavar="PP",
                   help="gate: no system's EER more than PP percentage points above the reference's")
    p.add_argument("--max-flips", type=non_negative_int, metavar="N",
                   help="gate: at most N decisions flip between the reference and each system, and between "
                        "the forms of one variant")
    p.add_argument("--format", choices=("markdown", "json", "html"), default="markdown")
    p.add_argument("--output", metavar="PATH",
                   help="write here instead of stdout (atomically); the variants' score logs go to the "
                        "folder PATH's stem + .scores beside it, and a killed run resumes from them")
    p.add_argument("--force", action="store_true",
                   help="let --output replace a symbolic link: the link itself, never what it points to")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the gate passes, 1 when a condition fails, 2 refused (nothing written)."""
    from harness.core.evaluation import (
        GATE_FAILED,
        GATE_PASSED,
        Gate,
        SystemScores,
        evaluate,
        score_file_system,
    )
    from harness.core.fileio import check_not_read, check_output_path, write_text_atomically
    from harness.core.protocols import audio_files, read_protocol
    from harness.core.score_files import read_asv_scores, read_scores
    from harness.rawnet2.evaluate_systems import ScoringPlan, score_log_dir, variant_systems
    from harness.report.evaluation_render import render_evaluation

    variants, score_args = list(args.variant or []), list(args.scores or [])
    if not variants and not score_args:
        raise HarnessError("nothing to evaluate: give --variant NAME or --scores NAME=FILE (repeatable)")
    if not variants:
        for flag, value in (("--checkpoint", args.checkpoint), ("--form", args.form),
                            ("--audio-root", args.audio_root)):
            if value is not None:
                raise HarnessError(f"{flag} applies to --variant systems, and none was given")
    forms = list(dict.fromkeys(args.form or ["auto"]))
    named = [_named_file(text) for text in score_args]
    reads = [("the protocol", args.protocol)] + [(f"the score file of {n}", p) for n, p in named]
    reads += [("the --asv-scores file", args.asv_scores)] if args.asv_scores else []
    reads += [("the checkpoint", args.checkpoint)] if args.checkpoint else []
    if args.output is not None:  # before any work: where the result goes, and never over an input
        check_output_path(args.output, force=args.force)
        check_not_read(args.output, reads)
    protocol = read_protocol(args.protocol)
    score_files = [(name, read_scores(path)) for name, path in named]
    asv = read_asv_scores(args.asv_scores) if args.asv_scores else None
    systems: list[SystemScores] = []
    if variants:
        files = audio_files(protocol, args.audio_root)
        if args.output is not None and os.path.lexists(args.output):  # a new path is no file read
            check_not_read(args.output, [("a protocol audio file", f) for f in files])
        plan = ScoringPlan(checkpoint=args.checkpoint, policy=args.policy, device=args.device,
                           batch_size=args.batch_size, log_dir=score_log_dir(args.output))
        systems += variant_systems(variants, forms, files, protocol.utterances, plan)
    systems += [score_file_system(name, found, protocol, args.higher_means) for name, found in score_files]
    gate = Gate(max_eer_increase_pp=args.max_eer_increase, max_flips=args.max_flips)
    document = evaluate(protocol, systems, reference=args.reference, threshold=args.threshold, asv=asv,
                        asv_path=args.asv_scores, tdcf=args.tdcf, gate=gate)
    text = render_evaluation(document, args.format)  # validated there (evaluation_schema)
    if args.output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_text_atomically(args.output, text, force=args.force)
        print(f"wrote {args.output}", file=sys.stderr)
    verdict = document["gate"]
    for reason in verdict["reasons"]:
        print(f"gate failed: {reason}", file=sys.stderr)
    return GATE_PASSED if verdict["passed"] else GATE_FAILED


def _named_file(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise HarnessError(f"--scores {text!r}: expected NAME=FILE (e.g. --scores baseline=scores.txt)")
    return name, path

"""``python -m harness evaluate``: EER, min t-DCF, per-attack EER and decision flips on a labelled protocol.

Systems are registered variants scored here (``harness.rawnet2.evaluate_systems``) or score
files (``harness.core.score_files``); the metrics, flips and gate are
``harness.core.evaluation``; the output is validated (``evaluation_schema``) and rendered
(``evaluation_render``). Exit 0: every gate condition holds; 1: one fails (each on stderr);
2: usage or input errors, with nothing written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.evaluation import GATE_FAILED, GATE_PASSED, Gate, SystemScores, evaluate
from harness.core.fileio import check_not_read, check_output_path, write_text_atomically
from harness.core.protocols import Protocol, audio_files, read_protocol
from harness.core.score_files import read_asv_scores, read_scores
from harness.core.text import first_few
from harness.rawnet2.evaluate_systems import ScoringPlan, variant_systems
from harness.report.evaluation_render import render_evaluation

# Where the score logs of ``--output DIR/NAME.EXT`` go: DIR/NAME.scores/, one log per variant system.
LOG_DIR_SUFFIX = ".scores"
DEFAULT_HIGHER_MEANS = "bonafide"  # the ASVspoof score files' convention


def cli_evaluate(args: argparse.Namespace) -> int:
    """Exit 0 when the gate passes, 1 when a condition fails, 2 refused (nothing written)."""
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
                           batch_size=args.batch_size, log_dir=_log_dir(args.output))
        systems += variant_systems(variants, forms, files, protocol.utterances, plan)
    systems += [_file_system(name, found, protocol, args.higher_means) for name, found in score_files]
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


def _log_dir(output: str | None) -> Path | None:
    """``DIR/NAME.scores`` beside ``--output DIR/NAME.EXT`` (made here; never through a link)."""
    if output is None:
        return None
    path = Path(output)
    folder = path.with_name(path.stem + LOG_DIR_SUFFIX)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise HarnessError(f"{folder}: the score-log folder of --output {output} exists and is not a folder")
    folder.mkdir(mode=0o755, exist_ok=True)
    return folder


def _file_system(name: str, found: object, protocol: Protocol, higher_means: str | None) -> SystemScores:
    """A score file as a system, oriented by what it says or ``--higher-means`` (never both disagreeing)."""
    said = found.score_means
    if said is not None and higher_means is not None and said != higher_means:
        raise HarnessError(f"--scores {name}={found.path}: the file says a high score means {said}; "
                           f"--higher-means {higher_means} contradicts it")
    means = said or higher_means or DEFAULT_HIGHER_MEANS
    wanted = set(protocol.utterances)
    if failed := [u for u in found.failed if u in wanted]:
        raise HarnessError(f"--scores {name}={found.path}: records an error instead of a score for "
                           f"{len(failed)} protocol utterance(s): {first_few(failed)}")
    how = ("as the file says" if said is not None else "--higher-means" if higher_means is not None
           else f"the default, {DEFAULT_HIGHER_MEANS}")
    return SystemScores(name=name, scores=found.scores, score_means=means,
                        source=f"scores from {found.path} ({found.kind}; a high score means {means}: {how})")

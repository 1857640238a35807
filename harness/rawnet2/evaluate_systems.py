"""Registered variants as ``evaluate`` systems: every protocol file scored by each variant and form.

Every variant holds the same weights: ``--checkpoint`` through its layout conversion
(``harness.rawnet2.checkpoints.load_into``), or, where its state_dict cannot hold them
(tuple_blocks), copied from the first variant's loaded model by structural matching
(``copy_weights``, proven bit for bit). Without a checkpoint the first variant has its
registered weights or seeded random ones, and the others get the same by matching. Each
system's ``source`` says which. Scores go through ``score``'s own path (decoding, the
verified deployment form, the declared score transform); with a log folder each system's
scores are kept in a score log there, and a killed run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from harness.core.checkpoints import load_checkpoint
from harness.core.errors import HarnessError
from harness.core.evaluation import SystemScores
from harness.core.fileio import check_regular_input
from harness.core.text import first_few
from harness.rawnet2.checkpoints import _runnable, load_into
from harness.rawnet2.deploy import factory_name
from harness.rawnet2.equivalence import copy_weights
from harness.rawnet2.layouts import CANONICAL_LAYOUT
from harness.rawnet2.registry import VariantSpec, resolve, spec
from harness.rawnet2.score_command import (
    RANDOM_WEIGHTS_SEED,
    check_scorable,
    has_random_weights,
    score_transform,
    scoring_contract,
    scoring_model,
)
from harness.rawnet2.score_results import PROGRESS_MIN_FILES, FileScore, Progress
from harness.rawnet2.scorelog import ScoreLog, run_fingerprint
from harness.rawnet2.scoring import iter_scores

Say = Callable[[str], None]
# Where the score logs of ``--output DIR/NAME.EXT`` go: DIR/NAME.scores/, one log per variant system.
LOG_DIR_SUFFIX = ".scores"


@dataclass(frozen=True)
class ScoringPlan:
    """How every variant system is scored: the options ``evaluate`` shares with ``score``."""

    checkpoint: str | None = None
    policy: str = "preserve-function"
    device: str = "cpu"
    batch_size: int = 8
    log_dir: Path | None = None  # score logs kept here (one per system), resumed when present


def score_log_dir(output: str | None) -> Path | None:
    """``DIR/NAME.scores`` beside ``--output DIR/NAME.EXT`` (made here; never through a link)."""
    if output is None:
        return None
    path = Path(output)
    folder = path.with_name(path.stem + LOG_DIR_SUFFIX)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise HarnessError(f"{folder}: the score-log folder of --output {output} exists and is not a folder")
    folder.mkdir(mode=0o755, exist_ok=True)
    return folder


def system_name(variant: str, form: str, forms: Sequence[str]) -> str:
    """A variant scored in one form is named as the variant; in several, ``NAME [FORM]`` each."""
    return variant if len(forms) == 1 else f"{variant} [{form}]"


def variant_systems(variants: Sequence[str], forms: Sequence[str], files: Sequence[str],
                    utterances: Sequence[str], plan: ScoringPlan, *,
                    say: Say | None = None) -> list[SystemScores]:
    """Each variant in each form scored on ``files`` (the audio of ``utterances``, aligned)."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    if plan.batch_size < 1:
        raise HarnessError(f"--batch-size must be at least 1, got {plan.batch_size}")
    if plan.checkpoint is not None:
        check_regular_input(plan.checkpoint)
    specs = [resolve(name) for name in variants]
    for target in specs:
        score_transform(target)  # a variant without a way to read a score is refused before any work
    models = _weighted_models(specs, plan, say)
    systems = []
    for target, (model, weights) in zip(specs, models, strict=True):
        for form in forms:
            name = system_name(target.name, form, forms)
            scores = _scores(name, target, model, form, files, utterances, plan, say)
            transform = score_transform(target)
            systems.append(SystemScores(
                name=name, scores=scores, score_means=transform.means,
                source=f"variant {target.name}, form {form}, {weights}, score {transform}",
                variant=target.name if len(forms) > 1 else None))
    return systems


# --- weights ------------------------------------------------------------------------------------------


def _weighted_models(specs: Sequence[VariantSpec], plan: ScoringPlan,
                     say: Say) -> list[tuple[nn.Module, str]]:
    """Each variant's eval-mode model and where its weights came from, in words."""
    first = specs[0]
    state = load_checkpoint(plan.checkpoint) if plan.checkpoint is not None else None  # read once
    if state is not None:
        try:
            model, lines = load_into(first, state, policy=plan.policy)
        except HarnessError as exc:
            raise HarnessError(f"{first.name}: cannot load {plan.checkpoint}: {exc}") from None
        models = [(model.eval(), f"weights from {plan.checkpoint} ({lines[0]})")]
    else:
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = first.build_or_refuse()
        if has_random_weights(None, first, model):
            say(f"warning: no --checkpoint: {first.name} has random weights (seed {RANDOM_WEIGHTS_SEED}) "
                "and every other variant a copy of them; the metrics mean nothing, the flips still count")
            origin = f"random weights (seed {RANDOM_WEIGHTS_SEED})"
        elif first.weights is None:
            origin = "no weights (a model without parameters)"
        else:
            origin = f"its registered weights {first.weights_path}"
        models = [(_runnable(model, first).eval(), origin)]
    loaded = [(first.name, models[0][0])]
    for target in specs[1:]:
        model, origin = _weights_for(target, loaded, plan, state)
        models.append((model, origin))
        loaded.append((target.name, model))
    return models


def _weights_for(target: VariantSpec, loaded: list[tuple[str, nn.Module]], plan: ScoringPlan,
                 state: Mapping[str, torch.Tensor] | None) -> tuple[nn.Module, str]:
    """The checkpoint through ``target``'s layout conversion; else a copy, matched by structure, of
    the first model already loaded that it fits (the canonical layout's, loaded for it, last)."""
    why = ""
    if state is not None:
        try:
            model, lines = load_into(target, state, policy=plan.policy)
            return model.eval(), f"weights from {plan.checkpoint} ({lines[0]})"
        except HarnessError as exc:
            why = f" (the checkpoint does not load into it: {exc})"
    sources = list(loaded)
    if state is not None and all(name != CANONICAL_LAYOUT for name, _ in loaded):
        with contextlib.suppress(HarnessError):
            canonical, _ = load_into(spec(CANONICAL_LAYOUT), state, policy=plan.policy)
            sources.append((CANONICAL_LAYOUT, canonical.eval()))
    problems = []
    for name, source in sources:
        model = target.build_or_refuse()
        try:
            copy_weights(source, model, contract=target.input_contract())
        except HarnessError as exc:
            problems.append(f"from {name}: {exc}")
            continue
        return (_runnable(model, target).eval(),
                f"weights copied from {name}'s loaded model by structural matching, proven bit for bit{why}")
    raise HarnessError(f"{target.name}: cannot hold the weights of {', '.join(n for n, _ in sources)}{why}: "
                       + "; ".join(problems))


# --- scores ---------------------------------------------------------------------------------------------


def _scores(name: str, target: VariantSpec, model: nn.Module, form: str, files: Sequence[str],
            utterances: Sequence[str], plan: ScoringPlan, say: Say) -> dict[str, float]:
    contract, transform = scoring_contract(target), score_transform(target)
    check_scorable(model, target, contract, transform)
    log, results = None, list[FileScore]()
    if plan.log_dir is not None:
        print_ = run_fingerprint(
            variant=target.name, factory=factory_name(target), kwargs=target.kwargs,
            checkpoint=plan.checkpoint, weights=target.weights_path, form=form, device=plan.device,
            contract=contract, transform=transform, batch_size=plan.batch_size, policy=plan.policy)
        log = ScoreLog.open(os.fspath(plan.log_dir / f"{_file_safe(name)}.jsonl"), print_, resume=True)
    try:
        todo = log.todo(files) if log is not None else list(files)
        kept = len(files) - len(todo)
        if todo:
            scorer, ran = scoring_model(model, target, form, plan.device, say=say)
            say(f"evaluate: {name} as {ran}" + (f"; resuming {log.path}: {kept} of {len(files)} files "
                                                  "already scored" if kept else ""))
            progress = Progress(len(files), done=kept, enabled=len(files) >= PROGRESS_MIN_FILES)
            failed = 0  # counted as the chunks come: a corpus has hundreds of thousands of files
            try:
                for chunk in iter_scores(scorer, todo, batch_size=plan.batch_size, contract=contract,
                                         transform=transform):
                    if log is not None:
                        log.append(chunk)
                    results.extend(chunk)
                    failed += sum(r.error is not None for r in chunk)
                    progress.update(kept + len(results), failed)
            finally:
                progress.close()
        if log is not None:
            results = log.finish(files)
    finally:
        if log is not None:
            log.close()
    failed = [r for r in results if r.error is not None]
    if failed:
        raise HarnessError(f"{name}: {len(failed)} of {len(files)} protocol files could not be scored: "
                           + first_few([f"{r.file} ({r.error})" for r in failed[:3]], 3, total=len(failed)))
    return {utt: r.score for utt, r in zip(utterances, results, strict=True)}


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "system"

"""Decision-level evidence for systems scored on one labelled protocol: ``python -m harness evaluate``.

``evaluate(protocol, systems, ...)`` turns each system's scores into the official ASVspoof
metrics (``harness.core.metrics``: EER, min t-DCF, per-attack EER) and every pair of systems
into decision flips at one threshold (``harness.core.decisions``), then applies the gate.
The result is the document ``harness.report.evaluation_schema`` describes. Scores are
oriented first (higher = bona fide); a system that says a high score means spoof is negated,
and the document says so. ``score_file_system`` makes a system of a score file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from harness.core.decisions import clear_threshold, decision_flips
from harness.core.errors import HarnessError
from harness.core.metrics import (
    TDCF_NAMES,
    MetricError,
    asv_error_rates,
    compute_eer,
    det_points,
    min_tdcf,
    per_attack_eer,
    score_histogram,
)
from harness.core.protocols import Protocol
from harness.core.score_files import AsvScores, ScoreFile
from harness.core.text import first_few

TOOL = "rawnet2-harness evaluate"
FORMAT_VERSION = 1
ORIENTATION = "higher score = bona fide (the ASVspoof convention)"
SCORE_MEANINGS = ("bonafide", "spoof")
DEFAULT_HIGHER_MEANS = "bonafide"  # what a score file's high score means when nothing says (ASVspoof's)
# Exit codes: every gate condition holds / one fails (usage errors are HarnessError's 2).
GATE_PASSED, GATE_FAILED = 0, 1


@dataclass(frozen=True)
class SystemScores:
    """One system's scores as it gives them, and what a high one means."""

    name: str
    scores: Mapping[str, float]  # utterance id -> score
    score_means: str  # "bonafide" or "spoof"
    source: str  # how the scores came, in words (variant, form and weights, or a score file)
    variant: str | None = None  # systems sharing a variant are deployment forms of one model


@dataclass(frozen=True)
class Gate:
    """``--max-eer-increase`` (percentage points, each system vs the reference) and ``--max-flips``
    (each pair with the reference, and each form vs another form of its variant)."""

    max_eer_increase_pp: float | None = None
    max_flips: int | None = None


def oriented_scores(protocol: Protocol, system: SystemScores) -> tuple[np.ndarray, int]:
    """``system``'s scores in protocol order, higher = bona fide, and how many of its scores are
    for utterances the protocol lacks. A protocol utterance without a score is a usage error."""
    if system.score_means not in SCORE_MEANINGS:
        raise HarnessError(f"{system.name}: score_means must be one of {', '.join(SCORE_MEANINGS)}, "
                           f"got {system.score_means!r}")
    scores = system.scores
    values = np.fromiter((scores.get(u, math.nan) for u in protocol.utterances), dtype=np.float64,
                         count=len(protocol.utterances))
    missing = np.flatnonzero(np.isnan(values))
    if missing.size:
        shown = first_few([protocol.utterances[i] for i in missing[:5]], total=int(missing.size))
        raise HarnessError(f"{system.name}: no score for {missing.size} of {len(values)} protocol "
                           f"utterances: {shown}")
    if not np.isfinite(values).all():
        bad = protocol.utterances[int(np.flatnonzero(~np.isfinite(values))[0])]
        raise HarnessError(f"{system.name}: the score of {bad} is not finite")
    not_in_protocol = len(scores) - len(protocol.utterances)  # every protocol id has a score (above)
    return (-values if system.score_means == "spoof" else values), not_in_protocol


def score_file_system(name: str, found: ScoreFile, protocol: Protocol,
                      higher_means: str | None) -> SystemScores:
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


def evaluate(protocol: Protocol, systems: Sequence[SystemScores], *, reference: str | None = None,
             threshold: float | None = None, asv: AsvScores | None = None, asv_path: str | None = None,
             tdcf: str = "2021", gate: Gate = Gate()) -> dict:
    """The evaluation document: metrics per system, flips per pair, the gate's verdict."""
    if not systems:
        raise HarnessError("nothing to evaluate: give --variant or --scores")
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise HarnessError(f"two systems are named {first_few(twice)}; name them apart "
                           "(--scores NAME=FILE)")
    reference = names[0] if reference is None else reference
    if reference not in names:
        raise HarnessError(f"--reference {reference!r} is not one of the systems: {', '.join(names)}")
    if tdcf not in TDCF_NAMES:
        raise HarnessError(f"--tdcf must be one of {', '.join(TDCF_NAMES)}, got {tdcf!r}")
    rates = asv_error_rates(asv.target, asv.nontarget, asv.spoof) if asv is not None else None
    oriented = {s.name: oriented_scores(protocol, s) for s in systems}
    bona = protocol.is_bonafide
    documented = {s.name: _system(s, *oriented[s.name], protocol, rates, tdcf) for s in systems}
    if threshold is None:
        eer_threshold = documented[reference]["eer_threshold"]
        value = clear_threshold(oriented[reference][0], eer_threshold)
        source = (f"the EER threshold of {reference} ({eer_threshold:.6g}), moved midway to its next "
                  "score: its decisions as at the EER threshold, none of its scores on the boundary")
    else:
        value, source = float(threshold), "--threshold"
    pairs = []
    for i, a in enumerate(systems):
        for b in systems[i + 1:]:
            flips = decision_flips(a.name, oriented[a.name][0], b.name, oriented[b.name][0], value,
                                   protocol.utterances, bona)
            kind = "form" if a.variant is not None and a.variant == b.variant else "systems"
            pairs.append({**flips.as_json(), "kind": kind})
    document = {
        "tool": TOOL,
        "format_version": FORMAT_VERSION,
        "protocol": {"path": protocol.path, "kind": protocol.kind, "n_utterances": len(protocol.utterances),
                     "n_bonafide": protocol.n_bonafide, "n_spoof": protocol.n_spoof},
        "orientation": _orientation(systems),
        "tdcf": None if rates is None else {
            "definition": tdcf, "name": TDCF_NAMES[tdcf], "asv_scores": asv_path,
            "asv": {"eer": rates.eer, "threshold": rates.threshold, "pfa": rates.pfa, "pmiss": rates.pmiss,
                    "pmiss_spoof": rates.pmiss_spoof, "pfa_spoof": rates.pfa_spoof}},
        "reference": reference,
        "threshold": {"value": float(value), "source": source},
        "systems": documented,
        "pairs": pairs,
    }
    document["gate"] = gate_verdict(document, gate)
    return document


def _system(system: SystemScores, scores: np.ndarray, not_in_protocol: int, protocol: Protocol,
            rates: object, tdcf: str) -> dict:
    bona, spoof = scores[protocol.is_bonafide], scores[~protocol.is_bonafide]
    eer, eer_threshold = compute_eer(bona, spoof)
    entry: dict = {"eer": float(eer), "eer_threshold": float(eer_threshold), "min_tdcf": None,
                   "min_tdcf_threshold": None}
    if rates is not None:
        try:
            value, at = min_tdcf(bona, spoof, rates, definition=tdcf)
        except MetricError as exc:  # e.g. hard decisions: the official code refuses them too
            entry["min_tdcf_note"] = str(exc)
        else:
            entry["min_tdcf"], entry["min_tdcf_threshold"] = float(value), float(at)
    per_attack = per_attack_eer(scores, protocol.is_bonafide, protocol.attacks)
    pmiss, pfa = det_points(bona, spoof)
    entry.update({
        "n_bonafide": int(bona.size), "n_spoof": int(spoof.size),
        "per_attack": {attack: {"eer": float(e), "n": int(n)} for attack, (e, n) in per_attack.items()},
        "score_means": system.score_means, "source": system.source, "not_in_protocol": not_in_protocol,
        "det": {"pmiss": [float(p) for p in pmiss], "pfa": [float(p) for p in pfa]},
        "histogram": score_histogram(bona, spoof),
    })
    return entry


def _orientation(systems: Sequence[SystemScores]) -> str:
    negated = [s.name for s in systems if s.score_means == "spoof"]
    if not negated:
        return f"{ORIENTATION}; every system's scores mean bona fide as given"
    return (f"{ORIENTATION}; negated here because a high score means spoof: {', '.join(negated)} "
            "(thresholds are on the negated scale)")


def gate_verdict(document: Mapping, gate: Gate) -> dict:
    """``{"passed", "reasons", "conditions"}``: each failed condition one line."""
    reasons: list[str] = []
    systems, reference = document["systems"], document["reference"]
    if gate.max_eer_increase_pp is not None:
        base = systems[reference]["eer"]
        for name, entry in systems.items():
            increase = 100.0 * (entry["eer"] - base)
            if name != reference and increase > gate.max_eer_increase_pp:
                reasons.append(f"{name}: EER {100 * entry['eer']:.2f} % is {increase:.2f} pp above "
                               f"{reference}'s {100 * base:.2f} % (--max-eer-increase "
                               f"{gate.max_eer_increase_pp:g})")
    if gate.max_flips is not None:
        for pair in document["pairs"]:
            gated = reference in (pair["a"], pair["b"]) or pair["kind"] == "form"
            if gated and pair["flips"] > gate.max_flips:
                reasons.append(f"{pair['a']} vs {pair['b']}: {pair['flips']} decisions flip at threshold "
                               f"{pair['threshold']:.6g} (--max-flips {gate.max_flips})")
    return {"passed": not reasons, "reasons": reasons,
            "conditions": {"max_eer_increase_pp": gate.max_eer_increase_pp, "max_flips": gate.max_flips}}

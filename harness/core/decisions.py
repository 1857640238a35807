"""Decisions at a threshold, and the decisions two systems disagree on (flips).

A score above the threshold is decided bona fide; a score equal to it is spoof (the official DET
curve rejects the scores at or below its threshold). Scores are oriented: higher = bona fide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harness.core.metrics import MetricError, as_labels, as_scores


def _threshold(value: object) -> float:
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise MetricError(f"threshold: expected a number, got {value!r}") from None
    if not math.isfinite(threshold):
        raise MetricError(f"threshold: expected a finite number, got {threshold}")
    return threshold


def clear_threshold(scores: object, threshold: float) -> float:
    """``threshold`` moved up to midway between it and the next higher of ``scores`` (none higher:
    up by half the gap to the next lower one): the same decisions for ``scores``, none of them on
    the boundary. The official EER threshold is one of the reference's own scores, so a form that
    moved that score by one float ulp would flip its decision; here only a change as large as half
    the gap between neighbouring scores can. Scores all equal to ``threshold`` leave it where it is."""
    values = as_scores(scores, "scores")
    threshold = _threshold(threshold)
    higher, lower = values[values > threshold], values[values < threshold]
    if higher.size:
        return float((threshold + higher.min()) / 2)
    return float(threshold + (threshold - lower.max()) / 2) if lower.size else threshold


def decide(scores: object, threshold: float) -> np.ndarray:
    """True where the decision is bona fide: ``score > threshold``."""
    return as_scores(scores, "scores", allow_empty=True) > _threshold(threshold)


@dataclass(frozen=True)
class Flips:
    """Where systems ``a`` and ``b`` decide differently at one threshold, counted both ways.

    ``bonafide_to_spoof``: decided bona fide by a, spoof by b; ``spoof_to_bonafide``: the reverse.
    ``files``: every flipped utterance in input order, ``{"file", "label", "a", "b"}`` (its true
    label and both scores)."""

    a: str
    b: str
    threshold: float
    flips: int
    bonafide_to_spoof: int
    spoof_to_bonafide: int
    max_abs_score_diff: float
    files: list[dict]

    def as_json(self) -> dict:
        return {"a": self.a, "b": self.b, "threshold": self.threshold, "flips": self.flips,
                "bonafide_to_spoof": self.bonafide_to_spoof, "spoof_to_bonafide": self.spoof_to_bonafide,
                "max_abs_score_diff": self.max_abs_score_diff, "files": [dict(f) for f in self.files]}


def decision_flips(a: str, a_scores: object, b: str, b_scores: object, threshold: float,
                   utterances: Sequence[str], is_bonafide: object) -> Flips:
    """The flips between ``a`` and ``b`` at ``threshold``; the scores are aligned with ``utterances``
    (one per utterance, same order) and already oriented."""
    a_values = as_scores(a_scores, f"{a}'s scores", allow_empty=True)
    b_values = as_scores(b_scores, f"{b}'s scores", allow_empty=True)
    if not a_values.size == b_values.size == len(utterances):
        raise MetricError(f"decision flips {a} vs {b}: {a} has {a_values.size} scores, {b} has "
                          f"{b_values.size}, for {len(utterances)} utterances; expected one per utterance")
    labels = as_labels(is_bonafide, len(utterances))
    value = _threshold(threshold)
    a_bona, b_bona = a_values > value, b_values > value
    to_spoof, to_bona = a_bona & ~b_bona, ~a_bona & b_bona
    files = [{"file": str(utterances[i]), "label": "bonafide" if labels[i] else "spoof",
              "a": float(a_values[i]), "b": float(b_values[i])}
             for i in np.flatnonzero(to_spoof | to_bona).tolist()]
    max_diff = float(np.max(np.abs(a_values - b_values))) if a_values.size else 0.0
    n_to_spoof, n_to_bona = int(np.count_nonzero(to_spoof)), int(np.count_nonzero(to_bona))
    return Flips(a=a, b=b, threshold=value, flips=n_to_spoof + n_to_bona, bonafide_to_spoof=n_to_spoof,
                 spoof_to_bonafide=n_to_bona, max_abs_score_diff=max_diff, files=files)

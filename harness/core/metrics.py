"""The ASVspoof metrics of a spoofing countermeasure's scores: EER, min t-DCF, per-attack EER, DET curve.

Each number follows the definition of the official evaluation code (asvspoof-challenge/2021
``eval-package/eval_metrics.py``: ``compute_det_curve``, ``compute_eer``,
``obtain_asv_error_rates``, ``compute_tDCF`` and the 2019 ``compute_tDCF_legacy``) so that it equals
the official value on the same scores, ties included: the same stable order of the scores (bona fide
before spoof among equal scores), the same first minimum, the same arithmetic in the same order
(a different rounding could move the minimum to another threshold where two values tie).

Scores are oriented: a higher score means bona fide (the ASVspoof convention); a caller whose
system says otherwise negates them first. Scores are read as float64. Pure numpy, O(n log n):
one stable sort per DET curve, no Python loop over scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from harness.core.errors import HarnessError

# The official DET curve starts just below the lowest score (everything accepted) at this offset.
FIRST_THRESHOLD_OFFSET = 0.001
# The official t-DCF refuses CM scores with fewer distinct values: they are decisions, not scores.
MIN_DISTINCT_CM_SCORES = 3
# det_points always keeps both end points, the EER point and its two neighbours.
MIN_DET_POINTS = 5

_PSPOOF = 0.05  # both packages' prior of a spoofing attack
TDCF_COST_MODELS = MappingProxyType({
    # asvspoof-challenge/2021 eval-package/config.py (the revised t-DCF, tDCF_python v2)
    "2021": MappingProxyType({
        "Pspoof": _PSPOOF, "Ptar": (1 - _PSPOOF) * 0.99, "Pnon": (1 - _PSPOOF) * 0.01,
        "Cmiss": 1, "Cfa": 10, "Cfa_spoof": 10,
    }),
    # the ASVspoof 2019 tDCF_python package (evaluate_tDCF_asvspoof19.py)
    "2019": MappingProxyType({
        "Pspoof": _PSPOOF, "Ptar": (1 - _PSPOOF) * 0.99, "Pnon": (1 - _PSPOOF) * 0.01,
        "Cmiss_asv": 1, "Cfa_asv": 10, "Cmiss_cm": 1, "Cfa_cm": 10,
    }),
})
TDCF_NAMES = MappingProxyType({
    "2021": "revised t-DCF (ASVspoof 2021 evaluation package)",
    "2019": "t-DCF (ASVspoof 2019, tDCF_python v1)",
})


class MetricError(HarnessError):
    """Scores or error rates a metric cannot be computed from (an empty class, a score that is not
    finite, hard decisions given to the t-DCF, negative t-DCF weights): one line, exit code 2."""


def as_scores(values: object, what: str, *, allow_empty: bool = False) -> np.ndarray:
    """``values`` as a 1-D float64 array of finite scores, or a MetricError naming ``what``."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise MetricError(f"{what}: expected numbers, got {type(values).__name__}") from None
    if array.ndim != 1:
        raise MetricError(f"{what}: expected a 1-D sequence of scores, got shape {tuple(array.shape)}")
    if array.size == 0 and not allow_empty:
        raise MetricError(f"{what}: no scores (the class is empty)")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise MetricError(f"{what}: {bad.size} of {array.size} scores are not finite "
                          f"(the first at index {bad[0]}: {array[bad[0]]})")
    return array


def as_labels(is_bonafide: object, size: int, what: str = "is_bonafide") -> np.ndarray:
    """``is_bonafide`` as a 1-D bool array of ``size`` entries, or a MetricError. Only booleans:
    a string or a number label is ambiguous (``bool("spoof")`` is True)."""
    labels = np.asarray(is_bonafide)
    if labels.ndim != 1 or labels.size != size:
        raise MetricError(f"{what}: expected {size} labels (one per score), got shape {tuple(labels.shape)}")
    if size and labels.dtype != np.bool_:
        raise MetricError(f"{what}: expected booleans (True = bona fide), got dtype {labels.dtype}")
    return labels.astype(bool, copy=False)


def det_curve(bonafide: object, spoof: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pmiss, pfa, thresholds)``, the official DET curve: n + 1 operating points, the k-th
    rejecting the k lowest scores in a stable sort of the bona fide scores followed by the spoof
    ones (so among equal scores the bona fide are rejected first). ``thresholds[k]`` is the k-th
    lowest score (k >= 1), ``thresholds[0]`` the lowest minus 0.001."""
    return _det_curve(as_scores(bonafide, "bona fide scores"), as_scores(spoof, "spoof scores"))


def _det_curve(bona: np.ndarray, spoof: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.concatenate((bona, spoof))
    order = np.argsort(scores, kind="mergesort")  # stable: ties keep bona fide before spoof
    return _ranked_det_curve(scores[order], order < bona.size)


def _ranked_det_curve(ranked: np.ndarray,
                      ranked_is_bona: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The DET curve of scores already in the official stable order, with their classes."""
    n_bona = int(np.count_nonzero(ranked_is_bona))
    n_spoof = ranked.size - n_bona
    bona_rejected = np.cumsum(ranked_is_bona)
    spoof_accepted = n_spoof - (np.arange(1, ranked.size + 1) - bona_rejected)
    pmiss = np.concatenate(([0.0], bona_rejected / n_bona))
    pfa = np.concatenate(([1.0], spoof_accepted / n_spoof))
    thresholds = np.concatenate(([ranked[0] - FIRST_THRESHOLD_OFFSET], ranked))
    return pmiss, pfa, thresholds


def _eer_point(pmiss: np.ndarray, pfa: np.ndarray) -> int:
    """The official EER point: the first where |pmiss - pfa| is smallest."""
    return int(np.argmin(np.abs(pmiss - pfa)))


def compute_eer(bonafide: object, spoof: object) -> tuple[float, float]:
    """``(eer, threshold)``: the mean of pmiss and pfa at the first DET point where they are closest
    (a fraction, not a percentage), and that point's threshold."""
    return _eer(*det_curve(bonafide, spoof))


def _eer(pmiss: np.ndarray, pfa: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    at = _eer_point(pmiss, pfa)
    return float((pmiss[at] + pfa[at]) / 2), float(thresholds[at])


@dataclass(frozen=True)
class AsvErrorRates:
    """An ASV system's error rates at its EER threshold (an ASV score >= threshold accepts)."""

    eer: float
    threshold: float
    pfa: float  # nontargets accepted
    pmiss: float  # targets rejected
    pmiss_spoof: float  # spoofs rejected (the 2019 t-DCF reads it)
    pfa_spoof: float  # spoofs accepted (the 2021 t-DCF reads it)


def asv_error_rates(target: object, nontarget: object, spoof: object) -> AsvErrorRates:
    """The ASV threshold at the ASV EER (target vs nontarget), as both packages set it, and the
    official ``obtain_asv_error_rates`` at it."""
    target = as_scores(target, "ASV target scores")
    nontarget = as_scores(nontarget, "ASV nontarget scores")
    spoof = as_scores(spoof, "ASV spoof scores")
    eer, threshold = compute_eer(target, nontarget)
    return AsvErrorRates(
        eer=eer, threshold=threshold,
        pfa=np.count_nonzero(nontarget >= threshold) / nontarget.size,
        pmiss=np.count_nonzero(target < threshold) / target.size,
        pmiss_spoof=np.count_nonzero(spoof < threshold) / spoof.size,
        pfa_spoof=np.count_nonzero(spoof >= threshold) / spoof.size,
    )


def _tdcf_weights(asv: AsvErrorRates, definition: str) -> tuple[float, float, float, float]:
    """``(C0, C1, C2, normaliser)``: t-DCF(k) = (C0 + C1 pmiss_cm(k) + C2 pfa_cm(k)) / normaliser.
    Each product in the official order, so the rounding is the official one."""
    cost = TDCF_COST_MODELS[definition]
    if definition == "2021":
        c0 = cost["Ptar"] * cost["Cmiss"] * asv.pmiss + cost["Pnon"] * cost["Cfa"] * asv.pfa
        c1 = cost["Ptar"] * cost["Cmiss"] - (cost["Ptar"] * cost["Cmiss"] * asv.pmiss
                                             + cost["Pnon"] * cost["Cfa"] * asv.pfa)
        c2 = cost["Pspoof"] * cost["Cfa_spoof"] * asv.pfa_spoof
        normaliser = c0 + min(c1, c2)
    else:
        c0 = 0.0
        c1 = cost["Ptar"] * (cost["Cmiss_cm"] - cost["Cmiss_asv"] * asv.pmiss) \
            - cost["Pnon"] * cost["Cfa_asv"] * asv.pfa
        c2 = cost["Cfa_cm"] * cost["Pspoof"] * (1 - asv.pmiss_spoof)
        normaliser = min(c1, c2)
    rates = (f"ASV pmiss {asv.pmiss:.6g}, pfa {asv.pfa:.6g}, pmiss_spoof {asv.pmiss_spoof:.6g}, "
             f"pfa_spoof {asv.pfa_spoof:.6g}")
    if min(c0, c1, c2) < 0:
        raise MetricError(f"{definition} t-DCF: negative weights (C0 {c0:.6g}, C1 {c1:.6g}, C2 {c2:.6g}) "
                          f"from {rates}; expected ASV scores where higher means target")
    if normaliser <= 0:
        raise MetricError(f"{definition} t-DCF: the cost without a CM is 0 ({rates}), so the normalised "
                          "t-DCF is undefined (the official code divides by zero)")
    return c0, c1, c2, normaliser


def min_tdcf(bonafide: object, spoof: object, asv: AsvErrorRates,
             definition: str = "2021") -> tuple[float, float]:
    """``(min normalised t-DCF, the CM threshold where it is first reached)``. ``"2021"``: the revised
    t-DCF (``compute_tDCF``: the ASV's pfa_spoof, a C0 term, normalised by C0 + min(C1, C2));
    ``"2019"``: the original (``compute_tDCF_legacy``: pmiss_spoof, normalised by min(C1, C2))."""
    if definition not in TDCF_COST_MODELS:
        raise MetricError(f"t-DCF definition must be one of {', '.join(TDCF_COST_MODELS)}, "
                          f"got {definition!r}")
    pmiss, pfa, thresholds = det_curve(bonafide, spoof)
    distinct = 1 + int(np.count_nonzero(np.diff(thresholds[1:])))  # thresholds[1:] is sorted
    if distinct < MIN_DISTINCT_CM_SCORES:
        raise MetricError(f"{definition} t-DCF: the CM scores take {distinct} distinct value(s) in "
                          f"{thresholds.size - 1} trials; expected soft scores with at least "
                          f"{MIN_DISTINCT_CM_SCORES} (the official code refuses decisions)")
    c0, c1, c2, normaliser = _tdcf_weights(asv, definition)
    curve = (c0 + c1 * pmiss + c2 * pfa) if definition == "2021" else (c1 * pmiss + c2 * pfa)
    normalised = curve / normaliser
    at = int(np.argmin(normalised))
    return float(normalised[at]), float(thresholds[at])


def per_attack_eer(scores: object, is_bonafide: object,
                   attacks: Sequence[str]) -> dict[str, tuple[float, int]]:
    """For each attack label of the spoofs (sorted): ``(EER of all bona fide vs that attack's spoofs,
    that attack's spoof count)``. ``attacks`` holds one label per score; bona fide ones are ignored.

    One sort for all attacks: the official stable order of bona fide + one attack's spoofs is the
    order of all bona fide + all spoofs with the other attacks' spoofs left out."""
    scores = as_scores(scores, "scores")
    labels = as_labels(is_bonafide, scores.size)
    names = np.asarray(attacks, dtype=str)
    if names.shape != scores.shape:
        raise MetricError(f"attacks: expected {scores.size} labels (one per score), got shape {names.shape}")
    spoof = ~labels
    if not spoof.any():
        return {}
    bona = as_scores(scores[labels], "bona fide scores")
    attack_names, which = np.unique(names[spoof], return_inverse=True)
    both = np.concatenate((bona, scores[spoof]))
    order = np.argsort(both, kind="mergesort")  # stable: ties keep bona fide before spoof
    ranked, ranked_attack = both[order], np.concatenate((np.full(bona.size, -1), which))[order]
    ranked_is_bona = ranked_attack < 0
    result = {}
    for k, name in enumerate(attack_names.tolist()):
        members = ranked_is_bona | (ranked_attack == k)
        result[name] = (_eer(*_ranked_det_curve(ranked[members], ranked_is_bona[members]))[0],
                        int(np.count_nonzero(which == k)))
    return result


def det_points(bonafide: object, spoof: object, max_points: int = 400) -> tuple[list[float], list[float]]:
    """``(pmiss, pfa)``: the DET curve thinned for plotting, in the curve's order (pmiss rising, pfa
    falling), never more than ``max_points``. Kept: both end points, the EER point and its
    neighbours, and every corner of the staircase; when the corners alone are too many, points
    evenly spaced along the curve on log-odds axes (which, like the probit axes DET plots use,
    spread out the low error rates)."""
    if max_points < MIN_DET_POINTS:
        raise MetricError(f"det_points: max_points must be at least {MIN_DET_POINTS}, got {max_points}")
    bona, spoof = as_scores(bonafide, "bona fide scores"), as_scores(spoof, "spoof scores")
    pmiss, pfa, _ = _det_curve(bona, spoof)
    eer_at = _eer_point(pmiss, pfa)
    # Each step moves one coordinate: a point inside a run of steps in one direction lies on the
    # straight segment between its neighbours on any axes that warp each coordinate alone.
    moves_pmiss = np.diff(pmiss) > 0
    keep = np.ones(pmiss.size, dtype=bool)
    keep[1:-1] = moves_pmiss[1:] != moves_pmiss[:-1]
    keep[[max(eer_at - 1, 0), eer_at, min(eer_at + 1, pmiss.size - 1)]] = True
    kept = np.flatnonzero(keep)
    if kept.size > max_points:
        kept = _spread(kept, pmiss, pfa, eer_at, max_points, bona.size, spoof.size)
    return pmiss[kept].tolist(), pfa[kept].tolist()


def _spread(kept: np.ndarray, pmiss: np.ndarray, pfa: np.ndarray, eer_at: int, max_points: int,
            n_bona: int, n_spoof: int) -> np.ndarray:
    """At most ``max_points`` of ``kept``: the must-keep ones and the rest evenly spaced by arc length
    on log-odds axes (a rate of 0 or 1 drawn half a trial inside)."""
    def log_odds(p: np.ndarray, n: int) -> np.ndarray:
        clipped = np.clip(p, 0.5 / n, 1 - 0.5 / n)
        return np.log(clipped / (1 - clipped))

    x, y = log_odds(pfa[kept], n_spoof), log_odds(pmiss[kept], n_bona)
    along = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))))
    eer_pos = int(np.searchsorted(kept, eer_at))
    must = {0, kept.size - 1, eer_pos, max(eer_pos - 1, 0), min(eer_pos + 1, kept.size - 1)}
    budget = max_points - len(must)
    spaced = np.searchsorted(along, np.linspace(0.0, along[-1], budget)).clip(0, kept.size - 1)
    return kept[np.union1d(spaced, sorted(must))]


def score_histogram(bonafide: object, spoof: object, bins: int = 30) -> dict[str, list]:
    """``{"edges": [bins + 1 floats], "bonafide": [bins counts], "spoof": [bins counts]}`` on edges
    shared by both classes (numpy's equal-width edges over all scores)."""
    if bins < 1:
        raise MetricError(f"score_histogram: bins must be at least 1, got {bins}")
    bona, spoof = as_scores(bonafide, "bona fide scores"), as_scores(spoof, "spoof scores")
    edges = np.histogram_bin_edges(np.concatenate((bona, spoof)), bins=bins)
    return {"edges": edges.tolist(), "bonafide": np.histogram(bona, edges)[0].tolist(),
            "spoof": np.histogram(spoof, edges)[0].tolist()}

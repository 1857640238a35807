"""harness.core.metrics: the official ASVspoof definitions, pinned by an independent brute-force route.

The reference below follows the definitions with Python loops: operating point k rejects the k
lowest scores of a stable sort of bona fide then spoof scores; each rate is a count over the trials.
The library's numbers must EQUAL it (not merely be close): the official code rounds the same
counts the same way, and the min t-DCF's threshold is the first minimum, which a different
rounding could move where two costs tie. Score sets are drawn from small integer sets, so ties
are the rule, not the exception.
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from harness.core.metrics import (
    TDCF_COST_MODELS,
    TDCF_NAMES,
    AsvErrorRates,
    MetricError,
    asv_error_rates,
    compute_eer,
    det_curve,
    det_points,
    min_tdcf,
    per_attack_eer,
    score_histogram,
)
from tests.helpers import refusal

# The published cost models, written out again here: the library's table must equal them.
PUBLISHED_COST_MODELS = {
    "2021": {"Pspoof": 0.05, "Ptar": (1 - 0.05) * 0.99, "Pnon": (1 - 0.05) * 0.01,
             "Cmiss": 1, "Cfa": 10, "Cfa_spoof": 10},
    "2019": {"Pspoof": 0.05, "Ptar": (1 - 0.05) * 0.99, "Pnon": (1 - 0.05) * 0.01,
             "Cmiss_asv": 1, "Cfa_asv": 10, "Cmiss_cm": 1, "Cfa_cm": 10},
}

# Cheap examples (pure numpy, n <= 28): more than the profile's default, and the "thorough" profile's
# count where it asks for more.
fast = settings(max_examples=max(40, settings().max_examples))

# Few distinct values: most score sets have ties within and across the classes.
tied_scores = st.lists(st.integers(-4, 4).map(float), min_size=1, max_size=14)
asv_scores = st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=10)


# --- the independent reference ----------------------------------------------------------------


def reference_det(bona: list[float], spoof: list[float]) -> list[tuple[float, float, float]]:
    """``[(pmiss, pfa, threshold)]`` for k = 0..n by counting: reject the first k of the stable order."""
    trials = [(s, True) for s in bona] + [(s, False) for s in spoof]
    ordered = sorted(trials, key=lambda trial: trial[0])  # Python's sort is stable: bona fide first on ties
    points = []
    for k in range(len(ordered) + 1):
        bona_rejected = sum(1 for _, is_bona in ordered[:k] if is_bona)
        spoof_accepted = sum(1 for _, is_bona in ordered[k:] if not is_bona)
        threshold = ordered[k - 1][0] if k else ordered[0][0] - 0.001
        points.append((bona_rejected / len(bona), spoof_accepted / len(spoof), threshold))
    return points


def reference_eer(bona: list[float], spoof: list[float]) -> tuple[float, float]:
    points = reference_det(bona, spoof)
    gaps = [abs(pmiss - pfa) for pmiss, pfa, _ in points]
    pmiss, pfa, threshold = points[gaps.index(min(gaps))]  # the first smallest gap
    return (pmiss + pfa) / 2, threshold


def reference_asv_rates(target: list[float], nontarget: list[float], spoof: list[float]) -> AsvErrorRates:
    eer, t = reference_eer(target, nontarget)  # an ASV score >= t accepts
    return AsvErrorRates(eer=eer, threshold=t,
                         pfa=sum(1 for s in nontarget if s >= t) / len(nontarget),
                         pmiss=sum(1 for s in target if s < t) / len(target),
                         pmiss_spoof=sum(1 for s in spoof if s < t) / len(spoof),
                         pfa_spoof=sum(1 for s in spoof if s >= t) / len(spoof))


def reference_weights(asv: AsvErrorRates, definition: str) -> tuple[float, float, float, float]:
    """(C0, C1, C2, normaliser) from the ASVspoof 2019 evaluation plan / the 2021 package, each product
    in the official order."""
    c = PUBLISHED_COST_MODELS[definition]
    if definition == "2021":
        asv_cost = c["Ptar"] * c["Cmiss"] * asv.pmiss + c["Pnon"] * c["Cfa"] * asv.pfa
        c1 = c["Ptar"] * c["Cmiss"] - asv_cost
        c2 = c["Pspoof"] * c["Cfa_spoof"] * asv.pfa_spoof
        return asv_cost, c1, c2, asv_cost + min(c1, c2)
    c1 = c["Ptar"] * (c["Cmiss_cm"] - c["Cmiss_asv"] * asv.pmiss) - c["Pnon"] * c["Cfa_asv"] * asv.pfa
    c2 = c["Cfa_cm"] * c["Pspoof"] * (1 - asv.pmiss_spoof)
    return 0.0, c1, c2, min(c1, c2)


def reference_min_tdcf(bona: list[float], spoof: list[float], asv: AsvErrorRates,
                       definition: str) -> tuple[float, float] | None:
    """The normalised t-DCF at every operating point, its first minimum; None where undefined."""
    c0, c1, c2, normaliser = reference_weights(asv, definition)
    if min(c0, c1, c2) < 0 or normaliser <= 0:
        return None
    if definition == "2021":
        costs = [(c0 + c1 * pmiss + c2 * pfa) / normaliser for pmiss, pfa, _ in reference_det(bona, spoof)]
    else:
        costs = [(c1 * pmiss + c2 * pfa) / normaliser for pmiss, pfa, _ in reference_det(bona, spoof)]
    at = costs.index(min(costs))
    return costs[at], reference_det(bona, spoof)[at][2]


# --- official parity ----------------------------------------------------------------------------


@fast
@given(bona=tied_scores, spoof=tied_scores)
def test_det_curve_and_eer_equal_the_brute_force_sweep(bona: list[float], spoof: list[float]) -> None:
    pmiss, pfa, thresholds = det_curve(bona, spoof)
    curve = list(zip(pmiss.tolist(), pfa.tolist(), thresholds.tolist(), strict=True))
    assert curve == reference_det(bona, spoof)
    eer, threshold = compute_eer(bona, spoof)
    assert (eer, threshold) == reference_eer(bona, spoof)
    assert 0.0 <= eer <= 1.0


@fast
@given(target=asv_scores, nontarget=asv_scores, spoof=asv_scores)
def test_asv_error_rates_equal_the_brute_force_count(target, nontarget, spoof) -> None:
    assert asv_error_rates(target, nontarget, spoof) == reference_asv_rates(target, nontarget, spoof)


@fast
@given(bona=tied_scores, spoof=tied_scores, target=asv_scores, nontarget=asv_scores, asv_spoof=asv_scores,
       definition=st.sampled_from(sorted(TDCF_COST_MODELS)))
def test_min_tdcf_equals_the_cost_at_every_threshold(bona, spoof, target, nontarget, asv_spoof,
                                                     definition: str) -> None:
    assume(len(set(bona + spoof)) >= 3)
    target = [t + 2 for t in target]  # an ASV that mostly works, so that most draws are defined
    rates = asv_error_rates(target, nontarget, asv_spoof)
    expected = reference_min_tdcf(bona, spoof, rates, definition)
    if expected is None:  # negative weights or a zero normaliser: refused, as the official code would
        with pytest.raises(MetricError):
            min_tdcf(bona, spoof, rates, definition)
        return
    value, threshold = min_tdcf(bona, spoof, rates, definition)
    assert (value, threshold) == expected
    # Both end points cost exactly the normaliser (all accepted: C0 + C2; all rejected: C0 + C1),
    # so the minimum of the normalised curve is at most 1, in both definitions.
    assert 0.0 <= value <= 1.0


def test_the_cost_models_are_the_published_ones() -> None:
    assert {k: dict(v) for k, v in TDCF_COST_MODELS.items()} == PUBLISHED_COST_MODELS
    assert set(TDCF_NAMES) == set(TDCF_COST_MODELS)


def test_eer_worked_by_hand() -> None:
    # Sorted: 0.1s 0.2s 0.3b 0.4s 0.8b 0.85s 0.9b (3 bona fide, 4 spoof). Rejecting the k lowest:
    # k=3 (pmiss 1/3, pfa 2/4, gap 1/6), k=4 (1/3, 1/4, gap 1/12: the smallest), k=5 (2/3, 1/4).
    # EER = (1/3 + 1/4) / 2 = 7/24 at the 4th lowest score, 0.4.
    assert compute_eer([0.9, 0.8, 0.3], [0.1, 0.4, 0.2, 0.85]) == ((1 / 3 + 1 / 4) / 2, 0.4)
    # Separable: at k = 2 both rates are 0.
    assert compute_eer([5.0, 6.0], [1.0, 2.0]) == (0.0, 2.0)
    # Reversed: k=2 rejects both bona fide and accepts both spoofs, (pmiss 1, pfa 1), gap 0: EER 1.
    assert compute_eer([1.0, 2.0], [5.0, 6.0]) == (1.0, 2.0)


def test_ties_reject_the_bona_fide_first() -> None:
    # bona fide [1, 2, 2], spoof [0, 2, 3]: the stable order is 0s 1b 2b 2b 2s 3s. At k=3 (both bona
    # fide 2s rejected, the spoof 2 not yet) pmiss = pfa = 2/3: EER 2/3 at threshold 2. Had the spoof
    # come first among the 2s, k=3 would give pmiss = pfa = 1/3: the tie convention moves the EER.
    assert compute_eer([1.0, 2.0, 2.0], [0.0, 2.0, 3.0]) == (2 / 3, 2.0)
    # All scores equal: pmiss rises to 1 over the bona fide, then pfa falls to 0; the gap is smallest
    # at k = nb = 2 (pmiss 1, pfa 1): EER 1.0, nothing separates the classes and the convention
    # counts them all wrong at once.
    assert compute_eer([0.0, 0.0], [0.0, 0.0, 0.0]) == (1.0, 0.0)
    # The first threshold sits 0.001 below the lowest score.
    assert det_curve([0.0], [1.0])[2][0] == -0.001


def test_min_tdcf_worked_by_hand() -> None:
    # ASV: targets [4, 5, 6, 7], nontargets [1, 2, 3, 4.5], sorted 1n 2n 3n 4t 4.5n 5t 6t 7t: k=3 gives
    # (pmiss 0, pfa 1/4), k=4 gives (1/4, 1/4), gap 0: ASV EER 1/4 at threshold 4. At it (an ASV
    # score >= 4 accepts): pfa 1/4 (the 4.5), pmiss 0; spoofs [3.5, 5.5]: pmiss_spoof = pfa_spoof = 1/2.
    rates = asv_error_rates([4.0, 5.0, 6.0, 7.0], [1.0, 2.0, 3.0, 4.5], [3.5, 5.5])
    assert rates == AsvErrorRates(eer=0.25, threshold=4.0, pfa=0.25, pmiss=0.0, pmiss_spoof=0.5,
                                  pfa_spoof=0.5)
    bona, spoof = [0.9, 0.8, 0.3], [0.1, 0.4, 0.2, 0.85]
    # 2021: C0 = 0.0095 * 10 * 1/4 = 0.02375, C1 = 0.9405 - 0.02375 = 0.91675, C2 = 0.05 * 10 * 1/2
    # = 0.25, normaliser C0 + C2 = 0.27375. The DET points (pmiss, pfa) from the EER example: k=2
    # (0, 2/4) costs (0.02375 + 0.125) / 0.27375 = 119/219 = 0.5434, the least (k=1: 0.7717,
    # k=3: 1.66, ...), at threshold 0.2. The formula with the rates worked out above:
    c = PUBLISHED_COST_MODELS["2021"]
    c0 = c["Ptar"] * c["Cmiss"] * 0.0 + c["Pnon"] * c["Cfa"] * 0.25
    c2 = c["Pspoof"] * c["Cfa_spoof"] * 0.5
    assert min_tdcf(bona, spoof, rates, "2021") == ((c0 + c2 * 0.5) / (c0 + c2), 0.2)
    # 2019: C1 = 0.9405 * (1 - 0) - 0.0095 * 10 * 1/4 = 0.91675, C2 = 10 * 0.05 * (1 - 1/2) = 0.25;
    # normalised by C2: pfa + 3.667 pmiss; the least is again k=2: 2/4 = 0.5 (exactly), at 0.2.
    assert min_tdcf(bona, spoof, rates, "2019") == (0.5, 0.2)


# --- properties -----------------------------------------------------------------------------------

INCREASING = {
    "affine": lambda x: 3.5 * x - 7.0,
    "exp": np.exp,
    "rank": lambda x: np.unique(x, return_inverse=True)[1].astype(float),
}


@fast
@given(bona=tied_scores, spoof=tied_scores, transform=st.sampled_from(sorted(INCREASING)),
       scale=st.floats(0.01, 100.0), shift=st.floats(-100.0, 100.0))
def test_eer_and_min_tdcf_depend_only_on_the_order_of_the_scores(bona, spoof, transform, scale,
                                                                  shift) -> None:
    both = np.array(bona + spoof)
    # Integer scores of |x| <= 4: every transform below keeps equal scores equal and distinct ones
    # distinct and in order, float rounding included.
    moved = scale * INCREASING[transform](both) + shift
    new_bona, new_spoof = moved[:len(bona)], moved[len(bona):]
    assert compute_eer(new_bona, new_spoof)[0] == compute_eer(bona, spoof)[0]
    if len(set(bona + spoof)) >= 3:
        rates = AsvErrorRates(eer=0.02, threshold=0.0, pfa=0.02, pmiss=0.02, pmiss_spoof=0.4, pfa_spoof=0.6)
        for definition in TDCF_COST_MODELS:
            assert min_tdcf(new_bona, new_spoof, rates, definition)[0] == min_tdcf(bona, spoof, rates,
                                                                                 definition)[0]


@fast
@given(bona=tied_scores, spoof=tied_scores)
def test_swapping_orientation_and_classes_mirrors_the_det_curve(bona, spoof) -> None:
    # Negating every score and swapping the classes reverses the DET curve point for point, ties
    # included (a tie block ordered bona-then-spoof, reversed, is again bona-then-spoof in the new
    # classes), with pmiss and pfa exchanged. The EER takes the FIRST smallest gap, so the swapped
    # EER is the original curve's mean at its LAST smallest gap: equal whenever the smallest gaps
    # agree on the mean (e.g. a unique one), not always (see the example below).
    pmiss, pfa, _ = det_curve(bona, spoof)
    swapped_pmiss, swapped_pfa, _ = det_curve([-s for s in spoof], [-b for b in bona])
    assert swapped_pmiss.tolist() == pfa[::-1].tolist()
    assert swapped_pfa.tolist() == pmiss[::-1].tolist()
    gaps = np.abs(pmiss - pfa)
    last = int(np.flatnonzero(gaps == gaps.min())[-1])
    assert compute_eer([-s for s in spoof], [-b for b in bona])[0] == (pmiss[last] + pfa[last]) / 2


def test_the_official_eer_is_not_symmetric_where_two_gaps_tie() -> None:
    # bona fide [2], spoof [1, 3]: order 1s 2b 3s; k=1 gives (0, 1/2), k=2 gives (1, 1/2): both gaps
    # 1/2. The first is taken: EER 1/4. Swapped, the same two points come in the other order: 3/4.
    assert compute_eer([2.0], [1.0, 3.0])[0] == 0.25
    assert compute_eer([-1.0, -3.0], [-2.0])[0] == 0.75


@fast
@given(spoof=tied_scores, margins=st.lists(st.integers(1, 5), min_size=1, max_size=14))
def test_separable_scores_have_eer_zero_at_a_threshold_that_decides_them_all(spoof, margins) -> None:
    bona = [max(spoof) + m for m in margins]
    eer, threshold = compute_eer(bona, spoof)
    assert eer == 0.0
    assert all(b > threshold for b in bona) and not any(s > threshold for s in spoof)


@fast
@given(bona=tied_scores, spoof=tied_scores, attack=st.sampled_from(["A07", "-", "LA_A19"]))
def test_one_attack_is_the_pooled_eer(bona, spoof, attack) -> None:
    scores, labels = bona + spoof, [True] * len(bona) + [False] * len(spoof)
    bona_labels = ["-"] * len(bona)  # the bona fide's attack column is ignored
    assert per_attack_eer(scores, labels, bona_labels + [attack] * len(spoof)) == {
        attack: (compute_eer(bona, spoof)[0], len(spoof))}


@fast
@given(bona=tied_scores, spoof=tied_scores, data=st.data())
def test_per_attack_eer_is_all_bona_fide_vs_each_attack(bona, spoof, data) -> None:
    attacks = data.draw(st.lists(st.sampled_from(["A10", "A02", "A13"]), min_size=len(spoof),
                                 max_size=len(spoof)))
    labels = [True] * len(bona) + [False] * len(spoof)
    got = per_attack_eer(bona + spoof, labels, ["bonafide"] * len(bona) + attacks)
    assert list(got) == sorted(set(attacks))
    for name, (eer, n) in got.items():
        members = [s for s, a in zip(spoof, attacks, strict=True) if a == name]
        assert (eer, n) == (reference_eer(bona, members)[0], len(members))


def test_per_attack_eer_with_no_spoof_is_empty() -> None:
    assert per_attack_eer([0.1, 0.2], [True, True], ["-", "-"]) == {}


# --- DET points and histograms ----------------------------------------------------------------------


@fast
@given(bona=tied_scores, spoof=tied_scores)
def test_det_points_keep_the_staircase_exactly_when_it_is_small(bona, spoof) -> None:
    pmiss, pfa, _ = det_curve(bona, spoof)
    kept = list(zip(*det_points(bona, spoof), strict=True))
    # Every step of the curve moves one coordinate, so its points are distinct: find each kept one.
    index = {point: i for i, point in enumerate(zip(pmiss.tolist(), pfa.tolist(), strict=True))}
    positions = [index[point] for point in kept]
    assert positions == sorted(set(positions)), "kept points are the curve's, in its order"
    assert positions[0] == 0 and positions[-1] == pmiss.size - 1
    assert int(np.argmin(np.abs(pmiss - pfa))) in positions
    # Between two kept points the curve runs along one axis: the dropped points lie on the segment
    # joining them, so the plotted staircase is the curve itself (on probit axes too).
    for (m0, f0), (m1, f1) in pairwise(kept):
        assert m0 == m1 or f0 == f1


@pytest.mark.parametrize("max_points", [5, 40, 400])
def test_det_points_are_thinned_to_at_most_max_points_keeping_the_eer(max_points: int) -> None:
    rng = np.random.default_rng(0)
    bona, spoof = rng.normal(2.0, 1.0, 3_000), rng.normal(0.0, 1.0, 20_000)
    pmiss, pfa, _ = det_curve(bona, spoof)
    kept_pmiss, kept_pfa = det_points(bona, spoof, max_points=max_points)
    assert len(kept_pmiss) == len(kept_pfa) <= max_points
    assert (kept_pmiss[0], kept_pfa[0]) == (0.0, 1.0) and (kept_pmiss[-1], kept_pfa[-1]) == (1.0, 0.0)
    assert np.all(np.diff(kept_pmiss) >= 0) and np.all(np.diff(kept_pfa) <= 0)
    at = int(np.argmin(np.abs(pmiss - pfa)))
    assert (pmiss[at], pfa[at]) in set(zip(kept_pmiss, kept_pfa, strict=True))
    if max_points == 400:  # spread along the curve: the low-pfa tail keeps points too
        assert sum(1 for f in kept_pfa if 0 < f < 0.01) >= 20


def test_score_histogram_shares_edges_and_counts_every_score() -> None:
    hist = score_histogram([0.0, 1.0, 1.0, 2.0], [-1.0, 0.5], bins=6)
    assert hist["edges"] == [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]
    assert hist["bonafide"] == [0, 0, 1, 0, 2, 1] and hist["spoof"] == [1, 0, 0, 1, 0, 0]
    assert sum(score_histogram([3.0] * 4, [3.0], bins=3)["bonafide"]) == 4  # one value: numpy's +-0.5 range


# --- errors: one line, exit code 2, naming what is wrong -------------------------------------------


@pytest.mark.parametrize(("bona", "spoof", "words"), [
    ([], [0.1], ["bona fide", "empty"]),
    ([0.1], [], ["spoof", "empty"]),
    ([0.1, math.nan], [0.2], ["bona fide", "not finite", "index 1", "nan"]),
    ([0.1], [0.2, 0.3, math.inf], ["spoof", "not finite", "index 2", "inf"]),
    ([[0.1, 0.2]], [0.3], ["bona fide", "1-D", "(1, 2)"]),
    (["x"], [0.3], ["bona fide", "numbers"]),
])
def test_bad_scores_are_refused_naming_the_class(bona, spoof, words) -> None:
    refusal(lambda: compute_eer(bona, spoof), *words, error=MetricError)


GOOD_ASV = AsvErrorRates(eer=0.02, threshold=0.0, pfa=0.02, pmiss=0.02, pmiss_spoof=0.4, pfa_spoof=0.6)


@pytest.mark.parametrize("definition", sorted(TDCF_COST_MODELS))
def test_min_tdcf_refuses_hard_decisions(definition: str) -> None:
    refusal(lambda: min_tdcf([1.0, 1.0, 1.0], [0.0, 0.0], GOOD_ASV, definition), definition, "2 distinct",
            "at least 3", error=MetricError)
    # Three distinct values are scores: accepted.
    bona, spoof = [1.0, 0.5], [0.0, 0.0]
    expected = reference_min_tdcf(bona, spoof, GOOD_ASV, definition)
    assert min_tdcf(bona, spoof, GOOD_ASV, definition) == expected


@pytest.mark.parametrize(("definition", "asv", "words"), [
    # An ASV that accepts every nontarget and misses every target: C1 < 0 in both definitions.
    ("2021", AsvErrorRates(eer=1.0, threshold=0.0, pfa=1.0, pmiss=1.0, pmiss_spoof=0.5, pfa_spoof=0.5),
     ["negative weights", "higher means target"]),
    ("2019", AsvErrorRates(eer=1.0, threshold=0.0, pfa=1.0, pmiss=1.0, pmiss_spoof=0.5, pfa_spoof=0.5),
     ["negative weights"]),
    # A perfect ASV that accepts no spoof: nothing is left for a CM to save (C0 = C2 = 0).
    ("2021", AsvErrorRates(eer=0.0, threshold=0.0, pfa=0.0, pmiss=0.0, pmiss_spoof=1.0, pfa_spoof=0.0),
     ["cost without a CM is 0"]),
    ("2019", AsvErrorRates(eer=0.0, threshold=0.0, pfa=0.0, pmiss=0.0, pmiss_spoof=1.0, pfa_spoof=0.0),
     ["cost without a CM is 0"]),
])
def test_min_tdcf_refuses_undefined_weights(definition: str, asv: AsvErrorRates, words: list[str]) -> None:
    refusal(lambda: min_tdcf([1.0, 2.0], [0.0, 0.5], asv, definition), definition, *words, error=MetricError)


@pytest.mark.parametrize(("call", "words"), [
    (lambda: min_tdcf([1.0, 2.0], [0.0], GOOD_ASV, "2020"), ["2021", "2019", "'2020'"]),
    (lambda: asv_error_rates([1.0], [0.0], []), ["ASV spoof scores", "empty"]),
    (lambda: per_attack_eer([0.1, 0.2], [True], ["-", "A01"]), ["is_bonafide", "2 labels"]),
    (lambda: per_attack_eer([0.1, 0.2], ["bonafide", "spoof"], ["-", "A01"]), ["is_bonafide", "booleans"]),
    (lambda: per_attack_eer([0.1, 0.2], [True, False], ["A01"]), ["attacks", "2 labels"]),
    (lambda: per_attack_eer([0.1, 0.2], [False, False], ["A01", "A01"]), ["bona fide", "empty"]),
    (lambda: det_points([0.1], [0.2], max_points=4), ["max_points", "at least 5"]),
    (lambda: score_histogram([0.1], [0.2], bins=0), ["bins"]),
])
def test_other_bad_input_is_one_line(call, words) -> None:
    refusal(call, *words, error=MetricError)

"""harness.core.decisions: decisions at a threshold (score > t is bona fide) and the flips between systems."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.core.decisions import Flips, clear_threshold, decide, decision_flips
from harness.core.metrics import MetricError, compute_eer
from tests.helpers import refusal

fast = settings(max_examples=max(40, settings().max_examples))

JSON_KEYS = {"a", "b", "threshold", "flips", "bonafide_to_spoof", "spoof_to_bonafide", "max_abs_score_diff",
             "files"}


def test_a_score_equal_to_the_threshold_is_spoof() -> None:
    just_above, just_below = math.nextafter(0.5, 1.0), math.nextafter(0.5, 0.0)
    assert decide([0.5, just_above, just_below], 0.5).tolist() == [False, True, False]
    assert decide([], 0.5).tolist() == []


def test_the_eer_threshold_decides_a_separable_set_without_error() -> None:
    # The EER threshold is the highest spoof score here; "> t" accepts every bona fide and no spoof.
    bona, spoof = [3.0, 4.0], [1.0, 2.0]
    _, threshold = compute_eer(bona, spoof)
    assert decide(bona, threshold).all() and not decide(spoof, threshold).any()


def test_flips_are_counted_both_ways_and_listed_in_input_order() -> None:
    utterances = ["u1", "u2", "u3", "u4", "u5"]
    labels = [False, True, True, False, True]
    a = [0.1, 0.9, 0.5, 0.7, 0.8]  # decided (t = 0.5): spoof, bona, spoof (equal), bona, bona
    b = [0.6, 0.4, 0.5, 0.2, 0.8]  # decided:           bona, spoof, spoof, spoof, bona
    flips = decision_flips("legacy", a, "fixed", b, 0.5, utterances, labels)
    assert (flips.flips, flips.bonafide_to_spoof, flips.spoof_to_bonafide) == (3, 2, 1)
    assert flips.max_abs_score_diff == max(abs(x - y) for x, y in zip(a, b, strict=True))
    assert flips.files == [
        {"file": "u1", "label": "spoof", "a": 0.1, "b": 0.6},
        {"file": "u2", "label": "bonafide", "a": 0.9, "b": 0.4},
        {"file": "u4", "label": "spoof", "a": 0.7, "b": 0.2},
    ]
    document = flips.as_json()
    assert set(document) == JSON_KEYS
    assert document == {"a": "legacy", "b": "fixed", "threshold": 0.5, "flips": 3, "bonafide_to_spoof": 2,
                        "spoof_to_bonafide": 1, "max_abs_score_diff": flips.max_abs_score_diff,
                        "files": flips.files}
    swapped = decision_flips("fixed", b, "legacy", a, 0.5, utterances, labels)
    assert (swapped.bonafide_to_spoof, swapped.spoof_to_bonafide) == (1, 2)


def test_a_system_against_itself_flips_nothing() -> None:
    scores = np.array([0.2, 0.5, 0.9, -3.0])
    flips = decision_flips("x", scores, "x_again", scores.copy(), 0.5, ["a", "b", "c", "d"],
                           np.array([True, False, True, False]))
    assert (flips.flips, flips.bonafide_to_spoof, flips.spoof_to_bonafide, flips.files) == (0, 0, 0, [])
    assert flips.max_abs_score_diff == 0.0
    empty = decision_flips("x", [], "y", [], 0.0, [], [])
    assert (empty.flips, empty.max_abs_score_diff, empty.files) == (0, 0.0, [])


scores = st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=20)


@fast
@given(data=st.data(), a=scores, threshold=st.integers(-3, 3).map(float))
def test_flips_are_the_utterances_decided_differently(data, a: list[float], threshold: float) -> None:
    b = data.draw(st.lists(st.integers(-3, 3).map(float), min_size=len(a), max_size=len(a)))
    labels = data.draw(st.lists(st.booleans(), min_size=len(a), max_size=len(a)))
    utterances = [f"utt{i}" for i in range(len(a))]
    flips = decision_flips("a", a, "b", b, threshold, utterances, labels)
    differ = [i for i in range(len(a)) if (a[i] > threshold) != (b[i] > threshold)]
    assert [f["file"] for f in flips.files] == [utterances[i] for i in differ]
    assert flips.flips == len(differ) == flips.bonafide_to_spoof + flips.spoof_to_bonafide
    assert flips.bonafide_to_spoof == sum(1 for i in differ if a[i] > threshold)
    assert [f["label"] for f in flips.files] == [("bonafide" if labels[i] else "spoof") for i in differ]
    assert flips.max_abs_score_diff == max(abs(x - y) for x, y in zip(a, b, strict=True))
    back = decision_flips("b", b, "a", a, threshold, utterances, labels)
    assert back.bonafide_to_spoof == flips.spoof_to_bonafide
    assert back.spoof_to_bonafide == flips.bonafide_to_spoof


@pytest.mark.parametrize(("call", "words"), [
    (lambda: decision_flips("a", [0.1, 0.2], "b", [0.1], 0.0, ["u1", "u2"], [True, False]),
     ["a vs b", "b has 1", "2 utterances"]),
    (lambda: decision_flips("a", [0.1], "b", [math.nan], 0.0, ["u1"], [True]), ["b's scores", "not finite"]),
    (lambda: decision_flips("a", [0.1], "b", [0.2], 0.0, ["u1"], ["bonafide"]), ["is_bonafide", "booleans"]),
    (lambda: decision_flips("a", [0.1], "b", [0.2], math.nan, ["u1"], [True]), ["threshold", "finite"]),
    (lambda: decide([0.1], "high"), ["threshold", "'high'"]),
])
def test_bad_input_is_one_line(call, words: list[str]) -> None:
    refusal(call, *words, error=MetricError)


def test_flips_is_a_frozen_result() -> None:
    flips = decision_flips("a", [0.1], "b", [0.9], 0.5, ["u1"], [True])
    assert isinstance(flips, Flips)
    with pytest.raises(AttributeError):
        flips.flips = 0  # type: ignore[misc]


@given(a=scores, threshold=st.integers(-3, 3).map(float))
def test_the_clear_threshold_keeps_the_decisions_and_leaves_no_score_on_the_boundary(
        a: list[float], threshold: float) -> None:
    moved = clear_threshold(a, threshold)
    assert (decide(a, moved) == decide(a, threshold)).all()
    above, below = [s for s in a if s > threshold], [s for s in a if s < threshold]
    if above:
        assert moved == (threshold + min(above)) / 2 and moved not in a
    elif below:
        assert moved == threshold + (threshold - max(below)) / 2 and moved not in a
    else:
        assert moved == threshold

"""Structural weight matching: pair two differently built models' weights by what their forwards compute.

Each weight-owning module is paired by the input it receives in a real forward (``pairing``),
among modules of equal signature (``leaves``). A pairing is trusted once proven
(``match_weights``: with the weights copied, both models give bit-identical outputs in every
requested mode); ``compare_models`` uses the same pairing to measure two models and to say
where they part (``outputs``). Generic: imports only torch, the stdlib and ``harness.core``.
"""

from harness.core.matching.leaves import USER_FAMILY, Signature, type_family
from harness.core.matching.observe import ExampleInput
from harness.core.matching.outputs import MODES, compare_models, match_weights
from harness.core.matching.pairing import pair_weights
from harness.core.matching.results import Comparison, MatchError, ModeComparison, ModulePair, WeightMatch

__all__ = [
    "MODES",
    "USER_FAMILY",
    "Comparison",
    "ExampleInput",
    "MatchError",
    "ModeComparison",
    "ModulePair",
    "Signature",
    "WeightMatch",
    "compare_models",
    "match_weights",
    "pair_weights",
    "type_family",
]

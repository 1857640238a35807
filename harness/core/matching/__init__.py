"""Structural weight matching: pair two differently built models' weights by what their forwards compute."""

from harness.core.matching.pairing import (
    MODES,
    USER_FAMILY,
    Comparison,
    MatchError,
    ModeComparison,
    ModulePair,
    WeightMatch,
    compare_models,
    match_weights,
    pair_weights,
    type_family,
)

__all__ = [
    "MODES",
    "USER_FAMILY",
    "Comparison",
    "MatchError",
    "ModeComparison",
    "ModulePair",
    "WeightMatch",
    "compare_models",
    "match_weights",
    "pair_weights",
    "type_family",
]

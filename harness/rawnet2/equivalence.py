"""Where two RawNet2 variants compute the same function.

* ``compare_variants`` measures the differences the report prints and the tests bound, the
  weights shared through ``harness.rawnet2.transfer`` or ``harness.rawnet2.conversion``.
* ``compare_specs`` compares any two registered models by structure (``python -m harness compare``).

Every input made here comes from a variant's input contract (``VariantSpec.example``),
never a hard-coded shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.core.audits import parse_shape
from harness.core.errors import HarnessError
from harness.core.forms import max_differences
from harness.core.matching import Comparison, compare_models, pair_weights
from harness.core.tolerances import EXACT, Tolerance
from harness.rawnet2.conversion import convert_state_dict
from harness.rawnet2.layouts import canonical_modules, has_guide_layout
from harness.rawnet2.registry import MODES, VariantSpec, spec
from harness.rawnet2.transfer import MATCHING_BATCH as MATCHING_BATCH
from harness.rawnet2.transfer import copy_canonical, matching_input, seed_weights
from harness.rawnet2.transfer import copy_weights as copy_weights

# The ``X as X`` imports above: transfer's public names, still importable from this module.
# Examples in the batch compare_variants and `python -m harness compare` run by default.
COMPARE_BATCH = 3


# --- measured differences ------------------------------------------------------------------


@dataclass(frozen=True)
class VariantDifference:
    """Outputs of two variants holding the same weights, on the same input."""

    a: str
    b: str
    mode: str  # "train" or "eval"
    weights: str  # how b got a's weights: "copy_weights", a convert_state_dict policy, "structural match"
    input_shape: tuple[int, ...]
    max_abs: float
    max_rel: float

    @property
    def identical(self) -> bool:
        return self.max_abs == 0.0


def shared_weights(a: str, b: str, seed: int, example_input: torch.Tensor | None = None,
                   ) -> tuple[nn.Module, nn.Module, str]:
    """Variant ``a`` with seeded weights and variant ``b`` holding the same function's weights.

    Layouts that hold the same canonical modules share them through ``copy_weights``;
    two declared layouts that differ convert ``a``'s state_dict under the
    ``preserve-function`` policy; anything else is paired by structure
    (``harness.core.matching.pair_weights``, not proven: the comparison is the proof) on
    ``example_input`` (default: ``b``'s seeded example, ``matching_input``).
    """
    spec_a, spec_b = spec(a), spec(b)
    model_a, model_b = seed_weights(spec_a.build(), seed), spec_b.build()
    if has_guide_layout(model_a) and has_guide_layout(model_b) and \
            canonical_modules(model_a).keys() == canonical_modules(model_b).keys():
        copy_canonical(model_a, model_b)
        return model_a, model_b, "copy_weights"
    if spec_a.layout and spec_b.layout and has_guide_layout(model_b):
        state, _ = convert_state_dict(model_a.state_dict(), spec_b.layout, source=spec_a.layout,
                                      policy="preserve-function")
        model_b.load_state_dict(state)
        return model_a, model_b, "preserve-function"
    if example_input is None:
        example_input = matching_input(spec_b.input_contract(), seed)
    pairing = pair_weights(model_a, model_b, example_input)
    pairing.copy_into(model_a, model_b)
    return model_a, model_b, "structural match"


def compare_variants(a: str, b: str, mode: str, *, seed: int = 0, x: torch.Tensor | None = None,
                     ) -> VariantDifference:
    """Max difference between variants ``a`` and ``b`` holding the same weights, in ``mode``.

    The default input is ``COMPARE_BATCH`` seeded examples of ``a``'s input contract.
    """
    if mode not in MODES:
        raise HarnessError(f"mode must be 'train' or 'eval', not {mode!r}")
    if x is None:
        x = spec(a).example(COMPARE_BATCH, seed=seed)
    model_a, model_b, how = shared_weights(a, b, seed, x)
    with torch.no_grad():
        out_a = model_a.train(mode == "train")(x)
        out_b = model_b.train(mode == "train")(x)
    return VariantDifference(a, b, mode, how, tuple(x.shape), *max_differences(out_a, out_b))



# --- any two models ------------------------------------------------------------------------


def compare_specs(ref: VariantSpec, other: VariantSpec, x: torch.Tensor | None = None, *,
                  modes: tuple[str, ...] = MODES, tolerance: Tolerance = EXACT, seed: int = 0) -> Comparison:
    """``ref`` (seeded, or holding its spec's weights) vs ``other`` given ``ref``'s weights by structure,
    on ``x`` (default: ``COMPARE_BATCH`` seeded examples of ``ref``'s input contract).

    A pairing that fits but whose outputs differ is the result (``equivalent`` False, the
    first module pair where they part named); a factory that fails or models no pairing
    fits raise ``HarnessError`` (exit 2).
    """
    if x is None:
        x = ref.example(COMPARE_BATCH, seed=seed)
    ref_model = ref.build_or_refuse()
    if ref.weights is None:
        seed_weights(ref_model, seed)
    return compare_models(ref_model, other.build_or_refuse(), x, modes=modes, tolerance=tolerance)


def compare_input(ref: VariantSpec, input_shape: str | None, seed: int = 0) -> torch.Tensor:
    """``compare``'s seeded input: ``--input-shape`` when given (refused in one line where ``ref``
    declares an input contract it breaks), else ``COMPARE_BATCH`` examples of ``ref``'s contract."""
    if input_shape is None:
        return ref.example(COMPARE_BATCH, seed=seed)
    shape = parse_shape(input_shape)  # refuses a shape too large to allocate
    if ref.input_shape is not None and (problem := ref.input_contract().fits(shape)):
        raise HarnessError(f"--input-shape {input_shape} does not fit {ref.name}: {problem}")
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))

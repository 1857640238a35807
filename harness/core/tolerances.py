"""Every numeric tolerance the harness uses, in one table, each with its reason.

Tests, the CLI and the report import these names; nobody writes a literal
``rtol``/``atol`` elsewhere. ``assert_close(actual, expected, tol)`` is the one
comparison helper.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch

from harness.core.errors import HarnessError


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    reason: str


# Same modules, same weights, same ops in the same order on the same device:
# any difference at all is a wiring or state bug, so we demand bit equality.
EXACT = Tolerance(rtol=0.0, atol=0.0, reason="same ops in the same order on the same device")

# Running one sample alone vs inside a batch picks different conv kernels / blocking
# on CPU (oneDNN), so float32 sums are reordered; torch's float32 default fits.
BATCHING = Tolerance(
    rtol=1.3e-6, atol=1e-5, reason="float32 reduction order differs between batch sizes"
)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: Tolerance, msg: str = "") -> None:
    """``torch.testing.assert_close`` with a named tolerance; the reason goes in the message."""
    torch.testing.assert_close(
        actual,
        expected,
        rtol=tol.rtol,
        atol=tol.atol,
        msg=lambda m: f"{msg}\n{m}\n(tolerance: {tol.reason})" if msg else f"{m}\n(tolerance: {tol.reason})",
    )


# --- audio front end (decoding and resampling) ----------------------------------------------------
# One 16-bit utterance brought to 16 kHz by two resampling paths (sox to 44.1 or 16 kHz and
# back to 16-bit, then soxr; vs soxr alone). Samples in [-1, 1): each path requantizes to
# 16 bits once (1 LSB = 3.1e-5) and the filters' passband ripple differs slightly; measured
# on the fixtures: max abs diff 3.4e-5. Three LSBs of margin.
RESAMPLING_PATHS = Tolerance(
    rtol=0.0, atol=1e-4, reason="one 16-bit requantization and two resamplers' ripple"
)


# --- equivalence, deployment forms and golden outputs -----------------------------------------------
# All compare a detector's scores (sigmoid outputs in (0, 1)). torch.testing.assert_close's float32 default
# (rtol 1.3e-6, atol 1e-5) fits every float32 comparison: the largest float32 reordering
# measured on these outputs is 1.8e-7, 50x inside atol, while any wiring change moves
# scores by more than 1e-3.
_FLOAT32_DEFAULT = {"rtol": 1.3e-6, "atol": 1e-5}

# One table, keyed by harness.core.forms.DEPLOYMENT_FORMS: each form's output vs the float32
# eager CPU output of the same eval-mode model.
DEPLOYMENT_TOLERANCES = MappingProxyType({
    "folded": Tolerance(**_FLOAT32_DEFAULT, reason=(
        "folding precomputes the conv weight and bias scaled by weight/sqrt(var+eps) once in float32: "
        "the same function rounded in other places; torch's float32 default (measured max 1.5e-7)")),
    "compiled": Tolerance(**_FLOAT32_DEFAULT, reason=(
        "inductor fuses the folded model's ops and picks its own kernels, reordering float32 sums; "
        "torch's float32 default (measured max 8.9e-8)")),
    "float64": Tolerance(**_FLOAT32_DEFAULT, reason=(
        "the float64 run is the more exact one: the difference is the float32 eager run's own "
        "rounding; torch's float32 default (measured max 1.8e-7)")),
    "bfloat16_autocast": Tolerance(rtol=0.0, atol=1e-2, reason=(
        "autocast runs every convolution and linear layer with bfloat16 operands (8-bit mantissa) and "
        "the errors chain through them: torch's single-op bfloat16 default (rtol 1.6e-2, atol 1e-5) "
        "failed 1 of 600 random models and inputs (max rel 1.9e-2); scores within 0.01, twice the "
        "largest measured 4.8e-3")),
    "cuda": Tolerance(**_FLOAT32_DEFAULT, reason=(
        "the same float32 function on cuDNN/cuBLAS, which sum in another order than oneDNN; torch's "
        "float32 default, with TF32 switched off for the comparison (TF32 rounds operands to 10 "
        "mantissa bits: a precision choice, bounded like bfloat16, not parity); not yet measured on a GPU")),
    "onnxruntime": Tolerance(**_FLOAT32_DEFAULT, reason=(
        "the same float32 graph run by ONNX Runtime's own kernels (MLAS convolutions, fused "
        "Conv+BatchNorm), which sum in another order; torch's float32 default (measured max 2.4e-7 on "
        "seeded weights at 3 x 4000)")),
})

# Golden files are recorded on one machine and compared on others, whose CPUs and oneDNN
# builds pick other conv kernels and so reorder float32 sums; torch's float32 default.
GOLDEN = Tolerance(**_FLOAT32_DEFAULT, reason="float32 reordering across CPUs and torch builds")

# A functional reference forward (a model family's golden reference) re-implements the forward with
# the same functional ops, but mean() and adaptive_avg_pool1d may sum in different orders (bit-equal
# on this CPU).
REFERENCE_FORWARD = Tolerance(**_FLOAT32_DEFAULT, reason="same ops; pooling may sum in another order")


# --- the one closeness helper ---------------------------------------------------------------
# NaN is handled one way everywhere: NaN where the other side also has NaN agrees (a model
# that gives NaN twice is deterministic, and two forms that both give NaN agree); NaN against
# a number is a difference of +inf.


def close_elements(actual: torch.Tensor, expected: torch.Tensor, tol: Tolerance) -> torch.Tensor:
    """Elementwise ``|actual - expected| <= atol + rtol * |expected|``, NaN agreeing only with NaN;
    integer and bool tensors must be equal."""
    if not (actual.is_floating_point() or actual.is_complex()):
        return actual.cpu() == expected.cpu()
    return torch.isclose(actual, expected.to(actual), rtol=tol.rtol, atol=tol.atol, equal_nan=True)


def all_close(actual: torch.Tensor, expected: torch.Tensor, tol: Tolerance) -> bool:
    """Same shape and every element close (``close_elements``)."""
    return actual.shape == expected.shape and bool(close_elements(actual, expected, tol).all())


def abs_diff(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Elementwise ``|actual - expected|`` in float64 on the CPU: 0 where both are equal (equal
    infinities too) or both NaN, inf where only one is NaN."""
    kind = torch.complex128 if actual.is_complex() or expected.is_complex() else torch.float64
    a, e = actual.detach().cpu().to(kind), expected.detach().cpu().to(kind)
    agree = (a == e) | (a.isnan() & e.isnan())
    return (a - e).abs().masked_fill(agree, 0.0).nan_to_num(nan=float("inf"))


def max_abs_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest ``abs_diff``; 0.0 for empty tensors."""
    diff = abs_diff(actual, expected)
    return float(diff.max()) if diff.numel() else 0.0


def named_tolerances() -> dict[str, Tolerance]:
    """Every tolerance above by the name a user types (``compare --tolerance NAME``)."""
    named = {"EXACT": EXACT, "BATCHING": BATCHING, "GOLDEN": GOLDEN, "REFERENCE_FORWARD": REFERENCE_FORWARD,
             "RESAMPLING_PATHS": RESAMPLING_PATHS}
    named.update({f"DEPLOYMENT_TOLERANCES[{form}]": tol for form, tol in DEPLOYMENT_TOLERANCES.items()})
    return named


def tolerance_named(name: str) -> Tolerance:
    """The tolerance called ``name`` (``EXACT``, ``GOLDEN``, ``DEPLOYMENT_TOLERANCES[folded]``, ...)."""
    named = named_tolerances()
    key = name if name in named else f"DEPLOYMENT_TOLERANCES[{name}]"
    if key not in named:
        raise HarnessError(f"unknown tolerance {name!r}; known: {', '.join(named)}")
    return named[key]

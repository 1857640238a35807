"""Every numeric tolerance the harness uses, in one table, each with its reason.

Tests, the CLI and the report import these names; nobody writes a literal
``rtol``/``atol`` elsewhere. ``assert_close(actual, expected, tol)`` is the one
comparison helper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


# --- audio front end (harness.audio) ------------------------------------------------------
# One 16-bit utterance brought to 16 kHz by two resampling paths (sox to 44.1 or 16 kHz and
# back to 16-bit, then soxr; vs soxr alone). Samples in [-1, 1): each path requantizes to
# 16 bits once (1 LSB = 3.1e-5) and the filters' passband ripple differs slightly; measured
# on the fixtures: max abs diff 3.4e-5. Three LSBs of margin.
RESAMPLING_PATHS = Tolerance(
    rtol=0.0, atol=1e-4, reason="one 16-bit requantization and two resamplers' ripple"
)

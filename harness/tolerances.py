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

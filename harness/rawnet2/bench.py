"""What the benchmarks and the report time: the RawNet2 variants' timed forms.

The measuring itself (FLOPs, timing, the matmul peak, throughput) is generic and lives
in ``harness.core.bench``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.core.bench import place_for_inference
from harness.rawnet2.registry import build


@dataclass(frozen=True)
class TimedForm:
    """A model as the benchmarks and the report time it."""

    name: str
    subject: str  # the harness.rawnet2.registry.SUBJECTS entry it is built from
    optimized: bool = False  # passed through harness.rawnet2.equivalence.optimize_for_inference


TIMED_FORMS: tuple[TimedForm, ...] = (
    TimedForm("legacy_effective", "legacy_effective"),
    TimedForm("tuple_blocks", "tuple_blocks"),
    TimedForm("skip_modules", "skip_modules"),
    TimedForm("skip_modules_optimized", "skip_modules", optimized=True),
)


def build_timed(form: TimedForm, device: torch.device | str, *, compile: bool = True) -> nn.Module:
    """A fresh model of ``form`` in eval mode on ``device``, ready to time.

    ``compile=False`` gives the optimized form without ``torch.compile`` (BatchNorm
    folded, eager): compiling costs 5-15 s per input shape on 2 cores, too much for
    a smoke run or ``--quick``.
    """
    model = place_for_inference(build(form.subject), device)
    if form.optimized:
        from harness.core.forms import optimize_for_inference  # pulls in torch.compile: import on use

        model = optimize_for_inference(model, backend="inductor" if compile else None)
    return model



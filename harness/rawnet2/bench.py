"""What the benchmarks and the report time: the registered variants' timed forms.

``timed_forms()`` derives them from the registry (``harness.rawnet2.registry``) when
called, so a variant registered after import (a team's ``pyproject.toml`` table,
``harness.register``) is timed too. The measuring itself (FLOPs, timing, the matmul
peak, throughput) is generic and lives in ``harness.core.bench``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.core.bench import place_for_inference
from harness.core.errors import HarnessError
from harness.rawnet2.registry import SUBJECTS, build
from harness.rawnet2.score_request import INT8_FORM

# The deployment form (VariantSpec.forms) a spec must list to be timed optimized: the
# optimized form folds every BatchNorm, which a model whose eval() misses some cannot take.
OPTIMIZED_NEEDS_FORM = "folded"
OPTIMIZED_SUFFIX = "_optimized"
ONNXRUNTIME_FORM = "onnxruntime"
ONNXRUNTIME_SUFFIX = "_onnxruntime"
INT8_SUFFIX = "_onnxruntime_int8"
# The batch the ONNX form is exported with, at the variant's input contract (batch and time stay dynamic).
ONNX_EXPORT_BATCH = 2


@dataclass(frozen=True)
class TimedForm:
    """A model as the benchmarks and the report time it."""

    name: str
    subject: str  # the harness.rawnet2.registry.SUBJECTS entry it is built from
    optimized: bool = False  # passed through harness.core.forms.optimize_for_inference
    onnxruntime: bool = False  # exported to ONNX and run by ONNX Runtime (harness.core.onnx)
    int8: bool = False  # that export quantized to int8 (harness.rawnet2.deploy's onnxruntime-int8 form)

    @property
    def kind(self) -> str:
        if self.int8:
            return INT8_FORM
        return "optimized" if self.optimized else ONNXRUNTIME_FORM if self.onnxruntime else "eager"


def timed_forms(*, int8: bool = False) -> tuple[TimedForm, ...]:
    """Every runnable subject's eager form, each followed by its optimized form where its spec
    lists ``"folded"`` among its deployment forms and its ONNX Runtime form where it lists
    ``"onnxruntime"`` and onnxruntime is installed (with ``int8``, also that export quantized:
    seconds of quantizing each, so only where asked); in registry order, read at call time."""
    from harness.core.onnx import onnx_missing
    from harness.core.quantize import quantize_missing

    onnx = onnx_missing() is None
    int8 = int8 and quantize_missing() is None
    forms: list[TimedForm] = []
    for name, spec in SUBJECTS.items():
        if not spec.runs:
            continue
        forms.append(TimedForm(name, name))
        if OPTIMIZED_NEEDS_FORM in spec.forms:
            forms.append(TimedForm(f"{name}{OPTIMIZED_SUFFIX}", name, optimized=True))
        if onnx and ONNXRUNTIME_FORM in spec.forms:
            forms.append(TimedForm(f"{name}{ONNXRUNTIME_SUFFIX}", name, onnxruntime=True))
            if int8:
                forms.append(TimedForm(f"{name}{INT8_SUFFIX}", name, onnxruntime=True, int8=True))
    return tuple(forms)


def build_timed(form: TimedForm, device: torch.device | str, *, compile: bool = True) -> nn.Module:
    """A fresh model of ``form`` in eval mode on ``device``, ready to time.

    ``compile=False`` gives the optimized form without ``torch.compile`` (BatchNorm
    folded, eager): compiling costs 5-15 s per input shape on 2 cores, too much for
    a smoke run or ``--quick``. The ONNX Runtime form runs on the CPU only.
    """
    if form.int8:
        from harness.rawnet2.deploy import deployment_model

        if torch.device(device).type != "cpu":
            raise HarnessError(f"{form.name}: the int8 form runs on the CPU (ONNX Runtime's CPU kernels)")
        return deployment_model(build(form.subject), SUBJECTS[form.subject], INT8_FORM, "cpu")[0]
    if form.onnxruntime:
        from harness.core.onnx import OnnxRuntimeSession, export_onnx

        if torch.device(device).type != "cpu":
            raise HarnessError(f"{form.name}: the ONNX Runtime form runs on the CPU (this wheel has no GPU "
                               "provider)")
        example = SUBJECTS[form.subject].example(ONNX_EXPORT_BATCH)
        return OnnxRuntimeSession(export_onnx(build(form.subject), example, verify_inputs=()).onnx_bytes)
    model = place_for_inference(build(form.subject), device)
    if form.optimized:
        from harness.core.forms import optimize_for_inference  # pulls in torch.compile: import on use

        example = SUBJECTS[form.subject].example(ONNX_EXPORT_BATCH).to(device)
        model = optimize_for_inference(model, backend="inductor" if compile else None, example_input=example)
    return model


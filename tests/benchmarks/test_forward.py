"""Forward-pass benchmarks: every timed form side by side, per device, batch and length.

The forms come from the registry (``harness.rawnet2.bench.timed_forms``): every runnable
variant eager, plus its BatchNorm-folded optimized form where its spec lists ``folded``.

Eval mode under ``torch.inference_mode()``, CUDA synchronized inside the timed
function, one warm-up round before timing (it also absorbs ``torch.compile``'s
compiling). Grouped by configuration so the forms of one configuration are
compared in one table. ``extra_info`` carries samples/s, the real-time factor,
GFLOP/s from ``harness.flops`` and the fraction of a matmul peak measured on the
same device in the same session.

A plain ``pytest`` run executes the smallest configuration once, untimed, with the
optimized form folded but not compiled (see conftest.py); ``make bench`` times all.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from harness.core.bench import flops, inference_call, matmul_peak, throughput
from harness.rawnet2.bench import TimedForm, build_timed, timed_forms
from harness.rawnet2.inputs import NUM_SAMPLES, SAMPLE_RATE
from harness.rawnet2.registry import SUBJECTS, build

BATCHES = (1, 8)
LENGTHS = (16_000, NUM_SAMPLES)


@pytest.fixture(scope="session")
def matmul_peaks() -> dict[str, float]:
    """Device type -> matmul FLOP/s, measured once per session on first use."""
    return {}


def _peak(peaks: dict[str, float], device: torch.device) -> float:
    if device.type not in peaks:
        peaks[device.type] = matmul_peak(device)
    return peaks[device.type]


@pytest.mark.benchmark(warmup=True, warmup_iterations=1)
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("form", timed_forms(), ids=lambda form: form.name)
def test_forward(benchmark, matmul_peaks: dict[str, float], device: torch.device, form: TimedForm,
                 batch: int, length: int) -> None:
    if form.onnxruntime and device.type != "cpu":
        pytest.skip("the ONNX Runtime form runs on the CPU: the onnxruntime wheel has no GPU provider")
    timed = not benchmark.disabled
    model = build_timed(form, device, compile=timed)
    spec = SUBJECTS[form.subject]
    x = spec.input_contract().example(batch, max(length, spec.input_contract().min_length)).to(device)
    model_flops = flops(build(form.subject), x.shape)
    benchmark.group = f"forward {device.type} batch={batch} length={length}"
    benchmark.extra_info.update(variant=form.name, device=device.type, batch=batch, length=length,
                                flops=model_flops)

    out = benchmark(inference_call(model, x))

    # Known only after a call: torch.compile is lazy and may fall back to folded eager.
    benchmark.extra_info["form"] = model.info.form if form.optimized else form.kind

    assert out.shape[0] == batch and torch.isfinite(out).all()
    if spec.score_transform is not None:  # the output is what the declared transform reads
        assert spec.score_transform.output_problem(out.float().cpu()) is None
    if timed:
        rates = throughput(model_flops=model_flops, batch=batch, length=length, sample_rate=SAMPLE_RATE,
                           seconds=benchmark.stats.stats.median,
                           peak_flops_per_s=_peak(matmul_peaks, device))
        benchmark.extra_info.update(asdict(rates))

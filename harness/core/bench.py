"""Forward-pass cost: analytic FLOPs, a measured matmul peak, and timing.

``flops(model, input_shape)`` counts 2 FLOPs per multiply-accumulate of every convolution and
linear layer the forward calls, registered or not, from the shapes a ``meta``-device forward of
a copy gives them (nothing computed, the model untouched); element-wise work is not counted.
The same timed forms, inputs and throughput figures serve the report (``harness.report``) and
the pytest-benchmark suite (``tests/benchmarks``). Why and the measured figures:
docs/benchmarks.md.
"""

from __future__ import annotations

import copy
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.benchmark import Timer

from harness.core.errors import HarnessError
from harness.core.introspect import held_modules, held_tensors

# --------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class LayerFlops:
    """One call of one layer during the forward: where it is held and what it cost."""

    path: str
    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    flops: int


def layer_flops(module: nn.Module, output: torch.Tensor) -> int:
    """FLOPs of one call of ``module`` producing ``output``: 2 per multiply-accumulate.

    Convolutions: every output element sums ``in_channels / groups * prod(kernel)``
    products. Linear: every output element sums ``in_features`` products. Bias adds
    and every other module count 0.
    """
    if isinstance(module, nn.modules.conv._ConvNd):
        macs_per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return 2 * output.numel() * macs_per_output
    if isinstance(module, nn.Linear):
        return 2 * output.numel() * module.in_features
    return 0


def flop_breakdown(model: nn.Module, input_shape: Iterable[int]) -> list[LayerFlops]:
    """Every conv/linear call of one forward on ``input_shape``, in call order.

    Runs on a copy of the model on the ``meta`` device (shapes only, no arithmetic),
    so ``model`` keeps its device, mode and BatchNorm statistics.
    """
    shape = tuple(int(n) for n in input_shape)
    # Copy the structure only: every tensor held (registered or not) is replaced by
    # a meta tensor of the same shape through deepcopy's memo, so no data is copied.
    memo: dict[int, object] = {}
    for h in held_tensors(model):
        meta = torch.empty_like(h.obj, device="meta")
        is_param = isinstance(h.obj, nn.Parameter)
        memo[id(h.obj)] = nn.Parameter(meta, requires_grad=h.obj.requires_grad) if is_param else meta
    shadow = copy.deepcopy(model, memo)
    paths = {id(h.obj): h.path for h in held_modules(shadow)}
    calls: list[LayerFlops] = []

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        cost = layer_flops(module, output)
        if cost:
            calls.append(LayerFlops(paths.get(id(module), type(module).__name__), type(module).__name__,
                                    tuple(inputs[0].shape), tuple(output.shape), cost))

    # Hook every held module, not just the registered ones (blocks kept in a tuple).
    modules = [shadow, *(h.obj for h in held_modules(shadow))]
    handles = [m.register_forward_hook(record) for m in modules]
    try:
        with torch.no_grad():
            shadow(torch.empty(shape, device="meta"))
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HarnessError(
            f"cannot count FLOPs: the forward fails on input shape {shape}: {first_line}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
    return calls


def flops(model: nn.Module, input_shape: Iterable[int]) -> int:
    """Analytic FLOP count of one forward of ``model`` on an input of ``input_shape``."""
    return sum(call.flops for call in flop_breakdown(model, input_shape))


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Wall time of repeated calls after warm-up, in seconds."""

    median_s: float
    iqr_s: float
    times_s: tuple[float, ...]


def time_calls(fns: Mapping[str, Callable[[], object]], *, warmup: int, min_repeats: int,
               max_repeats: int | None = None, budget_s: float = 0.0,
               on_round: Callable[[int], None] | None = None) -> dict[str, Timing]:
    """Time single calls of each function in ``fns``, interleaved round by round.

    Each function first gets ``warmup`` untimed calls (compiling, allocation). Then
    every round calls each function once: at least ``min_repeats`` rounds, then more
    until each function has had ``budget_s`` seconds of timed calls on average or
    ``max_repeats`` (default ``min_repeats``) rounds are done, so slow configurations
    get few rounds and fast ones many. Interleaving spreads a noisy machine's slow
    spells over all functions alike, which keeps their ratios honest. Each function
    must synchronize its device itself (``inference_call`` does). ``on_round(i)`` is
    called after each round (progress).
    """
    # Not torch.utils.benchmark.Timer: its timeit() adds two untimed calls per
    # measurement, which triples the cost of a 2-second forward.
    max_repeats = min_repeats if max_repeats is None else max_repeats
    if not 1 <= min_repeats <= max_repeats:
        raise ValueError(f"need 1 <= min_repeats <= max_repeats, got {min_repeats} and {max_repeats}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    spent, rounds = 0.0, 0
    while rounds < min_repeats or (spent / len(fns) < budget_s and rounds < max_repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            spent += times[name][-1]
        if on_round is not None:
            on_round(rounds)
        rounds += 1
    return {name: _timing(t) for name, t in times.items()}


def time_call(fn: Callable[[], object], *, warmup: int, min_repeats: int, max_repeats: int | None = None,
              budget_s: float = 0.0) -> Timing:
    """``time_calls`` for one function."""
    return time_calls({"fn": fn}, warmup=warmup, min_repeats=min_repeats, max_repeats=max_repeats,
                      budget_s=budget_s)["fn"]


def _timing(times: list[float]) -> Timing:
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return Timing(median_s=statistics.median(times), iqr_s=q3 - q1, times_s=tuple(times))


def matmul_peak(device: torch.device | str, *, size: int = 2048, min_run_time: float = 0.5) -> float:
    """Measured float32 matmul throughput on ``device``, in FLOP/s: the roofline's compute roof.

    A square ``size`` matmul is as close to the device's dense-arithmetic peak as
    torch gets; the model's convolutions are measured against it.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device)
    b = torch.randn(size, size, generator=generator).to(device)
    timer = Timer(stmt="torch.mm(a, b)", globals={"torch": torch, "a": a, "b": b},
                  num_threads=torch.get_num_threads())
    timer.timeit(1)  # warm-up: first call allocates and picks the kernel
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    return 2 * size**3 / measurement.median


@dataclass(frozen=True)
class Throughput:
    """What one forward's median time means: rates, real-time factor, share of the matmul peak."""

    samples_per_s: float
    real_time_factor: float  # compute seconds per second of 16 kHz audio; < 1 is faster than real time
    gflops_per_s: float
    peak_fraction: float | None  # of the matmul peak measured on the same device; None if not measured


def throughput(*, model_flops: int, batch: int, length: int, seconds: float, sample_rate: int,
               peak_flops_per_s: float | None = None) -> Throughput:
    """Rates for one forward of ``batch`` x ``length`` samples at ``sample_rate`` Hz taking ``seconds``."""
    achieved = model_flops / seconds
    return Throughput(
        samples_per_s=batch / seconds,
        real_time_factor=seconds / (batch * length / sample_rate),
        gflops_per_s=achieved / 1e9,
        peak_fraction=None if peak_flops_per_s is None else achieved / peak_flops_per_s,
    )


def place_for_inference(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Put every module ``model`` holds, registered or not, in eval mode on ``device``.

    A model's own ``.eval()`` and ``.to()`` miss the modules it holds outside registration
    (in a plain tuple, say; the audits report that). Timing compares compute, so every
    form is prepared completely, by hand, the same way.
    """
    for module in (model, *(h.obj for h in held_modules(model))):
        module.eval()
        module.to(device)
    return model


def waveform(batch: int, length: int, device: torch.device | str = "cpu", seed: int = 0) -> torch.Tensor:
    """A reproducible ``[batch, 1, length]`` noise waveform (the content does not affect timing)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, length, generator=generator).to(device)


def inference_call(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The timed function: one forward under ``torch.inference_mode``, CUDA synchronized."""
    sync = x.device.type == "cuda"

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            out = model(x)
        if sync:
            torch.cuda.synchronize()
        return out

    return forward


def machine_info() -> dict[str, object]:
    """What a timing depends on besides the code: torch build, intra-op threads, CPU and GPU names."""
    return {
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

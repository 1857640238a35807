"""harness.core.bench: the analytic FLOP count, throughput figures and the timing helpers."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import harness
from harness.core.bench import (
    flop_breakdown,
    flops,
    inference_call,
    machine_info,
    matmul_peak,
    place_for_inference,
    throughput,
    time_call,
    time_calls,
    waveform,
)
from harness.core.errors import HarnessError
from harness.core.introspect import batchnorms
from harness.rawnet2.bench import TimedForm, build_timed, timed_forms
from harness.rawnet2.inputs import SAMPLE_RATE
from harness.rawnet2.registry import SUBJECTS, build
from tests.helpers import variants


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """Runnable subject -> one instance (seed 0), built on first use."""

    class Built(dict):
        def __missing__(self, name: str) -> nn.Module:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                self[name] = build(name)
            return self[name]

    return Built()


def test_conv_layer_matches_hand_count() -> None:
    # Conv1d(32 -> 64, k=3, stride 2, pad 1) on 2 x 32 x 1000: L_out = (1000 + 2 - 3) // 2 + 1 = 500;
    # each of the 2 * 64 * 500 outputs sums 32 * 3 products: 2 FLOPs per product.
    layer = nn.Conv1d(32, 64, kernel_size=3, stride=2, padding=1)
    assert flops(layer, (2, 32, 1000)) == 2 * (2 * 64 * 500) * (32 * 3)


def test_grouped_conv_and_linear_match_hand_count() -> None:
    grouped = nn.Conv1d(8, 16, kernel_size=5, groups=4)  # L_out = 100 - 4 = 96, 2 inputs per group
    assert flops(grouped, (1, 8, 100)) == 2 * (16 * 96) * (2 * 5)
    assert flops(nn.Linear(256, 64), (3, 256)) == 2 * 3 * 64 * 256


@settings(max_examples=2)  # per runnable variant: each new shape costs a FlopCounterMode forward
@given(batch=st.integers(1, 2), length=st.integers(64, 800))
def test_flops_match_torch_flop_counter(
    models: dict[str, nn.Module], family_name: str, batch: int, length: int
) -> None:
    # FlopCounterMode counts the aten convolution/addmm calls of a real forward: an
    # independent count of the same thing (2 FLOPs per multiply-accumulate). Eval mode
    # everywhere: it runs training-mode BatchNorm as slow Python decompositions. A family fact:
    # flops() counts Conv/Linear modules, which is all the family's arithmetic (a team model's
    # functional convs and GRUs are not counted).
    model = place_for_inference(models[family_name], "cpu")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(batch, 1, length))
    assert flops(model, (batch, 1, length)) == counter.get_total_flops()


def test_asvspoof_input_costs_what_the_issue_measured(models: dict[str, nn.Module]) -> None:
    # The issue's figures: 2.31 s at 51 GFLOP/s for 8 x 64600 means about 118 GFLOP.
    assert flops(models["skip_modules"], (8, 1, 64600)) == pytest.approx(118.6e9, rel=1e-3)


def test_a_variant_costs_what_its_reference_costs(models: dict[str, nn.Module], referenced_name: str) -> None:
    # Same function, same layers: whatever the names, tuples or block idiom, the same FLOPs.
    reference = SUBJECTS[referenced_name].reference
    shape = SUBJECTS[reference].input_contract().batch_shape(1)
    assert flops(models[referenced_name], shape) == flops(models[reference], shape)


def test_tuple_members_are_counted(models: dict[str, nn.Module]) -> None:
    # tuple_blocks registers only conv1/fc1/fc2; its blocks are tuple members and must still count.
    shape = (1, 1, 1000)
    assert flops(models["tuple_blocks"], shape) == flops(models["skip_modules"], shape)
    paths = [call.path for call in flop_breakdown(models["tuple_blocks"], shape)]
    assert "res_block2[1].0" in paths  # block 2's projection shortcut: the tuple's second member


def test_flops_leave_the_model_untouched() -> None:
    model = build("skip_modules").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flops(model, (2, 1, 500))
    assert model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # e.g. num_batches_tracked not bumped


def test_flops_of_a_model_whose_forward_fails_is_a_harness_error() -> None:
    with pytest.raises(HarnessError, match="cannot count FLOPs"):
        flops(build("legacy"), (1, 1, 1000))


def test_flops_is_exported_lazily() -> None:
    assert harness.flops is flops


def test_throughput_figures_by_hand() -> None:
    # 8 x 16000 samples = 8 s of audio in 2 s; 100 GFLOP in 2 s = 50 GFLOP/s = 25% of 200.
    t = throughput(model_flops=100_000_000_000, batch=8, length=SAMPLE_RATE, seconds=2.0,
                   sample_rate=SAMPLE_RATE, peak_flops_per_s=200e9)
    assert t.samples_per_s == 4.0
    assert t.real_time_factor == 0.25
    assert t.gflops_per_s == 50.0
    assert t.peak_fraction == 0.25
    assert throughput(model_flops=1, batch=1, length=1, seconds=1.0, sample_rate=1).peak_fraction is None


def test_time_call_counts_warmup_and_repeats() -> None:
    calls = []
    timing = time_call(lambda: calls.append(1), warmup=2, min_repeats=3)
    assert len(calls) == 5
    assert len(timing.times_s) == 3 and all(s > 0 for s in timing.times_s)
    assert min(timing.times_s) <= timing.median_s <= max(timing.times_s)


def test_time_calls_interleaves_rounds() -> None:
    order: list[str] = []
    rounds: list[int] = []
    timings = time_calls({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                         warmup=1, min_repeats=3, on_round=rounds.append)
    assert order == ["a", "b"] + ["a", "b"] * 3  # warm-ups first, then one call of each per round
    assert rounds == [0, 1, 2]
    assert [len(t.times_s) for t in timings.values()] == [3, 3]


def test_time_call_repeats_until_the_budget_is_spent() -> None:
    calls = []
    timing = time_call(lambda: calls.append(1), warmup=0, min_repeats=2, max_repeats=7, budget_s=10.0)
    assert len(calls) == 7 == len(timing.times_s)  # a cheap call hits max_repeats long before 10 s
    slow = time_call(lambda: time.sleep(0.01), warmup=0, min_repeats=1, max_repeats=50, budget_s=0.03)
    # Stops at the first call that brings the timed total to the budget (each call >= 10 ms).
    assert sum(slow.times_s[:-1]) < 0.03 <= sum(slow.times_s) and len(slow.times_s) <= 3


def test_time_call_refuses_zero_repeats() -> None:
    with pytest.raises(ValueError):
        time_call(lambda: None, warmup=0, min_repeats=0)


def test_matmul_peak_is_a_plausible_rate() -> None:
    peak = matmul_peak("cpu", size=128, min_run_time=0.01)
    assert math.isfinite(peak) and 1e6 < peak < 1e15


def test_place_for_inference_reaches_tuple_members() -> None:
    model = place_for_inference(build("tuple_blocks"), "cpu")
    assert all(not h.obj.training for h in batchnorms(model))


def test_timed_forms_follow_the_registry() -> None:
    forms = timed_forms()
    assert len({form.name for form in forms}) == len(forms)
    assert [form.subject for form in forms if form.kind == "eager"] == variants("runnable_name")
    assert [form.subject for form in forms if form.optimized] == [
        name for name in variants("runnable_name") if "folded" in SUBJECTS[name].forms]
    assert [form.subject for form in forms if form.onnxruntime] == [
        name for name in variants("runnable_name") if "onnxruntime" in SUBJECTS[name].forms]
    # the built-ins: tuple_blocks' eval() misses its block BatchNorms, so it cannot be folded
    assert {"skip_modules_optimized", "basic_blocks_optimized"} <= {form.name for form in forms}
    assert "tuple_blocks_optimized" not in {form.name for form in forms}


@pytest.mark.parametrize("form", timed_forms(), ids=lambda form: form.name)
def test_timed_forms_run(form: TimedForm) -> None:
    spec = SUBJECTS[form.subject]
    x = spec.example(2)
    model = build_timed(form, "cpu", compile=False)  # compiling is the equivalence tests' job
    out = inference_call(model, x)()
    assert out.shape[0] == 2
    if spec.score_transform is not None:  # the output is what the declared transform reads
        assert spec.score_transform.output_problem(out) is None


def test_waveform_is_reproducible_per_seed() -> None:
    assert torch.equal(waveform(2, 100), waveform(2, 100))
    assert not torch.equal(waveform(2, 100), waveform(2, 100, seed=1))


def test_machine_info_names_torch_threads_and_gpu() -> None:
    info = machine_info()
    assert info["torch_version"] == torch.__version__
    assert info["torch_threads"] == torch.get_num_threads()
    assert ("gpu" in info) and (info["gpu"] is None) == (not torch.cuda.is_available())


def test_pytest_benchmark_only_is_accepted():
    """`pytest --benchmark-only` is how a pytest-benchmark user times; it must not be a usage error
    (it was, while --benchmark-disable sat in addopts). One subprocess: collecting costs seconds."""
    spelling = ["--benchmark-only", "-k", "cpu"]
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # A fresh session, not an xdist worker's child (PYTEST_XDIST_WORKER would switch timing off).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    run = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", *spelling,
                          str(root / "tests" / "benchmarks")], cwd=root, capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "test_forward" in run.stdout

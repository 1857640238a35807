"""Where the variants compute the same function, and the deployment forms of skip_modules.

Statements (issue #5), each a property over random weights (``seed_weights``) and inputs:
1. tuple_blocks == skip_modules in train mode, bit for bit, with copied weights.
2. In eval mode they differ, and the whole difference is the tuple blocks' BatchNorms
   staying in training mode (batch statistics, running statistics updated on every call).
3. legacy effective == skip_modules loaded from a legacy checkpoint converted under
   ``preserve-function``.
4. skip_modules eager == each deployment form within ``DEPLOYMENT_TOLERANCES``.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from harness import HarnessError, build, copy_weights, legacy_effective, optimize_for_inference
from harness.__main__ import main
from harness.core.forms import (
    DEPLOYMENT_FORMS,
    compare_form,
    compare_forms,
    fold_batchnorms,
    ieee_float32_on_cuda,
)
from harness.core.introspect import batchnorms
from harness.core.onnx import onnx_missing
from harness.core.tolerances import BATCHING, DEPLOYMENT_TOLERANCES, EXACT, REFERENCE_FORWARD, assert_close
from harness.rawnet2.checkpoints import convert_state_dict, get_audio_model
from harness.rawnet2.equivalence import COMPARE_BATCH, compare_input, compare_variants, seed_weights
from harness.rawnet2.golden import first_divergence
from harness.rawnet2.layouts import canonical_modules
from harness.rawnet2.registry import SUBJECTS, spec
from tests.helpers import TEAM_REGISTRY, variants

SEEDS = st.integers(0, 2**32 - 1)
BLOCK_MODULES = [f"res_block{i}" for i in range(1, 7)] + ["skip2", "skip4", "skip6"]


@st.composite
def waveforms(draw: st.DrawFn, min_batch: int = 1) -> torch.Tensor:
    """Short random waveforms [B, 1, T], B <= 3, T <= 512, amplitude up to full scale.

    Short keeps the gate fast; nothing in the model depends on length beyond T / 8 > 1
    (three stride-2 blocks), which train-mode BatchNorm needs."""
    batch = draw(st.integers(min_batch, 3))
    length = draw(st.integers(64, 512))
    amplitude = draw(st.floats(0.01, 1.0))
    seed = draw(SEEDS)
    return torch.randn(batch, 1, length, generator=torch.Generator().manual_seed(seed)) * amplitude


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """One instance per subject, reused: every example overwrites all of its weights and
    statistics with seed_weights / copy_weights before use."""
    return {name: build(name) for name in ("skip_modules", "tuple_blocks", "legacy", "legacy_effective")}


def canonical_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, registered or not, under canonical names."""
    return {f"{name}.{key}": t for name, module in canonical_modules(model).items()
            for key, t in module.state_dict().items()}


def assert_same_state(actual: nn.Module, expected: nn.Module, msg: str) -> None:
    want = canonical_state(expected)
    got = canonical_state(actual)
    assert got.keys() == want.keys()
    for key, tensor in got.items():
        assert_close(tensor, want[key], EXACT, f"{msg}: {key}")


def assert_same_outputs(actual: torch.Tensor, expected: torch.Tensor, msg: str, x: torch.Tensor, train: bool,
                        **models: nn.Module) -> None:
    """EXACT comparison; on failure, say which model departs from the guide's architecture, and where."""
    try:
        assert_close(actual, expected, EXACT, msg)
    except AssertionError as exc:
        where = {name: first_divergence(m, x, spec(name).architecture, train=train, tol=REFERENCE_FORWARD)
                 for name, m in models.items() if spec(name).architecture is not None}
        found = "; ".join(f"{name}: {w or 'agrees with the guide'}" for name, w in where.items())
        raise AssertionError(f"{exc}\nvs the guide (reference_forward): {found}") from None


# --- copy_weights --------------------------------------------------------------------------

# (source, target) -> None when the layouts hold the same modules, else what the error names.
COPY_OUTCOMES = {
    ("skip_modules", "tuple_blocks"): None,
    ("tuple_blocks", "skip_modules"): None,
    ("tuple_blocks", "tuple_blocks"): None,
    ("legacy", "legacy"): None,
    ("legacy_effective", "legacy_effective"): None,
    ("skip_modules", "legacy_effective"): "the target has no module for skip2, skip4, skip6",
    ("legacy_effective", "skip_modules"): "the source has no module for skip2, skip4, skip6",
    ("tuple_blocks", "legacy_effective"): "the target has no module for skip2, skip4, skip6",
    ("skip_modules", "legacy"): "the target has no module for skip2, skip4",  # legacy skip is skip6
    ("legacy", "tuple_blocks"): "the source has no module for skip2, skip4",
    ("legacy", "legacy_effective"): "the target has no module for skip6",
}


@pytest.mark.parametrize(("src", "dst"), list(COPY_OUTCOMES))
def test_copy_weights_outcome_per_layout_pair(models, src: str, dst: str):
    source, target = seed_weights(build(src), 1), seed_weights(build(dst), 2)
    before = {k: t.clone() for k, t in canonical_state(target).items()}
    expected_error = COPY_OUTCOMES[(src, dst)]
    if expected_error is None:
        copy_weights(source, target)
        assert_same_state(target, source, f"{src} -> {dst}")
    else:
        message = f"cannot copy weights between these layouts: {expected_error}$"
        with pytest.raises(HarnessError, match=message):
            copy_weights(source, target)
        for key, tensor in canonical_state(target).items():  # nothing half-copied
            assert_close(tensor, before[key], EXACT, f"{key} changed by a refused copy")


def test_copy_weights_names_mis_shaped_tensors_and_copies_nothing():
    source, target = build("skip_modules", num_classes=3), build("tuple_blocks")
    before = target.fc1.weight.clone()
    with pytest.raises(HarnessError, match=r"fc2\.weight has shape \(3, 64\) in the source but \(1, 64\) "
                                           r"in the target; fc2\.bias has shape \(3,\)"):
        copy_weights(source, target)
    assert torch.equal(target.fc1.weight, before)


def test_copy_weights_fills_tuple_members_in_place_and_keeps_target_dtype():
    source = seed_weights(build("skip_modules"), 3)
    target = build("tuple_blocks")
    for module in canonical_modules(target).values():
        module.double()
    held = target.res_block6[1][1].running_var
    copy_weights(source, target)
    assert target.res_block6[1][1].running_var is held  # the same tensor, filled in place
    assert held.dtype == torch.float64
    assert_close(held, source.skip6[1].running_var.double(), EXACT)
    round_trip = build("skip_modules")
    copy_weights(target, round_trip)
    assert_same_state(round_trip, source, "skip_modules -> tuple_blocks -> skip_modules")


def test_seed_weights_is_deterministic_shared_by_name_and_not_default():
    a, b = seed_weights(build("skip_modules"), 7), seed_weights(build("legacy_effective"), 7)
    for name in ("conv1", "res_block3", "fc2"):
        for key, t in canonical_modules(a)[name].state_dict().items():
            assert_close(canonical_modules(b)[name].state_dict()[key], t, EXACT, f"{name}.{key}")
    again = seed_weights(build("skip_modules"), 7)
    assert_same_state(again, a, "same seed")
    assert not torch.equal(seed_weights(build("skip_modules"), 8).conv1[0].weight, a.conv1[0].weight)
    bn = a.res_block2[4]
    assert bool((bn.running_var != 1).all() & (bn.running_mean != 0).all() & (bn.weight != 1).all())


# --- statement 1: train mode, bit-exact -----------------------------------------------------


@given(seed=SEEDS, x=waveforms())
def test_tuple_blocks_equals_skip_modules_in_train_mode(models, seed: int, x: torch.Tensor):
    skip = seed_weights(models["skip_modules"], seed).train()
    tuple_blocks = seed_weights(models["tuple_blocks"], seed + 1).train()  # different, then copied over
    copy_weights(skip, tuple_blocks)
    with torch.no_grad():
        expected, actual = skip(x), tuple_blocks(x)
    assert_same_outputs(actual, expected, "tuple_blocks vs skip_modules, same weights, train mode", x, True,
                        skip_modules=skip, tuple_blocks=tuple_blocks)
    # Both updated their running statistics from the same batch statistics.
    assert_same_state(tuple_blocks, skip, "after one train-mode forward")


# --- statement 2: eval mode differs, and why -----------------------------------------------


def test_tuple_blocks_and_skip_modules_differ_in_eval_mode():
    difference = compare_variants("tuple_blocks", "skip_modules", "eval", seed=0)
    contract = spec("tuple_blocks").input_contract()
    assert difference.weights == "copy_weights"
    assert difference.input_shape == contract.batch_shape(COMPARE_BATCH)  # the reference's own contract
    assert difference.max_abs > 1e-3, difference
    train = compare_variants("tuple_blocks", "skip_modules", "train", seed=0)
    assert train.identical, f"train mode must be bit-exact: {train}"


@given(seed=SEEDS, x=waveforms())
def test_tuple_blocks_eval_is_skip_modules_with_block_batchnorms_left_in_training(
    models, seed: int, x: torch.Tensor
):
    """The whole eval-mode difference: put exactly the BatchNorms that tuple_blocks' eval()
    cannot reach back in training mode in skip_modules, and the outputs agree bit for bit."""
    skip = seed_weights(models["skip_modules"], seed).eval()
    tuple_blocks = models["tuple_blocks"].eval()
    copy_weights(skip, tuple_blocks)
    unreached = [h.path for h in batchnorms(tuple_blocks) if h.obj.training]
    assert len(unreached) == 15 and all(p.startswith("res_block") for p in unreached)
    for name in BLOCK_MODULES:
        canonical_modules(skip)[name].train()
    with torch.no_grad():
        actual, expected = tuple_blocks(x), skip(x)
    assert_same_outputs(actual, expected, "tuple_blocks eval vs skip_modules with the block BNs training", x,
                        False, tuple_blocks=tuple_blocks, skip_modules=skip.eval())


def test_tuple_blocks_eval_uses_batch_statistics_and_updates_running_stats(models):
    skip = seed_weights(models["skip_modules"], 5).eval()
    tuple_blocks = models["tuple_blocks"].eval()
    copy_weights(skip, tuple_blocks)
    x = torch.randn(3, 1, 800)
    block_bn, skip_bn = tuple_blocks.res_block3[0][1], skip.res_block3[1]
    before, skip_before = block_bn.running_mean.clone(), skip_bn.running_mean.clone()
    with torch.no_grad():
        alone = [tuple_blocks(x[i:i + 1]) for i in range(3)]
        batched = tuple_blocks(x)
        skip_alone = [skip(x[i:i + 1]) for i in range(3)]
        skip_batched = skip(x)
    # The running statistics move on an eval call ...
    assert not torch.equal(block_bn.running_mean, before)
    assert block_bn.num_batches_tracked.item() == 4
    assert torch.equal(skip_bn.running_mean, skip_before)
    # ... and a sample's score depends on the rest of its batch (batch statistics) ...
    assert (torch.cat(alone) - batched).abs().max() > 1e-3
    # ... where skip_modules scores each sample alone.
    assert_close(torch.cat(skip_alone), skip_batched, BATCHING, "skip_modules eval is per-sample")


# --- statement 3: legacy effective == skip_modules from a preserve-function checkpoint --------


@given(seed=SEEDS, x=waveforms(), fresh=st.booleans(), train=st.booleans())
def test_legacy_effective_equals_skip_modules_from_preserve_function_checkpoint(
    models, seed: int, x: torch.Tensor, fresh: bool, train: bool
):
    """``fresh``: the checkpoint of a legacy model that never ran (102 keys, shared skip
    included) or of one that did (95 keys)."""
    legacy = seed_weights(models["legacy" if fresh else "legacy_effective"], seed)
    checkpoint = legacy.state_dict()
    assert len(checkpoint) == (102 if fresh else 95)
    state, report = convert_state_dict(checkpoint, "skip_modules", source="legacy",
                                       policy="preserve-function")
    assert sorted({k.partition(".")[0] for k in report.added}) == ["skip2", "skip4", "skip6"]
    skip = models["skip_modules"]
    skip.load_state_dict(state, strict=True)
    effective = models["legacy_effective"]
    effective.load_state_dict({k: v for k, v in checkpoint.items() if not k.startswith("skip.")}, strict=True)
    with torch.no_grad():
        expected = effective.train(train)(x)
        actual = skip.train(train)(x)
    mode = "train" if train else "eval"
    assert_same_outputs(actual, expected, f"legacy_effective vs converted skip_modules, {mode}", x, train,
                        legacy_effective=effective, skip_modules=skip)


def test_legacy_checkpoint_file_loads_into_skip_modules_with_the_legacy_function(tmp_path):
    legacy = seed_weights(build("legacy"), 11)
    path = tmp_path / "legacy.pt"
    torch.save(legacy.state_dict(), path)
    skip = get_audio_model("skip_modules", path, policy="preserve-function")
    effective = copy.deepcopy(legacy)
    effective.skip = None
    x = torch.randn(2, 1, 1000)
    with torch.no_grad():
        assert_close(skip(x), effective.eval()(x), EXACT, "eval mode, from a file")
    assert compare_variants("legacy_effective", "skip_modules", "eval", seed=4).identical
    assert compare_variants("legacy_effective", "skip_modules", "train", seed=4).identical


# --- optimize_for_inference ------------------------------------------------------------------


def test_optimize_for_inference_folds_every_batchnorm_and_leaves_the_input_alone():
    model = seed_weights(build("skip_modules"), 2).train()
    before = copy.deepcopy(model.state_dict())
    optimized = optimize_for_inference(model, backend=None)
    assert len(optimized.info.folded) == 16  # conv1, 2 per block, skip2/4/6
    assert {p.split(".")[0] for p in optimized.info.folded} == {
        "conv1", *[f"res_block{i}" for i in range(1, 7)], "skip2", "skip4", "skip6"}
    assert optimized.info.unfolded_batchnorms == []
    assert optimized.info.form == "folded eager, CPU batches in chunks of 2"
    assert not any(isinstance(m, nn.BatchNorm1d) for m in optimized.modules())
    assert not any(p.requires_grad for p in optimized.parameters())
    assert model.training and len(batchnorms(model)) == 16
    for key, tensor in model.state_dict().items():
        assert_close(tensor, before[key], EXACT, f"input model's {key} changed")


def test_fold_batchnorms_on_legacy_effective_folds_13():
    model = seed_weights(legacy_effective(), 2)
    with pytest.raises(HarnessError, match=r"needs an eval-mode model; in training mode: \(model\), conv1"):
        fold_batchnorms(model)
    assert len(fold_batchnorms(model.eval())) == 13  # conv1 and 2 per block; no shortcuts


def test_optimize_for_inference_refuses_tuple_blocks_naming_why():
    with pytest.raises(HarnessError, match=r"15 BatchNorms \(res_block1\[0\]\.1, .* and 12 more\) are held "
                                           r"outside nn\.Module registration.*batch statistics"):
        optimize_for_inference(build("tuple_blocks"))


@given(seed=SEEDS, batch=st.integers(1, 7), length=st.integers(64, 256), chunk=st.integers(1, 3))
def test_cpu_batch_chunks_match_one_batch_and_never_exceed_the_chunk(
    models, seed: int, batch: int, length: int, chunk: int
):
    model = seed_weights(models["skip_modules"], seed)
    x = torch.randn(batch, 1, length, generator=torch.Generator().manual_seed(seed))
    chunked = optimize_for_inference(model, backend=None, cpu_batch_chunk=chunk)
    whole = optimize_for_inference(model, backend=None, cpu_batch_chunk=None)
    seen: list[int] = []
    chunked.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    with torch.no_grad():
        out = chunked(x)
        assert_close(out, whole(x), BATCHING, f"batch {batch} in chunks of {chunk} vs one batch")
    assert sum(seen) == batch and max(seen) <= chunk


def test_cpu_batch_chunk_must_be_positive():
    with pytest.raises(HarnessError, match="cpu_batch_chunk must be a positive sample count or None, got 0"):
        optimize_for_inference(build("skip_modules"), cpu_batch_chunk=0)


FOLDABLE = [name for name, variant in SUBJECTS.items() if variant.runs and "folded" in variant.forms]
# The family's fact: every BatchNorm of its variants follows a convolution and folds into it.
FAMILY_FOLDABLE = [name for name in variants("family_name") if "folded" in SUBJECTS[name].forms]


@st.composite
def examples(draw: st.DrawFn, name: str) -> torch.Tensor:
    """Seeded inputs of variant ``name``'s own contract: B <= 3, lengths from its minimum up to
    448 samples more (short keeps the gate fast), amplitude up to full scale."""
    contract = spec(name).input_contract()
    length = draw(st.integers(contract.min_length, contract.min_length + 448))
    x = contract.example(draw(st.integers(1, 3)), max(length, 64), seed=draw(SEEDS))
    return x * draw(st.floats(0.01, 1.0))


@given(seed=SEEDS, data=st.data(), name=st.sampled_from(FOLDABLE))
def test_folded_model_matches_eager_within_tolerance(seed: int, data: st.DataObject, name: str):
    x = data.draw(examples(name), label="x")
    model = seed_weights(build(name), seed)
    difference = compare_form(model, x, "folded")
    assert difference.within, difference


@pytest.mark.parametrize("name", FAMILY_FOLDABLE)
def test_every_batchnorm_of_a_family_variant_is_folded(name: str):
    """Pairs come from the trace, wherever the two modules are held (basic_blocks keeps conv1/bn1
    as block attributes, not in an nn.Sequential)."""
    model = build(name)
    optimized = optimize_for_inference(model, backend=None)
    assert optimized.info.unfolded_batchnorms == []
    assert len(optimized.info.folded) == len(batchnorms(model))


def test_fold_batchnorms_folds_none_when_the_convolution_output_is_shared():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4)

        def forward(self, x):
            h = self.conv(x)
            return self.bn(h) + self.conv(x)  # the conv serves twice: folding it would change one use

    assert fold_batchnorms(Shared().eval()) == []


def test_a_variant_with_a_reference_receives_its_weights_proven(referenced_name: str):
    """copy_weights from the seeded reference: matched by structure, bit-identical outputs in the
    modes the spec promises (tuple_blocks: train only)."""
    variant = spec(referenced_name)
    reference = seed_weights(build(variant.reference), 5)
    model = build(referenced_name)
    x = variant.example(2, seed=5)
    copy_weights(reference, model, x, modes=variant.reference_modes)
    for mode in variant.reference_modes:
        with torch.no_grad():
            expected = copy.deepcopy(reference).train(mode == "train")(x)
            actual = copy.deepcopy(model).train(mode == "train")(x)
        assert_close(actual, expected, EXACT, f"{referenced_name} vs {variant.reference} ({mode})")


def test_compiled_form_traces_with_dynamo_and_matches_the_folded_model():
    """Default gate: the cheap eager backend exercises dynamo tracing of the folded model
    (same kernels, so bit-exact to folded eager); inductor is the slow test below."""
    model = seed_weights(build("skip_modules"), 3)
    x = torch.randn(2, 1, 1000)
    compiled = optimize_for_inference(model, backend="eager")
    folded = optimize_for_inference(model, backend=None)
    with torch.no_grad():
        out = compiled(x)
        assert compiled.info.compiled is True
        assert compiled.info.form == "folded, compiled with eager, CPU batches in chunks of 2"
        assert_close(out, folded(x), EXACT, "dynamo (eager backend) vs folded eager")
        difference = compare_form(model, x, "compiled", compile_backend="eager")
        assert difference.within, difference
        assert difference.ran == "folded, compiled with eager, CPU batches in chunks of 2"


def conv_bn_relu() -> nn.Module:
    """A small model with the same kind of Conv+BatchNorm pair: the fallback logic does not
    depend on the model, and tracing RawNet2 with dynamo takes seconds."""
    model = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4), nn.LeakyReLU(0.3))
    model[1].running_mean.uniform_(-0.2, 0.2)
    model[1].running_var.uniform_(0.5, 2.0)
    return model


def test_compile_failure_falls_back_to_the_folded_model_once():
    calls = []

    def no_compiler(graph_module, example_inputs):
        calls.append(1)
        raise RuntimeError("no C++ compiler found\nsecond line")

    model = conv_bn_relu()
    optimized = optimize_for_inference(model, backend=no_compiler)
    assert optimized.info.compiled is None and optimized.info.folded == ["1"]  # compile is lazy
    x = torch.randn(2, 1, 50)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="compiling with no_compiler failed"):
        out = optimized(x)
    assert optimized.info.compiled is False
    assert optimized.info.fallback_reason == "BackendCompilerFailed (RuntimeError: no C++ compiler found)"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_close(optimized(x), out, EXACT)  # no second attempt, no second warning
        assert_close(out, optimize_for_inference(model, backend=None)(x), EXACT, "fallback is folded eager")
    assert len(calls) == 1
    difference = compare_form(model, x, "compiled", compile_backend=no_compiler)
    assert difference.ran.startswith(
        "folded eager, CPU batches in chunks of 2 (compiling with no_compiler failed: BackendCompilerFailed")


def test_model_errors_are_not_mistaken_for_compile_failures():
    def never(graph_module, example_inputs):
        raise AssertionError("the backend must not be reached for a bad input")

    optimized = optimize_for_inference(conv_bn_relu(), backend=never)
    with pytest.raises(RuntimeError, match="expected input.*to have 1 channels, but got 2"):
        optimized(torch.randn(2, 2, 50))
    assert optimized.info.compiled is not True


@pytest.mark.slow
def test_inductor_compiled_model_matches_eager_within_tolerance():
    # A cold inductor compile takes ~13 s on 2 quiet cores, hence `slow` (run with -m slow).
    model = seed_weights(build("skip_modules"), 3)
    x = torch.randn(3, 1, 4000)
    difference = compare_form(model, x, "compiled")
    assert difference.ran == "folded, compiled with inductor, CPU batches in chunks of 2", difference
    assert difference.within, difference


def test_optimized_model_on_device_matches_eager_on_that_device(device: torch.device, foldable_name: str):
    """Float32 parity on each device, at the variant's own contract: TF32 (cuDNN's default for
    convolutions) is switched off, as for the cuda form; with it on, the H200 gave 9e-5 between
    folded and eager, a precision choice."""
    model = seed_weights(build(foldable_name), 6).eval().to(device)
    x = spec(foldable_name).example(2, seed=6).to(device)
    with torch.no_grad(), ieee_float32_on_cuda():
        optimized = optimize_for_inference(model, backend=None, example_input=x)
        if foldable_name in FAMILY_FOLDABLE:
            assert optimized.info.unfolded_batchnorms == []  # the trace ran on the model's device
        assert_close(optimized(x), model(x), DEPLOYMENT_TOLERANCES["folded"], f"folded vs eager on {device}")


# --- statement 4: deployment forms ----------------------------------------------------------


def test_every_deployment_form_has_one_tolerance_with_a_reason():
    assert DEPLOYMENT_TOLERANCES.keys() == DEPLOYMENT_FORMS.keys()
    assert all(len(tol.reason) > 20 for tol in DEPLOYMENT_TOLERANCES.values())


@given(seed=SEEDS, x=waveforms(), form=st.sampled_from(["float64", "bfloat16_autocast"]))
def test_cpu_precision_forms_match_eager_within_tolerance(models, seed: int, x: torch.Tensor, form: str):
    difference = compare_form(seed_weights(models["skip_modules"], seed), x, form)
    assert difference.within, difference


@pytest.mark.cuda
@given(seed=SEEDS, x=waveforms())
def test_cuda_form_matches_cpu_eager_within_tolerance(models, seed: int, x: torch.Tensor):
    difference = compare_form(seed_weights(models["skip_modules"], seed), x, "cuda")
    assert difference.within, difference


def test_compare_forms_runs_what_this_machine_can_and_refuses_the_rest(monkeypatch):
    model = seed_weights(build("skip_modules"), 9)
    x = torch.randn(2, 1, 1000)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    results = compare_forms(model, x, compile_backend="eager")
    expected = ["folded", "compiled", "float64", "bfloat16_autocast"]
    expected += ["onnxruntime"] if onnx_missing() is None else []
    assert [r.form for r in results] == expected
    assert all(r.within for r in results), results
    with pytest.raises(HarnessError, match="'cuda' needs a CUDA GPU"):
        compare_form(model, x, "cuda")
    with pytest.raises(HarnessError, match="unknown deployment form 'tensorrt'"):
        compare_form(model, x, "tensorrt")


# --- `python -m harness compare`: at the reference's own input contract ----------------------



def test_compare_takes_its_input_from_the_references_contract():
    for name in variants("runnable_name"):
        variant = spec(name)
        expected = variant.input_contract().batch_shape(COMPARE_BATCH)
        assert tuple(compare_input(variant, None).shape) == expected, name
        given = (1, *expected[1:])
        assert tuple(compare_input(variant, ",".join(map(str, given))).shape) == given, name


def test_compare_a_team_model_with_its_class_renamed_copy_at_its_own_contract(capsys, registered):
    """[B, T] input at the declared 8000 samples; the front end's renamed class pairs by what it holds."""
    assert main(["--registry", str(TEAM_REGISTRY), "compare", "asv", "asv_renamed", "--mode", "eval"]) == 0
    out = capsys.readouterr().out
    assert f"input [{COMPARE_BATCH}, 8000]," in out and out.endswith("\nequivalent\n")
    argv = ["--registry", str(TEAM_REGISTRY), "compare", "asv", "asv_renamed", "--input-shape", "2,1,4000"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "error: --input-shape 2,1,4000 does not fit asv: shape [2, 1, 4000] is not [B, T] (the model's "
        "input_shape [8000])\n")

"""Properties of the runnable forms over random inputs, weights, shapes and modes.

Why train mode has a minimum length: each projection block's stride-2 conv (kernel 3,
padding 1) maps L to ceil(L / 2) and nothing else changes the length, so the last
block's BatchNorms see B * ceil(T / 8) values per channel. Train-mode BatchNorm needs
more than one, so a batch of one needs T >= 9 and any larger batch runs from T = 1.
Eval mode has no minimum, except for a variant whose eval() misses BatchNorms
(tuple_blocks' tuple members), which keep training mode. ``harness.rawnet2.inputs`` holds
that rule; the tests below check it against the model itself and pin the exact boundary
for every batch size and mode.

Every property runs on every runnable variant in the registry (``runnable_name``, one test
id each, a team's included); hypothesis draws inputs and weights per variant, with the
profile's examples shared out among the variants so the suite's cost stays flat.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import SUBJECTS
from harness.core.audits import FAIL
from harness.core.introspect import batchnorms
from harness.core.tolerances import EXACT, assert_close
from harness.rawnet2.architecture import NONE, PROJECTION, ReferenceSpec
from harness.rawnet2.audits import audit, declared_results
from harness.rawnet2.equivalence import seed_weights
from harness.rawnet2.inputs import last_norm_values, min_train_length
from harness.rawnet2.layouts import PROJECTION_BLOCKS, residual_blocks
from harness.rawnet2.wiring import observe_blocks
from tests.conftest import variants

BATCHNORM_ERROR = "Expected more than 1 value per channel when training"

seeds = st.integers(0, 2**16)


def per_variant(examples: int) -> settings:
    """``examples`` shared out among the runnable variants (at least one each)."""
    return settings(max_examples=max(1, examples // len(variants("runnable_name"))))


# A single example here costs whole forwards; scale with the profile but spend less.
few = per_variant(max(3, settings.default.max_examples // 2))
some = per_variant(settings.default.max_examples)


def randomized(name: str, seed: int, num_classes: int = 1) -> nn.Module:
    """A fresh instance with weights and BatchNorm state drawn under ``seed`` (the library's seeding)."""
    return seed_weights(SUBJECTS[name].build(num_classes=num_classes), seed)


@functools.cache
def eval_misses_batchnorms(name: str) -> bool:
    """Whether some BatchNorm of ``name`` (tuple members included) keeps training mode after eval()."""
    return any(held.obj.training for held in batchnorms(SUBJECTS[name].build().eval()))


def uses_batch_statistics(name: str, train: bool) -> bool:
    return train or eval_misses_batchnorms(name)


def runnable_length(name: str, train: bool, batch: int, length: int) -> int:
    return max(length, min_train_length(batch)) if uses_batch_statistics(name, train) else length


def waveform(seed: int, batch: int, length: int) -> torch.Tensor:
    return torch.randn(batch, 1, length, generator=torch.Generator().manual_seed(seed))


def function_of(name: str) -> ReferenceSpec | None:
    """The function of the family ``name`` computes: its spec's ``architecture``, else its reference's."""
    spec = SUBJECTS[name]
    if spec.architecture is not None:
        return spec.architecture
    return function_of(spec.reference) if spec.reference is not None else None


def wiring_applies(name: str) -> bool:
    """Whether ``name`` can be held to a block-by-block wiring: its spec (or reference) names the
    function it computes, and it does not declare the skip_wiring check n/a (no known block layout)."""
    return function_of(name) is not None and "skip_wiring" not in SUBJECTS[name].declared_not_applicable


# Left out by its spec, never by name: a variant whose blocks the harness cannot find, or whose
# function is unknown, has no block-by-block wiring to check.
WIRED = [name for name in variants("runnable_name") if wiring_applies(name)]


# --- shapes ---------------------------------------------------------------------------------------


@some
@given(batch=st.integers(1, 8), length=st.integers(1, 2000), num_classes=st.integers(1, 4),
       train=st.booleans(), seed=seeds)
def test_output_is_batch_by_classes_probabilities(runnable_name: str, batch: int, length: int,
                                                  num_classes: int, train: bool, seed: int):
    name = runnable_name
    length = runnable_length(name, train, batch, length)
    model = randomized(name, seed, num_classes).train(train)
    with torch.no_grad():
        out = model(waveform(seed, batch, length))
    assert out.shape == (batch, num_classes)
    assert bool(torch.isfinite(out).all())
    if SUBJECTS[name].output == "probability":  # a spec declaring logits promises no range
        assert bool(((out >= 0) & (out <= 1)).all())


# --- the train-mode minimum length ------------------------------------------------------------------


@some
@given(batch=st.integers(1, 8), length=st.integers(1, 40), train=st.booleans())
def test_forward_raises_exactly_below_the_batchnorm_boundary(runnable_name: str, batch: int, length: int,
                                                             train: bool):
    name = runnable_name
    model = randomized(name, 0).train(train)
    x = torch.randn(batch, 1, length)
    # The rule written out from the strides, independently of harness.rawnet2.inputs:
    raises = uses_batch_statistics(name, train) and batch * math.ceil(length / 8) == 1
    assert raises == (length < runnable_length(name, train, batch, 1))
    if raises:
        with pytest.raises(ValueError, match=BATCHNORM_ERROR), torch.no_grad():
            model(x)
    else:
        with torch.no_grad():
            assert model(x).shape == (batch, 1)


def test_batch_of_one_boundary_is_nine_samples_in_train_mode(runnable_name: str):
    name = runnable_name
    model = randomized(name, 0).train()
    with torch.no_grad():
        too_short = rf"{BATCHNORM_ERROR}, got input size torch.Size\(\[1, 256, 1\]\)"
        with pytest.raises(ValueError, match=too_short):
            model(torch.randn(1, 1, 8))
        assert model(torch.randn(1, 1, 9)).shape == (1, 1)
        assert model(torch.randn(2, 1, 1)).shape == (2, 1)  # two samples: two values per channel
        model.eval()
        if eval_misses_batchnorms(name):
            with pytest.raises(ValueError, match=BATCHNORM_ERROR):
                model(torch.randn(1, 1, 8))
        else:
            assert model(torch.randn(1, 1, 1)).shape == (1, 1)


@some
@given(batch=st.integers(1, 8), length=st.integers(1, 2000))
def test_last_batchnorm_sees_batch_times_ceil_length_over_8(runnable_name: str, batch: int, length: int):
    name = runnable_name
    model = randomized(name, 0).eval()
    seen: list[int] = []
    def record(module: nn.Module, args: tuple) -> None:
        seen.append(args[0].shape[0] * args[0].shape[2])  # values per channel: N * L

    handles = [h.obj.register_forward_pre_hook(record) for h in batchnorms(model)]
    with torch.no_grad():
        model(torch.randn(batch, 1, runnable_length(name, False, batch, length)))
    for handle in handles:
        handle.remove()
    # Each BatchNorm the model holds runs once: conv1's, two per block, one per projection shortcut
    # of the function it computes (none for legacy_effective, whose projection blocks add nothing).
    assert len(seen) == len(batchnorms(model))
    if (function := function_of(name)) is not None:
        projections = sum(kind == PROJECTION for kind in function.shortcuts.values())
        assert len(seen) == 1 + 2 * len(function.shortcuts) + projections
    assert min(seen) == last_norm_values(batch, runnable_length(name, False, batch, length))


# --- the audit's properties over random inputs and weights --------------------------------------------

PROPERTY_CHECKS = ("batch_independence", "gradient_coverage", "determinism", "skip_wiring")


@few
@given(seed=seeds, batch=st.integers(2, 6), length=st.integers(16, 1024))
def test_declared_results_hold_for_random_inputs_and_weights(runnable_name: str, seed: int, batch: int,
                                                             length: int):
    name = runnable_name
    report = audit(lambda: randomized(name, seed), waveform(seed + 1, batch, length), checks=PROPERTY_CHECKS)
    assert report.results == declared_results(SUBJECTS[name].expected_defects, PROPERTY_CHECKS)
    if name == "tuple_blocks":
        grads = [f for f in report.findings if f.check == "gradient_coverage"]
        assert [f.message.split(":")[0] for f in grads] == [f"res_block{i}" for i in range(1, 7)]
        # 8 parameters per main path, 4 per projection shortcut
        assert sum(len(f.paths) for f in grads) == 6 * 8 + len(PROJECTION_BLOCKS) * 4
    if name == "legacy_effective":
        wiring = [f.paths for f in report.findings if f.check == "skip_wiring"]
        assert wiring == [(f"res_block{i}",) for i in PROJECTION_BLOCKS]


@few
@given(seed=seeds, batch=st.integers(1, 8), length=st.integers(1, 4000))
def test_legacy_forward_raises_for_every_input(seed: int, batch: int, length: int):
    report = audit(SUBJECTS["legacy"].build, waveform(seed, batch, length), checks=["determinism"])
    (message,) = report.messages("determinism")
    assert report.results == {"determinism": FAIL}
    assert message.startswith("forward raises RuntimeError: ")
    assert f"expected input[{batch}, 32, {length}] to have 128 channels, but got 32" in message


# --- zero-main-path: a second, independent proof of the wiring ----------------------------------------


@few
@pytest.mark.parametrize("name", WIRED)
@given(seed=seeds, batch=st.integers(1, 4), length=st.integers(1, 1024), train=st.booleans())
def test_zeroing_each_last_batchnorm_leaves_a_pure_shortcut(name: str, seed: int, batch: int, length: int,
                                                           train: bool):
    model = randomized(name, seed).train(train)
    with torch.no_grad():
        for block in residual_blocks(model):
            # The main path's last BatchNorm; a block that adds its shortcut itself (torchvision's
            # BasicBlock) holds the shortcut inside it, so its modules are left out.
            shortcut = set() if block.shortcut is None else set(block.shortcut.modules())
            last = [m for m in block.main.modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in shortcut][-1]
            last.weight.zero_()
            last.bias.zero_()
    x = waveform(seed, batch, runnable_length(name, train, batch, length))
    observations = observe_blocks(model, x)
    assert [o.block.index for o in observations] == list(range(1, 7))
    bare = []
    for o in observations:
        assert o.output is not None and not o.main_output.any(), f"block {o.block.index}: main path not zero"
        if o.block.shortcut is not None:
            with torch.no_grad():
                expected = o.block.shortcut(o.input)
        elif o.input.shape == o.output.shape:
            expected = o.input
        else:
            expected, _ = torch.zeros_like(o.output), bare.append(o.block.index)
        assert_close(o.output, expected, EXACT, f"{name} block {o.block.index}: not a pure shortcut")
    # Blocks whose function has no shortcut (legacy_effective's projection blocks) add nothing
    # at all: they become exactly zero. The rest add the projection their function names.
    shortcuts = function_of(name).shortcuts
    assert bare == [i for i, kind in shortcuts.items() if kind == NONE]
    projections = [o.block.index for o in observations if o.block.shortcut is not None]
    assert projections == [i for i, kind in shortcuts.items() if kind == PROJECTION]


def test_the_guide_functions_wire_projections_exactly_on_the_projection_blocks():
    # The example behind the wiring rule above: legacy_effective's function drops the projections.
    assert [i for i, k in function_of("skip_modules").shortcuts.items() if k == PROJECTION] == \
        list(PROJECTION_BLOCKS)
    assert [i for i, k in function_of("legacy_effective").shortcuts.items() if k == NONE] == \
        list(PROJECTION_BLOCKS)
    assert function_of("basic_blocks") == function_of("skip_modules")
    assert set(WIRED) >= {"tuple_blocks", "skip_modules", "basic_blocks", "legacy_effective"}

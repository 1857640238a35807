"""Properties of the runnable forms over random inputs, weights, shapes and modes.

Why train mode has a minimum length: each projection block's stride-2 conv (kernel 3,
padding 1) maps L to ceil(L / 2) and nothing else changes the length, so the last
block's BatchNorms see B * ceil(T / 8) values per channel. Train-mode BatchNorm needs
more than one, so a batch of one needs T >= 9 and any larger batch runs from T = 1.
Eval mode has no minimum, except for a variant whose eval() misses BatchNorms
(tuple_blocks' tuple members), which keep training mode. ``harness.rawnet2.inputs`` holds
that rule; the tests below check it against the model itself and pin the exact boundary
for every batch size and mode.

The family's facts (the BatchNorm length boundary, ``[B, num_classes]`` probabilities,
``num_classes=``) run on every family variant (``family_name``); the generic properties (declared
audit results, the zero-main-path proof of the wiring) on every runnable variant
(``runnable_name``, a team's included), each fed its own input contract (``spec.example``).
Hypothesis draws inputs and weights per variant, with the profile's examples shared out among
the variants so the suite's cost stays flat.
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
from harness.core.residuals import Block, find_blocks
from harness.core.tolerances import EXACT, assert_close
from harness.rawnet2.architecture import NONE, PROJECTION
from harness.rawnet2.audits import audit, declared_results
from harness.rawnet2.equivalence import seed_weights
from harness.rawnet2.inputs import last_norm_values, min_train_length
from harness.rawnet2.layouts import PROJECTION_BLOCKS
from tests.helpers import function_of, variants

BATCHNORM_ERROR = "Expected more than 1 value per channel when training"

seeds = st.integers(0, 2**16)


def per_variant(examples: int, fixture: str = "runnable_name") -> settings:
    """``examples`` shared out among the variants ``fixture`` runs over (at least one each)."""
    return settings(max_examples=max(1, examples // max(1, len(variants(fixture)))))


# A single example here costs whole forwards; scale with the profile but spend less.
few = per_variant(max(3, settings.default.max_examples // 2))
some_of_the_family = per_variant(settings.default.max_examples, "family_name")


def randomized_variant(name: str, seed: int, **kwargs: object) -> nn.Module:
    """A fresh instance with weights and BatchNorm state drawn under ``seed`` (the library's seeding);
    ``kwargs`` go to the factory (``num_classes`` for the family)."""
    return seed_weights(SUBJECTS[name].build(**kwargs), seed)


def example(name: str, seed: int, batch: int, extra: int, *, above: str = "length") -> torch.Tensor:
    """The variant's own input contract: ``extra`` samples above its declared length (``above="length"``)
    or its minimum length (``above="min_length"``)."""
    contract = SUBJECTS[name].input_contract()
    return contract.example(batch, getattr(contract, above) + extra, seed=seed)


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


@functools.cache
def blocks_of(name: str) -> tuple[Block, ...]:
    """The blocks dataflow finds in a fresh eval-mode instance on the variant's own example."""
    spec = SUBJECTS[name]
    return tuple(find_blocks(spec.build().eval(), spec.example(2)))



# --- shapes ---------------------------------------------------------------------------------------


@some_of_the_family
@given(batch=st.integers(1, 8), length=st.integers(1, 2000), num_classes=st.integers(1, 4),
       train=st.booleans(), seed=seeds)
def test_output_is_batch_by_classes_probabilities(family_name: str, batch: int, length: int,
                                                  num_classes: int, train: bool, seed: int):
    name = family_name
    length = runnable_length(name, train, batch, length)
    model = randomized_variant(name, seed, num_classes=num_classes).train(train)
    with torch.no_grad():
        out = model(waveform(seed, batch, length))
    assert out.shape == (batch, num_classes)
    assert bool(torch.isfinite(out).all())
    if SUBJECTS[name].output == "probability":  # a spec declaring logits promises no range
        assert bool(((out >= 0) & (out <= 1)).all())


# --- the train-mode minimum length ------------------------------------------------------------------


@some_of_the_family
@given(batch=st.integers(1, 8), length=st.integers(1, 40), train=st.booleans())
def test_forward_raises_exactly_below_the_batchnorm_boundary(family_name: str, batch: int, length: int,
                                                             train: bool):
    name = family_name
    model = randomized_variant(name, 0).train(train)
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


def test_batch_of_one_boundary_is_nine_samples_in_train_mode(family_name: str):
    name = family_name
    model = randomized_variant(name, 0).train()
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


@some_of_the_family
@given(batch=st.integers(1, 8), length=st.integers(1, 2000))
def test_last_batchnorm_sees_batch_times_ceil_length_over_8(family_name: str, batch: int, length: int):
    name = family_name
    model = randomized_variant(name, 0).eval()
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
# At the declared length and above: at its minimum a model may hold states that the input cannot reach
# (a GRU run for one step gives its hidden-to-hidden weights no gradient).
@given(seed=seeds, batch=st.integers(2, 6), extra=st.integers(0, 255))
def test_declared_results_hold_for_random_inputs_and_weights(runnable_name: str, seed: int, batch: int,
                                                             extra: int):
    name = runnable_name
    report = audit(lambda: randomized_variant(name, seed), example(name, seed + 1, batch, extra),
                   checks=PROPERTY_CHECKS, output=SUBJECTS[name].output)
    assert report.results == declared_results(SUBJECTS[name].expected_defects, PROPERTY_CHECKS)
    if name == "tuple_blocks":
        grads = [f for f in report.findings if f.check == "gradient_coverage"]
        assert [f.message.split(":")[0] for f in grads] == [f"res_block{i}" for i in range(1, 7)]
        # 8 parameters per main path, 4 per projection shortcut
        assert sum(len(f.paths) for f in grads) == 6 * 8 + len(PROJECTION_BLOCKS) * 4
    if (function := function_of(name)) is not None:
        # The blocks whose function adds no shortcut, and only those, fail the wiring (in order).
        bare = sum(kind == NONE for kind in function.shortcuts.values())
        wiring = [f for f in report.findings if f.check == "skip_wiring"]
        assert len(wiring) == bare and all("adds no shortcut" in f.message for f in wiring)


@few
@given(seed=seeds, batch=st.integers(1, 8), length=st.integers(1, 4000))
def test_legacy_forward_raises_for_every_input(seed: int, batch: int, length: int):
    report = audit(SUBJECTS["legacy"].build, waveform(seed, batch, length), checks=["determinism"])
    (message,) = report.messages("determinism")
    assert report.results == {"determinism": FAIL}
    assert message.startswith("forward raises RuntimeError: ")
    assert f"expected input[{batch}, 32, {length}] to have 128 channels, but got 32" in message


# --- zero-main-path: a second, independent proof of the wiring ----------------------------------------


def last_normalisation_onwards(block: Block) -> list[nn.Module]:
    """The main path's last BatchNorm and every module after it on the main path (leaf modules, in
    call order): zeroing their parameters makes the main path's output exactly zero."""
    called = block.main_modules if block.adds_shortcut else tuple(block.main_modules[0].modules())
    leaves = [m for m in called if not list(m.children())]
    last = max(i for i, m in enumerate(leaves) if isinstance(m, nn.modules.batchnorm._BatchNorm))
    return leaves[last:]


@few
@given(seed=seeds, batch=st.integers(2, 4), extra=st.integers(0, 1023), train=st.booleans())
def test_zeroing_each_last_batchnorm_leaves_a_pure_shortcut(runnable_name: str, seed: int, batch: int,
                                                           extra: int, train: bool):
    # Blocks found by dataflow, never by name (a team's model included); found here, not at collection:
    # a forward per variant while collecting cost every run seconds, and every xdist worker its share.
    name = runnable_name
    if not blocks_of(name):
        pytest.skip(f"{name}: dataflow finds no residual blocks")
    model = randomized_variant(name, seed).train(train)
    x = example(name, seed, batch, extra, above="min_length")
    with torch.no_grad():
        for block in find_blocks(model, x):
            for module in last_normalisation_onwards(block):
                for p in module.parameters(recurse=False):
                    p.zero_()
    blocks = find_blocks(model, x)
    assert [b.path for b in blocks] == [b.path for b in blocks_of(name)]
    for b in blocks:
        assert b.main is not None and not b.main.any(), f"{name} {b.path}: main path not zero"
        if b.shortcut == "projection":
            with torch.no_grad():
                expected = b.projection(b.input)
        elif b.shortcut == "identity":
            expected = b.input
        else:  # nothing added (legacy_effective's projection blocks): the block's output is exactly zero
            assert b.shortcut == "none", f"{name} {b.path}: {b.shortcut} {b.detail}"
            expected = torch.zeros_like(b.output)
        assert_close(b.output, expected, EXACT, f"{name} {b.path}: not a pure shortcut")
    if (function := function_of(name)) is not None:
        # The family's function names each block's shortcut (identity, projection, none): the blocks
        # found carry exactly those.
        assert [b.shortcut for b in blocks] == list(function.shortcuts.values())


def test_the_guide_functions_wire_projections_exactly_on_the_projection_blocks():
    # The example behind the wiring rule above: legacy_effective's function drops the projections.
    assert [i for i, k in function_of("skip_modules").shortcuts.items() if k == PROJECTION] == \
        list(PROJECTION_BLOCKS)
    assert [i for i, k in function_of("legacy_effective").shortcuts.items() if k == NONE] == \
        list(PROJECTION_BLOCKS)
    assert function_of("basic_blocks") == function_of("skip_modules")
    assert all(blocks_of(name) for name in ("tuple_blocks", "skip_modules", "basic_blocks",
                                            "legacy_effective"))

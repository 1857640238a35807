"""Characterization tests: the facts that pin each variant's behaviour as found.

Each number here was measured with torch 2.13 on CPU (issue #2) and is checked a
second way where one exists (an analytic parameter count, a hook-level wiring
observation), so a change to any variant that alters a fact fails here.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn

from harness import SUBJECTS, VARIANTS, HarnessError, build, legacy_effective
from harness.core.introspect import batchnorms, parameter_count, used_tensors
from harness.core.tolerances import EXACT, assert_close
from harness.rawnet2.equivalence import copy_weights, seed_weights
from harness.rawnet2.layouts import PROJECTION_BLOCKS, residual_blocks
from harness.rawnet2.wiring import observe_blocks

CHANNELS = [(1, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2)]


def conv_bn(cin: int, cout: int, k: int) -> int:
    return cin * cout * k + cout + 2 * cout  # conv weight + bias, BN weight + bias


def analytic_parameter_count(projections: tuple[int, ...], num_classes: int = 1) -> int:
    """Hand count from the layer list in the guide: conv1, six blocks, the given projections, head."""
    total = conv_bn(*CHANNELS[0][:2], 3)
    for block, (cin, cout, _) in enumerate(CHANNELS[1:], start=1):
        total += conv_bn(cin, cout, 3) + conv_bn(cout, cout, 3)
        if block in projections:
            total += conv_bn(cin, cout, 1)
    return total + (256 * 64 + 64) + (64 * num_classes + num_classes)


BUILT_IN = ("legacy", "tuple_blocks", "skip_modules", "basic_blocks")
BUILT_IN_DERIVED = ("legacy_effective",)


def test_registry_holds_the_built_in_variants_and_any_team_ones():
    built_in = [name for name, spec in SUBJECTS.items() if spec.origin == "built in"]
    assert built_in == [*BUILT_IN, *BUILT_IN_DERIVED]
    assert [name for name in VARIANTS if SUBJECTS[name].origin == "built in"] == list(BUILT_IN)
    assert [name for name in built_in if SUBJECTS[name].derived] == list(BUILT_IN_DERIVED)
    # Everything else was registered by a team (a pyproject table or harness.register), after them.
    team = [name for name in SUBJECTS if name not in built_in]
    assert list(VARIANTS) == [*BUILT_IN, *(name for name in team if not SUBJECTS[name].derived)]


def test_build_rejects_unknown_name():
    known = re.escape(", ".join(SUBJECTS))
    with pytest.raises(HarnessError, match=f"unknown variant 'resnet'; known: {known}$"):
        build("resnet")


def test_build_returns_a_fresh_instance(variant_name: str):
    a, b = build(variant_name), build(variant_name)
    assert a is not b and isinstance(a, nn.Module)


def test_analytic_counts_match_the_measured_figures():
    assert analytic_parameter_count(PROJECTION_BLOCKS) == 581_185
    assert analytic_parameter_count((6,)) == 570_369  # legacy: one shared projection survives


# --- legacy ------------------------------------------------------------------------------


def test_legacy_registers_570369_parameters_and_102_keys():
    model = build("legacy")
    assert parameter_count(model.parameters()) == 570_369
    keys = model.state_dict().keys()
    assert len(keys) == 102
    skip_keys = sorted(k for k in keys if k.startswith("skip."))
    assert skip_keys == [
        "skip.0.bias", "skip.0.weight", "skip.1.bias", "skip.1.num_batches_tracked",
        "skip.1.running_mean", "skip.1.running_var", "skip.1.weight",
    ]


def test_legacy_shared_skip_is_block6_projection():
    skip = build("legacy").skip
    assert skip[0].weight.shape == (256, 128, 1) and skip[0].stride == (2,)


def test_legacy_fresh_forward_raises_channel_mismatch():
    with pytest.raises(RuntimeError, match=r"expected input\[2, 32, 64\] to have 128 channels, but got 32"):
        build("legacy")(torch.randn(2, 1, 64))


def test_legacy_stays_broken_after_a_failed_forward():
    model = build("legacy")
    for _ in range(2):
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 1, 64))
    assert model.skip is not None  # the forward raised before its first `self.skip = None`


def test_legacy_forward_clears_skip_from_state_dict():
    model = legacy_effective()
    model(torch.randn(2, 1, 64))
    assert model.skip is None
    assert len(model.state_dict()) == 95 and not any(k.startswith("skip.") for k in model.state_dict())


def test_legacy_effective_wiring_identity_on_odd_blocks_none_on_even():
    model = legacy_effective().eval()
    observed = observe_blocks(model, torch.randn(3, 1, 200))
    assert [o.block.index for o in observed] == [1, 2, 3, 4, 5, 6]
    assert observed[-1].observed_at == "global_pool"
    for o in observed:
        if o.block.index in PROJECTION_BLOCKS:
            assert_close(o.output, o.main_output, EXACT, f"block {o.block.index}: no shortcut")
        else:
            assert_close(o.output, o.main_output + o.input, EXACT, f"block {o.block.index}: identity")


def test_legacy_effective_counts():
    model = legacy_effective()
    assert parameter_count(model.parameters()) == analytic_parameter_count(())
    assert parameter_count(used_tensors(model.eval(), torch.randn(2, 1, 64))) == 536_833


# --- tuple_blocks --------------------------------------------------------------------------


def test_tuple_blocks_registers_16705_but_uses_581185():
    model = build("tuple_blocks")
    assert parameter_count(model.parameters()) == 16_705
    assert parameter_count(used_tensors(model.eval(), torch.randn(2, 1, 64))) == 581_185


def test_tuple_blocks_state_dict_has_only_11_keys():
    keys = build("tuple_blocks").state_dict().keys()
    assert len(keys) == 11
    assert {k.split(".")[0] for k in keys} == {"conv1", "fc1", "fc2"}


def test_tuple_blocks_eval_misses_15_block_batchnorms():
    model = build("tuple_blocks").eval()
    still_training = [h.path for h in batchnorms(model) if h.obj.training]
    assert len(still_training) == 15
    assert all(path.startswith("res_block") for path in still_training)


def test_tuple_blocks_optimizer_step_leaves_block_weights_unchanged():
    model = build("tuple_blocks").train()
    blocks = residual_blocks(model)
    before = [p.detach().clone() for b in blocks for p in b.main.parameters()]
    head_before = model.fc1.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 1, 64)).sum().backward()
    optimizer.step()
    after = [p.detach() for b in blocks for p in b.main.parameters()]
    for old, new in zip(before, after, strict=True):
        assert_close(new, old, EXACT, "a tuple-block weight changed")
    # The step did run: the registered head moved, and the blocks did get gradients.
    assert not torch.equal(model.fc1.weight, head_before)
    assert all(p.grad is not None for b in blocks for p in b.main.parameters())


# --- skip_modules --------------------------------------------------------------------------


def test_skip_modules_registers_everything_it_uses():
    model = build("skip_modules")
    assert parameter_count(model.parameters()) == 581_185
    assert len(model.state_dict()) == 116
    assert parameter_count(used_tensors(model.eval(), torch.randn(2, 1, 64))) == 581_185


# --- basic_blocks --------------------------------------------------------------------------


def test_basic_blocks_registers_everything_it_uses():
    model = build("basic_blocks")
    assert parameter_count(model.parameters()) == 581_185 == analytic_parameter_count(PROJECTION_BLOCKS)
    assert len(model.state_dict()) == 116
    assert parameter_count(used_tensors(model.eval(), torch.randn(2, 1, 64))) == 581_185


def test_basic_blocks_eval_and_train_reach_all_16_batchnorms():
    model = build("basic_blocks")
    held = batchnorms(model)
    assert len(held) == 16  # stem, two per block, one per projection shortcut
    registered = {id(m) for m in model.modules()}
    assert all(id(h.obj) in registered for h in held)
    assert not any(h.obj.training for h in batchnorms(model.eval()))
    assert all(h.obj.training for h in batchnorms(model.train()))


def test_basic_blocks_keeps_one_projection_per_shape_changing_block():
    blocks = residual_blocks(build("basic_blocks"))
    assert [b.index for b in blocks] == [1, 2, 3, 4, 5, 6]
    assert all(b.adds_itself for b in blocks)
    assert [b.index for b in blocks if b.shortcut is not None] == list(PROJECTION_BLOCKS)
    assert [b.shortcut_path for b in blocks if b.shortcut is not None] == [
        f"layers.{i - 1}.downsample" for i in PROJECTION_BLOCKS]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_basic_blocks_is_bit_identical_to_skip_modules_given_its_weights(train: bool):
    # Different attribute names (stem, layers.N.conv1, downsample, embed, classifier):
    # copy_weights pairs the tensors by structure and proves the pairing before copying.
    skip_modules = seed_weights(build("skip_modules"), 7)
    basic_blocks = build("basic_blocks")
    copy_weights(skip_modules, basic_blocks)
    x = torch.randn(3, 1, 1000, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = skip_modules.train(train)(x)
        actual = basic_blocks.train(train)(x)
    assert_close(actual, expected, EXACT, f"basic_blocks vs skip_modules ({'train' if train else 'eval'})")
    assert not torch.isclose(expected[0], expected[1]).all()  # the weights are not degenerate


# --- the family's output (any model's output is audited by output_contract, at its own contract) ---


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_output_is_batch_by_classes_in_open_unit_interval(family_name: str, num_classes: int, train: bool):
    model = build(family_name, num_classes=num_classes).train(train)
    with torch.no_grad():
        out = model(torch.randn(4, 1, 300))
    assert out.shape == (4, num_classes)
    assert bool(torch.isfinite(out).all())
    if SUBJECTS[family_name].output == "probability":  # a spec declaring logits promises no range
        assert bool(((out > 0) & (out < 1)).all())

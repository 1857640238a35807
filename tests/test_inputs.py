"""Wrong input: the harness validator's clear ValueError, and what the raw variants do instead.

The raw variants' behaviour is pinned as found: they raise deep inside (messages about
conv weights or running_mean sizes) for every wrong rank, channel count or dtype; they
turn NaN/Inf into NaN scores without a word (tuple_blocks spreads one bad sample to the
whole batch); an empty batch comes back as an empty output. The facts of the family's
``[B, 1, T]`` forward hold for every family variant (``family_name``); what any model does
with a poisoned sample, at its own input contract, for every runnable one (``runnable_name``).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness import SUBJECTS, HarnessError, build, validate_input
from harness.core.introspect import batchnorms
from harness.rawnet2.inputs import DOWNSAMPLING, InputError, last_norm_values, min_train_length

batches = st.integers(1, 8)
lengths = st.integers(1, 4000)


def model(name: str) -> torch.nn.Module:
    return build(name).eval()


def eval_normalises_per_batch(model: torch.nn.Module) -> bool:
    """Whether some BatchNorm (tuple members included) is still in training mode after eval()."""
    return any(held.obj.training for held in batchnorms(model))


# --- the validator --------------------------------------------------------------------------------


@given(batch=batches, length=lengths)
def test_a_waveform_batch_passes_unchanged(batch: int, length: int):
    x = torch.zeros(batch, 1, length)
    assert validate_input(x) is x


def test_input_error_is_a_value_error_and_a_failed_input():
    with pytest.raises(InputError) as info:
        validate_input(torch.zeros(2, 16000))
    assert isinstance(info.value, ValueError) and isinstance(info.value, HarnessError)
    assert info.value.exit_code == 1


@given(shape=st.lists(st.integers(1, 5), min_size=0, max_size=6).filter(lambda s: len(s) != 3))
def test_wrong_rank_says_what_was_expected(shape: list[int]):
    with pytest.raises(ValueError, match=rf"expected a waveform batch \[B, 1, T\] \(3 dims\), "
                                         rf"got {len(shape)} dims, shape \({', '.join(map(str, shape))}"):
        validate_input(torch.zeros(shape))


@pytest.mark.parametrize(("shape", "hint"), [
    ((2, 16000), "add the channel dim with x.unsqueeze(1)"),
    ((16000,), "add batch and channel dims with x.view(1, 1, -1)"),
    ((2, 1, 1, 16000), "got 4 dims, shape (2, 1, 1, 16000)"),
])
def test_wrong_rank_hints_at_the_fix(shape: tuple[int, ...], hint: str):
    with pytest.raises(InputError) as info:
        validate_input(torch.zeros(shape))
    assert str(info.value).endswith(hint)


@given(batch=batches, channels=st.integers(2, 8), length=st.integers(2, 64))
def test_wrong_channel_count_is_refused(batch: int, channels: int, length: int):
    expected = rf"expected 1 channel\(s\) at dim 1 of \[B, 1, T\], got {channels} "
    with pytest.raises(InputError, match=expected):
        validate_input(torch.zeros(batch, channels, length))


def test_channels_last_gets_a_hint():
    with pytest.raises(InputError, match=r"channels-last\? use x.transpose\(1, 2\)$"):
        validate_input(torch.zeros(2, 16000, 1))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
                                   torch.bool])
def test_integer_dtype_is_refused(dtype: torch.dtype):
    expected = rf"expected a floating-point waveform \(torch.float32\), got {dtype}"
    with pytest.raises(InputError, match=expected):
        validate_input(torch.zeros(2, 1, 100, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_must_match_the_model(dtype: torch.dtype):
    x = torch.zeros(2, 1, 100, dtype=dtype)
    with pytest.raises(InputError, match=rf"expected a torch.float32 waveform .*, got {dtype}"):
        validate_input(x)
    assert validate_input(x, dtype=None) is x
    assert validate_input(x, dtype=dtype) is x


@pytest.mark.parametrize("shape", [(0, 1, 100), (2, 1, 0), (0, 1, 0)])
def test_empty_input_is_refused(shape: tuple[int, ...]):
    expected = rf"expected a non-empty batch \(B >= 1, T >= 1\), got shape \({shape[0]}, "
    with pytest.raises(InputError, match=expected):
        validate_input(torch.zeros(shape))


@given(batch=batches, length=st.integers(1, 400), data=st.data(),
       value=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_non_finite_values_are_refused_naming_the_samples(batch: int, length: int, data: st.DataObject,
                                                          value: float):
    rows = data.draw(st.sets(st.integers(0, batch - 1), min_size=1))
    x = torch.zeros(batch, 1, length)
    for row in rows:
        x[row, 0, data.draw(st.integers(0, length - 1))] = value
    nan, inf = (len(rows), 0) if math.isnan(value) else (0, len(rows))
    with pytest.raises(InputError, match=rf"waveform has {nan} NaN and {inf} Inf values "
                                         rf"\(samples \[{', '.join(map(str, sorted(rows)))}\]\)"):
        validate_input(x)


def test_non_tensor_is_refused():
    with pytest.raises(InputError, match=r"expected a waveform batch tensor \[B, 1, T\], got list"):
        validate_input([[0.0] * 100])


@given(batch=batches, length=st.integers(1, 64))
def test_training_flag_refuses_exactly_the_inputs_too_short_for_batchnorm(batch: int, length: int):
    x = torch.zeros(batch, 1, length)
    too_short = batch * math.ceil(length / 8) < 2  # the last BatchNorm's values per channel
    if too_short:
        with pytest.raises(InputError, match=r"too short for a train-mode forward.*use T >= 9"):
            validate_input(x, training=True)
    else:
        assert validate_input(x, training=True) is x
    assert validate_input(x) is x


def test_length_rule_constants():
    assert DOWNSAMPLING == 8  # three stride-2 blocks
    assert [min_train_length(b) for b in (1, 2, 8)] == [9, 1, 1]
    assert last_norm_values(1, 8) == 1 and last_norm_values(1, 9) == 2 and last_norm_values(3, 17) == 9


# --- what the raw variants do with the same inputs -------------------------------------------------


@pytest.mark.parametrize(("shape", "dtype", "error"), [
    # [B, T] is read as an unbatched [C, L] input: C = B channels
    ((2, 300), torch.float32, r"expected input\[1, 2, 300\] to have 1 channels, but got 2"),
    # [1, T] passes conv1 as unbatched, then BatchNorm reads [32, T] as (N=32, C=T)
    ((1, 300), torch.float32, r"running_mean should contain 300 elements not 32"),
    ((2, 1, 1, 300), torch.float32, r"Expected 2D \(unbatched\) or 3D \(batched\) input to conv1d"),
    ((2, 2, 300), torch.float32, r"expected input\[2, 2, 300\] to have 1 channels, but got 2"),
    ((2, 300, 1), torch.float32, r"expected input\[2, 300, 1\] to have 1 channels, but got 300"),
    ((2, 1, 300), torch.int64, r"Input type \(long int\) and bias type \(float\) should be the same"),
    ((2, 1, 300), torch.float64, r"Input type \(double\) and bias type \(float\) should be the same"),
    ((2, 1, 0), torch.float32, r"Kernel size can't be greater than actual input size"),
], ids=["rank2", "rank2-batch1", "rank4", "channels", "channels-last", "int64", "float64", "length0"])
def test_raw_variants_raise_deep_inside(family_name: str, shape: tuple[int, ...], dtype: torch.dtype,
                                       error: str):
    x = torch.zeros(shape).to(dtype)
    with pytest.raises(ValueError):
        validate_input(x)  # the validator refuses it up front, with what was expected
    with pytest.raises(RuntimeError, match=error), torch.no_grad():
        model(family_name)(x)


@given(batch=st.integers(1, 3), length=st.integers(1, 300))
def test_no_rank_2_input_passes_a_raw_variant_silently(family_name: str, batch: int, length: int):
    # Whatever the numbers, a [B, T] input never reaches the output with a changed shape:
    # channels grow while lengths shrink, so some BatchNorm always sees a size mismatch.
    with pytest.raises(RuntimeError), torch.no_grad():
        model(family_name)(torch.zeros(batch, length))


def test_raw_variants_return_an_empty_batch_silently(family_name: str):
    with torch.no_grad():
        out = model(family_name)(torch.zeros(0, 1, 300))
    assert out.shape == (0, 1)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_raw_variants_turn_non_finite_input_into_nan_scores(runnable_name: str, value: float):
    x = SUBJECTS[runnable_name].example(3)
    x[1].view(-1)[17] = value
    net = model(runnable_name)
    # A variant whose eval() misses BatchNorms (tuple_blocks' tuple members) normalises with
    # batch statistics: they carry the NaN to every row. Otherwise only the poisoned row is NaN.
    poisoned = [0, 1, 2] if eval_normalises_per_batch(net) else [1]
    with torch.no_grad():
        out = net(x)
    assert (~torch.isfinite(out)).any(1).nonzero().flatten().tolist() == poisoned


def test_a_variant_normalises_per_batch_after_eval_exactly_when_its_spec_says_so(runnable_name: str):
    # The rule above reads the model; its spec must declare the same (a mode_propagation defect).
    declared = "mode_propagation" in SUBJECTS[runnable_name].declared_defects
    assert eval_normalises_per_batch(model(runnable_name)) == declared


def test_tuple_blocks_normalises_per_batch_after_eval():
    assert eval_normalises_per_batch(model("tuple_blocks"))

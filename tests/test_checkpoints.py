"""Checkpoint layouts, conversion between them, and get_audio_model (any variant's own checkpoint too).

Facts about the layouts are read off the variants' source (which module each
``__init__`` registers under which name); conversion properties are checked over
random weights; function preservation is checked by running both models.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
from hypothesis import assume, given
from hypothesis import strategies as st

from harness import HarnessError, build, convert_state_dict, get_audio_model, legacy_effective
from harness.core.introspect import parameter_count, used_tensors
from harness.core.tolerances import EXACT, assert_close
from harness.rawnet2.checkpoints import (
    POLICIES,
    check_fits,
    detect_layout,
    detect_source,
    legacy_effective_state_dict,
    load_checkpoint,
    save_checkpoint,
)
from harness.rawnet2.equivalence import seed_weights
from harness.rawnet2.layouts import declared_layouts, state_dict_layout, variant_of_state
from harness.rawnet2.registry import register, spec, unregister

BLOCKS = tuple(f"res_block{i}" for i in range(1, 7))
# Where each variant's __init__ registers each canonical module (read off the source).
EXPECTED_LAYOUTS = {
    "legacy": {
        "prefixes": {"conv1": "conv1", **{b: b for b in BLOCKS}, "skip6": "skip", "fc1": "fc1", "fc2": "fc2"},
        "unsaved": set(),
        "cleared": {"skip6"},
    },
    "skip_modules": {
        "prefixes": {"conv1": "conv1", **{b: b for b in BLOCKS}, "skip2": "skip2", "skip4": "skip4",
                     "skip6": "skip6", "fc1": "fc1", "fc2": "fc2"},
        "unsaved": set(),
        "cleared": set(),
    },
    "tuple_blocks": {
        "prefixes": {"conv1": "conv1", "fc1": "fc1", "fc2": "fc2"},
        "unsaved": {*BLOCKS, "skip2", "skip4", "skip6"},
        "cleared": set(),
    },
}
# Layouts a checkpoint can be converted from and to (tuple_blocks cannot hold one).
CONVERTIBLE = ("legacy", "skip_modules")


def module_of(layout: str, key: str) -> str:
    return state_dict_layout(layout).canonical_key(key).partition(".")[0]


def random_state_dict(layout: str, seed: int, num_classes: int = 1) -> dict[str, torch.Tensor]:
    """Seeded weights and BatchNorm statistics (harness.rawnet2.equivalence.seed_weights), so eval and
    train mode differ; num_batches_tracked non-zero too, so a conversion must carry it."""
    state = {k: v.clone() for k, v in seed_weights(build(layout, num_classes=num_classes), seed)
             .state_dict().items()}
    for key, tensor in state.items():
        if key.endswith("num_batches_tracked"):
            tensor.fill_(seed % 1000)
    return state


def zero_gate(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """skip_modules weights with every shortcut's BatchNorm weight and bias set to 0."""
    return {k: torch.zeros_like(v) if k.split(".")[0] in ("skip2", "skip4", "skip6")
            and k.endswith(("1.weight", "1.bias")) else v for k, v in state.items()}


@st.composite
def checkpoints(draw, layouts=CONVERTIBLE):
    """(layout, state_dict): random weights; legacy with or without the shared skip; any width."""
    layout = draw(st.sampled_from(layouts))
    state = random_state_dict(layout, draw(st.integers(0, 2**16)), draw(st.integers(1, 3)))
    if layout == "legacy" and draw(st.booleans()):
        state = {k: v for k, v in state.items() if not k.startswith("skip.")}  # saved after a forward
    if layout == "skip_modules" and draw(st.booleans()):
        state = zero_gate(state)
    return layout, state


def can_preserve_function(source: str, target: str, state: dict) -> bool:
    gates = [v for k, v in state.items() if k.split(".")[0] in ("skip2", "skip4", "skip6")
             and k.endswith(("1.weight", "1.bias"))]
    return not (source == "skip_modules" and target == "legacy" and any(g.any() for g in gates))


# --- layouts -------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", declared_layouts())
def test_state_dict_layout_matches_where_each_variant_registers_its_modules(layout: str):
    spec, expected = state_dict_layout(layout), EXPECTED_LAYOUTS[layout]
    assert dict(spec.prefixes) == expected["prefixes"]
    assert set(spec.unsaved) == expected["unsaved"]
    assert set(spec.cleared) == expected["cleared"]
    # Every key of a fresh model has a canonical name and maps back to itself.
    for key in build(layout).state_dict():
        assert spec.key(spec.canonical_key(key)) == key


def test_legacy_layout_names_the_shared_skip_skip6():
    spec = state_dict_layout("legacy")
    assert spec.canonical_key("skip.1.running_var") == "skip6.1.running_var"
    assert spec.key("skip6.0.weight") == "skip.0.weight"
    assert spec.key("skip2.0.weight") is None  # the legacy layout has no place for block 2's shortcut


def test_unknown_layout_is_refused():
    with pytest.raises(HarnessError, match="unknown layout 'resnet'"):
        state_dict_layout("resnet")


@pytest.mark.parametrize(
    ("subject", "expected"),
    [("legacy", "legacy"), ("legacy_effective", "legacy"), ("skip_modules", "skip_modules"),
     ("tuple_blocks", "tuple_blocks")],
)
def test_detect_layout_of_each_fresh_model(subject: str, expected: str):
    state = build(subject).state_dict()
    keys = {"legacy": 102, "legacy_effective": 95, "skip_modules": 116, "tuple_blocks": 11}
    assert len(state) == keys[subject]
    assert detect_layout(state) == expected


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({}, "empty state_dict"),
        (nn.Linear(3, 4).state_dict(), r"not a RawNet2 checkpoint.*'weight'"),
        (dict.fromkeys(["conv1.0.weight", "skip.0.weight", "skip2.0.weight"], torch.zeros(1)),
         "mixes layouts"),
    ],
    ids=["empty", "foreign", "mixed"],
)
def test_detect_layout_refuses_what_no_variant_saves(state: dict, match: str):
    with pytest.raises(HarnessError, match=match):
        detect_layout(state)


def test_check_fits_names_missing_unexpected_and_misshaped_keys():
    state = build("skip_modules").state_dict()
    del state["res_block3.0.weight"]
    state["fc1.weight"] = state["fc1.weight"].t()
    state["skip2.2.weight"] = torch.zeros(1)
    with pytest.raises(HarnessError) as info:
        check_fits(state, "skip_modules")
    assert str(info.value) == (
        "does not fit the skip_modules layout: missing res_block3.0.weight; unexpected skip2.2.weight; "
        "mis-shaped fc1.weight [256, 64] (expected [64, 256])"
    )


# --- conversion properties -----------------------------------------------------------------


@given(checkpoints(), st.sampled_from(CONVERTIBLE), st.sampled_from(POLICIES))
def test_every_input_key_is_kept_renamed_or_dropped_and_every_output_key_accounted(case, target, policy):
    source, state = case
    if policy == "preserve-function" and not can_preserve_function(source, target, state):
        with pytest.raises(HarnessError, match="skip2, skip4, skip6 are live shortcuts.*preserve-weights"):
            convert_state_dict(state, target, policy=policy)
        return
    out, report = convert_state_dict(state, target, policy=policy)
    assert report.source == source and report.target == target
    assert len(report.kept) + len(report.renamed) + len(report.dropped) == len(state)
    assert report.input_keys == set(state)
    assert report.output_keys == set(out)
    assert all(report.dropped.values()) and all(report.added.values())  # every change says why
    check_fits(out, target)


@given(checkpoints(), st.sampled_from(POLICIES))
def test_convert_and_back_is_identity_on_the_keys_both_layouts_share(case, policy):
    source, state = case
    target = "skip_modules" if source == "legacy" else "legacy"
    # a refused conversion is covered above: no example here
    assume(policy != "preserve-function" or can_preserve_function(source, target, state))
    there, _ = convert_state_dict(state, target, policy=policy)
    back, _ = convert_state_dict(there, source, policy=policy)
    both = set(state_dict_layout(source).prefixes) & set(state_dict_layout(target).prefixes)
    if policy == "preserve-function":
        both -= {*state_dict_layout(source).cleared, *state_dict_layout(target).cleared}
    shared = [k for k in state if module_of(source, k) in both]
    assert {m.split(".")[0] for m in shared} >= {"conv1", *BLOCKS, "fc1", "fc2"}
    for key in shared:
        assert torch.equal(back[key], state[key]), key


@given(checkpoints(), st.sampled_from(CONVERTIBLE), st.sampled_from(POLICIES))
def test_conversion_is_idempotent_and_deterministic(case, target, policy):
    source, state = case
    assume(policy != "preserve-function" or can_preserve_function(source, target, state))  # else refused
    once, _ = convert_state_dict(state, target, policy=policy)
    twice, report = convert_state_dict(once, target, policy=policy)
    assert report.renamed == report.added == report.dropped == {}
    assert list(twice) == list(once) and all(torch.equal(twice[k], once[k]) for k in once)
    again, _ = convert_state_dict(state, target, policy=policy)  # fresh weights are seeded
    assert all(torch.equal(again[k], once[k]) for k in once)


def test_legacy_to_skip_modules_report_preserve_function():
    _, report = convert_state_dict(build("legacy").state_dict(), "skip_modules")
    assert len(report.kept) == 95 and report.renamed == {}
    assert sorted(report.dropped) == sorted(k for k in build("legacy").state_dict() if k.startswith("skip."))
    assert {k.split(".")[0] for k in report.added} == {"skip2", "skip4", "skip6"} and len(report.added) == 21
    assert all("legacy function" in why for why in report.dropped.values())


def test_legacy_to_skip_modules_preserve_weights_carries_the_shared_skip_to_skip6():
    state = random_state_dict("legacy", seed=1)
    out, report = convert_state_dict(state, "skip_modules", policy="preserve-weights")
    assert report.renamed == {k: k.replace("skip.", "skip6.", 1) for k in state if k.startswith("skip.")}
    assert {k.split(".")[0] for k in report.added} == {"skip2", "skip4"} and report.dropped == {}
    for old, new in report.renamed.items():
        assert torch.equal(out[new], state[old])


def test_zero_gated_shortcuts_have_default_running_stats_and_live_conv_weights():
    out, _ = convert_state_dict(random_state_dict("legacy", seed=2), "skip_modules")
    fresh = nn.BatchNorm1d(64)
    for n in (2, 4, 6):
        assert not out[f"skip{n}.1.weight"].any() and not out[f"skip{n}.1.bias"].any()
        assert out[f"skip{n}.0.weight"].abs().sum() > 0  # else the gate could never learn
        assert not out[f"skip{n}.1.running_mean"].any() and torch.equal(
            out[f"skip{n}.1.running_var"], torch.ones_like(out[f"skip{n}.1.running_var"]))
    assert torch.equal(out["skip2.1.running_var"], fresh.running_var)


def test_skip_modules_to_legacy_preserve_function_refuses_live_shortcuts():
    with pytest.raises(HarnessError, match="skip2, skip4, skip6 are live shortcuts"):
        convert_state_dict(random_state_dict("skip_modules", seed=3), "legacy")


def test_explicit_source_that_does_not_match_is_refused():
    with pytest.raises(HarnessError, match="does not fit the legacy layout: unexpected skip2.0.weight"):
        convert_state_dict(build("skip_modules").state_dict(), "skip_modules", source="legacy")


@pytest.mark.parametrize("policy", POLICIES)
def test_unknown_layouts_and_policies_are_refused(policy: str):
    state = build("legacy").state_dict()
    with pytest.raises(HarnessError, match="unknown target layout 'resnet'"):
        convert_state_dict(state, "resnet", policy=policy)
    with pytest.raises(HarnessError, match="unknown policy 'keep-everything'"):
        convert_state_dict(state, "legacy", policy="keep-everything")


def tuple_blocks_missing_share() -> str:
    """Measured independently: parameters a tuple_blocks forward uses vs what it registers."""
    model = build("tuple_blocks").eval()
    used = parameter_count(used_tensors(model, torch.zeros(2, 1, 64)))
    registered = parameter_count(model.parameters())
    return f"{used - registered:,} of {used:,} weights ({(used - registered) / used:.1%})"


def test_tuple_blocks_is_refused_both_ways_with_the_measured_share_of_missing_weights():
    share = tuple_blocks_missing_share()
    assert share == "564,480 of 581,185 weights (97.1%)"  # the foundation's measured counts
    with pytest.raises(HarnessError, match=f"cannot convert from tuple_blocks.*{re.escape(share)}"):
        convert_state_dict(build("tuple_blocks").state_dict(), "skip_modules")
    with pytest.raises(HarnessError, match=f"cannot convert to tuple_blocks.*{re.escape(share)}"):
        convert_state_dict(build("legacy").state_dict(), "tuple_blocks")


# --- function preservation -----------------------------------------------------------------


def logits_and_scores(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-sigmoid logits too: scores saturate, logits show any difference."""
    captured = []
    handle = model.fc2.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        scores = model(x)
    finally:
        handle.remove()
    return captured[0], scores


@given(
    seed=st.integers(0, 2**16),
    length=st.integers(16, 4000),
    train=st.booleans(),
    with_shared_skip=st.booleans(),
)
def test_legacy_to_skip_modules_preserve_function_computes_the_legacy_effective_function(
    seed, length, train, with_shared_skip
):
    state = random_state_dict("legacy", seed)
    effective_weights = {k: v for k, v in state.items() if not k.startswith("skip.")}
    if not with_shared_skip:
        state = effective_weights  # a legacy checkpoint saved after a forward
    reference = legacy_effective()  # strict load: exactly the 95 tensors its forward can use
    reference.load_state_dict(effective_weights)
    converted = get_audio_model("skip_modules", state)
    assert not converted.training
    reference.train(train)
    converted.train(train)
    x = torch.randn(2, 1, length, generator=torch.Generator().manual_seed(seed))  # a batch: train-mode BN
    with torch.no_grad():
        expected_logits, expected = logits_and_scores(reference, x)
        actual_logits, actual = logits_and_scores(converted, x)
    assert_close(actual_logits, expected_logits, EXACT, "converted skip_modules vs legacy effective (logits)")
    assert_close(actual, expected, EXACT, "converted skip_modules vs legacy effective (scores)")


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_the_function_comparison_can_fail_live_shortcuts_compute_something_else(train: bool):
    state = random_state_dict("legacy", seed=8)
    reference = legacy_effective().train(train)
    reference.load_state_dict({k: v for k, v in state.items() if not k.startswith("skip.")})
    live = get_audio_model("skip_modules", state, policy="preserve-weights").train(train)
    x = torch.randn(2, 1, 1000)
    with torch.no_grad():
        with pytest.raises(AssertionError, match="Tensor-likes are not equal"):
            assert_close(logits_and_scores(live, x)[0], logits_and_scores(reference, x)[0], EXACT)


def test_zero_gated_shortcuts_learn_from_the_first_backward():
    model = get_audio_model("skip_modules", random_state_dict("legacy", seed=4)).train()
    model(torch.randn(2, 1, 400)).sum().backward()
    for n in (2, 4, 6):
        assert model.get_submodule(f"skip{n}.1").weight.grad.abs().sum() > 0


# --- legacy_effective_state_dict and get_audio_model ---------------------------------------


def test_legacy_effective_state_dict_is_the_same_for_a_fresh_legacy_model_and_one_after_forward():
    fresh = build("legacy")
    ran = build("legacy")
    ran.load_state_dict(fresh.state_dict())
    ran.skip = None  # what the legacy forward's first line of bookkeeping does
    a, b = legacy_effective_state_dict(fresh), legacy_effective_state_dict(ran)
    assert len(fresh.state_dict()) == 102 and len(ran.state_dict()) == 95
    assert list(a) == list(b) == list(ran.state_dict())
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_get_audio_model_without_checkpoint_is_a_fresh_skip_modules_in_eval_mode():
    model = get_audio_model()
    assert type(model) is type(build("skip_modules"))
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("with_shared_skip", [True, False], ids=["102-keys", "95-keys"])
def test_get_audio_model_legacy_returns_the_legacy_effective_form(with_shared_skip: bool):
    state = random_state_dict("legacy", seed=5)
    if not with_shared_skip:
        state = {k: v for k, v in state.items() if not k.startswith("skip.")}
    model = get_audio_model("legacy", state)
    assert model.skip is None and not model.training
    reference = legacy_effective().eval()
    reference.load_state_dict({k: v for k, v in state.items() if not k.startswith("skip.")})
    x = torch.randn(2, 1, 800)
    with torch.no_grad():
        assert_close(model(x), reference(x), EXACT, "get_audio_model('legacy') vs legacy_effective")


def test_get_audio_model_loads_skip_modules_weights_unchanged_and_infers_num_classes():
    state = random_state_dict("skip_modules", seed=6, num_classes=3)
    model = get_audio_model("skip_modules", {"state_dict": {f"module.{k}": v for k, v in state.items()}})
    assert model.fc2.out_features == 3
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_get_audio_model_misfit_names_the_keys():
    state = build("skip_modules").state_dict()
    state["fc2.bias"] = torch.zeros(2)
    del state["skip4.0.bias"]
    with pytest.raises(HarnessError) as info:
        get_audio_model("skip_modules", state)
    assert str(info.value) == ("checkpoint: does not fit the skip_modules layout: "
                               "missing skip4.0.bias; mis-shaped fc2.bias [2] (expected [1])")


def test_get_audio_model_refuses_tuple_blocks_checkpoints_and_unknown_variants():
    with pytest.raises(HarnessError, match="cannot convert to tuple_blocks"):
        get_audio_model("tuple_blocks", build("skip_modules").state_dict())
    with pytest.raises(HarnessError, match="unknown variant 'resnet'"):
        get_audio_model("resnet")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_get_audio_model_from_a_saved_file(tmp_path, suffix: str):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    state = random_state_dict("legacy", seed=7)
    path = tmp_path / f"legacy{suffix}"
    save_checkpoint(state, path)
    assert all(torch.equal(v, state[k]) for k, v in load_checkpoint(path).items())
    model = get_audio_model("skip_modules", path)
    assert torch.equal(model.res_block4[3].weight, state["res_block4.3.weight"])


def test_get_audio_model_moves_to_the_device(device: torch.device):
    model = get_audio_model("skip_modules", build("skip_modules").state_dict(), device=device)
    assert {p.device.type for p in model.parameters()} == {device.type}


def test_added_tensors_take_the_checkpoint_float_dtype_and_are_fresh_copies():
    half = {k: v.half() if v.is_floating_point() else v for k, v in build("legacy").state_dict().items()}
    out, report = convert_state_dict(half, "skip_modules")
    assert {out[k].dtype for k in report.added if out[k].is_floating_point()} == {torch.float16}
    out["skip2.0.weight"].add_(1)  # a caller training the result must not change the next conversion
    again, _ = convert_state_dict(half, "skip_modules")
    assert not torch.equal(again["skip2.0.weight"], out["skip2.0.weight"])


# --- any registered variant's own checkpoint -------------------------------------------------


def test_a_variants_own_checkpoint_loads_back_computing_its_function(runnable_name: str):
    """The generic round trip, at the variant's own input contract: seeded weights saved as its own
    state_dict load back (get_audio_model) into a model computing exactly the same; a layout that
    cannot hold its weights (tuple_blocks) is refused naming why."""
    variant = spec(runnable_name)
    model = seed_weights(build(runnable_name), 9).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if variant.layout is not None and state_dict_layout(variant.layout).unsaved:
        with pytest.raises(HarnessError, match=f"cannot convert (from|to) {variant.layout}"):
            get_audio_model(runnable_name, state)
        return
    loaded = get_audio_model(runnable_name, state)
    x = variant.example(2, seed=9)
    with torch.no_grad():
        why = "does its forward use a tensor its state_dict misses?"
        assert_close(loaded(x), model(x), EXACT, f"{runnable_name} from its own checkpoint ({why})")


def test_a_checkpoint_of_a_variant_without_a_layout_loads_into_a_declared_layout():
    """basic_blocks declares no layout: its keys are detected as its own, matched into the canonical
    layout and converted from there, the function proven."""
    source = seed_weights(build("basic_blocks"), 10)
    state = source.state_dict()
    assert detect_source(state) is spec("basic_blocks")
    model = get_audio_model("skip_modules", state)  # the matching proves train and eval mode
    x = spec("skip_modules").example(2, seed=10)
    with torch.no_grad():
        assert_close(model(x), source.eval()(x), EXACT, "basic_blocks checkpoint in skip_modules, eval mode")


@pytest.fixture
def renamed_skip_modules():
    """skip_modules' class renamed, registered held to skip_modules, and an unrelated twin."""
    renamed = type("RenamedSkipModules", (type(build("skip_modules")),), {})
    register("renamed_skip", renamed, reference="skip_modules", input_shape=(1, 1000))
    yield renamed
    unregister("renamed_skip")
    unregister("twin_skip")


def test_keys_of_several_variants_are_read_as_the_one_the_others_are_held_to(renamed_skip_modules):
    state = build("skip_modules").state_dict()
    assert variant_of_state(state) is spec("skip_modules")  # renamed_skip has the keys, held to it
    register("twin_skip", renamed_skip_modules, input_shape=(1, 1000))  # no reference: unrelated
    expected = (r"^its keys fit the state_dicts of 2 registered variants \(skip_modules, twin_skip\): "
                r"name the one it came from with --from$")
    with pytest.raises(HarnessError, match=expected):
        variant_of_state(state)
    assert variant_of_state(nn.Linear(3, 4).state_dict()) is None


def test_a_checkpoint_no_layout_or_variant_fits_says_both():
    with pytest.raises(HarnessError, match=r"^not a RawNet2 checkpoint: .*'weight'; nor do its keys fit any "
                                           r"registered variant's state_dict \(--from VARIANT"):
        detect_source(nn.Linear(3, 4).state_dict())

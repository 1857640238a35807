"""Structural weight matching: differently named, nested and ordered models paired by dataflow and proven.

The fixed RawNet2 forms compute one function under different names (skip_modules, basic_blocks) or
hold their blocks in unregistered tuples (tuple_blocks); the team's detector (tests/team_models)
has copies with other class names and nesting. Their weights are paired here without any name
table, module or class, and the pairing is proven by bit-identical outputs.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fixed.basic_blocks import BLOCKS
from fixed.basic_blocks import RawNet2 as BasicBlocks
from fixed.skip_modules import RawNet2 as SkipModules
from fixed.tuple_blocks import RawNet2 as TupleBlocks
from harness.core.errors import HarnessError
from harness.core.introspect import held_tensors
from harness.core.matching import (
    USER_FAMILY,
    Comparison,
    MatchError,
    ModulePair,
    compare_models,
    match_weights,
    pair_weights,
    type_family,
)
from harness.core.modes import MODES
from harness.core.tolerances import EXACT, Tolerance, assert_close
from harness.core.weights import seed_weights
from tests.team_models.asv_detector import (
    MIN_SAMPLES,
    AsvDetector,
    RefactoredDetector,
    RenamedClassDetector,
    SincConv,
    SincFilterbank,
)

X = torch.randn(2, 1, 800, generator=torch.Generator().manual_seed(0))
few = settings(max_examples=max(3, settings.default.max_examples // 10), deadline=None)


def randomized(factory: type[nn.Module], seed: int) -> nn.Module:
    """A fresh model with weights and BatchNorm state drawn under ``seed`` (``harness.core.weights``)."""
    return seed_weights(factory(), seed)


def output(model: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    """The model's output in ``mode``, computed on a copy so that running statistics stay put."""
    copied = copy.deepcopy(model).train(mode == "train")
    with torch.no_grad():
        return copied(x)


def tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {h.path: h.obj.detach().clone() for h in held_tensors(model)}


def assert_mapped_values(src: nn.Module, dst: nn.Module, mapping: dict[str, str]) -> None:
    src_t, dst_t = tensors(src), tensors(dst)
    for src_path, dst_path in mapping.items():
        assert_close(dst_t[dst_path], src_t[src_path], EXACT, msg=f"{src_path} -> {dst_path}")


# --- a differently nested copy of skip_modules: shortcut computed BEFORE the branch -------------


class Stage(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv1d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm1d(cout), nn.LeakyReLU(0.3),
            nn.Conv1d(cout, cout, 3, padding=1), nn.BatchNorm1d(cout), nn.LeakyReLU(0.3),
        )
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv1d(cin, cout, 1, stride=stride), nn.BatchNorm1d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)  # before the branch, unlike the fixed forms
        return self.branch(x) + skip


class Nested(nn.Module):
    """skip_modules' function; head declared first, stages in a ModuleList, no shared names."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.ModuleDict({"hidden": nn.Linear(256, 64), "out": nn.Linear(64, 1)})
        self.front = nn.Sequential(nn.Conv1d(1, 32, 3, padding=1), nn.BatchNorm1d(32), nn.LeakyReLU(0.3))
        self.stages = nn.ModuleList(Stage(cin, cout, stride) for cin, cout, stride in BLOCKS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.front(x)
        for stage in self.stages:
            x = stage(x)
        x = F.adaptive_avg_pool1d(x, 1).squeeze(-1)
        return torch.sigmoid(self.head["out"](F.leaky_relu(self.head["hidden"](x), 0.3)))


# --- 1. skip_modules <-> basic_blocks --------------------------------------------------------


@pytest.mark.parametrize(
    ("src_cls", "dst_cls"), [(SkipModules, BasicBlocks), (BasicBlocks, SkipModules)],
    ids=["skip_to_basic", "basic_to_skip"],
)
def test_match_weights_between_renamed_forms(src_cls: type[nn.Module], dst_cls: type[nn.Module]) -> None:
    src, dst = randomized(src_cls, 1), dst_cls()
    src_before = tensors(src)
    match = match_weights(src, dst, X)

    assert len(src.state_dict()) == len(dst.state_dict()) == 116
    assert set(match.mapping) == set(src.state_dict())
    assert set(match.mapping.values()) == set(dst.state_dict())
    assert {pair.how for pair in match.modules} == {"dataflow"}
    assert match.parted_at is None
    assert_mapped_values(src, dst, match.mapping)
    for mode in MODES:
        assert_close(output(dst, X, mode), output(src, X, mode), EXACT, msg=mode)
    for path, value in tensors(src).items():  # train mode ran on copies: running stats untouched
        assert_close(value, src_before[path], EXACT, msg=path)
    assert src.training and dst.training  # nor was anyone's mode flag changed


def test_pairs_follow_the_dataflow_not_the_names() -> None:
    match = pair_weights(SkipModules(), BasicBlocks(), X)
    pairs = {pair.src: pair.dst for pair in match.modules}
    assert pairs["conv1.0"] == "stem.0"
    assert pairs["res_block4.0"] == "layers.3.conv1"
    assert pairs["skip4.1"] == "layers.3.downsample.1"
    assert pairs["fc2"] == "classifier"
    assert [pair.src for pair in match.modules][:3] == ["conv1.0", "conv1.1", "res_block1.0"]  # forward order
    assert match.mapping["skip6.0.weight"] == "layers.5.downsample.0.weight"


def test_copy_into_keeps_the_destinations_dtype() -> None:
    src = randomized(SkipModules, 2)
    match = pair_weights(src, BasicBlocks(), X)
    dst = BasicBlocks().double()
    match.copy_into(src, dst)
    assert all(p.dtype == torch.float64 for p in dst.parameters())
    cast = Tolerance(0.0, 1e-6, "float32 weights run in float64")
    assert_close(output(dst, X.double(), "eval"), output(src, X, "eval").double(), cast)


# --- 2. tuple_blocks: unregistered destination tensors -------------------------------------


def test_match_into_unregistered_tuple_blocks_in_train_mode() -> None:
    src, dst = randomized(SkipModules, 3), TupleBlocks()
    match = match_weights(src, dst, X, modes=("train",))
    assert match.mapping["res_block2.0.weight"] == "res_block2[0].0.weight"
    assert match.mapping["skip2.1.running_var"] == "res_block2[1].1.running_var"
    assert set(match.mapping.values()) == {h.path for h in held_tensors(dst)}
    assert_mapped_values(src, dst, match.mapping)
    assert_close(output(dst, X, "train"), output(src, X, "train"), EXACT)


def test_tuple_blocks_cannot_be_proven_in_eval_mode_and_stays_untouched() -> None:
    src, dst = randomized(SkipModules, 4), TupleBlocks()
    before = tensors(dst)
    with pytest.raises(MatchError, match=r"eval mode.*src res_block1\.1 vs dst res_block1\[0\]\.1") as info:
        match_weights(src, dst, X, modes=("eval",))
    assert "\n" not in str(info.value) and info.value.exit_code == 2
    for path, value in tensors(dst).items():
        assert_close(value, before[path], EXACT, msg=path)


# --- 3. different nesting and call order --------------------------------------------------------


@pytest.mark.parametrize("direction", ["skip_to_nested", "nested_to_skip"])
def test_differently_nested_model_with_shortcut_first(direction: str) -> None:
    src, dst = (randomized(SkipModules, 5), Nested())
    if direction == "nested_to_skip":
        src, dst = randomized(Nested, 5), SkipModules()
    match = match_weights(src, dst, X)
    assert {pair.how for pair in match.modules} == {"dataflow"}
    forward = {ModulePair("skip2.1", "stages.1.shortcut.1", "dataflow"),
               ModulePair("res_block2.1", "stages.1.branch.1", "dataflow"),
               ModulePair("fc1", "head.hidden", "dataflow")}
    backward = {ModulePair(p.dst, p.src, p.how) for p in forward}
    expected = forward if direction == "skip_to_nested" else backward
    assert expected <= set(match.modules)
    for mode in MODES:
        assert_close(output(dst, X, mode), output(src, X, mode), EXACT, msg=mode)


def test_dead_modules_are_paired_by_declaration_order() -> None:
    class WithSpare(SkipModules):
        def __init__(self) -> None:
            super().__init__()
            self.spare = nn.Linear(64, 64)  # never called

    class NestedWithSpare(Nested):
        def __init__(self) -> None:
            super().__init__()
            self.unused = nn.Linear(64, 64)

    src, dst = randomized(WithSpare, 6), NestedWithSpare()
    match = match_weights(src, dst, X)
    assert match.modules[-1] == ModulePair("spare", "unused", "unused")
    assert match.mapping["spare.weight"] == "unused.weight"


# --- 4. compare_models ------------------------------------------------------------------------


def test_compare_finds_a_changed_slope_in_block_three() -> None:
    ref = randomized(SkipModules, 7)
    other = copy.deepcopy(ref)
    other.res_block3[2].negative_slope = 0.2
    result = compare_models(ref, other, X)
    assert not result.equivalent
    assert [m.mode for m in result.modes] == list(MODES)
    for mode in result.modes:
        assert not mode.equivalent and mode.max_abs_diff > 0
        assert mode.first_divergence.startswith("ref res_block3.3 vs other res_block3.3: max abs diff ")


def test_compare_equivalent_forms_is_exact() -> None:
    ref, other = randomized(SkipModules, 8), BasicBlocks()
    other_before = tensors(other)
    result = compare_models(ref, other, X)
    assert result.equivalent
    assert [(m.mode, m.max_abs_diff, m.equivalent, m.first_divergence) for m in result.modes] == [
        ("train", 0.0, True, None), ("eval", 0.0, True, None)]
    doc = result.as_json()
    assert set(doc) == {"equivalent", "modes", "mapping"} and doc["mapping"]["fc2.bias"] == "classifier.bias"
    assert set(doc["modes"][0]) == {"mode", "max_abs_diff", "equivalent", "first_divergence", "stages"}
    # Every paired module, in the reference's forward order, agrees exactly.
    assert [s["max_abs_diff"] for s in doc["modes"][0]["stages"]] == [0.0] * len(doc["modes"][0]["stages"])
    assert len(doc["modes"][0]["stages"]) == len({k.rsplit(".", 1)[0] for k in doc["mapping"]})
    for path, value in tensors(other).items():  # other's own weights are not replaced
        assert_close(value, other_before[path], EXACT, msg=path)


def test_compare_parts_after_the_last_paired_module() -> None:
    ref = randomized(SkipModules, 9)
    other = copy.deepcopy(ref)
    other.sigmoid = nn.Tanh()  # a parameterless op after fc2
    result = compare_models(ref, other, X, modes=("eval",))
    assert not result.equivalent
    divergence = result.modes[0].first_divergence
    assert divergence.startswith("after ref fc2 / other fc2: every paired module agrees")


def test_compare_accepts_factories_and_reports_a_raising_one() -> None:
    assert compare_models(SkipModules, BasicBlocks, X, modes=("eval",)).equivalent

    def broken() -> nn.Module:
        raise ValueError("no such checkpoint\nsecond line")

    with pytest.raises(MatchError, match=r"^other factory raises ValueError: no such checkpoint$"):
        compare_models(SkipModules, broken, X)


def test_unknown_mode_is_a_usage_error() -> None:
    with pytest.raises(HarnessError, match="modes"):
        compare_models(SkipModules(), BasicBlocks(), X, modes=("inference",))


# --- 5. what cannot be paired ---------------------------------------------------------------


class NarrowHead(SkipModules):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(256, 32), nn.Linear(32, 1)


class NoShortcutNorm(SkipModules):
    def __init__(self) -> None:
        super().__init__()
        self.skip2 = nn.Sequential(nn.Conv1d(32, 64, kernel_size=1, stride=2))


class BiaslessHidden(SkipModules):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(256, 64, bias=False)


def test_different_channel_count_names_both_sides() -> None:
    with pytest.raises(MatchError) as info:
        match_weights(SkipModules(), NarrowHead(), X)
    assert str(info.value) == (
        "no pairing fits: src has 2 modules with no counterpart (fc1 Linear[64,256], fc2 Linear[1,64]); "
        "dst has 2 modules with no counterpart (fc1 Linear[32,256], fc2 Linear[1,32])")


def test_fewer_modules_names_the_missing_one() -> None:
    dst = NoShortcutNorm()
    before = tensors(dst)
    with pytest.raises(MatchError) as info:
        match_weights(SkipModules(), dst, X)
    assert str(info.value) == (
        "no pairing fits: src has 1 module with no counterpart (skip2.1 BatchNorm1d[64]); dst has none")
    with pytest.raises(MatchError, match=r"dst has 1 module with no counterpart \(skip2\.1 BatchNorm1d"):
        match_weights(dst, SkipModules(), X)
    for path, value in tensors(dst).items():
        assert_close(value, before[path], EXACT, msg=path)


def test_same_short_form_is_spelled_out() -> None:
    expected = (r"ref has 1 module .*\(fc1 Linear\(weight\[64,256\], bias\[64\]\)\); "
                r"other has 1 module .*\(fc1 Linear\(weight\[64,256\]\)\)")
    with pytest.raises(MatchError, match=expected):
        compare_models(SkipModules(), BiaslessHidden(), X)


def test_a_raising_forward_is_a_match_error() -> None:
    class Raises(BasicBlocks):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise TypeError("forward() got an unexpected keyword\nmore")

    expected = r"^dst forward raises TypeError: forward\(\) got an unexpected keyword$"
    with pytest.raises(MatchError, match=expected):
        match_weights(SkipModules(), Raises(), X)
    with pytest.raises(MatchError, match=r"^ref forward raises TypeError"):
        compare_models(Raises(), SkipModules(), X)


# --- 6. properties --------------------------------------------------------------------------

seeds = st.integers(0, 2**16)
# Train-mode BatchNorm after three stride-2 blocks needs B * ceil(T / 8) > 1: T >= 9 covers B = 1.
shapes = st.tuples(st.integers(1, 3), st.integers(9, 160))
FORMS = {
    "skip_modules": SkipModules, "basic_blocks": BasicBlocks, "tuple_blocks": TupleBlocks, "nested": Nested,
}


@few
@given(seed=seeds, shape=shapes)
def test_skip_modules_to_basic_blocks_is_always_proven(seed: int, shape: tuple[int, int]) -> None:
    x = torch.randn(shape[0], 1, shape[1], generator=torch.Generator().manual_seed(seed))
    src, dst = randomized(SkipModules, seed), BasicBlocks()
    match = match_weights(src, dst, x)
    assert {pair.how for pair in match.modules} == {"dataflow"}
    for mode in MODES:
        assert_close(output(dst, x, mode), output(src, x, mode), EXACT, msg=mode)


@few
@given(seed=seeds, src=st.sampled_from(sorted(FORMS)), dst=st.sampled_from(sorted(FORMS)))
def test_the_mapping_is_a_bijection_over_held_tensors(seed: int, src: str, dst: str) -> None:
    src_model, dst_model = randomized(FORMS[src], seed), randomized(FORMS[dst], seed + 1)
    match = pair_weights(src_model, dst_model, X[:, :, :64])
    src_paths = {h.path for h in held_tensors(src_model)}
    dst_paths = {h.path for h in held_tensors(dst_model)}
    assert set(match.mapping) == src_paths
    assert set(match.mapping.values()) == dst_paths
    assert len(match.mapping) == len(src_paths) == len(dst_paths)
    assert sorted(p.src for p in match.modules) == sorted({p.src for p in match.modules})
    assert sorted(p.dst for p in match.modules) == sorted({p.dst for p in match.modules})
    src_t, dst_t = tensors(src_model), tensors(dst_model)
    assert all(src_t[a].shape == dst_t[b].shape for a, b in match.mapping.items())


# --- 7. structured outputs ----------------------------------------------------------------------


@dataclasses.dataclass
class Scores:
    hidden: torch.Tensor
    logits: torch.Tensor


class Scored(nn.Module):
    """basic_blocks' layers, returning ``(hidden, logits)``; ``offset`` shifts the logits only."""

    def __init__(self, offset: float = 0.0, as_dataclass: bool = False) -> None:
        super().__init__()
        self.net = BasicBlocks()
        self.offset, self.as_dataclass = offset, as_dataclass

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | Scores:
        net = self.net
        hidden = net.act(net.embed(net.pool(net.layers(net.stem(x))).squeeze(-1)))
        logits = net.classifier(hidden) + self.offset
        return Scores(hidden, logits) if self.as_dataclass else (hidden, logits)


class ScoredSkip(SkipModules):
    """skip_modules' layers under its own names, returning ``(hidden, logits)``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        for i in range(1, 7):
            block, skip = getattr(self, f"res_block{i}"), getattr(self, f"skip{i}")
            x = block(x) + (x if skip is None else skip(x))
        hidden = F.leaky_relu(self.fc1(self.global_pool(x).squeeze(-1)), 0.3)
        return hidden, self.fc2(hidden)


def test_tuple_outputs_are_proven_leaf_by_leaf() -> None:
    src, dst = randomized(ScoredSkip, 10), Scored()
    match_weights(src, dst, X)
    for mode in MODES:
        for got, want in zip(output(dst, X, mode), output(src, X, mode), strict=True):
            assert_close(got, want, EXACT, msg=mode)


def test_tuple_outputs_are_compared_leaf_by_leaf() -> None:
    ref = randomized(ScoredSkip, 11)
    result = compare_models(ref, Scored(offset=1e-3), X)
    for mode in result.modes:
        assert not mode.equivalent and mode.max_abs_diff == pytest.approx(1e-3, abs=1e-6)
        assert mode.first_divergence.startswith("after ref fc2 / other net.classifier")
    assert compare_models(ref, Scored(offset=1e-3), X, tolerance=Tolerance(0.0, 2e-3, "test")).equivalent
    assert compare_models(ref, Scored(as_dataclass=True), X).equivalent  # dataclass fields are leaves too


def test_a_different_number_of_outputs_is_a_result_not_an_error() -> None:
    result = compare_models(Scored(), BasicBlocks(), X, modes=("eval",))
    assert not result.equivalent and result.modes[0].max_abs_diff == float("inf")
    assert result.as_json()["modes"][0]["max_abs_diff"] is None
    assert isinstance(result, Comparison)


# --- 8. class names do not matter, what a module computes with does ------------------------------

# The team detector's [B, T] input at its minimum length: every block and the GRU run.
TEAM_X = torch.randn(2, MIN_SAMPLES, generator=torch.Generator().manual_seed(12))


def assert_proven(src: nn.Module, dst: nn.Module, x: torch.Tensor) -> None:
    for mode in MODES:
        assert_close(output(dst, x, mode), output(src, x, mode), EXACT, msg=mode)


def test_a_renamed_class_holding_the_same_buffer_pairs_by_dataflow() -> None:
    src, dst = randomized(AsvDetector, 13), RenamedClassDetector()
    assert type(src.sinc) is SincConv and type(dst.sinc) is SincFilterbank  # no shared base class
    match = match_weights(src, dst, TEAM_X)
    assert ModulePair("sinc", "sinc", "dataflow") in match.modules
    assert {pair.how for pair in match.modules} == {"dataflow"}
    assert_mapped_values(src, dst, match.mapping)
    assert_proven(src, dst, TEAM_X)


class RefactoredWithFilterbank(RefactoredDetector):
    """The re-nested refactor, its front end's class renamed too: names, nesting and class all differ."""

    def __init__(self) -> None:
        super().__init__()
        old = self.front.filterbank
        self.front.filterbank = SincFilterbank(old.filters.shape[0], old.filters.shape[-1], 16000)


def test_an_equivalent_class_pairs_across_other_names_and_nesting() -> None:
    src, dst = randomized(AsvDetector, 14), RefactoredWithFilterbank()
    match = match_weights(src, dst, TEAM_X)
    assert ModulePair("sinc", "front.filterbank", "dataflow") in match.modules
    assert match.mapping["sinc.filters"] == "front.filterbank.filters"
    assert match.mapping["blocks.block2.downsample.weight"] == "stages.2.proj.weight"
    assert_proven(src, dst, TEAM_X)


def own_filterbank_init(self: nn.Module, out_channels: int, kernel_size: int, sample_rate: int) -> None:
    nn.Module.__init__(self)
    self.register_buffer("filters", SincConv(out_channels, kernel_size, sample_rate).filters)


class_names = st.from_regex(r"[A-Z][A-Za-z0-9_]{0,20}", fullmatch=True)


@few
@given(name=class_names, subclass=st.booleans(), seed=seeds)
def test_any_class_name_pairs_a_renamed_subclass_or_an_equivalent_class(name: str, subclass: bool,
                                                                        seed: int) -> None:
    """``subclass``: ``SincConv`` and a BatchNorm1d renamed by subclassing (forwards inherited); else
    a class of its own with ``SincConv``'s forward and buffer, sharing no base class."""
    if subclass:
        front, norm = type(name, (SincConv,), {}), type(f"{name}Norm", (nn.BatchNorm1d,), {})
    else:
        front = type(name, (nn.Module,), {"__init__": own_filterbank_init, "forward": SincConv.forward})
        norm = nn.BatchNorm1d
    dst = AsvDetector()
    dst.sinc, dst.first_bn = front(8, 129, 16000), norm(8)
    src = randomized(AsvDetector, seed)
    match = match_weights(src, dst, TEAM_X)
    assert {ModulePair("sinc", "sinc", "dataflow"), ModulePair("first_bn", "first_bn", "dataflow")} <= set(
        match.modules)
    assert_proven(src, dst, TEAM_X)


def test_type_family_is_the_torch_class_or_what_a_user_class_holds() -> None:
    assert type_family(nn.Conv1d(1, 2, 3)) == "Conv1d"
    assert type_family(type("Renamed", (nn.Conv1d,), {})(1, 2, 3)) == "Conv1d"  # a renamed built-in
    assert type_family(SincConv(8, 129, 16000)) == type_family(SincFilterbank(8, 129, 16000)) == USER_FAMILY
    assert type_family(type("Stack", (nn.Sequential,), {})()) == USER_FAMILY  # containers compute nothing


class ShiftedFilterbank(SincFilterbank):
    """The same buffer, another function: the filters run shifted by one tap (they are symmetric, so
    reversing them would change nothing)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.filters.roll(1, dims=-1))


def test_the_same_tensors_computing_another_function_are_refused_naming_the_pair() -> None:
    dst = AsvDetector()
    dst.sinc = ShiftedFilterbank(8, 129, 16000)
    before = tensors(dst)
    expected = r"^pairing not proven in train mode: .*first at src sinc vs dst sinc: max abs diff"
    with pytest.raises(MatchError, match=expected) as info:
        match_weights(randomized(AsvDetector, 15), dst, TEAM_X)
    assert "\n" not in str(info.value) and info.value.exit_code == 2
    for path, value in tensors(dst).items():
        assert_close(value, before[path], EXACT, msg=path)


class KernelFilterbank(nn.Module):
    """SincConv's function with its buffer under another name: what it holds differs."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernel", SincConv(8, 129, 16000).filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.kernel)


def test_a_user_class_holding_other_tensor_names_is_refused() -> None:
    dst = AsvDetector()
    dst.sinc = KernelFilterbank()
    with pytest.raises(MatchError) as info:
        match_weights(AsvDetector(), dst, TEAM_X)
    assert str(info.value) == (
        "no pairing fits: src has 1 module with no counterpart (sinc SincConv[8,1,129]); "
        "dst has 1 module with no counterpart (sinc KernelFilterbank[8,1,129])")


def test_a_built_in_class_is_itself_even_holding_the_same_tensors() -> None:
    """InstanceNorm1d(affine, tracked) holds exactly BatchNorm1d's tensors; it is not a BatchNorm."""
    dst = SkipModules()
    dst.conv1[1] = nn.InstanceNorm1d(32, affine=True, track_running_stats=True)
    expected = (r"^no pairing fits: src has 1 module with no counterpart \(conv1\.1 BatchNorm1d\[32\]\); "
                r"dst has 1 module .*\(conv1\.1 InstanceNorm1d")
    with pytest.raises(MatchError, match=expected):
        match_weights(SkipModules(), dst, X)

"""skip_wiring on blocks found by dataflow: whatever a model calls its blocks, however it nests them.

Correct models pass whether the shortcut is added in the block's own forward, in the parent's
forward or a helper method of it, first or last, as the identity (no module), a projection or a
parameter-free function; broken wirings fail naming the block by its module path. The expected
paths are written out from each model's source, never read from the harness.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import SUBJECTS
from harness.__main__ import main
from harness.core.audits import FAIL, NOT_APPLICABLE, PASS, audit
from harness.core.residuals import find_blocks
from harness.core.wiring import NO_RESIDUALS
from harness.rawnet2.audits import audit_spec
from harness.rawnet2.registry import register, unregister
from tests.helpers import function_of
from tests.team_models import asv_detector as team
from tests.team_models.asv_detector import MIN_SAMPLES

WAVES = torch.randn(2, 8000, generator=torch.Generator().manual_seed(5))
IMAGES = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(6))
FEATURES = torch.randn(3, 16, generator=torch.Generator().manual_seed(7))


def skip_wiring(factory, example: torch.Tensor):
    return audit(factory, example, checks=["skip_wiring"])


# --- the built-in family: what the declarations say, unchanged ------------------------------------


def test_family_blocks_are_found_with_the_shortcut_their_function_names(family_name: str):
    spec = SUBJECTS[family_name]
    blocks = find_blocks(spec.build().eval(), spec.example(2))
    # The function's names for shortcuts (identity, projection, none) are the kinds dataflow reports.
    assert [b.shortcut for b in blocks] == list(function_of(family_name).shortcuts.values())


def test_legacy_effective_fails_naming_blocks_2_4_6_among_its_siblings():
    report = audit_spec(SUBJECTS["legacy_effective"], SUBJECTS["legacy_effective"].example(2, 256),
                        checks=["skip_wiring"])
    assert report.results == {"skip_wiring": FAIL}
    assert [f.paths for f in report.findings] == [("res_block2",), ("res_block4",), ("res_block6",)]
    assert report.findings[0].message == (
        "res_block2: adds no shortcut, unlike res_block1, res_block3, res_block5: its output is main(input) "
        "alone (its shape changes: channels 32->64, length 256->128, and no projection is added)")


def test_legacy_fails_because_its_forward_raises():
    report = audit_spec(SUBJECTS["legacy"], SUBJECTS["legacy"].example(2), checks=["skip_wiring"])
    (message,) = report.messages("skip_wiring")
    assert message.startswith("forward raises RuntimeError: ") and message.endswith("(eval mode)")


# --- correct models with other names and nesting ---------------------------------------------------


class TorchvisionBlock(nn.Module):
    """torchvision's BasicBlock: in-place ReLU, ``out += identity``, ReLU after the addition."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TorchvisionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.layer1 = nn.Sequential(TorchvisionBlock(4, 4), TorchvisionBlock(4, 4))
        self.layer2 = nn.Sequential(TorchvisionBlock(4, 8, 2), TorchvisionBlock(8, 8))
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


class PaddingShortcutNet(nn.Module):
    """CIFAR ResNet's "option A": a parameter-free shortcut (stride and zero-pad) on the widening block,
    the identity added first, in the parent's forward; the blocks are a ModuleDict."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(1, 4, 3, padding=1)
        self.blocks = nn.ModuleDict({
            "narrow": nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.BatchNorm1d(4)),
            "wide": nn.Sequential(nn.Conv1d(4, 8, 3, 2, 1), nn.BatchNorm1d(8)),
        })
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h + self.blocks["narrow"](h)
        h = F.pad(h[:, :, ::2], (0, 0, 2, 2)) + self.blocks["wide"](h)
        return self.head(h.mean(dim=-1))


class TransformerNet(nn.Module):
    """Two pre-norm transformer layers, each adding twice in its own forward (attention, then the MLP):
    both residuals are the layer's, named by its path."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.encoder(x.reshape(x.shape[0], -1, 16)).mean(1))


def team_shortcuts(projection: str) -> list[str]:
    """The team models' six blocks: only the third changes channels (8 -> 16), through ``projection``."""
    return ["identity", "identity", projection, "identity", "identity", "identity"]


SHORT = torch.randn(2, 1, 32, generator=torch.Generator().manual_seed(8))
ASV_BLOCKS = [f"blocks.block{i}" for i in range(6)]
STAGES = [f"stages.{i}" for i in range(6)]

# (factory, example, the block paths written out from the source, their shortcuts)
CORRECT = {
    "asv_helper_method": (team.AsvDetector, WAVES, ASV_BLOCKS, team_shortcuts("blocks.block2.downsample")),
    "refactor_parent_adds_first": (team.RefactoredDetector, WAVES, STAGES, team_shortcuts("stages.2.proj")),
    "renamed_front_end_class": (team.RenamedClassDetector, WAVES, ASV_BLOCKS,
                                team_shortcuts("blocks.block2.downsample")),
    "unregistered_head_norm": (team.UnregisteredNormDetector, WAVES, STAGES, team_shortcuts("stages.2.proj")),
    "torchvision_basic_block": (TorchvisionNet, IMAGES, ["layer1.0", "layer1.1", "layer2.0", "layer2.1"],
                                ["identity", "identity", "layer2.0.downsample", "identity"]),
    "padding_shortcut_moduledict": (PaddingShortcutNet, SHORT, ["blocks.narrow", "blocks.wide"],
                                    ["identity", "parameter-free shortcut"]),
    "pre_norm_transformer": (TransformerNet, torch.randn(2, 64, generator=torch.Generator().manual_seed(9)),
                             ["encoder.layers.0"] * 2 + ["encoder.layers.1"] * 2, ["identity"] * 4),
}


@pytest.mark.parametrize("case", CORRECT)
def test_correct_wirings_pass_with_blocks_named_by_module_path(case: str):
    factory, example, paths, shortcuts = CORRECT[case]
    report = skip_wiring(factory, example)
    assert report.results == {"skip_wiring": PASS}, report.findings
    assert report.notes["skip_wiring"] == "blocks found by dataflow: " + ", ".join(
        f"{path} ({shortcut})" for path, shortcut in zip(paths, shortcuts, strict=True))


@settings(max_examples=max(2, settings.default.max_examples // 3))
@given(case=st.sampled_from(["asv_helper_method", "refactor_parent_adds_first"]), batch=st.integers(1, 3),
       extra=st.integers(0, 3000), seed=st.integers(0, 2**16))
def test_team_blocks_hold_for_any_input(case: str, batch: int, extra: int, seed: int):
    factory, _, paths, shortcuts = CORRECT[case]
    x = torch.randn(batch, MIN_SAMPLES + extra, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    blocks = find_blocks(factory().eval(), x)
    assert [b.path for b in blocks] == paths
    assert [b.projection_path or b.shortcut for b in blocks] == shortcuts
    assert all(torch.equal(b.output, b.expected) for b in blocks)


@pytest.mark.parametrize("case", CORRECT)
def test_each_block_output_is_main_plus_its_shortcut_exactly(case: str):
    factory, example, paths, _ = CORRECT[case]
    blocks = find_blocks(factory().eval(), example)
    assert [b.path for b in blocks] == paths
    for block in blocks:
        torch.testing.assert_close(block.output, block.expected, rtol=0, atol=0)
        # main(input) alone is not the output: the shortcut contributes
        assert not torch.equal(block.output, block.main)


# --- broken wirings, named by module path ------------------------------------------------------------


class CachedShortcutNet(PaddingShortcutNet):
    """The narrow block adds the input it saw in the previous forward (a stale tensor held on the model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        cached = getattr(self, "cached", h)
        self.cached = h.detach()
        h = self.blocks["narrow"](h) + cached
        h = F.pad(h[:, :, ::2], (0, 0, 2, 2)) + self.blocks["wide"](h)
        return self.head(h.mean(dim=-1))


class SharedProjectionNet(nn.Module):
    """Two widening blocks, one projection module for both (the legacy model's shared ``skip``, working)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(1, 4, 3, padding=1)
        self.block1, self.block2 = (nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.BatchNorm1d(4),
                                                  nn.Conv1d(4, 4, 3, padding=1)) for _ in range(2))
        self.skip = nn.Conv1d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = self.block1(h) + self.skip(h)
        h = self.block2(h) + self.skip(h)
        return h.mean(dim=(1, 2)).unsqueeze(1)


class CountingProjection(nn.Conv1d):
    """A projection whose output depends on how often it ran: state changed inside forward."""

    def __init__(self) -> None:
        super().__init__(4, 8, 1, stride=2)
        self.register_buffer("runs", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.runs += 1
        return super().forward(x) + self.runs


class CountingShortcutNet(PaddingShortcutNet):
    def __init__(self) -> None:
        super().__init__()
        self.proj = CountingProjection()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h + self.blocks["narrow"](h)
        h = self.proj(h) + self.blocks["wide"](h)
        return self.head(h.mean(dim=-1))


class BroadcastShortcutNet(nn.Module):
    """One channel in, eight out, and the one-channel input added to all eight."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.BatchNorm1d(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.block(x) + x).mean(dim=(1, 2)).unsqueeze(1)


# (factory, example, the block's path, the finding's whole message)
BROKEN = {
    "stale_shortcut": (
        team.StaleShortcutDetector, WAVES, "blocks.block4",
        "blocks.block4: its shortcut is computed from the input of blocks.block3, not from this block's "
        "input in this forward (a stale shortcut)"),
    "missing_shortcut": (
        team.MissingShortcutDetector, WAVES, "blocks.block2",
        "blocks.block2: adds no shortcut, unlike blocks.block0, blocks.block1, blocks.block3, blocks.block4, "
        "blocks.block5: its output is main(input) alone (its shape changes: channels 8->16, length 291->291, "
        "and no projection is added)"),
    "double_shortcut": (
        team.DoubleShortcutDetector, WAVES, "blocks.block4",
        "blocks.block4: its output holds its shortcut (identity) 2 times: main(input) + 2 x shortcut(input)"),
    "held_from_the_previous_forward": (
        CachedShortcutNet, SHORT, "blocks.narrow",
        "blocks.narrow: adds a tensor not computed from this forward's input (a held or stale tensor) where "
        "blocks.wide add a shortcut of their input: nothing computed from its own input is added"),
    "stateful_projection": (
        CountingShortcutNet, SHORT, "blocks.wide",
        "blocks.wide: output != main(input) + proj(input) recomputed from its input: max abs diff 1"),
    "broadcast_shortcut": (
        BroadcastShortcutNet, SHORT, "block",
        "block: its shortcut has shape (2, 1, 32), broadcast to the output's (2, 8, 32)"),
    "shared_projection": (
        SharedProjectionNet, SHORT, "block2",
        "block2: its projection skip is block1's too: one module shared by two blocks, so at most one of "
        "them adds its own shortcut"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_wirings_fail_naming_the_block(case: str):
    factory, example, path, message = BROKEN[case]
    model = factory()
    if case == "held_from_the_previous_forward":
        model.eval()(example)  # a forward before the audit's leaves its input behind
        factory = functools.partial(lambda m: m, model)
    report = skip_wiring(factory, example)
    assert report.results == {"skip_wiring": FAIL}
    assert [(f.paths, f.message) for f in report.findings] == [((path,), message)]


class AlternatingNet(PaddingShortcutNet):
    """Every other forward runs one more op, and a sum is changed in place after it is made: its value
    must come from a second forward, which does not run the ops the first one did."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = self.stem(x * 1.0 if self.calls % 2 else x)
        h = h + self.blocks["narrow"](h)
        h.relu_()
        h = F.pad(h[:, :, ::2], (0, 0, 2, 2)) + self.blocks["wide"](h)
        return self.head(h.mean(dim=-1))


def test_a_forward_that_does_not_repeat_its_ops_fails_saying_so():
    report = skip_wiring(AlternatingNet, SHORT)
    (message,) = report.messages("skip_wiring")
    assert message.startswith("the forward runs other ops the second time on the same input")


def test_no_hook_is_left_behind_even_when_the_forward_raises():
    hooks = (dict(torch.nn.modules.module._global_forward_pre_hooks),
             dict(torch.nn.modules.module._global_forward_hooks))
    find_blocks(PaddingShortcutNet().eval(), SHORT)
    with pytest.raises(RuntimeError):
        find_blocks(PaddingShortcutNet().eval(), torch.randn(2, 3, 32))  # 3 channels for a 1-channel stem
    assert (dict(torch.nn.modules.module._global_forward_pre_hooks),
            dict(torch.nn.modules.module._global_forward_hooks)) == hooks


# --- nothing to check ----------------------------------------------------------------------------------


class PlainMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x) + 1.0


class GruOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 6, num_layers=2, batch_first=True)
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(x.reshape(x.shape[0], -1, 4))
        return self.out(h[:, -1])


class GateOnly(nn.Module):
    """FMS-style gating, x * s + s, and two equally heavy parallel branches: sums, but no shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = team.FMS(4)
        self.left = nn.Conv1d(1, 4, 3, padding=1)
        self.right = nn.Conv1d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(1)
        return self.gate(self.left(h) + self.right(h)).mean(dim=(1, 2)).unsqueeze(1)


class LongSum(PlainMlp):
    """A sum over a hundred terms is no block (and pairing its terms would cost their square)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers[0](x)
        for i in range(100):
            out = out + x[:, i % 8: i % 8 + 8] * 0.5
        return self.layers[2](out)


@pytest.mark.parametrize("factory", [PlainMlp, GruOnly, GateOnly, LongSum],
                         ids=["mlp", "gru", "gates", "long_sum"])
def test_no_residual_addition_is_not_applicable_with_its_reason(factory):
    report = skip_wiring(factory, FEATURES)
    assert report.results == {"skip_wiring": NOT_APPLICABLE}
    assert report.notes == {"skip_wiring": NO_RESIDUALS}


# --- the team's registry from the command line -------------------------------------------------------


@pytest.fixture
def correct_registry():
    """The team's registry file; what the CLI registers from it that was not registered before
    (the default run registers it already, a --registry run may not) is unregistered afterwards."""
    path = "tests/team_models/correct.toml"
    before = dict(SUBJECTS)
    yield path
    for name in set(SUBJECTS) - set(before):
        unregister(name)
    for name, spec in before.items():
        if SUBJECTS.get(name) is not spec:
            register(spec, replace=True)


def test_cli_audit_of_the_team_model_passes_skip_wiring(correct_registry, capsys: pytest.CaptureFixture[str]):
    argv = ["--registry", correct_registry, "audit", "asv", "--input-shape", f"2,{MIN_SAMPLES}",
            "--checks", "skip_wiring"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "skip_wiring  pass    pass" in out and "blocks.block5 (identity)" in out

"""The contract audits: each subject's audit equals its declaration, and every check is shown
to pass on a sound model and fail, naming the culprit, on a model broken in its way.

Expected paths are derived from the models' source (the layer lists), not from the
audit's own introspection, so a check that names the wrong things fails here.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import SUBJECTS, HarnessError, audit, build
from harness.__main__ import main
from harness.core.audits import FAIL, NOT_APPLICABLE, PASS, AuditReport
from harness.core.wiring import NO_RESIDUALS
from harness.rawnet2.audits import CHECKS, audit_spec, declared_results
from harness.rawnet2.layouts import PROJECTION_BLOCKS, residual_blocks
from harness.rawnet2.registry import in_family
from tests.helpers import paths_of

# Short waveform, two distinct rows: every check applies and the audit stays fast.
EXAMPLE = torch.randn(2, 1, 256, generator=torch.Generator().manual_seed(1))


@functools.cache
def subject_audit(name: str) -> AuditReport:
    # With the spec's own output kind and input contract (the family's short example keeps it fast).
    spec = SUBJECTS[name]
    return audit_spec(spec, EXAMPLE if in_family(spec) else spec.example(2, seed=1))


def test_check_names_are_exactly_the_issues():
    assert list(CHECKS) == [
        "registration", "mode_propagation", "device_transfer", "state_dict_roundtrip",
        "batch_independence", "gradient_coverage", "determinism", "output_contract", "skip_wiring",
    ]


# --- each subject against its declaration ------------------------------------------------------


def test_audit_equals_declaration(variant_name: str):
    """Every registered variant's audit equals its declaration exactly: declared failures fail,
    declared ``n/a`` does not apply (with a reason), everything else passes."""
    name = variant_name
    report = subject_audit(name)
    assert report.results == declared_results(SUBJECTS[name].expected_defects)
    assert all(reason.strip() for reason in SUBJECTS[name].expected_defects.values())
    # Every failing check says why, every n/a says why, and no finding belongs to a passing check.
    assert {f.check for f in report.findings} == set(report.failed)
    assert all(report.notes.get(c) for c, r in report.results.items() if r == NOT_APPLICABLE)
    assert report.ok == (not SUBJECTS[name].declared_defects)


def test_declarations_meet_the_issues_minimum():
    assert not SUBJECTS["skip_modules"].expected_defects
    assert {"registration", "mode_propagation", "device_transfer", "state_dict_roundtrip",
            "batch_independence"} <= set(SUBJECTS["tuple_blocks"].expected_defects)
    assert set(SUBJECTS["legacy_effective"].expected_defects) == {"skip_wiring"}


def test_legacy_audit_says_its_forward_raises():
    report = subject_audit("legacy")
    assert report.results["registration"] == PASS
    for check in report.failed:
        (message,) = report.messages(check)
        assert message.startswith("forward raises RuntimeError: ")
        assert "expected input[2, 32, 256] to have 128 channels, but got 32" in message


def tuple_member_paths(kind: str) -> set[str]:
    """What tuple_blocks holds outside its registry, from the block structure in its source."""
    model = build("tuple_blocks")
    paths = set()
    for block in residual_blocks(model):
        for path, module in ((block.main_path, block.main), (block.shortcut_path, block.shortcut)):
            if module is None:
                continue
            if kind == "modules":
                paths |= {f"{path}.{n}" if n else path for n, _ in module.named_modules()}
            elif kind == "parameters":
                paths |= {f"{path}.{n}" for n, _ in module.named_parameters()}
            else:
                paths |= {f"{path}.{n}" for n in module.state_dict()}
    return paths


def test_tuple_blocks_findings_name_every_block_member():
    report = subject_audit("tuple_blocks")
    tensors = tuple_member_paths("tensors")
    assert len(tensors) == 3 * 14 + 3 * 21
    # one registration finding per tuple, naming its modules and tensors
    assert [f.message.split(" ")[0] for f in report.findings if f.check == "registration"] == [
        f"res_block{i}" for i in range(1, 7)]
    assert paths_of(report, "registration") == tensors | tuple_member_paths("modules")
    assert paths_of(report, "device_transfer") == tensors
    assert paths_of(report, "state_dict_roundtrip") == tensors
    assert paths_of(report, "gradient_coverage") == tuple_member_paths("parameters")
    assert paths_of(report, "mode_propagation") == tuple_member_paths("modules")
    eval_finding = report.messages("mode_propagation")[0]
    assert eval_finding.startswith("eval() does not reach 51 modules") and "15 BatchNorm1d" in eval_finding
    (batch,) = report.messages("batch_independence")
    assert "2 of 2 samples" in batch and "samples 0 (" in batch and ", 1 (" in batch
    # block 1's tuple: 14 tensors; the dtype move concerns the 12 floating-point ones
    assert report.messages("device_transfer")[0].startswith(
        "res_block1: 14 tensors the forward uses stay behind "
        "(.to(torch.float64) leaves 12, .to('meta') leaves 14")


@pytest.mark.cuda
def test_device_transfer_moves_to_a_real_gpu_too():
    assert audit(SUBJECTS["skip_modules"].build, EXAMPLE, checks=["device_transfer"]).ok
    messages = audit(SUBJECTS["tuple_blocks"].build, EXAMPLE, checks=["device_transfer"]).messages(
        "device_transfer")
    assert messages[0].startswith("after .to('cuda'): forward raises RuntimeError")
    assert ".to('meta') leaves 14, .to('cuda') leaves 14)" in messages[1]


def test_example_too_short_for_train_mode_fails_the_train_mode_checks():
    # One sample of 8: the last BatchNorm sees one value per channel in train mode.
    report = audit(SUBJECTS["skip_modules"].build, torch.randn(1, 1, 8))
    assert report.failed == ["mode_propagation", "gradient_coverage"]
    for check in report.failed:
        (message,) = report.messages(check)
        assert message.startswith("forward raises ValueError: Expected more than 1 value per channel "
                                  "when training") and message.endswith("(train mode)")
    assert report.results["batch_independence"] == NOT_APPLICABLE
    assert report.results["state_dict_roundtrip"] == PASS
    assert "warm-up forward raises ValueError" in report.notes["state_dict_roundtrip"]


def test_legacy_effective_skip_wiring_names_blocks_2_4_6():
    report = subject_audit("legacy_effective")
    findings = [f for f in report.findings if f.check == "skip_wiring"]
    assert [f.paths for f in findings] == [(f"res_block{i}",) for i in PROJECTION_BLOCKS]
    assert findings[0].message.startswith("res_block2: adds no shortcut, unlike res_block1, res_block3, "
                                          "res_block5: its output is main(input) alone (its shape changes: "
                                          "channels 32->64, length 256->128")
    assert all("output is main(input) alone" in f.message for f in findings)


# --- synthetic models: each check passes on a sound one, fails on a broken one ------------------


class SoundNet(nn.Module):
    """Conv/BN blocks in a ModuleList: nothing named res_block, everything registered."""

    def __init__(self, num_classes: int = 1) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv1d(c_in, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU()) for c_in in (1, 4))
        self.register_buffer("window", torch.hann_window(8), persistent=False)  # a constant, not state
        self.head = nn.utils.parametrizations.weight_norm(nn.Linear(4, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        x = x * self.window.mean()
        return torch.sigmoid(self.head(x.mean(-1)))


class FlatNet(nn.Module):
    """Takes [B, T] instead of [B, 1, T]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU(),
                                  nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x))


class LogProbNet(SoundNet):
    """Returns log-probabilities over three classes."""

    def __init__(self) -> None:
        super().__init__(num_classes=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(super().forward(x)).log_softmax(-1)


class DictParamNet(SoundNet):
    """Keeps a learnable scale in a plain dict."""

    def __init__(self) -> None:
        super().__init__()
        self.extra = {"scale": nn.Parameter(torch.rand(1) + 0.5)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * self.extra["scale"])


class ListNormNet(nn.Module):
    """Keeps its BatchNorm in a plain list."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, padding=1)
        self.norms = [nn.BatchNorm1d(4)]
        self.fc = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(F.relu(self.norms[0](self.conv(x))).mean(-1)))


class HiddenConstantNet(SoundNet):
    """A plain tensor attribute: not registered, never moved, but rebuilt identically."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = torch.full((1,), 0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + self.offset)


class RaisingNet(SoundNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("boom\nsecond line")


class DropoutInForwardNet(SoundNet):
    """Builds a Dropout inside forward: no eval() can reach it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.Dropout(0.5)(x))


class BatchMixNet(SoundNet):
    """Sample 2 sees the batch mean; every other sample is independent."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if out.shape[0] > 2:
            out = torch.cat([out[:2], (out[2:3] + out.mean(0, keepdim=True)) / 2, out[3:]])
        return out


class UnusedParamNet(SoundNet):
    def __init__(self) -> None:
        super().__init__()
        self.spare = nn.Linear(4, 4)


class ZeroGradNet(SoundNet):
    """A parameter multiplied by zero: reached by autograd, never able to learn."""

    def __init__(self) -> None:
        super().__init__()
        self.dead = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + 0 * self.dead)


class InfGradNet(SoundNet):
    """sqrt at zero: a finite output with an infinite gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + torch.sqrt(self.gain))


class FlatOutputNet(SoundNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[:, 0]


class NaNOutputNet(SoundNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return torch.where(torch.arange(out.shape[0])[:, None] == 1, torch.nan, out)


WAVE = torch.randn(4, 1, 32, generator=torch.Generator().manual_seed(2))
FLAT = torch.randn(4, 16, generator=torch.Generator().manual_seed(3))


def results_except(report: AuditReport, **expected: str) -> dict[str, str]:
    """``report.results`` with every check not listed expected to pass (skip_wiring: n/a)."""
    default = {c: PASS for c in report.results}
    if "skip_wiring" in default:
        default["skip_wiring"] = NOT_APPLICABLE
    return {**default, **expected}


@pytest.mark.parametrize(("factory", "example"), [(SoundNet, WAVE), (FlatNet, FLAT)],
                         ids=["modulelist", "flat"])
def test_sound_models_pass_every_check(factory, example: torch.Tensor):
    report = audit(factory, example)
    assert report.results == results_except(report) and report.ok
    assert report.findings == []
    assert report.notes["skip_wiring"] == NO_RESIDUALS


def test_log_probabilities_pass_when_output_contract_is_left_out():
    checks = [c for c in CHECKS if c != "output_contract"]
    report = audit(LogProbNet, WAVE, checks=checks)
    assert list(report.results) == checks and report.ok
    full = audit(LogProbNet, WAVE, checks=["output_contract"])
    (message,) = full.messages("output_contract")
    assert message.startswith("output outside [0, 1]: min -")


def test_parameter_in_a_dict_is_named():
    report = audit(DictParamNet, WAVE)
    assert report.results == results_except(
        report, registration=FAIL, device_transfer=FAIL, state_dict_roundtrip=FAIL, gradient_coverage=FAIL)
    for check in ("registration", "device_transfer", "gradient_coverage"):
        (finding,) = [f for f in report.findings if f.check == check]
        assert finding.paths == ("extra['scale']",) and finding.message.startswith("extra")
    assert "extra (dict) is not registered" in report.messages("registration")[0]
    assert paths_of(report, "state_dict_roundtrip") == {"extra['scale']"}


def test_batchnorm_in_a_plain_list_is_named():
    report = audit(ListNormNet, WAVE)
    # The round trip still passes: the hidden BatchNorm never leaves training mode, so its unsaved
    # running statistics never reach an output, and its affine starts at 1/0 under every seed.
    assert report.results == results_except(
        report, registration=FAIL, mode_propagation=FAIL, device_transfer=FAIL,
        batch_independence=FAIL, gradient_coverage=FAIL)
    bn_tensors = {f"norms[0].{n}" for n in nn.BatchNorm1d(4).state_dict()}
    assert paths_of(report, "registration") == {"norms[0]"} | bn_tensors
    assert paths_of(report, "mode_propagation") == {"norms[0]"}
    # num_batches_tracked too: the BatchNorm, stuck in training mode, counts batches in eval.
    assert paths_of(report, "device_transfer") == bn_tensors
    assert paths_of(report, "gradient_coverage") == {"norms[0].weight", "norms[0].bias"}
    assert "1 BatchNorm1d among them" in report.messages("mode_propagation")[0]


def test_hidden_constant_fails_registration_and_transfer_only():
    report = audit(HiddenConstantNet, WAVE)
    assert report.results == results_except(report, registration=FAIL, device_transfer=FAIL)
    assert paths_of(report, "device_transfer") == {"offset"}
    assert report.messages("registration")[0].startswith("offset (Tensor) is not registered")


def test_raising_forward_fails_every_forward_check_without_crashing():
    report = audit(RaisingNet, WAVE)
    forward_checks = [c for c in CHECKS if c != "registration"]  # skip_wiring finds blocks in the forward
    assert report.results == results_except(report, **{c: FAIL for c in forward_checks})
    assert all(f.message == "forward raises ValueError: boom (eval mode)" or
               f.message == "forward raises ValueError: boom (train mode)" for f in report.findings)


def test_factory_that_raises_fails_every_check():
    def factory() -> nn.Module:
        raise OSError("no weights")

    report = audit(factory, WAVE)
    assert set(report.failed) == set(CHECKS)
    assert {f.message for f in report.findings} == {"factory raises OSError: no weights"}


def test_factory_must_build_a_fresh_instance():
    shared = SoundNet()
    with pytest.raises(HarnessError, match="fresh one"):
        audit(lambda: shared, WAVE, checks=["state_dict_roundtrip"])


def test_module_built_in_forward_breaks_mode_and_determinism():
    report = audit(DropoutInForwardNet, WAVE)
    assert report.results == results_except(
        report, mode_propagation=FAIL, batch_independence=FAIL, determinism=FAIL, state_dict_roundtrip=FAIL)
    assert paths_of(report, "mode_propagation") == {"<Dropout built during forward>"}
    assert report.messages("determinism")[0].startswith("two eval forwards of the same input differ")


def test_batch_independence_compares_every_row():
    report = audit(BatchMixNet, WAVE, checks=["batch_independence"])
    (message,) = report.messages("batch_independence")
    assert message.startswith("1 of 4 samples") and "samples 2 (max abs diff" in message


def test_batch_independence_needs_two_distinct_rows():
    one = audit(SoundNet, WAVE[:1], checks=["batch_independence"])
    same = audit(BatchMixNet, WAVE[:1].expand(4, 1, 32), checks=["batch_independence"])
    assert one.results == same.results == {"batch_independence": NOT_APPLICABLE}
    assert "batch size 1" in one.notes["batch_independence"]
    assert "same" in same.notes["batch_independence"]


@pytest.mark.parametrize(("factory", "expected"), [
    (UnusedParamNet, "2 trainable parameters get no gradient (not reached by the loss): spare.{weight,bias}"),
    (ZeroGradNet, "1 parameter get an all-zero gradient in train and eval mode: dead"),
    (InfGradNet, "1 parameter get a non-finite gradient: gain"),
], ids=["unused", "zero", "inf"])
def test_gradient_coverage_names_dead_parameters(factory, expected: str):
    report = audit(factory, WAVE, checks=["gradient_coverage"])
    assert report.messages("gradient_coverage") == [expected]


def test_gradient_cancelled_by_train_mode_batchnorm_is_not_a_finding():
    # SoundNet's conv biases feed a train-mode BatchNorm: their gradient is zero up to rounding.
    model = SoundNet().train()
    model(WAVE).sum().backward()
    assert model.stages[0][0].bias.grad.abs().max() < 1e-5
    assert audit(SoundNet, WAVE, checks=["gradient_coverage"]).ok


@pytest.mark.parametrize(("factory", "expected"), [
    (FlatOutputNet, "output shape (4,) is not [B, num_classes] with B = 4"),
    (NaNOutputNet, "output has 1 non-finite values (samples [1])"),
], ids=["shape", "nan"])
def test_output_contract_names_the_violation(factory, expected: str):
    assert audit(factory, WAVE, checks=["output_contract"]).messages("output_contract") == [expected]


# --- skip wiring on small res_blockN models -----------------------------------------------------


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm1d(c_out))


class TinyResNet(nn.Module):
    """res_block1 (identity), res_block2 (4->8, stride 2, skip2), res_block3 (1x1 projection skip3)."""

    def __init__(self, wiring: str = "sound") -> None:
        super().__init__()
        self.wiring = wiring
        self.conv1 = conv_bn(1, 4)
        self.res_block1 = conv_bn(4, 4)
        self.res_block2 = conv_bn(4, 8, stride=2)
        self.res_block3 = conv_bn(8, 8)
        if wiring != "no_projection":
            self.skip2 = nn.Sequential(nn.Conv1d(4, 8, 1, stride=2), nn.BatchNorm1d(8))
        self.skip3 = nn.Conv1d(8, 8, 1)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.wiring == "double_identity":
            x = self.res_block1(x) + x + x
        else:
            x = self.res_block1(x) + (0 if self.wiring == "no_identity" else x)
        if self.wiring == "no_projection":
            x = self.res_block2(x)
        else:
            x = self.res_block2(x) + self.skip2(x)
        shortcut = x if self.wiring == "identity_for_projection" else self.skip3(x)
        x = self.res_block3(x) + shortcut
        if self.wiring == "activation_after_add":
            x = F.relu(x)
        return torch.sigmoid(self.fc(self.pool(x).squeeze(-1)))


@pytest.mark.parametrize(("wiring", "expected"), [
    ("sound", []),
    ("no_identity", ["res_block1: adds the constant 0 where res_block2, res_block3 add a shortcut of their "
                     "input: nothing computed from its own input is added"]),
    ("no_projection", ["res_block2: adds no shortcut, unlike res_block1, res_block3: its output is "
                       "main(input) alone (its shape changes: channels 4->8, length 32->16, and no "
                       "projection is added)"]),
    ("double_identity", ["res_block1: its output holds its shortcut (identity) 2 times"]),
    # Dataflow cannot tell that skip3 was meant for block 3: the identity is a sound shortcut there;
    # skip3, never called, gets no gradient (gradient_coverage names it).
    ("identity_for_projection", []),
    # The sum is observed where it is made: an activation after it (torchvision's order) is no miswiring.
    ("activation_after_add", []),
])
def test_skip_wiring_names_the_miswired_block(wiring: str, expected: list[str]):
    report = audit(functools.partial(TinyResNet, wiring), WAVE)
    messages = report.messages("skip_wiring")
    assert len(messages) == len(expected)
    for message, start in zip(messages, expected, strict=True):
        assert message.startswith(start)
    # Only the wiring changed, so nothing else may be reported but an unused skip3's gradient.
    unused = {"skip3.weight", "skip3.bias"} if wiring == "identity_for_projection" else set()
    failures = ({"skip_wiring"} if expected else set()) | ({"gradient_coverage"} if unused else set())
    assert set(report.failed) == failures
    assert paths_of(report, "gradient_coverage") == unused


def test_skip_wiring_is_not_applicable_without_blocks():
    report = audit(SoundNet, WAVE, checks=["skip_wiring"])
    assert report.results == {"skip_wiring": NOT_APPLICABLE}


# --- API details --------------------------------------------------------------------------------


def test_unknown_or_empty_check_selection_is_refused():
    with pytest.raises(HarnessError, match=r"unknown check\(s\) 'wiring'; known: registration, "):
        audit(SoundNet, WAVE, checks=["wiring"])
    with pytest.raises(HarnessError, match="no checks selected"):
        audit(SoundNet, WAVE, checks=[])


def test_results_follow_check_order_whatever_the_request_order():
    report = audit(SoundNet, WAVE, checks=["determinism", "registration"])
    assert list(report.results) == ["registration", "determinism"]


def test_audit_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    audit(SoundNet, WAVE, checks=["state_dict_roundtrip", "gradient_coverage"])
    assert torch.equal(torch.get_rng_state(), state)


def test_render_lists_results_findings_and_reasons():
    text = audit(ListNormNet, WAVE).render("title", declared={"registration": FAIL})
    assert text.startswith("title\ncheck ")
    assert "registration          fail    fail" in text
    assert "mode_propagation      fail    pass !" in text
    assert "[registration] norms (list) is not registered" in text
    assert f"not applicable:\n  [skip_wiring] {NO_RESIDUALS[:60]}" in text


# --- command line -------------------------------------------------------------------------------


def test_cli_variant_clean_exits_0(capsys: pytest.CaptureFixture[str]):
    assert main(["audit", "--variant", "skip_modules", "--input-shape", "2,1,64"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("audit of skip_modules (fixed/skip_modules.py), input [2, 1, 64], "
                          "output probability\n")
    assert out.rstrip().endswith("matches the declared expected defects")


def test_cli_derived_subject_with_findings_exits_1(capsys: pytest.CaptureFixture[str]):
    assert main(["audit", "--variant", "legacy_effective", "--input-shape", "2,1,64",
                 "--checks", "skip_wiring,registration"]) == 1
    out = capsys.readouterr().out
    assert "registration  pass    pass" in out and "skip_wiring   fail    fail      3 findings" in out
    assert "[skip_wiring] res_block2: adds no shortcut" in out


def test_cli_imports_a_factory(capsys: pytest.CaptureFixture[str]):
    assert main(["audit", "harness.rawnet2.registry:legacy_effective", "--input-shape", "2,1,64",
                 "--checks", "skip_wiring"]) == 1
    assert "res_block4: adds no shortcut" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "error"), [
    (["nonexistent_module:Model"], "error: cannot import 'nonexistent_module': ModuleNotFoundError"),
    (["fixed.skip_modules"], "error: unknown variant 'fixed.skip_modules': give a registered name"),
    (["fixed.skip_modules:Missing"], "error: module 'fixed.skip_modules' has no attribute 'Missing'"),
    (["harness.rawnet2.registry:SUBJECTS"],
     "error: harness.rawnet2.registry:SUBJECTS is a _SpecView, not a callable"),
    (["--variant", "resnet"], "error: unknown variant 'resnet'"),
    ([], "error: give either MODEL (a registered name or MODULE:ATTR) or --variant NAME"),
    (["fixed.skip_modules:RawNet2", "--variant", "legacy"], "error: give either"),
    (["--variant", "legacy", "--checks", "speed"], "error: unknown check(s) 'speed'"),
    (["--variant", "legacy", "--input-shape", "2,0,64"], "error: --input-shape must be positive integers"),
])
def test_cli_usage_errors_exit_2_with_one_line(argv: list[str], error: str,
                                               capsys: pytest.CaptureFixture[str]):
    assert main(["audit", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(error) and captured.err.count("\n") == 1

"""The audits judge any nn.Module fairly: a published-style anti-spoofing model (a config dict,
``[B, T]`` input, ``(hidden, logits)`` output) passes every check it honours and is named
exactly where it does not; structured outputs are audited leaf by leaf; user code that tries
to end the process stops the audit with exit code 2 instead of ending it.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.core import audits as core_audits
from harness.core.audits import (
    FAIL,
    GENERIC_CHECKS,
    NOT_APPLICABLE,
    OUTPUT_KINDS,
    PASS,
    AuditReport,
    Finding,
    audit,
)
from harness.core.contract import ScoreTransform
from harness.core.errors import HarnessError
from harness.core.loading import (
    UserCodeExit,
    call_user_code,
    load_attr,
    load_factory,
    parse_kwargs,
)
from harness.core.tolerances import EXACT, assert_close
from tests.helpers import paths_of, refusal

CONFIG = {"channels": 3, "hidden": 4, "classes": 2}
DEAD_BRANCH = ("auxiliary.weight", "auxiliary.bias")
# The checks that run a forward and look at what it returns (registration only walks
# attributes; device_transfer only moves tensors, without a GPU).
FORWARD_CHECKS = ["mode_propagation", "state_dict_roundtrip", "batch_independence", "gradient_coverage",
                  "determinism", "output_contract"]

few = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class AntiSpoofNet(nn.Module):
    """As published anti-spoofing models are written: built from a config dict, fed ``[B, T]``,
    returning ``(hidden, logits)``. ``auxiliary`` is a dead branch: called, its result dropped.
    """

    def __init__(self, config: dict) -> None:
        super().__init__()
        channels, hidden, classes = config["channels"], config["hidden"], config["classes"]
        self.frontend = nn.Conv1d(1, channels, 5, stride=2, padding=2)
        self.norm = nn.BatchNorm1d(channels)
        self.encoder = nn.Conv1d(channels, channels, 3, padding=1)
        self.project = nn.Linear(channels, hidden)
        self.classifier = nn.Linear(hidden, classes)
        self.auxiliary = nn.Linear(hidden, classes)
        nn.init.normal_(self.classifier.weight, std=2.0)  # a wide head: logits well outside [0, 1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.norm(self.frontend(x.unsqueeze(1))))
        x = torch.tanh(self.encoder(x)).mean(-1)
        return torch.tanh(self.project(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.embed(x)
        logits = self.classifier(hidden)
        _ = self.auxiliary(hidden)  # an auxiliary head nobody trains: no output depends on it
        return hidden, logits


def factory(config: dict = CONFIG, cls: type[nn.Module] = AntiSpoofNet):
    return lambda: cls(dict(config))


def waves(seed: int, batch: int = 3, length: int = 48) -> torch.Tensor:
    return torch.randn(batch, length, generator=torch.Generator().manual_seed(seed))


WAVES = waves(0)


def only_dead_branch(report: AuditReport) -> None:
    # No residual addition anywhere: skip_wiring does not apply.
    expected = {"gradient_coverage": FAIL, "skip_wiring": NOT_APPLICABLE}
    assert report.results == {c: expected.get(c, PASS) for c in GENERIC_CHECKS}
    (finding,) = report.findings
    assert finding.check == "gradient_coverage"
    assert finding.paths == DEAD_BRANCH
    assert finding.message == ("2 trainable parameters get no gradient (not reached by the loss): "
                               "auxiliary.{weight,bias}")


# --- the published-style model ------------------------------------------------------------------


def test_anti_spoof_net_fails_only_its_dead_branch():
    report = audit(factory(), WAVES, output="logits")
    only_dead_branch(report)
    assert "output [1]" in report.notes["output_contract"]  # the scores leaf it took


@few
@given(seed=st.integers(0, 2**16), batch=st.integers(2, 4), length=st.integers(4, 64),
       channels=st.integers(1, 4), hidden=st.integers(1, 5), classes=st.integers(1, 3))
def test_anti_spoof_net_audit_holds_for_any_config_and_input(seed, batch, length, channels, hidden, classes):
    config = {"channels": channels, "hidden": hidden, "classes": classes}
    only_dead_branch(audit(factory(config), waves(seed, batch, length), output="logits"))


def test_without_the_dead_branch_every_check_passes():
    class Trained(AntiSpoofNet):
        def forward(self, x):
            hidden = self.embed(x)
            return hidden, self.classifier(hidden) + 0.1 * self.auxiliary(hidden)

    report = audit(factory(cls=Trained), WAVES, output="logits")
    assert report.ok and report.findings == []
    assert report.results == {c: NOT_APPLICABLE if c == "skip_wiring" else PASS for c in GENERIC_CHECKS}


def test_hidden_reaching_an_output_counts_even_without_the_logits():
    # The hidden leaf is an output: project's parameters reach the loss through it alone.
    class HiddenOnly(AntiSpoofNet):
        def forward(self, x):
            hidden = self.embed(x)
            return hidden, self.classifier(hidden.detach())

    report = audit(factory(cls=HiddenOnly), WAVES, output="logits", checks=["gradient_coverage"])
    assert paths_of(report, "gradient_coverage") == set(DEAD_BRANCH)


def test_logits_fail_a_probability_contract_naming_the_leaf():
    logits = AntiSpoofNet(CONFIG).eval()(WAVES)[1]
    assert logits.min() < 0 or logits.max() > 1
    report = audit(factory(), WAVES, output="probability")
    expected = {"gradient_coverage": FAIL, "output_contract": FAIL, "skip_wiring": NOT_APPLICABLE}
    assert report.results == {c: expected.get(c, PASS) for c in GENERIC_CHECKS}
    (message,) = report.messages("output_contract")
    assert message.startswith("output [1] outside [0, 1]: min -")
    assert message.endswith("(logits or log-probabilities, not probabilities)")


def test_any_output_checks_only_what_every_kind_checks():
    report = audit(factory(), WAVES, checks=["output_contract"])
    assert report.results == {"output_contract": PASS} and "output_contract" not in report.notes


def test_output_kind_is_validated():
    assert OUTPUT_KINDS == ("probability", "logits", "any")
    with pytest.raises(HarnessError, match="unknown output kind 'scores'; known: probability, logits, any"):
        audit(factory(), WAVES, output="scores")


# --- structured outputs, leaf by leaf ----------------------------------------------------------


@dataclass
class SpoofOutput:
    logits: torch.Tensor
    hidden: torch.Tensor
    attention: torch.Tensor | None = None  # None leaves are ignored


SpoofTuple = namedtuple("SpoofTuple", "hidden logits")

WRAPS = {
    "tuple": (lambda h, logits: (h, logits), "[1]"),
    "list": (lambda h, logits: [h, logits], "[1]"),
    "dict": (lambda h, logits: {"logits": logits, "hidden": h}, "['logits']"),
    "namedtuple": (lambda h, logits: SpoofTuple(h, logits), ".logits"),
    "dataclass": (lambda h, logits: SpoofOutput(logits, h), ".logits"),
    "nested": (lambda h, logits: {"out": (h, {"scores": logits}), "aux": None}, "['out'][1]['scores']"),
}


def wrapped(kind: str, *, scale: float = 1.0, nan_hidden: bool = False) -> type[nn.Module]:
    wrap = WRAPS[kind][0]

    class Wrapped(AntiSpoofNet):
        def forward(self, x):
            hidden, logits = super().forward(x)
            if nan_hidden:
                hidden = torch.where(torch.arange(hidden.shape[0])[:, None] == 1, torch.nan, hidden)
            return wrap(hidden, logits * scale)

    return Wrapped


@pytest.mark.parametrize("kind", list(WRAPS))
def test_every_container_is_audited_like_the_tuple(kind: str):
    report = audit(factory(cls=wrapped(kind)), WAVES, output="logits")
    only_dead_branch(report)
    name = "output" + WRAPS[kind][1] if WRAPS[kind][1].startswith(".") else "output " + WRAPS[kind][1]
    assert name in report.notes["output_contract"]


@pytest.mark.parametrize("kind", list(WRAPS))
def test_probability_contract_names_the_scores_leaf(kind: str):
    report = audit(factory(cls=wrapped(kind, scale=100.0)), WAVES, output="probability",
                   checks=["output_contract"])
    (message,) = report.messages("output_contract")
    key = WRAPS[kind][1]
    assert message.startswith(("output" if key.startswith(".") else "output ") + key + " outside [0, 1]")


def test_dict_scores_are_found_by_key_not_position():
    report = audit(factory(cls=wrapped("dict")), WAVES, output="logits", checks=["output_contract"])
    assert report.notes["output_contract"] == (
        "output='logits': the scores are output ['logits'] (named 'logits')")


def test_non_finite_hidden_leaf_is_named_under_every_kind():
    for kind in OUTPUT_KINDS:
        report = audit(factory(cls=wrapped("dataclass", nan_hidden=True)), WAVES, output=kind,
                       checks=["output_contract"])
        hidden = [m for m in report.messages("output_contract") if not m.startswith("output.logits outside")]
        assert hidden == ["output.hidden has 4 non-finite values (samples [1])"]


def test_a_nondeterministic_leaf_is_named_and_the_others_are_not():
    class NoisyHidden(AntiSpoofNet):
        def forward(self, x):
            hidden, logits = super().forward(x)
            return hidden + 1e-3 * torch.rand_like(hidden), logits

    report = audit(factory(cls=NoisyHidden), WAVES, output="logits",
                   checks=["determinism", "state_dict_roundtrip", "batch_independence"])
    assert report.results == dict.fromkeys(report.results, FAIL)
    for check in report.results:
        (message,) = report.messages(check)
        assert message.startswith("output [0]: "), message
    assert report.messages("determinism")[0].startswith(
        "output [0]: two eval forwards of the same input differ: max abs diff")


def test_leaf_without_a_batch_dimension_is_named():
    class GlobalLeaf(AntiSpoofNet):
        def forward(self, x):
            hidden, logits = super().forward(x)
            return hidden.mean(0), logits

    report = audit(factory(cls=GlobalLeaf), WAVES, output="logits",
                   checks=["batch_independence", "output_contract"])
    expected = ["output [0] shape (4,) has no batch dimension of 3"]
    assert report.messages("batch_independence") == report.messages("output_contract") == expected


def test_logits_scores_must_be_classifier_shaped():
    class FlatLogits(AntiSpoofNet):
        def forward(self, x):
            hidden, logits = super().forward(x)
            return hidden, logits[:, 0]

    logits = audit(factory(cls=FlatLogits), WAVES, output="logits", checks=["output_contract"])
    assert logits.messages("output_contract") == [
        "output [1] shape (3,) is not [B, num_classes] logits with B = 3"]
    assert audit(factory(cls=FlatLogits), WAVES, checks=["output_contract"]).ok  # "any": batch first suffices


@pytest.mark.parametrize(("returned", "named"), [
    (lambda h, logits: "spoof", "forward returns str, not a tensor"),
    (lambda h, logits: (h, "spoof"), "forward returns str at output [1], not a tensor"),
    (lambda h, logits: {"logits": logits, "label": 1},
     "forward returns int at output ['label'], not a tensor"),
    (lambda h, logits: None, "forward returns NoneType holding no tensor"),
], ids=["str", "tuple-with-str", "dict-with-int", "none"])
def test_non_tensor_outputs_fail_each_forward_check_once(returned, named: str):
    class NonTensor(AntiSpoofNet):
        def forward(self, x):
            return returned(*super().forward(x))

    report = audit(factory(cls=NonTensor), WAVES, output="logits")
    # With a GPU, device_transfer runs a forward there too, and says so.
    cuda = torch.cuda.is_available()
    expected = [c for c in GENERIC_CHECKS if c in FORWARD_CHECKS or (cuda and c == "device_transfer")]
    assert report.failed == expected
    assert report.results["registration"] == PASS
    for check in report.failed:
        (message,) = report.messages(check)
        prefix = "after .to('cuda'): " if check == "device_transfer" else ""
        assert message in (f"{prefix}{named} (eval mode)", f"{prefix}{named} (train mode)")


def test_integer_leaf_is_compared_exactly_and_fails_only_the_contract():
    class WithLabel(AntiSpoofNet):
        def forward(self, x):
            hidden, logits = super().forward(x)
            return hidden, logits, logits.argmax(-1)

    report = audit(factory(cls=WithLabel), WAVES, output="any")
    assert report.failed == ["gradient_coverage", "output_contract"]
    assert report.messages("output_contract") == ["output [2] dtype torch.int64 is not floating point"]


def test_audited_outputs_equal_a_plain_forward():
    # The leaves the audit compares are the model's own outputs, in pytree order.
    model = factory(cls=wrapped("nested"))().eval()
    ctx = core_audits.AuditContext(factory(cls=wrapped("nested")), WAVES, "logits")
    outputs = ctx.outputs(ctx.build().eval())
    with torch.no_grad():
        direct = model(WAVES)
    assert outputs.keys == ("['out'][0]", "['out'][1]['scores']")
    assert_close(outputs.leaves[0][1], direct["out"][0], EXACT)
    assert_close(outputs.leaves[1][1], direct["out"][1]["scores"], EXACT)


# --- user code that tries to end the process -----------------------------------------------------


def exiting_factory(code):
    def build() -> nn.Module:
        sys.exit(code)

    return build


@pytest.mark.parametrize("code", [0, 1, "bye"])
def test_factory_calling_sys_exit_is_a_usage_error(code):
    with pytest.raises(UserCodeExit) as caught:
        audit(exiting_factory(code), WAVES)
    assert isinstance(caught.value, HarnessError) and caught.value.exit_code == 2
    assert str(caught.value) == f"the factory called sys.exit({code!r})"


def test_factory_raising_keyboard_interrupt_is_a_usage_error():
    def build() -> nn.Module:
        raise KeyboardInterrupt

    with pytest.raises(HarnessError, match=r"^the factory raised KeyboardInterrupt$") as caught:
        audit(build, WAVES)
    assert caught.value.exit_code == 2


def test_forward_calling_sys_exit_stops_the_audit_and_leaves_no_hooks():
    class Exits(AntiSpoofNet):
        def forward(self, x):
            sys.exit(0)

    hooks = dict(torch.nn.modules.module._global_forward_pre_hooks)
    rng = torch.random.get_rng_state()
    for check in GENERIC_CHECKS:
        if check == "registration":
            continue  # runs no forward: passes
        with pytest.raises(HarnessError, match=r"^the forward called sys.exit\(0\)$") as caught:
            audit(factory(cls=Exits), WAVES, checks=[check])
        assert caught.value.exit_code == 2
    assert dict(torch.nn.modules.module._global_forward_pre_hooks) == hooks
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_a_check_calling_the_model_directly_is_guarded_too():
    def direct(ctx):
        ctx.build()(ctx.example)
        return []

    class Interrupts(AntiSpoofNet):
        def forward(self, x):
            raise GeneratorExit

    with pytest.raises(HarnessError, match=r"^the model's code \(during direct\) raised GeneratorExit$"):
        audit(factory(cls=Interrupts), WAVES, table={"direct": direct})


def test_ordinary_factory_exceptions_are_still_findings():
    def build() -> nn.Module:
        raise RuntimeError("checkpoint missing")

    report = audit(build, WAVES, output="logits")
    assert set(report.failed) == set(GENERIC_CHECKS)
    assert {f.message for f in report.findings} == {"factory raises RuntimeError: checkpoint missing"}


def test_call_user_code():
    assert call_user_code(lambda a, b=0: a + b, 1, b=2, what="it") == 3
    with pytest.raises(ValueError, match="plain"):
        call_user_code(lambda: (_ for _ in ()).throw(ValueError("plain")), what="it")
    with pytest.raises(UserCodeExit, match=r"^the hook called sys.exit\(None\)$"):
        call_user_code(sys.exit, what="the hook")


# --- loading targets and keyword arguments -------------------------------------------------------


def test_load_factory_is_the_one_in_loading():
    assert core_audits.load_factory is load_factory
    assert load_attr("json:dumps") is json.dumps
    assert load_attr("json:decoder.JSONDecoder") is json.decoder.JSONDecoder
    assert load_factory(f"{AntiSpoofNet.__module__}:AntiSpoofNet") is AntiSpoofNet


@pytest.mark.parametrize(("target", "message"), [
    ("json", "expected MODULE:ATTR"),
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz': ModuleNotFoundError"),
    ("json:nope", "module 'json' has no attribute 'nope'"),
    ("json:decoder.nope", "object 'json:decoder' has no attribute 'nope'"),
])
def test_load_attr_errors_are_one_line(target: str, message: str):
    assert message in refusal(lambda: load_attr(target))


def test_load_factory_rejects_non_callables():
    with pytest.raises(HarnessError, match="json:__name__ is a str, not a callable factory"):
        load_factory("json:__name__")


def test_module_exiting_on_import_is_a_usage_error(tmp_path, monkeypatch):
    (tmp_path / "exits_on_import.py").write_text(textwrap.dedent("""
        import sys
        sys.exit(0)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserCodeExit, match=r"^importing 'exits_on_import' called sys.exit\(0\)$"):
        load_factory("exits_on_import:Model")


def test_parse_kwargs_inline_and_from_a_file(tmp_path):
    assert parse_kwargs('{"channels": 3, "hidden": 4}') == {"channels": 3, "hidden": 4}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG))
    assert parse_kwargs(f"@{path}") == CONFIG
    assert isinstance(AntiSpoofNet(parse_kwargs(f"@{path}")), nn.Module)


@pytest.mark.parametrize(("text", "message"), [
    ('{"channels": 3,}', "the keyword arguments: invalid JSON at line 1, column 16: "
                         "Expecting property name enclosed in double quotes"),
    ("[1, 2]", "the keyword arguments: expected a JSON object"),
    ("", "the keyword arguments: invalid JSON at line 1, column 1: Expecting value"),
    ("@", "expected @FILE"),
])
def test_parse_kwargs_errors_are_one_line(text: str, message: str):
    assert refusal(lambda: parse_kwargs(text)).startswith(message)


def test_parse_kwargs_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(HarnessError, match=f"^cannot read {missing}: No such file or directory$"):
        parse_kwargs(f"@{missing}")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "hidden": 4\n  "classes": 2\n}')
    with pytest.raises(HarnessError, match=f"^{bad}: invalid JSON at line 3, column 3: Expecting ','"):
        parse_kwargs(f"@{bad}")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{}")
    with pytest.raises(HarnessError, match=f"^cannot read {binary}: not UTF-8 text"):
        parse_kwargs(f"@{binary}")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10)


@settings(max_examples=50, deadline=None)
@given(value=st.dictionaries(st.text(), json_values, max_size=4))
def test_parse_kwargs_reads_back_any_json_object(value: dict):
    assert parse_kwargs(json.dumps(value)) == value


@settings(max_examples=50, deadline=None)
@given(text=st.text(max_size=30))
def test_parse_kwargs_returns_a_dict_or_one_line_error(text: str):
    try:
        result = parse_kwargs(text)
    except HarnessError as exc:
        assert "\n" not in str(exc) and exc.exit_code == 2
    else:
        assert isinstance(result, dict)


# --- the report as JSON -----------------------------------------------------------------------


def test_as_json_shape():
    report = audit(factory(), WAVES[:1], output="logits")
    data = report.as_json()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"ok", "results", "findings", "notes"}
    assert data["ok"] is False and isinstance(data["ok"], bool)
    assert data["results"] == report.results and list(data["results"]) == list(GENERIC_CHECKS)
    assert data["results"]["batch_independence"] == NOT_APPLICABLE
    assert set(data["results"].values()) <= {PASS, FAIL, NOT_APPLICABLE}
    for finding in data["findings"]:
        assert set(finding) == {"check", "message", "paths"}
        assert isinstance(finding["message"], str) and isinstance(finding["paths"], list)
        assert all(isinstance(p, str) for p in finding["paths"])
    assert [Finding(f["check"], f["message"], tuple(f["paths"])) for f in data["findings"]] == report.findings
    assert data["notes"] == report.notes and all(isinstance(v, str) for v in data["notes"].values())
    assert "batch size 1" in data["notes"]["batch_independence"]
    assert AuditReport(results={"determinism": PASS}).as_json() == {
        "ok": True, "results": {"determinism": PASS}, "findings": [], "notes": {}}


class LogitsNotLogProbabilities(nn.Module):
    """Returns raw logits [B, 2] where its spec promises log-probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + 3.0


@pytest.mark.parametrize(("head", "passes"), [(lambda out: torch.log_softmax(out, dim=1), True),
                                              (lambda out: out, False)], ids=["log_softmax", "raw"])
def test_output_contract_checks_what_the_declared_score_transform_reads(head, passes):
    class Model(LogitsNotLogProbabilities):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return head(super().forward(x))

    report = audit(Model, torch.randn(3, 8), checks=["output_contract"], output="logits",
                   score=ScoreTransform.parse("log_softmax[1]", "bonafide"))
    assert (report.results["output_contract"] == "pass") == passes
    if not passes:
        assert "log-sum-exp is off 0" in report.messages("output_contract")[0]

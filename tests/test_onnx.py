"""ONNX export and ONNX Runtime as a deployment form, on every variant the registry says it applies to.

Every variant is exported and verified at its own input contract (``spec.input_contract()``),
on inputs that take different branches (``harness.core.onnx.verification_inputs``). A model
whose trace froze a Python branch on its input is refused twice over: by the tracer's warning
and, were that silenced, by the quiet or loud verification input.

onnx and onnxruntime come with the test extra; without them the form is unavailable and these
tests skip with that reason (the form's own ``missing``).
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import build
from harness.__main__ import main
from harness.core.contract import InputContract
from harness.core.errors import HarnessError
from harness.core.onnx import (
    LOUD_PEAK,
    QUIET_SCALE,
    OnnxRuntimeSession,
    export_onnx,
    verification_inputs,
)
from harness.core.tolerances import DEPLOYMENT_TOLERANCES, assert_close
from harness.rawnet2.equivalence import seed_weights
from harness.rawnet2.registry import SUBJECTS
from tests.helpers import TEAM_REGISTRY, PeakNormalised, needs_onnx

pytestmark = needs_onnx

EXPORTABLE = [name for name, spec in SUBJECTS.items() if spec.runs and "onnxruntime" in spec.forms]


@functools.cache
def exported(name: str, seed: int) -> tuple[torch.nn.Module, OnnxRuntimeSession]:
    model = seed_weights(build(name), seed).eval()
    example = SUBJECTS[name].example(2, seed=seed)
    return model, OnnxRuntimeSession(export_onnx(model, example, verify_inputs=()).onnx_bytes)


@settings(max_examples=max(2, settings.default.max_examples // 3))
@given(name=st.sampled_from(EXPORTABLE), seed=st.integers(0, 2), batch=st.integers(1, 3),
       extra=st.integers(0, 3000))
def test_onnxruntime_matches_eager_for_any_batch_and_length(name: str, seed: int, batch: int, extra: int):
    """Dynamic batch and time axes: one export serves every input shape of the variant's contract."""
    model, session = exported(name, seed)
    contract = SUBJECTS[name].input_contract()
    x = contract.example(batch, contract.min_length + extra, seed=seed + extra)
    with torch.no_grad():
        assert_close(session(x), model(x), DEPLOYMENT_TOLERANCES["onnxruntime"], f"{name} {list(x.shape)}")


def test_every_exportable_variant_exports_and_verifies(runnable_name: str, tmp_path):
    spec = SUBJECTS[runnable_name]
    out, weights = tmp_path / "m.onnx", tmp_path / "w.pt"
    if "onnxruntime" not in spec.forms:
        # The spec says why: its eval() misses modules (tuple_blocks), so export is refused.
        assert main(["export", runnable_name, str(out)]) == 2
        assert not out.exists() and os.listdir(tmp_path) == []
        return
    model = seed_weights(build(runnable_name), 4).eval()
    torch.save(model.state_dict(), weights)
    assert main(["export", runnable_name, str(out), "--weights", str(weights)]) == 0
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out))  # a plain session, nothing of the harness
    contract = spec.input_contract()
    x = contract.example(4, contract.length + 345, seed=1)  # a length it was not verified on
    [scores] = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert_close(torch.from_numpy(scores), model(x), DEPLOYMENT_TOLERANCES["onnxruntime"])


def test_export_refuses_tuple_blocks_naming_what_the_exporter_would_bake_in(tmp_path, capsys):
    out = tmp_path / "t.onnx"
    assert main(["export", "tuple_blocks", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "15 modules (res_block1[0].1" in err
    assert "bake training behaviour into the graph" in err and "batch statistics" in err
    assert os.listdir(tmp_path) == []


def test_export_that_fails_verification_leaves_nothing(tmp_path, monkeypatch):
    """A graph that does not match eager is refused and nothing is written (atomic write)."""
    import harness.core.onnx as onnx_module

    class Off(OnnxRuntimeSession):
        def __call__(self, x):
            return super().__call__(x) + 1e-3  # what a wrong kernel or a baked-in constant would do

    monkeypatch.setattr(onnx_module, "OnnxRuntimeSession", Off)
    out = tmp_path / "m.onnx"
    message = r"on input \[1, 1, 500\] \(input\) ONNX Runtime differs from eager by 0\.001"
    with pytest.raises(HarnessError, match=message):
        export_onnx(build("skip_modules"), torch.randn(2, 1, 500), [torch.randn(1, 1, 500)], path=out)
    assert os.listdir(tmp_path) == []


def test_export_refuses_an_existing_file_without_force_before_any_work(tmp_path, capsys, monkeypatch):
    import harness.rawnet2.deploy as deploy

    monkeypatch.setattr(deploy, "export_onnx", lambda *a, **k: pytest.fail("exported before the refusal"))
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    assert main(["export", "skip_modules", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"


# --- inputs that take different branches ----------------------------------------------------------

contracts = st.builds(
    lambda channels, length, cut: InputContract((*channels, length), max(1, length - cut)),
    st.sampled_from([(), (1,), (2,)]), st.integers(1, 400), st.integers(0, 400))


@given(contract=contracts, seed=st.integers(0, 3))
def test_verification_inputs_cover_quiet_and_loud_batches_and_lengths(contract: InputContract, seed: int):
    example, verify = verification_inputs(contract, seed=seed)
    assert contract.fits(tuple(example.shape)) is None
    shapes = [tuple(v.tensor.shape) for v in verify]
    assert all(contract.fits(shape) is None for shape in shapes), shapes
    peaks = {v.label.partition(" ")[0]: [] for v in verify}
    for v in verify:
        peaks[v.label.partition(" ")[0]].append(float(v.tensor.abs().max()))
    assert max(peaks["quiet"]) < 1 < min(peaks["loud"]) == pytest.approx(LOUD_PEAK)
    assert {s[0] for s in shapes} >= {1, 3}  # batch 1 and several: the batch axis is dynamic
    lengths = {s[-1] for s in shapes}
    assert {contract.min_length, contract.length} <= lengths and max(lengths) > contract.length
    assert shapes[-1][-1] == max(lengths)  # the longest last: the score form verifies on it
    assert len({v.label for v in verify}) == len(verify)
    again = verification_inputs(contract, seed=seed)[1]
    assert all(torch.equal(a.tensor, b.tensor) for a, b in zip(verify, again, strict=True))


def test_export_refuses_a_branch_the_tracer_froze(tmp_path: Path, capsys: pytest.CaptureFixture):
    """Eager and the traced graph agree on the trace's own input and differ on the other branch's:
    the tracer's warning refuses it (before today: exit 0, "verified")."""
    out = tmp_path / "m.onnx"
    assert main(["export", f"tests.helpers:{PeakNormalised.__name__}", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: cannot export: the trace is not the model's function")
    assert "Converting a tensor to a Python boolean" in err and "helpers.py:" in err
    assert os.listdir(tmp_path) == []


def test_verification_refuses_a_frozen_branch_even_with_tracer_warnings_silenced(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The second line of defence: the quiet input takes the branch the trace did not."""
    def ignore_every_tracer_warning() -> None:
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)

    monkeypatch.setattr(torch.jit.TracerWarning, "ignore_lib_warnings",
                        staticmethod(ignore_every_tracer_warning))
    example, verify = verification_inputs(InputContract((1, 400), 9))
    assert float(example.abs().max()) > 1  # the trace takes the division
    out = tmp_path / "m.onnx"
    quiet = (rf"on input \[1, 1, 9\] \(quiet \(x {QUIET_SCALE:g}\), batch 1, minimum length\) "
             "ONNX Runtime differs")
    with pytest.raises(HarnessError, match=quiet):
        export_onnx(PeakNormalised(), example, verify, path=out)
    assert os.listdir(tmp_path) == []


def test_the_team_model_exports_at_its_own_contract(registered: None, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture):
    """[B, T] input, sinc buffer, GRU, log_softmax [B, 2], >= 2315 samples: exported and verified."""
    out, weights = tmp_path / "asv.onnx", tmp_path / "w.pt"
    from harness.rawnet2.registry import load_registry_file

    spec = next(s for s in load_registry_file(TEAM_REGISTRY) if s.name == "asv")
    model = seed_weights(spec.build(), 2).eval()
    torch.save(model.state_dict(), weights)
    assert main(["--registry", str(TEAM_REGISTRY), "export", "asv", str(out), "--weights", str(weights)]) == 0
    printed = capsys.readouterr().out
    for shown in ("[1, 2315] (quiet", "[3, 2315] (loud", "[3, 8000] (quiet", "[1, 64600] (loud"):
        assert shown in printed
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out))
    x = spec.example(2, 5000, seed=4)
    [scores] = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert_close(torch.from_numpy(scores), model(x), DEPLOYMENT_TOLERANCES["onnxruntime"])

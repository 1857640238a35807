"""ONNX export and ONNX Runtime as a deployment form, on every variant the registry says it applies to.

onnx and onnxruntime come with the test extra; without them the form is unavailable and these
tests skip with that reason (the form's own ``missing``).
"""

from __future__ import annotations

import functools
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import build
from harness.__main__ import main
from harness.core.errors import HarnessError
from harness.core.onnx import OnnxRuntimeSession, export_onnx, onnx_missing
from harness.core.tolerances import DEPLOYMENT_TOLERANCES, assert_close
from harness.rawnet2.deploy import EXPORT_EXAMPLE_SHAPE
from harness.rawnet2.equivalence import seed_weights
from harness.rawnet2.registry import SUBJECTS

pytestmark = pytest.mark.skipif(onnx_missing() is not None, reason=f"ONNX form unavailable: {onnx_missing()}")

EXPORTABLE = [name for name, spec in SUBJECTS.items() if spec.runs and "onnxruntime" in spec.forms]


@functools.cache
def exported(name: str, seed: int) -> tuple[torch.nn.Module, OnnxRuntimeSession]:
    model = seed_weights(build(name), seed).eval()
    example = torch.randn(EXPORT_EXAMPLE_SHAPE, generator=torch.Generator().manual_seed(seed))
    return model, OnnxRuntimeSession(export_onnx(model, example, verify_inputs=()).onnx_bytes)


@settings(max_examples=max(2, settings.default.max_examples // 3))
@given(name=st.sampled_from(EXPORTABLE), seed=st.integers(0, 2), batch=st.integers(1, 3),
       length=st.integers(64, 3000))
def test_onnxruntime_matches_eager_for_any_batch_and_length(name: str, seed: int, batch: int, length: int):
    """Dynamic batch and time axes: one export serves every input shape, within the form's tolerance."""
    model, session = exported(name, seed)
    x = torch.randn(batch, 1, length, generator=torch.Generator().manual_seed(seed + length))
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
    x = torch.randn(4, 1, 2345)
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
    message = r"on input \[1, 1, 500\] ONNX Runtime differs from eager by 0\.001"
    with pytest.raises(HarnessError, match=message):
        export_onnx(build("skip_modules"), torch.randn(2, 1, 500), [torch.randn(1, 1, 500)], path=out)
    assert os.listdir(tmp_path) == []


def test_export_refuses_an_existing_file_without_force(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    assert main(["export", "skip_modules", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"

"""Static int8 quantization (harness.core.quantize): the recipe runs, its graph is QDQ, and what it
cannot take is refused in one line.

The default suite quantizes a tiny Conv1d net (cheap); RawNet2 itself is quantized only under
``-m slow``. No float tolerance is asserted on the int8 form: it changes scores by design and is
judged by its decision flips (``evaluate``); the bounds below are sanity checks that a broken
recipe (wrong scales, an unquantized graph, a clamped output) would fail.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from harness.core.errors import HarnessError
from harness.core.onnx import OnnxRuntimeSession, export_onnx
from harness.core.quantize import (
    CALIBRATION_CLIPS,
    INT8_SETTINGS,
    calibration_batches,
    calibration_digest,
    calibration_set,
    check_settings,
    head_nodes,
    quantize_int8,
    quantize_missing,
)
from tests.helpers import AUDIO, needs_onnx, refusal

pytestmark = needs_onnx

TINY_LENGTH = 4000

# Sanity bounds, not tolerances (harness.core.tolerances holds those): the int8 form is judged by
# decisions. A correct recipe lands far inside them (tiny net ~1e-3 of an output spread of ~0.1;
# RawNet2 ~2e-4 on speech); a wrong scale or zero point, or a clamped output, lands outside.
TINY_SANITY_BOUND = 0.05
RAWNET2_SANITY_BOUND = 0.02


class TinyConvNet(nn.Module):
    """A small waveform classifier: two convolutions, pooling, a linear head and a sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, kernel_size=31, stride=4)
        self.conv2 = nn.Conv1d(16, 32, kernel_size=15, stride=4)
        self.act = nn.LeakyReLU(0.3)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return torch.sigmoid(self.fc(self.pool(x).flatten(1)))


def _clips(count: int, seed: int) -> list[np.ndarray]:
    """Speech-like stand-ins: seeded noise under a slow envelope, [1, TINY_LENGTH] each."""
    rng = np.random.default_rng(seed)
    envelope = np.abs(np.sin(np.linspace(0, 6 * np.pi, TINY_LENGTH)))
    return [(0.3 * envelope * rng.standard_normal(TINY_LENGTH)).astype(np.float32)[None]
            for _ in range(count)]


@functools.cache
def tiny() -> tuple[nn.Module, bytes]:
    torch.manual_seed(0)
    model = TinyConvNet().eval()
    example = torch.from_numpy(np.stack(_clips(2, seed=1)))
    return model, export_onnx(model, example, verify_inputs=()).onnx_bytes


@functools.cache
def tiny_int8(float_head: bool = True) -> bytes:
    settings = {**INT8_SETTINGS, "float_head": float_head}
    calibration = calibration_batches(_clips(CALIBRATION_CLIPS, seed=2), 4)
    return quantize_int8(tiny()[1], calibration, settings=settings)


def _nodes(onnx_bytes: bytes) -> list:
    import onnx

    return list(onnx.load_from_string(onnx_bytes).graph.node)


def test_the_int8_graph_runs_like_the_model_smaller_and_close():
    model, float_bytes = tiny()
    quantized = tiny_int8()
    held_out = torch.from_numpy(np.stack(_clips(6, seed=3)))
    out = OnnxRuntimeSession(quantized)(held_out)
    with torch.no_grad():
        expected = model(held_out)
    assert out.shape == expected.shape == (6, 1) and out.dtype == torch.float32
    assert ((out >= 0) & (out <= 1)).all()
    assert (out - expected).abs().max().item() < TINY_SANITY_BOUND
    assert len(quantized) < 0.5 * len(float_bytes)  # int8 weights: about a quarter, plus scales


def test_the_graph_is_qdq_with_per_channel_weights_and_a_float_head():
    nodes = _nodes(tiny_int8())
    kinds = {node.op_type for node in nodes}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds
    # Per channel: a convolution's weight has one scale per output channel (axis 0), not one scalar.
    import onnx

    graph = onnx.load_from_string(tiny_int8()).graph
    scales = {init.name: tuple(init.dims) for init in graph.initializer if init.name.endswith("_scale")}
    assert any(dims == (16,) for dims in scales.values()) and any(dims == (32,) for dims in scales.values())
    # The output comes from the float sigmoid, not from a DequantizeLinear that clamps it to the
    # calibration range; with float_head off, it does (the test can fail).
    producer = {out: node.op_type for node in nodes for out in node.output}
    assert producer[graph.output[0].name] == "Sigmoid"
    unguarded = {out: node.op_type for node in _nodes(tiny_int8(float_head=False)) for out in node.output}
    assert unguarded[graph.output[0].name] == "DequantizeLinear"


def test_the_head_is_the_last_weighted_op_and_everything_after_it():
    import onnx

    head = head_nodes(onnx.load_from_string(tiny()[1]))
    kinds = [node.op_type for node in _nodes(tiny()[1]) if node.name in head]
    assert kinds == ["Gemm", "Sigmoid"]


def test_a_clamped_output_is_what_float_head_prevents():
    """Inputs louder than any calibration clip: the quantized output would saturate at the
    calibration range's end; the float head follows the model."""
    model, _ = tiny()
    loud = torch.from_numpy(np.stack(_clips(4, seed=4))) * 8
    with torch.no_grad():
        expected = model(loud)
    guarded = (OnnxRuntimeSession(tiny_int8())(loud) - expected).abs().max().item()
    clamped = (OnnxRuntimeSession(tiny_int8(float_head=False))(loud) - expected).abs().max().item()
    assert guarded < clamped


def test_nothing_is_left_in_the_temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    quantize_int8(tiny()[1], calibration_batches(_clips(2, seed=5), 2))
    assert os.listdir(tmp_path) == []


def test_the_tool_is_quiet_and_leaves_logging_as_it_was(capfd: pytest.CaptureFixture[str]):
    """Entropy calibration prints its progress and the tool logs notes through the root logger: a
    command's stdout must hold its own output only."""
    import logging

    root = logging.getLogger()
    before = root.level
    quantize_int8(tiny()[1], calibration_batches(_clips(2, seed=6), 2),
                  settings={**INT8_SETTINGS, "calibrate_method": "Entropy"})
    out, err = capfd.readouterr()
    assert (out, err) == ("", "") and root.level == before


def _refusal(onnx_bytes: bytes, calibration: list, **kwargs) -> str:
    return refusal(lambda: quantize_int8(onnx_bytes, calibration, **kwargs))


def test_an_empty_calibration_set_is_refused_in_one_line():
    assert "calibration set is empty" in _refusal(tiny()[1], [])


def test_bytes_that_are_not_onnx_are_refused_in_one_line():
    assert "not a valid ONNX model (18 bytes)" in _refusal(b"not a model at all", _clips(1, 0))


def test_calibration_of_the_wrong_layout_is_refused_in_one_line():
    message = _refusal(tiny()[1], [np.zeros((2, 3, 5, TINY_LENGTH), np.float32)])
    assert message.startswith("cannot quantize: ONNX Runtime's quantize_static fails:")
    empty_second = [_clips(1, 0)[0][None], np.array([])]
    assert "cannot quantize: calibration batch 1" in _refusal(tiny()[1], empty_second)
    assert "NaN" in _refusal(tiny()[1], [np.full((1, 1, TINY_LENGTH), np.nan, np.float32)])


@pytest.mark.parametrize(("change", "message"), [
    ({"colour": "blue"}, "unknown key 'colour'"),
    ({"weight_type": "QInt4"}, "weight_type is 'QInt4'; expected one of QInt8, QUInt8"),
    ({"calibrate_method": "Guess"}, "calibrate_method is 'Guess'"),
    ({"per_channel": "yes"}, "per_channel is 'yes'; expected true or false"),
])
def test_bad_settings_are_refused_in_one_line(change: dict, message: str):
    with pytest.raises(HarnessError, match=message) as caught:
        check_settings({**INT8_SETTINGS, **change})
    assert "\n" not in str(caught.value)
    incomplete = {k: v for k, v in INT8_SETTINGS.items() if k != "format"}
    with pytest.raises(HarnessError, match="key 'format' is missing"):
        check_settings(incomplete)


def test_the_settings_are_plain_json_for_a_cache_key():
    import json

    assert json.loads(json.dumps(INT8_SETTINGS)) == dict(INT8_SETTINGS)
    check_settings(INT8_SETTINGS)


def test_a_missing_onnxruntime_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    assert "onnxruntime.quantization is not installed" in (quantize_missing() or "")
    assert "is not installed (pip install 'rawnet2-harness[onnx]')" in _refusal(b"", _clips(1, 0))


@given(recordings=st.integers(1, 4), count=st.integers(1, 12), length=st.integers(4, 64))
def test_the_calibration_set_is_the_recordings_then_quieter_shifted_copies(recordings: int, count: int,
                                                                           length: int):
    rng = np.random.default_rng(length)
    clips = [rng.standard_normal((1, length)).astype(np.float32) for _ in range(recordings)]
    made = calibration_set(clips, count)
    assert len(made) == count and all(m.shape == (1, length) and m.dtype == np.float32 for m in made)
    for i, clip in enumerate(made):
        k, source = divmod(i, recordings)
        expected = clips[source]
        if k:
            expected = np.roll(expected, length // (k + 1), axis=-1) * np.float32(0.5 ** k)
        np.testing.assert_array_equal(clip, expected)


def test_calibration_batches_stack_one_shape_and_refuse_two():
    batches = calibration_batches(_clips(5, 0), 2)
    assert [b.shape for b in batches] == [(2, 1, TINY_LENGTH), (2, 1, TINY_LENGTH), (1, 1, TINY_LENGTH)]
    with pytest.raises(HarnessError, match=r"clips of 2 shapes \(\[1, 10\], \[1, 20\], \.\.\.\)"):
        calibration_batches([np.zeros((1, 10)), np.zeros((1, 20))], 2)
    with pytest.raises(HarnessError, match="no clips"):
        calibration_set([])


def test_the_calibration_digest_follows_the_content():
    batches = calibration_batches(_clips(4, 0), 2)
    assert calibration_digest(batches) == calibration_digest([b.copy() for b in batches])
    changed = [b.copy() for b in batches]
    changed[1][0, 0, 7] += 1e-3
    assert calibration_digest(changed) != calibration_digest(batches)
    assert calibration_digest(batches[:1]) != calibration_digest(batches)


@pytest.mark.slow
def test_rawnet2_int8_on_the_bundled_audio_scores_in_range():
    """skip_modules with seeded random weights, calibrated on the bundled recordings (four files,
    eight clips by ``calibration_set``), scored on held-out copies at other gains and offsets."""
    from harness.rawnet2.audio import load_clip
    from harness.rawnet2.registry import SUBJECTS, build

    paths = sorted(AUDIO.glob("*.wav")) + sorted(AUDIO.glob("*.flac"))
    recordings = [load_clip(path)[None] for path in paths]
    torch.manual_seed(0)
    model = build("skip_modules").eval()
    float_bytes = export_onnx(model, SUBJECTS["skip_modules"].example(2), verify_inputs=()).onnx_bytes
    quantized = quantize_int8(float_bytes, calibration_batches(calibration_set(recordings), 4))
    held_out = torch.from_numpy(np.stack([np.roll(r, r.shape[-1] // 5, axis=-1) * 0.7 for r in recordings]))
    out = OnnxRuntimeSession(quantized)(held_out)
    with torch.no_grad():
        expected = model(held_out)
    assert out.shape == (len(recordings), 1) and out.dtype == torch.float32
    assert ((out >= 0) & (out <= 1)).all()
    assert (out - expected).abs().max().item() < RAWNET2_SANITY_BOUND

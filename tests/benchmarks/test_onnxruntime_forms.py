"""ONNX Runtime forms side by side: the harness's session, a plain session, and the int8 form.

For every runnable subject whose spec lists ``onnxruntime`` among its forms
(``harness.rawnet2.bench.timed_forms``, read from the registry), with seeded random weights
(``torch.manual_seed(0)`` then ``build``), one exported graph is timed three ways in one
group per (batch, length):

* ``<variant>_onnxruntime``: ``harness.core.onnx.OnnxRuntimeSession`` (what ``score`` runs);
* ``<variant>_plain_onnxruntime``: the same bytes in ``onnxruntime.InferenceSession`` with
  default options, what a user writes by hand: the harness's form should be level with it;
* ``<variant>_onnxruntime_int8``: ``harness.core.quantize.quantize_int8`` of the same bytes,
  calibrated on the bundled recordings (tests/data/audio: the four files, eight clips made by
  ``calibration_set``), in ``OnnxRuntimeSession``.

The input is held out from calibration: the bundled recordings at other gains and offsets.
``extra_info``: each form's ``max_abs_diff`` vs eager on that input, its decisions vs eager's on
the labelled fixture corpus (``corpus_decision_flips`` of ``corpus_decisions``, at eager's EER
threshold, ``harness.report.decisions``), and once a group's peer
has been timed, ``median_vs_plain`` (the form's median over the plain session's) and
``median_vs_float32`` (int8's median over the float32 form's).

Timed only (``--benchmark-enable`` / ``--benchmark-only``): exporting and quantizing each
subject costs ~10 s, so a plain ``pytest`` deselects these (conftest's smoke configuration is
not among them) and skips them if they are still collected.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from harness.core.onnx import OnnxRuntimeSession, export_onnx, onnx_missing
from harness.core.quantize import calibration_batches, calibration_set, quantize_int8
from harness.core.tolerances import max_abs_diff
from harness.rawnet2.audio import load_clip
from harness.rawnet2.bench import ONNX_EXPORT_BATCH, timed_forms
from harness.rawnet2.inputs import NUM_SAMPLES
from harness.rawnet2.registry import SUBJECTS, build
from tests.helpers import AUDIO

CONFIGS = ((1, NUM_SAMPLES), (8, NUM_SAMPLES))
PEERS = ("onnxruntime", "plain_onnxruntime", "onnxruntime_int8")
PLAIN, FLOAT32, INT8 = "plain_onnxruntime", "onnxruntime", "onnxruntime_int8"
# Held-out inputs: gains and circular offsets (fractions of the length) that calibration_set's
# copies (gain 0.5 ** k, offset 1 / (k + 1)) do not use.
HELD_OUT = ((0.7, 1 / 5), (0.35, 1 / 7), (0.9, 2 / 3))
CALIBRATION_BATCH = 4


def _subjects() -> list[str]:
    return [form.subject for form in timed_forms() if form.onnxruntime]


@dataclass(frozen=True)
class Peers:
    """One subject's eager model and its three ONNX Runtime forms, built once per session."""

    eager: torch.nn.Module
    calls: dict[str, object]  # peer -> callable on a torch input, returning the output tensor


def _recordings(subject: str, length: int) -> list[np.ndarray]:
    """The bundled recordings at ``length`` samples, each in the subject's input layout (no batch axis)."""
    example_shape = SUBJECTS[subject].input_contract().batch_shape(1, length)[1:]
    paths = sorted(AUDIO.glob("*.wav")) + sorted(AUDIO.glob("*.flac"))
    return [load_clip(path, length).reshape(example_shape) for path in paths]


def held_out(subject: str, batch: int, length: int) -> torch.Tensor:
    recordings = _recordings(subject, length)
    clips = []
    for i in range(batch):
        gain, offset = HELD_OUT[(i // len(recordings)) % len(HELD_OUT)]
        clip = recordings[i % len(recordings)]
        clips.append(np.roll(clip, int(offset * clip.shape[-1]), axis=-1) * np.float32(gain))
    return torch.from_numpy(np.stack(clips))


@functools.cache
def peers(subject: str) -> Peers:
    import onnxruntime

    torch.manual_seed(0)
    model = build(subject).eval()
    example = SUBJECTS[subject].example(ONNX_EXPORT_BATCH)
    float_bytes = export_onnx(model, example, verify_inputs=()).onnx_bytes
    calibration = calibration_batches(calibration_set(_recordings(subject, NUM_SAMPLES)), CALIBRATION_BATCH)
    plain = onnxruntime.InferenceSession(float_bytes)  # default options: what a user writes by hand
    plain_input = plain.get_inputs()[0].name

    def run_plain(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(plain.run(None, {plain_input: x.numpy()})[0])

    return Peers(model, {FLOAT32: OnnxRuntimeSession(float_bytes), PLAIN: run_plain,
                         INT8: OnnxRuntimeSession(quantize_int8(float_bytes, calibration))})


@functools.cache
def eager_output(subject: str, batch: int, length: int) -> torch.Tensor:
    with torch.inference_mode():
        return peers(subject).eager(held_out(subject, batch, length))


@functools.cache
def corpus_flips(subject: str, peer: str, protocol: str, audio_root: str) -> dict[str, object]:
    """The peer's decisions vs eager's on the labelled fixture corpus, at eager's EER threshold
    (moved clear of its scores): the int8 form is judged by these, not by a float tolerance."""
    from harness.report.decisions import corpus_clips, flips_between, team_corpus

    spec = SUBJECTS[subject]
    audio = team_corpus(protocol, audio_root)
    forms = peers(subject)
    row = flips_between(subject, f"{subject}_{peer}", "form", peer, forms.eager, forms.calls[peer], spec,
                        spec, corpus_clips(spec, audio, quick=False), audio)
    return {"corpus_decision_flips": row["flips"], "corpus_decisions": row["n"],
            "corpus_max_abs_score_diff": row["max_abs_score_diff"], "corpus_flipped": row["flipped"]}


@pytest.fixture(scope="session")
def group_medians() -> dict[str, dict[str, tuple[float, dict]]]:
    """Group -> peer -> (median seconds, its extra_info): ratios are filled in when both are known."""
    return {}


def _fill_ratios(timed: dict[str, tuple[float, dict]]) -> None:
    if PLAIN in timed:
        plain_median = timed[PLAIN][0]
        for peer, (median, info) in timed.items():
            if peer != PLAIN:
                info["median_vs_plain"] = median / plain_median
    if FLOAT32 in timed and INT8 in timed:
        timed[INT8][1]["median_vs_float32"] = timed[INT8][0] / timed[FLOAT32][0]


@pytest.mark.skipif(onnx_missing() is not None, reason=f"ONNX form unavailable: {onnx_missing()}")
@pytest.mark.benchmark(warmup=True, warmup_iterations=1)
@pytest.mark.parametrize(("batch", "length"), CONFIGS)
@pytest.mark.parametrize(("subject", "peer"), [pytest.param(subject, peer, id=f"{subject}_{peer}")
                                               for subject in _subjects() for peer in PEERS])
def test_onnxruntime_form(benchmark, group_medians: dict, fixture_corpus, subject: str, peer: str,
                          batch: int, length: int) -> None:
    if benchmark.disabled:
        pytest.skip("timed only (--benchmark-enable): exporting and quantizing cost ~10 s per subject")
    call = peers(subject).calls[peer]
    x = held_out(subject, batch, length)
    group = f"onnxruntime forms cpu batch={batch} length={length}"
    benchmark.group = group
    benchmark.extra_info.update(variant=f"{subject}_{peer}", form=peer, device="cpu", batch=batch,
                                length=length, input="bundled recordings, held out from calibration")

    out = benchmark(call, x)

    assert out.shape[0] == batch and torch.isfinite(out).all()
    spec = SUBJECTS[subject]
    if spec.score_transform is not None:
        assert spec.score_transform.output_problem(out) is None
    benchmark.extra_info["max_abs_diff"] = max_abs_diff(out, eager_output(subject, batch, length))
    if spec.score_transform is not None:
        benchmark.extra_info.update(corpus_flips(subject, peer, str(fixture_corpus.protocol),
                                                 str(fixture_corpus.directory)))
    timed = group_medians.setdefault(f"{group} {subject}", {})
    timed[peer] = (benchmark.stats.stats.median, benchmark.extra_info)
    _fill_ratios(timed)

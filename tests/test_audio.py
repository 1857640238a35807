"""The audio front end: decode, downmix, resample, fit to 64,600 samples, refuse bad files; and the
generic scoring contract every variant whose output turns into a score meets on real audio.

Front-end properties are checked on short synthetic clips written to memory with soundfile;
facts about the fixtures (tests/data/audio, made by make_fixtures.sh) were read with
``soxi``, independently of this code. The scoring contract runs over the registry
(``scored_name``) and over a team's registry (``tests/team_models/correct.toml``).
"""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.__main__ import main
from harness.core.tolerances import EXACT, RESAMPLING_PATHS, assert_close
from harness.rawnet2.audio import (
    MAX_DURATION_S,
    NUM_SAMPLES,
    SAMPLE_RATE,
    UnusableAudio,
    c_stderr_silenced,
    decode,
    downmix,
    fit_length,
    load_clip,
    load_clip_checked,
    resample,
)
from harness.rawnet2.checkpoints import get_audio_model
from harness.rawnet2.registry import SUBJECTS
from harness.rawnet2.score_command import RANDOM_WEIGHTS_SEED, scoring_contract
from harness.rawnet2.scoring import score_waveforms
from tests.helpers import AUDIO

# file -> (sample rate, channels, frames), as soxi reports them
FIXTURES = {
    "hello.wav": (22_050, 1, 21_289),
    "numbers.wav": (22_050, 1, 34_524),
    "hello_44k_stereo.wav": (44_100, 2, 42_578),
    "hello_16k.flac": (16_000, 1, 15_448),
}
# Short clips only (the suite's rule for property tests); rates a recorder might write.
lengths = st.integers(min_value=1, max_value=4000)
rates = st.sampled_from([8_000, 11_025, 16_000, 22_050, 32_000, 44_100, 48_000, 96_000])
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def written(data: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "FLOAT") -> io.BytesIO:
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt, subtype=subtype)
    buf.seek(0)
    return buf


# --- fit_length: the ASVspoof repeat/crop ------------------------------------------------------


@given(n=lengths, length=st.one_of(st.just(NUM_SAMPLES), lengths))
def test_fit_length_repeats_or_crops_exactly(n: int, length: int):
    # distinct values, so any sample taken from the wrong place shows
    clip = np.arange(1, n + 1, dtype=np.float32)
    fitted = fit_length(clip, length)
    assert fitted.shape == (length,) and fitted.dtype == np.float32
    # sample i of the fitted clip is sample i mod n of the clip: a crop when n >= length
    # (the first `length` samples), whole repeats end to end otherwise
    np.testing.assert_array_equal(fitted, clip[np.arange(length) % n])


def test_fit_length_defaults_to_the_asvspoof_length():
    assert NUM_SAMPLES == 64_600 and SAMPLE_RATE == 16_000
    assert fit_length(np.ones(10, dtype=np.float32)).shape == (64_600,)
    assert fit_length(np.ones(100_000, dtype=np.float32)).shape == (64_600,)


def test_fit_length_refuses_an_empty_clip():
    with pytest.raises(UnusableAudio, match="zero samples"):
        fit_length(np.zeros(0, dtype=np.float32))


# --- downmix ---------------------------------------------------------------------------------


@given(frames=lengths, channels=st.integers(1, 8), seed=seeds)
def test_downmix_of_identical_channels_is_the_channel(frames: int, channels: int, seed: int):
    mono = np.random.default_rng(seed).uniform(-1, 1, frames).astype(np.float32)
    np.testing.assert_array_equal(downmix(np.repeat(mono[:, None], channels, axis=1)), mono)


@given(frames=lengths, channels=st.integers(1, 8), seed=seeds)
def test_downmix_is_a_mean_within_each_frames_channel_range(frames: int, channels: int, seed: int):
    data = np.random.default_rng(seed).uniform(-1, 1, (frames, channels)).astype(np.float32)
    mono = downmix(data)
    assert mono.shape == (frames,) and mono.dtype == np.float32
    assert (mono >= data.min(axis=1)).all() and (mono <= data.max(axis=1)).all()


def test_downmix_of_opposite_channels_is_silence():
    left = np.linspace(-1, 1, 101, dtype=np.float32)
    np.testing.assert_array_equal(downmix(np.stack([left, -left], axis=1)), np.zeros(101, np.float32))


# --- decode ----------------------------------------------------------------------------------


@given(frames=lengths, channels=st.integers(1, 4), rate=rates, seed=seeds)
def test_decode_float_wav_round_trips(frames: int, channels: int, rate: int, seed: int):
    data = np.random.default_rng(seed).uniform(-1, 1, (frames, channels)).astype(np.float32)
    decoded = decode(written(data, rate))
    assert (decoded.sample_rate, decoded.channels) == (rate, channels)
    np.testing.assert_array_equal(decoded.samples, downmix(data))


@given(frames=lengths, channels=st.integers(1, 2), rate=rates, seed=seeds)
def test_decode_16bit_flac_round_trips(frames: int, channels: int, rate: int, seed: int):
    ints = np.random.default_rng(seed).integers(-(2**15), 2**15, (frames, channels), dtype=np.int16)
    decoded = decode(written(ints, rate, "FLAC", "PCM_16"))
    assert (decoded.sample_rate, decoded.channels) == (rate, channels)
    # libsndfile maps 16-bit PCM to float by dividing by 2**15, exactly
    np.testing.assert_array_equal(decoded.samples, downmix(ints.astype(np.float32) / 2**15))


# --- resample --------------------------------------------------------------------------------


@given(n=lengths, seed=seeds)
def test_resample_at_the_model_rate_is_the_identity(n: int, seed: int):
    clip = np.random.default_rng(seed).uniform(-1, 1, n).astype(np.float32)
    np.testing.assert_array_equal(resample(clip, SAMPLE_RATE), clip)


@given(rate=rates, n=st.integers(400, 4000), cycles=st.floats(0.05, 0.4))
def test_resample_keeps_duration_and_pitch(rate: int, n: int, cycles: float):
    # a tone safely inside both rates' passband, `cycles` of the lower Nyquist
    freq = cycles * min(rate, SAMPLE_RATE) / 2
    tone = np.sin(2 * np.pi * freq * np.arange(n) / rate).astype(np.float32)
    out = resample(tone, rate)
    assert out.dtype == np.float32
    assert abs(len(out) - n * SAMPLE_RATE / rate) <= 0.5  # as long as the input, to a sample
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(out)
    assert abs(peak_hz - freq) <= SAMPLE_RATE / len(out)  # within one FFT bin


def test_resample_refuses_a_clip_too_short_to_leave_a_sample():
    with pytest.raises(UnusableAudio, match="1 frame.* at 44100 Hz resample to no samples"):
        resample(np.ones(1, dtype=np.float32), 44_100)


# --- the whole front end ---------------------------------------------------------------------


@given(n=lengths, seed=seeds)
def test_load_clip_of_16khz_mono_tiles_the_file_exactly(n: int, seed: int):
    clip = np.random.default_rng(seed).uniform(-1, 1, n).astype(np.float32)
    np.testing.assert_array_equal(load_clip(written(clip, SAMPLE_RATE)), clip[np.arange(NUM_SAMPLES) % n])


@given(frames=lengths, channels=st.integers(1, 4), rate=rates, seed=seeds)
def test_load_clip_always_gives_64600_finite_samples(frames: int, channels: int, rate: int, seed: int):
    data = np.random.default_rng(seed).uniform(-1, 1, (frames, channels)).astype(np.float32)
    try:
        clip = load_clip(written(data, rate))
    except UnusableAudio as exc:  # the one refusal a valid short clip can earn
        assert "resample to no samples" in str(exc) and frames * SAMPLE_RATE / rate < 1
        return
    assert clip.shape == (NUM_SAMPLES,) and clip.dtype == np.float32 and np.isfinite(clip).all()


# --- the fixtures ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FIXTURES))
def test_fixture_decodes_with_its_recorded_format(name: str):
    decoded = decode(AUDIO / name)
    assert (decoded.sample_rate, decoded.channels, len(decoded.samples)) == FIXTURES[name]
    assert load_clip(AUDIO / name).shape == (NUM_SAMPLES,)


@pytest.mark.parametrize("name", ["hello_44k_stereo.wav", "hello_16k.flac"])
def test_one_utterance_through_three_decode_paths_gives_one_clip(name: str):
    # sox made these from hello.wav; after downmix and resampling all three must agree
    reference = torch.from_numpy(load_clip(AUDIO / "hello.wav"))
    assert_close(torch.from_numpy(load_clip(AUDIO / name)), reference, RESAMPLING_PATHS, name)


def test_different_utterances_give_different_clips():
    hello, numbers = load_clip(AUDIO / "hello.wav"), load_clip(AUDIO / "numbers.wav")
    assert np.abs(hello - numbers).max() > 0.1


# --- refusals --------------------------------------------------------------------------------


def with_header_sizes(wav: bytes, riff: int, data: int) -> bytes:
    """A copy of a canonical 44-byte-header WAV with its RIFF and data sizes replaced."""
    assert wav[36:40] == b"data"
    return wav[:4] + struct.pack("<I", riff) + wav[8:40] + struct.pack("<I", data) + wav[44:]


@pytest.mark.parametrize("placeholder", [0x7FFF_F000, 0xFFFF_FFFF])
def test_streamed_wav_with_unknown_length_reads_to_the_end(placeholder: int):
    # what espeak-ng --stdout and sox (0x7FFFF000) or ffmpeg (0xFFFFFFFF) write to a pipe
    wav = (AUDIO / "hello.wav").read_bytes()
    streamed = decode(io.BytesIO(with_header_sizes(wav, placeholder, placeholder)))
    np.testing.assert_array_equal(streamed.samples, decode(AUDIO / "hello.wav").samples)


def test_the_format_comes_from_the_content_not_the_name(tmp_path: Path):
    # soundfile alone would refuse any ".raw" name as headerless audio of unknown rate
    renamed = tmp_path / "hello.raw"
    renamed.write_bytes((AUDIO / "hello.wav").read_bytes())
    np.testing.assert_array_equal(decode(renamed).samples, decode(AUDIO / "hello.wav").samples)


def nan_wav(path: Path) -> None:
    sf.write(path, np.full(800, np.nan, dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")


def partly_infinite_wav(path: Path) -> None:
    data = np.zeros((800, 2), dtype=np.float32)
    data[10, 1], data[20, 0] = np.inf, np.nan
    sf.write(path, data, SAMPLE_RATE, subtype="FLOAT")


def too_long_wav(path: Path) -> None:
    # a real header-and-data file just past the limit, kept small by a 10 Hz rate
    sf.write(path, np.zeros(int(MAX_DURATION_S * 10) + 10, dtype=np.int16), 10)


def header_only_wav(path: Path) -> None:
    sf.write(path, np.zeros((0, 1), dtype=np.int16), SAMPLE_RATE)


def truncated(name: str):
    def make(path: Path) -> None:
        data = (AUDIO / name).read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return make


# bad file -> (how to make it at a path, what the reason must say)
BAD_FILES = {
    "truncated.wav": (truncated("hello.wav"), "truncated: the header declares 42578 bytes of audio"),
    "truncated.flac": (truncated("hello_16k.flac"), "corrupt or truncated: libsndfile: flac decoder lost"),
    "empty.wav": (lambda p: p.write_bytes(b""), "empty file \\(0 bytes\\)"),
    "header_only.wav": (header_only_wav, "no audio: the file holds zero frames"),
    "text.wav": (lambda p: p.write_text("not audio at all\n"), "not a readable audio file: libsndfile"),
    "text.raw": (lambda p: p.write_text("not audio at all\n"), "not a readable audio file: libsndfile"),
    "random.flac": (
        lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
        "not a readable audio file: libsndfile",
    ),
    "missing.wav": (None, "no such file"),
    "a_directory.wav": (lambda p: p.mkdir(), "is a directory"),
    "fifo.wav": (os.mkfifo, "not a regular file"),
    "loop.wav": (lambda p: p.symlink_to(p.name), "^symlink loop"),
    "dangling.wav": (lambda p: p.symlink_to("gone.wav"), "^broken symbolic link \\(points to 'gone.wav'"),
    "nan.wav": (nan_wav, "all 800 samples are NaN"),
    "inf.wav": (partly_infinite_wav, "2 of 800 samples are NaN or infinite"),
    "too_long.wav": (too_long_wav, f"too long: 601.0 s; the limit is {MAX_DURATION_S:.0f} s"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_unusable_file_is_refused_with_its_reason(name: str, tmp_path: Path):
    make, reason = BAD_FILES[name]
    path = tmp_path / name
    if make is not None:
        make(path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(UnusableAudio, match=reason) as info:
        load_clip(path)
    assert "\n" not in str(info.value) and info.value.exit_code == 1
    assert (path.read_bytes() if path.is_file() else None) == before  # never modified


def test_a_truncated_mp3_is_refused_in_one_line_and_libmpg123_stays_quiet(
    tmp_path: Path, capfd: pytest.CaptureFixture
):
    if "MP3" not in sf.available_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} cannot write MP3 (needs 1.1 or later)")
    buf = written(np.sin(np.arange(48_000) / 10).astype(np.float32) / 2, SAMPLE_RATE, "MP3", "MPEG_LAYER_III")
    data = buf.getvalue()
    cut = tmp_path / "x.mp3"
    cut.write_bytes(data[: len(data) // 2])
    capfd.readouterr()
    with pytest.raises(UnusableAudio, match="^truncated: the header declares 48000 frames, the file holds"):
        decode(cut)
    assert capfd.readouterr().err == ""  # libmpg123 writes "Warning: Xing stream size off..." to fd 2
    # the real stderr is back afterwards
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_silencing_the_c_stderr_nests_and_restores_it(capfd: pytest.CaptureFixture):
    with c_stderr_silenced():
        os.write(2, b"outer\n")
        with c_stderr_silenced():
            os.write(2, b"inner\n")
        os.write(2, b"outer again\n")
    os.write(2, b"restored\n")
    assert capfd.readouterr().err == "restored\n"


# --- out-of-range samples: scored, with a warning ----------------------------------------------


@given(peak=st.floats(1.001, 100), channels=st.integers(1, 3), seed=seeds)
def test_float_samples_beyond_full_scale_are_kept_and_their_peak_reported(
    peak: float, channels: int, seed: int
):
    data = np.random.default_rng(seed).uniform(-1, 1, (800, channels)).astype(np.float32)
    data[400, channels - 1] = -peak  # one channel's peak, before any downmix could hide it
    decoded = decode(written(data, SAMPLE_RATE))
    assert decoded.peak == np.float32(peak)
    np.testing.assert_array_equal(decoded.samples, downmix(data))  # not clipped, not normalised
    clip, warning = load_clip_checked(written(data, SAMPLE_RATE))
    assert warning == f"peak {np.float32(peak):.4g} is outside [-1, 1] (float samples beyond full scale); " \
        "scored as it is"
    np.testing.assert_array_equal(clip, load_clip(written(data, SAMPLE_RATE)))


def test_integer_pcm_cannot_exceed_full_scale_so_never_warns():
    full_scale = np.array([[-(2**15)], [2**15 - 1]] * 100, dtype=np.int16)
    decoded = decode(written(full_scale, SAMPLE_RATE, "WAV", "PCM_16"))
    assert decoded.peak == 1.0
    assert load_clip_checked(written(full_scale, SAMPLE_RATE, "WAV", "PCM_16"))[1] is None


# --- every scored variant on real audio: its contract in, its transform out ------------------------



def scores_real_audio(name: str, capsys: pytest.CaptureFixture) -> None:
    """``score`` of a real recording with ``name`` (seeded random weights, eager): the JSON says which
    transform and what a high score means, each score is in that transform's range, and the
    numbers are the library's for the clip at the variant's own contract, bit for bit."""
    spec = SUBJECTS[name]
    transform = spec.score_transform
    hello = str(AUDIO / "hello.wav")
    assert main(["score", hello, "--variant", name, "--form", "eager", "--format", "json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert (document["score"], document["score_means"]) == (str(transform), transform.means)
    (row,) = document["results"]
    assert row["file"] == hello and transform.score_problem(row["score"]) is None, row
    contract = scoring_contract(spec)
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = get_audio_model(name)
    clip = torch.from_numpy(load_clip(hello, contract.length))[None]
    expected = score_waveforms(model, clip, contract=contract, transform=transform)
    assert_close(torch.tensor([row["score"]]), expected, EXACT, f"{name}: CLI score vs score_waveforms")
    assert captured.err.startswith(f"warning: no --checkpoint: {name} has random weights")


def test_every_scored_variant_scores_real_audio_through_its_transform(
    scored_name: str, capsys: pytest.CaptureFixture
):
    scores_real_audio(scored_name, capsys)


def test_a_team_model_scores_real_audio_at_its_own_contract(team_scored: list[str],
                                                            capsys: pytest.CaptureFixture):
    # [B, T] input, log_softmax [B, 2]: a log-probability of bona fide, never a [B, 1] probability. The
    # production model is scored (its refactors compute its function: test_equivalence proves that).
    assert team_scored == ["asv", "asv_refactor", "asv_renamed"]
    assert {scoring_contract(SUBJECTS[name]).batch_shape(2) for name in team_scored} == {(2, 8000)}
    scores_real_audio("asv", capsys)


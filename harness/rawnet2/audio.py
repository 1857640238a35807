"""Real audio in, one clip out: decode, downmix, resample, fit to the model's length.

The pipeline for one file (``load_clip``) is the ASVspoof evaluation front end:

1. decode WAV, FLAC or anything else libsndfile reads, in blocks (``soundfile``);
2. downmix to mono by averaging the channels (``downmix``);
3. resample to 16 kHz with soxr's high-quality resampler (``resample``);
4. repeat a short clip / crop a long one to exactly the model's length (``fit_length``;
   64,600 samples for the RawNet2 family).

A file that cannot give a usable clip raises ``UnusableAudio`` with the reason. Scoring
clips is ``harness.rawnet2.scoring``; the ``score`` command, ``harness.rawnet2.score_command``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import stat
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from harness.core.errors import HarnessError
from harness.core.fileio import check_regular_input

# The rate every RawNet2 / ASVspoof front end feeds the model (harness.rawnet2.inputs checks it).
SAMPLE_RATE = 16_000
# ASVspoof 2019/2021 baselines' fixed input: 64,600 samples, about 4.04 s at 16 kHz.
NUM_SAMPLES = 64_600

# Longest recording accepted, checked from the header before anything is decoded. The
# model reads only the first 4.04 s, so a score for anything this long would stand for
# a recording session, not an utterance; and the decoded mono signal is held whole in
# memory before resampling (10 min at 48 kHz is 115 MB of float32).
MAX_DURATION_S = 600.0
# Streaming writers that cannot seek back leave a placeholder data size in the WAV
# header: 0x7FFFF000 (sox, espeak-ng --stdout) or 0xFFFFFFFF (ffmpeg to a pipe).
# libsndfile then reads to the end of the file, which is the right length; only a
# declared size below this is a real claim, and a file shorter than it is truncated.
WAV_UNKNOWN_LENGTH_PLACEHOLDER = 0x7FFF_F000
# Opening a FIFO put where a regular file was must fail (or read nothing), not block.
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
# Frames decoded per read: bounds the working memory of one read to a few MB.
_READ_BLOCK_FRAMES = 1 << 16
# libsndfile logs a WAV data chunk that claims more bytes than the file holds as
# "data : <declared> (should be <present>)".
_WAV_SHORT_DATA = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)


class UnusableAudio(HarnessError):
    """A file that gives no usable clip: the message says why, without the path."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=1)


@dataclass(frozen=True)
class Decoded:
    """A decoded file, already mono: ``samples`` is float32 ``[frames]``; ``peak`` is the
    largest absolute sample of any channel before the downmix (above 1 only for float data)."""

    samples: np.ndarray
    sample_rate: int
    channels: int
    peak: float = 0.0


def downmix(samples: np.ndarray) -> np.ndarray:
    """Average ``[frames, channels]`` to float32 ``[frames]``.

    The mean is taken in float64, so identical channels give back the channel exactly.
    """
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32)


def decode(source: str | os.PathLike | BinaryIO) -> Decoded:
    """Decode a file (path or binary file object) to mono float32 at its own rate.

    The format comes from the content, never from the file name. Raises
    ``UnusableAudio`` for a missing, empty, unreadable, truncated or too long file, or
    one with NaN or infinite samples.
    """
    if not isinstance(source, (str, os.PathLike)):
        return _decode_stream(source)
    try:
        check_regular_input(source)  # a FIFO or device would block or never end
    except HarnessError as exc:
        raise UnusableAudio(str(exc).removeprefix(f"{os.fspath(source)}: ")) from None
    try:
        # a bare descriptor, not the name: soundfile would take a ".raw" name as a demand
        # for headerless audio and refuse before libsndfile looks at the bytes. O_NONBLOCK:
        # a FIFO put in the file's place since the stat must not block the open.
        fd = os.open(source, os.O_RDONLY | _O_NONBLOCK)
    except OSError as exc:
        raise UnusableAudio(f"cannot open: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnusableAudio("not a regular file")
        if info.st_size == 0:
            raise UnusableAudio("empty file (0 bytes)")
        return _decode_stream(fd)
    except OSError as exc:
        raise UnusableAudio(f"unreadable: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _decode_stream(stream: int | BinaryIO) -> Decoded:
    # libsndfile's decoders (libmpg123 for MP3) print their own warnings on the C stderr;
    # the reason a file is refused is ours, in one line.
    with c_stderr_silenced():
        try:
            f = sf.SoundFile(stream, closefd=False)
        except sf.LibsndfileError as exc:
            raise UnusableAudio(f"not a readable audio file: {_libsndfile_reason(exc)}") from None
        with f:
            rate, channels, declared = f.samplerate, f.channels, f.frames
            _check_header(f)
            blocks, peak = [], 0.0
            try:
                while len(block := f.read(_READ_BLOCK_FRAMES, dtype="float32", always_2d=True)):
                    blocks.append(downmix(block))
                    peak = max(peak, float(np.abs(block).max()))
            except sf.LibsndfileError as exc:
                raise UnusableAudio(f"corrupt or truncated: {_libsndfile_reason(exc)}") from None
    samples = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    if len(samples) < declared:
        raise UnusableAudio(
            f"truncated: the header declares {declared} frames, the file holds {len(samples)}"
        )
    _check_finite(samples)
    return Decoded(samples=samples, sample_rate=rate, channels=channels, peak=peak)


# Guards the process-wide fd 2 swap, so overlapping silenced sections in several threads
# restore the real stderr exactly once, when the last one ends.
_STDERR_LOCK = threading.Lock()
_stderr_users = 0
_stderr_saved: int | None = None


@contextlib.contextmanager
def c_stderr_silenced() -> Iterator[None]:
    """Send what C libraries write to file descriptor 2 to /dev/null for the duration.

    Process-wide: anything another thread writes to stderr meanwhile is lost too, so keep
    the section short (one file's decode). Where fd 2 cannot be swapped, nothing changes.
    """
    global _stderr_users, _stderr_saved
    with _STDERR_LOCK:
        if _stderr_users == 0:
            with contextlib.suppress(Exception):
                sys.stderr.flush()  # Python's own buffered text still goes to the real stderr
            try:
                saved = os.dup(2)
            except OSError:
                saved = None
            if saved is not None:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
                os.close(devnull)
            _stderr_saved = saved
        _stderr_users += 1
    try:
        yield
    finally:
        with _STDERR_LOCK:
            _stderr_users -= 1
            if _stderr_users == 0 and _stderr_saved is not None:
                os.dup2(_stderr_saved, 2)
                os.close(_stderr_saved)
                _stderr_saved = None


def _libsndfile_reason(exc: sf.LibsndfileError) -> str:
    text = exc.error_string.strip().removeprefix("Error : ")
    if "possibly a pipe" in text:
        # libsndfile's SFE_BAD_FILE, which its MP3 reader also gives for a file cut short in its
        # first frames; the file was checked to be a regular one, so the stock text would mislead
        return "libsndfile: cannot read the start of the stream (truncated or damaged)"
    return "libsndfile: " + text


def _check_header(f: sf.SoundFile) -> None:
    """Refuse from the header alone, before decoding anything."""
    if f.frames == 0:
        raise UnusableAudio("no audio: the file holds zero frames")
    duration = f.frames / f.samplerate
    if duration > MAX_DURATION_S:
        raise UnusableAudio(
            f"too long: {duration:.1f} s; the limit is {MAX_DURATION_S:.0f} s "
            "(MAX_DURATION_S: the model reads only the first 4.04 s)"
        )
    short = _WAV_SHORT_DATA.search(f.extra_info)
    if short and int(short[1]) < WAV_UNKNOWN_LENGTH_PLACEHOLDER:
        raise UnusableAudio(
            f"truncated: the header declares {short[1]} bytes of audio, the file holds {short[2]}"
        )


def _check_finite(samples: np.ndarray) -> None:
    finite = np.isfinite(samples)
    if finite.all():
        return
    if np.isnan(samples).all():
        raise UnusableAudio(f"all {len(samples)} samples are NaN")
    bad = len(samples) - int(finite.sum())
    raise UnusableAudio(
        f"{bad} of {len(samples)} samples are NaN or infinite (after downmix); any one makes the score NaN"
    )


def resample(samples: np.ndarray, from_rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling with soxr ("HQ"); the same rate returns the input untouched."""
    if from_rate == to_rate:
        return samples
    out = soxr.resample(samples, from_rate, to_rate, quality="HQ")
    if len(out) == 0:
        raise UnusableAudio(
            f"too short: {len(samples)} frame(s) at {from_rate} Hz resample to no samples at {to_rate} Hz"
        )
    return out.astype(np.float32, copy=False)


def fit_length(samples: np.ndarray, length: int = NUM_SAMPLES) -> np.ndarray:
    """The ASVspoof evaluation fit: crop to the first ``length`` samples, or tile a
    shorter clip end to end and cut the tiling at ``length``."""
    if len(samples) == 0:
        raise UnusableAudio("no audio: zero samples")
    if len(samples) >= length:
        return samples[:length]
    return np.tile(samples, -(-length // len(samples)))[:length]


def load_clip(source: str | os.PathLike | BinaryIO, length: int = NUM_SAMPLES) -> np.ndarray:
    """The model's input for one file: float32 ``[length]`` mono at 16 kHz."""
    return load_clip_checked(source, length)[0]


def load_clip_checked(
    source: str | os.PathLike | BinaryIO, length: int = NUM_SAMPLES
) -> tuple[np.ndarray, str | None]:
    """``load_clip``, with a warning for a file that is scored despite something odd about it."""
    decoded = decode(source)
    return fit_length(resample(decoded.samples, decoded.sample_rate), length), out_of_range(decoded.peak)


def decoded_clip(source: str | os.PathLike, length: int = NUM_SAMPLES) -> tuple[np.ndarray | str, str | None]:
    """``(clip, warning)`` for a usable file, ``(reason, None)`` for one that is not: what a scoring
    run records per file instead of stopping."""
    try:
        return load_clip_checked(source, length)
    except UnusableAudio as exc:
        return str(exc), None


def out_of_range(peak: float) -> str | None:
    """The warning for samples beyond full scale, which only float formats can hold. They are
    scored as they are (the model sees what the file holds; clipping would be a guess)."""
    if not peak > 1.0:
        return None
    return f"peak {peak:.4g} is outside [-1, 1] (float samples beyond full scale); scored as it is"


# Scoring's names (their home is harness.rawnet2.scoring) also resolve from here: scripts import them so.
_MOVED_TO_SCORING = ("FileScore", "ForwardFailed", "Progress", "iter_scores", "score_files",
                     "score_waveforms")


def __getattr__(name: str) -> object:
    if name in _MOVED_TO_SCORING:  # by name: an alias for old scripts, not a dependency of decoding
        return getattr(importlib.import_module("harness.rawnet2.scoring"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Real audio in, a deepfake score out: decode, downmix, resample, fit, batch, score.

The pipeline for one file (``load_clip``) is the ASVspoof evaluation front end:

1. decode WAV, FLAC or anything else libsndfile reads, in blocks (``soundfile``);
2. downmix to mono by averaging the channels (``downmix``);
3. resample to 16 kHz with soxr's high-quality resampler (``resample``);
4. repeat a short clip / crop a long one to exactly 64,600 samples (``fit_length``).

A file that cannot give a usable clip raises ``UnusableAudio`` with the reason;
``score_files`` records that reason for the file and goes on with the others.
Batches are formed from consecutive usable files; in eval mode a file's score does
not depend on its batch mates (up to ``harness.core.tolerances.BATCHING``) except for
``tuple_blocks``, whose BatchNorms ``eval()`` cannot reach.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn as nn

from harness.core.errors import HarnessError
from harness.core.loading import parse_kwargs
from harness.rawnet2.checkpoints import get_audio_model
from harness.rawnet2.inputs import NUM_SAMPLES, SAMPLE_RATE

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
# Frames decoded per read: bounds the working memory of one read to a few MB.
_READ_BLOCK_FRAMES = 1 << 16
# libsndfile logs a WAV data chunk that claims more bytes than the file holds as
# "data : <declared> (should be <present>)".
_WAV_SHORT_DATA = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)
# From this many files on, progress goes to stderr after each batch; below it one
# glance at the output covers the run.
PROGRESS_MIN_FILES = 5
# Without --checkpoint the CLI scores with freshly initialised weights from this seed,
# so that two runs print the same numbers (which still mean nothing).
RANDOM_WEIGHTS_SEED = 0


class UnusableAudio(HarnessError):
    """A file that gives no usable clip: the message says why, without the path."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=1)


class ForwardFailed(HarnessError):
    """The model itself could not score a batch: not the files' fault, so the run stops."""


@dataclass(frozen=True)
class Decoded:
    """A decoded file, already mono: ``samples`` is float32 ``[frames]``."""

    samples: np.ndarray
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class FileScore:
    """One file's outcome: a score in [0, 1], or the reason it has none."""

    file: str
    score: float | None = None
    error: str | None = None

    def as_json(self) -> dict:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        return {"file": self.file, "score": self.score}


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
    if os.path.isdir(source):
        raise UnusableAudio("is a directory, not an audio file")
    if not os.path.exists(source):
        raise UnusableAudio("no such file")
    if not os.path.isfile(source):  # a FIFO or device would block or never end
        raise UnusableAudio("not a regular file")
    try:
        if os.path.getsize(source) == 0:
            raise UnusableAudio("empty file (0 bytes)")
        # a bare descriptor, not the name: soundfile would take a ".raw" name as a demand
        # for headerless audio and refuse before libsndfile looks at the bytes
        fd = os.open(source, os.O_RDONLY)
    except OSError as exc:
        raise UnusableAudio(f"cannot open: {exc.strerror or exc}") from None
    try:
        return _decode_stream(fd)
    except OSError as exc:
        raise UnusableAudio(f"unreadable: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _decode_stream(stream: int | BinaryIO) -> Decoded:
    try:
        f = sf.SoundFile(stream, closefd=False)
    except sf.LibsndfileError as exc:
        raise UnusableAudio(f"not a readable audio file: {_libsndfile_reason(exc)}") from None
    with f:
        rate, channels, declared = f.samplerate, f.channels, f.frames
        _check_header(f)
        blocks = []
        try:
            while len(block := f.read(_READ_BLOCK_FRAMES, dtype="float32", always_2d=True)):
                blocks.append(downmix(block))
        except sf.LibsndfileError as exc:
            raise UnusableAudio(f"corrupt or truncated: {_libsndfile_reason(exc)}") from None
    samples = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    if len(samples) < declared:
        raise UnusableAudio(
            f"truncated: the header declares {declared} frames, the file holds {len(samples)}"
        )
    _check_finite(samples)
    return Decoded(samples=samples, sample_rate=rate, channels=channels)


def _libsndfile_reason(exc: sf.LibsndfileError) -> str:
    return "libsndfile: " + exc.error_string.strip().removeprefix("Error : ")


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
    decoded = decode(source)
    return fit_length(resample(decoded.samples, decoded.sample_rate), length)


def score_waveforms(model: nn.Module, waveforms: torch.Tensor) -> torch.Tensor:
    """One forward over ``[B, T]`` waveforms; returns the ``[B]`` scores.

    Raises ``ForwardFailed`` when the model cannot run (e.g. ``legacy`` as found).
    """
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    try:
        with torch.inference_mode():
            out = model(waveforms.unsqueeze(1).to(device))
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise ForwardFailed(f"the model's forward raised RuntimeError: {first_line}") from None
    if out.shape != (len(waveforms), 1):
        raise ForwardFailed(
            f"expected one score per file, shape [{len(waveforms)}, 1]; got {list(out.shape)}"
        )
    return out[:, 0].float().cpu()


def score_files(
    model: nn.Module,
    files: Sequence[str],
    *,
    batch_size: int = 8,
    progress: Callable[[int, int, int], None] | None = None,
) -> list[FileScore]:
    """Score every file, in input order; a file that fails gets its reason instead.

    Files are decoded one at a time and scored ``batch_size`` usable files per
    forward, so memory stays at one batch. ``progress(done, total, failed)`` is
    called after each batch.
    """
    if batch_size < 1:
        raise HarnessError(f"batch size must be at least 1, got {batch_size}")
    results: list[FileScore | None] = [None] * len(files)
    pending: list[tuple[int, np.ndarray]] = []
    failed = reported = 0

    def flush(done: int) -> None:
        nonlocal failed, reported
        if pending:
            batch = torch.from_numpy(np.stack([clip for _, clip in pending]))
            for (index, _), score in zip(pending, score_waveforms(model, batch).tolist(), strict=True):
                if math.isfinite(score):
                    results[index] = FileScore(files[index], score=score)
                else:
                    reason = f"the model gave a non-finite score ({score})"
                    results[index] = FileScore(files[index], error=reason)
                    failed += 1
            pending.clear()
        reported = done
        if progress is not None:
            progress(done, len(files), failed)

    for index, path in enumerate(files):
        try:
            pending.append((index, load_clip(path)))
        except UnusableAudio as exc:
            results[index] = FileScore(path, error=str(exc))
            failed += 1
        if len(pending) == batch_size:
            flush(index + 1)
    if pending or reported < len(files):
        flush(len(files))
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def render_table(results: Iterable[FileScore]) -> str:
    results = list(results)
    width = max((len(r.file) for r in results), default=4)
    lines = [f"{'file':<{width}}  score"]
    for r in results:
        value = f"{r.score:.6f}" if r.error is None else f"error: {r.error}"
        lines.append(f"{r.file:<{width}}  {value}")
    return "\n".join(lines) + "\n"


def _progress_to_stderr(done: int, total: int, failed: int) -> None:
    print(f"scored {done}/{total} files ({failed} failed)", file=sys.stderr, flush=True)


def cli_score(args: argparse.Namespace) -> int:
    """``python -m harness score``: exit 0 when every file scored, 1 when any failed."""
    if args.batch_size < 1:
        raise HarnessError(f"--batch-size must be at least 1, got {args.batch_size}")
    kwargs = parse_kwargs(args.kwargs) if getattr(args, "kwargs", None) else None
    if args.checkpoint is None:
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = get_audio_model(args.variant, None, policy=args.policy, kwargs=kwargs)
        print(
            f"warning: no --checkpoint: {args.variant} has random weights (seed {RANDOM_WEIGHTS_SEED}); "
            "the scores mean nothing",
            file=sys.stderr,
        )
    else:
        model = get_audio_model(args.variant, args.checkpoint, policy=args.policy, kwargs=kwargs)
    progress = _progress_to_stderr if len(args.files) >= PROGRESS_MIN_FILES else None
    try:
        results = score_files(model, args.files, batch_size=args.batch_size, progress=progress)
    except ForwardFailed as exc:
        raise ForwardFailed(f"variant {args.variant!r} cannot score audio: {exc}") from None
    if args.format == "json":
        sys.stdout.write(json.dumps([r.as_json() for r in results], indent=2) + "\n")
    else:
        sys.stdout.write(render_table(results))
    failed = sum(r.error is not None for r in results)
    if failed:
        print(f"{failed} of {len(results)} files failed", file=sys.stderr)
    return 1 if failed else 0

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
``tuple_blocks``, whose BatchNorms ``eval()`` cannot reach. Files are decoded by
``DataLoader`` worker processes, in order, while the model scores the batch before
(``iter_scores``), so a file costs its forward and not its forward plus its decode.

``cli_score`` writes a table or JSON to stdout, or with ``--output`` JSON Lines to a file
as the batches are scored (``ScoreLog``), which ``--resume`` finishes after a kill.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from harness.core.errors import HarnessError
from harness.core.fileio import check_output_path, check_regular_input, fsync_directory
from harness.core.loading import parse_kwargs
from harness.rawnet2.checkpoints import get_audio_model
from harness.rawnet2.inputs import NUM_SAMPLES, SAMPLE_RATE
from harness.rawnet2.registry import resolve

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
# From this many files on, progress goes to stderr after each batch; below it one
# glance at the output covers the run.
PROGRESS_MIN_FILES = 5
# Decoding worker processes, at most: decoding costs ~2 ms a file against a forward's
# hundreds, so two workers keep ahead of the model and leave the cores to it.
MAX_DECODE_WORKERS = 2
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
    """A decoded file, already mono: ``samples`` is float32 ``[frames]``; ``peak`` is the
    largest absolute sample of any channel before the downmix (above 1 only for float data)."""

    samples: np.ndarray
    sample_rate: int
    channels: int
    peak: float = 0.0


@dataclass(frozen=True)
class FileScore:
    """One file's outcome: a score in [0, 1], or the reason it has none. ``warning`` is set
    for a file scored despite something odd about it (``out_of_range``); not in the JSON."""

    file: str
    score: float | None = None
    error: str | None = None
    warning: str | None = None

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


def out_of_range(peak: float) -> str | None:
    """The warning for samples beyond full scale, which only float formats can hold. They are
    scored as they are (the model sees what the file holds; clipping would be a guess)."""
    if not peak > 1.0:
        return None
    return f"peak {peak:.4g} is outside [-1, 1] (float samples beyond full scale); scored as it is"


def score_waveforms(model: nn.Module, waveforms: torch.Tensor) -> torch.Tensor:
    """One forward over ``[B, T]`` waveforms; returns the ``[B]`` scores.

    Raises ``ForwardFailed`` when the model cannot run (e.g. ``legacy`` as found).
    """
    # A deployment form (an ONNX Runtime session) has no parameters: it takes CPU tensors.
    first = next(model.parameters(), None) if isinstance(model, nn.Module) else None
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


def decode_workers(n_files: int, batch_size: int) -> int:
    """Decoding worker processes for a run: none when one forward takes every file (nothing
    to overlap with) or on one core; else ``MAX_DECODE_WORKERS`` or the cores, if fewer."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    if cpus < 2 or n_files <= batch_size:
        return 0
    return min(MAX_DECODE_WORKERS, cpus)


class ClipFiles(Dataset):
    """Item ``i``: ``(i, clip, warning)`` for a usable file, ``(i, reason, None)`` for one that is not."""

    def __init__(self, files: Sequence[str]) -> None:
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | str, str | None]:
        try:
            clip, warning = load_clip_checked(self.files[index])
        except UnusableAudio as exc:
            return index, str(exc), None
        return index, clip, warning


def _as_is(item: object) -> object:
    return item


def decoded_in_order(
    files: Sequence[str], *, workers: int, ahead: int
) -> Iterator[tuple[int, np.ndarray | str, str | None]]:
    """``ClipFiles(files)`` item by item in input order; with ``workers`` > 0 decoded by that
    many ``DataLoader`` worker processes, up to about ``ahead`` files ahead of the consumer."""
    dataset = ClipFiles(files)
    if workers == 0:
        yield from (dataset[i] for i in range(len(dataset)))
        return
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_as_is,
                        prefetch_factor=max(2, -(-ahead // workers)))
    items = iter(loader)
    try:
        yield from items
    finally:
        del items  # stops the workers now, not whenever the iterator is collected


def iter_scores(
    model: nn.Module, files: Sequence[str], *, batch_size: int = 8, workers: int | None = None
) -> Iterator[list[FileScore]]:
    """Score ``files``, yielding results in input order as each forward is done.

    Each chunk is the files after the previous chunk up to the last file of one batch of
    ``batch_size`` usable files (the failed files among them included; the last chunk ends
    at the last file). While the model scores a batch, ``workers`` processes (default:
    ``decode_workers``) decode the next one; the clips, batches and so the scores are the
    same with any number of workers.
    """
    if batch_size < 1:
        raise HarnessError(f"batch size must be at least 1, got {batch_size}")
    files = list(files)
    if workers is None:
        workers = decode_workers(len(files), batch_size)
    done: dict[int, FileScore] = {}
    pending: list[tuple[int, np.ndarray, str | None]] = []
    start = 0

    def flush(end: int) -> list[FileScore]:
        nonlocal start
        if pending:
            batch = torch.from_numpy(np.stack([clip for _, clip, _ in pending]))
            scores = score_waveforms(model, batch).tolist()
            for (index, _, warning), score in zip(pending, scores, strict=True):
                if math.isfinite(score):
                    done[index] = FileScore(files[index], score=score, warning=warning)
                else:
                    reason = f"the model gave a non-finite score ({score})"
                    done[index] = FileScore(files[index], error=reason, warning=warning)
            pending.clear()
        chunk = [done.pop(i) for i in range(start, end)]
        start = end
        return chunk

    for index, item, warning in decoded_in_order(files, workers=workers, ahead=batch_size):
        if isinstance(item, str):
            done[index] = FileScore(files[index], error=item)
        else:
            pending.append((index, item, warning))
        if len(pending) == batch_size:
            yield flush(index + 1)
    if start < len(files):
        yield flush(len(files))


def score_files(
    model: nn.Module,
    files: Sequence[str],
    *,
    batch_size: int = 8,
    progress: Callable[[int, int, int], None] | None = None,
    workers: int | None = None,
) -> list[FileScore]:
    """Score every file, in input order; a file that fails gets its reason instead.

    ``batch_size`` usable files per forward, decoded ahead by ``workers`` processes
    (``iter_scores``), so memory stays at a few batches. ``progress(done, total, failed)``
    is called after each batch.
    """
    results: list[FileScore] = []
    failed = 0
    for chunk in iter_scores(model, files, batch_size=batch_size, workers=workers):
        results.extend(chunk)
        failed += sum(r.error is not None for r in chunk)
        if progress is not None:
            progress(len(results), len(files), failed)
    return results


def render_table(results: Iterable[FileScore]) -> str:
    results = list(results)
    width = max((len(r.file) for r in results), default=4)
    lines = [f"{'file':<{width}}  score"]
    for r in results:
        value = f"{r.score:.6f}" if r.error is None else f"error: {r.error}"
        lines.append(f"{r.file:<{width}}  {value}")
    return "\n".join(lines) + "\n"


class Progress:
    """Progress of a run on stderr: a tqdm bar on a terminal, else one plain line per batch.

    ``message`` prints a line (a warning) without tearing the bar.
    """

    def __init__(self, total: int, *, done: int = 0, failed: int = 0, enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.total, self.enabled = total, enabled
        self.bar: tqdm | None = None
        if enabled and _is_terminal(self.stream):
            self.bar = tqdm(total=total, initial=done, unit="file", desc="scoring", file=self.stream,
                            dynamic_ncols=True, postfix=f"{failed} failed")

    def update(self, done: int, failed: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{failed} failed", refresh=False)
            self.bar.update(done - self.bar.n)
        elif self.enabled:
            print(f"scored {done}/{self.total} files ({failed} failed)", file=self.stream, flush=True)

    def message(self, line: str) -> None:
        if self.bar is not None:
            tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


# --- score --output: JSON Lines, written as computed, resumable --------------------------------

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def check_score_log_path(path: str, *, resume: bool, force: bool, inputs: Iterable[str] = ()) -> bool:
    """Refuse ``path`` as ``--output`` before any work; return whether something is there.

    ``harness.core.fileio.check_output_path`` refuses an empty path, a directory, a FIFO,
    device or socket, a missing directory, and a symbolic link unless ``force`` (which
    replaces the link itself). Here: an existing file needs ``resume`` or ``force``, and
    is never one of the run's ``inputs`` (audio files, checkpoint).
    """
    target = check_output_path(path, force=force)
    if not os.path.lexists(target):
        return False
    if not (resume or force):
        raise HarnessError(f"{path}: already exists; --resume finishes it, --force overwrites it")
    if not os.path.islink(target):
        for given in inputs:
            with contextlib.suppress(OSError):
                if os.path.samefile(given, target):
                    raise HarnessError(f"{path}: is the input file {given!r}; give another output file")
    return True


def parse_score_log(data: bytes, path: str) -> tuple[list[FileScore], int]:
    """The records of an ``--output`` file's bytes, and how many bytes hold whole lines.

    A last line without its newline is what a kill in the middle of a write leaves: it is
    not a record (its file is scored again). Any other line that is not a record raises
    ``HarnessError`` naming its number.
    """
    keep = data.rfind(b"\n") + 1
    lines = data[:keep].split(b"\n")[:-1]
    return [_parse_record(line, path, number) for number, line in enumerate(lines, start=1)], keep


def _parse_record(line: bytes, path: str, number: int) -> FileScore:
    what = 'not a score record ({"file": PATH, "score": NUMBER} or {"file": PATH, "error": TEXT})'
    try:
        row = json.loads(line)
    except ValueError:  # bad JSON or bad UTF-8
        row = None
    if isinstance(row, dict) and isinstance(row.get("file"), str):
        score, error = row.get("score"), row.get("error")
        if set(row) == {"file", "score"} and isinstance(score, (int, float)) and not isinstance(score, bool):
            if math.isfinite(score):
                return FileScore(row["file"], score=float(score))
        elif set(row) == {"file", "error"} and isinstance(error, str):
            return FileScore(row["file"], error=error)
    raise HarnessError(f"{path}: line {number}: {what}; fix or delete that line, or --force to start over")


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


class ScoreLog:
    """``score --output PATH``: one JSON line per file, appended and fsync'd a batch at a time,
    in input order, so a killed run loses at most the batch it was scoring.

    Made before any work: the path is checked (``check_score_log_path``) and, with ``resume``,
    the records already there are read (``parse_score_log``) so a bad file stops the run
    before the model loads. Entered after: the file is opened (created, emptied with
    ``force``, or with ``resume`` read again and cut after its last whole line) without
    following a symlink or blocking on a FIFO that took its place meanwhile.
    """

    def __init__(self, path: str, *, resume: bool = False, force: bool = False,
                 inputs: Iterable[str] = ()) -> None:
        self.path, self.resume, self.force = path, resume, force
        self.existed = check_score_log_path(path, resume=resume, force=force, inputs=inputs)
        self.recorded: list[FileScore] = []
        self._fd: int | None = None
        if resume and self.existed:
            fd = self._open(os.O_RDONLY)
            try:
                self.recorded, _ = parse_score_log(_read_all(fd), path)
            finally:
                os.close(fd)

    def _open(self, flags: int) -> int:
        try:
            fd = os.open(self.path, flags | _O_NOFOLLOW | _O_NONBLOCK, 0o666)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise HarnessError(f"{self.path}: appeared while the run started; "
                                   "--resume finishes it, --force overwrites it") from None
            if exc.errno == errno.ELOOP:
                raise HarnessError(f"{self.path}: became a symbolic link while the run started") from None
            raise HarnessError(f"{self.path}: cannot open: {exc.strerror or exc}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise HarnessError(f"{self.path}: not a regular file (a FIFO, device or socket); "
                               "give a file name")
        return fd

    def __enter__(self) -> ScoreLog:
        if self.force and os.path.islink(self.path):
            os.unlink(self.path)  # --force replaces the link itself; what it points to is never opened
            self.existed = False
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
        if not self.existed:
            flags |= os.O_EXCL
        elif not self.resume:
            flags |= os.O_TRUNC
        self._fd = self._open(flags)
        try:
            if self.resume and self.existed:
                self.recorded, keep = parse_score_log(_read_all(self._fd), self.path)
                os.ftruncate(self._fd, keep)  # a half-written last line goes: its file is scored again
                os.fsync(self._fd)
            elif not self.existed:
                fsync_directory(Path(self.path).parent)  # the new name itself survives a crash
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def append(self, results: Iterable[FileScore]) -> None:
        """Write one line per result and make them durable before returning."""
        assert self._fd is not None, "append() outside a with block"
        data = memoryview("".join(json.dumps(r.as_json()) + "\n" for r in results).encode())
        try:
            while data:
                data = data[os.write(self._fd, data):]
            os.fsync(self._fd)
        except OSError as exc:
            raise HarnessError(f"{self.path}: cannot write: {exc.strerror or exc}") from None


def split_recorded(files: Sequence[str], recorded: Iterable[FileScore]) -> tuple[list[str], list[FileScore]]:
    """``files`` not yet in ``recorded`` (by the path as given; a file given twice needs two
    records), and the records of those that are."""
    by_file: dict[str, list[FileScore]] = {}
    for record in recorded:
        by_file.setdefault(record.file, []).append(record)
    todo, kept = [], []
    for path in files:
        if by_file.get(path):
            kept.append(by_file[path].pop(0))
        else:
            todo.append(path)
    return todo, kept


# --- the command ---------------------------------------------------------------------------------


def build_score_model(args: argparse.Namespace) -> nn.Module:
    """The model ``score`` runs: ``--variant`` holding ``--checkpoint`` (or seeded random
    weights, with a warning), in the deployment form ``--form`` on ``--device``
    (``harness.rawnet2.deploy.deployment_model``; stderr names the form that ran). The one
    place the command builds it."""
    from harness.rawnet2.deploy import deployment_model

    kwargs = parse_kwargs(args.kwargs) if getattr(args, "kwargs", None) else None
    if args.checkpoint is not None:
        model = get_audio_model(args.variant, args.checkpoint, policy=args.policy, kwargs=kwargs)
    else:
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = get_audio_model(args.variant, None, policy=args.policy, kwargs=kwargs)
        print(
            f"warning: no --checkpoint: {args.variant} has random weights (seed {RANDOM_WEIGHTS_SEED}); "
            "the scores mean nothing",
            file=sys.stderr,
        )
    form, device = getattr(args, "form", "eager"), getattr(args, "device", "cpu")
    built, ran = deployment_model(model, resolve(args.variant, kwargs=kwargs), form, device)
    print(f"score: {args.variant} as {ran}", file=sys.stderr)
    return built


def cli_score(args: argparse.Namespace) -> int:
    """``python -m harness score``: exit 0 when every file scored, 1 when any failed."""
    if args.batch_size < 1:
        raise HarnessError(f"--batch-size must be at least 1, got {args.batch_size}")
    output = getattr(args, "output", None)
    resume, force = getattr(args, "resume", False), getattr(args, "force", False)
    if output is None and (resume or force):
        flag = "--resume" if resume else "--force"
        raise HarnessError(f"{flag} applies to --output PATH, and none was given")
    if output is not None and args.format is not None:
        raise HarnessError("--format is for stdout; --output always writes JSON Lines (stdout stays empty)")
    log = None
    if output is not None:  # before any work: a bad path or log stops the run here
        inputs = [*args.files, *([args.checkpoint] if args.checkpoint else [])]
        log = ScoreLog(output, resume=resume, force=force, inputs=inputs)
    model = build_score_model(args)
    try:
        if log is None:
            return _score_to_stdout(model, args)
        return _score_to_log(model, args, log)
    except ForwardFailed as exc:
        raise ForwardFailed(f"variant {args.variant!r} cannot score audio: {exc}") from None


def _scored(model: nn.Module, files: Sequence[str], batch_size: int, progress: Progress,
            failed: int, done: int) -> Iterator[list[FileScore]]:
    """``iter_scores``, with each file's warning and the run's progress on stderr."""
    for chunk in iter_scores(model, files, batch_size=batch_size):
        for r in chunk:
            if r.warning is not None:
                progress.message(f"warning: {r.file}: {r.warning}")
        yield chunk
        done += len(chunk)
        failed += sum(r.error is not None for r in chunk)
        progress.update(done, failed)


def _score_to_stdout(model: nn.Module, args: argparse.Namespace) -> int:
    files = args.files
    progress = Progress(len(files), enabled=len(files) >= PROGRESS_MIN_FILES)
    try:
        results = [r for chunk in _scored(model, files, args.batch_size, progress, 0, 0) for r in chunk]
    finally:
        progress.close()
    if args.format == "json":
        sys.stdout.write(json.dumps([r.as_json() for r in results], indent=2) + "\n")
    else:
        sys.stdout.write(render_table(results))
    return _summary(sum(r.error is not None for r in results), len(results))


def _score_to_log(model: nn.Module, args: argparse.Namespace, log: ScoreLog) -> int:
    files = args.files
    with log:
        todo, kept = split_recorded(files, log.recorded)
        failed = sum(r.error is not None for r in kept)
        if kept:
            print(f"resuming {log.path}: {len(kept)} of {len(files)} files already recorded, "
                  f"{len(todo)} to score", file=sys.stderr)
        progress = Progress(len(files), done=len(kept), failed=failed,
                            enabled=len(files) >= PROGRESS_MIN_FILES)
        written = 0
        try:
            for chunk in _scored(model, todo, args.batch_size, progress, failed, len(kept)):
                log.append(chunk)
                written += len(chunk)
                failed += sum(r.error is not None for r in chunk)
        except KeyboardInterrupt:
            progress.close()
            print(f"interrupted: {len(kept) + written} of {len(files)} files are recorded in {log.path}; "
                  "the same command with --resume scores the rest", file=sys.stderr)
            return 130
        finally:
            progress.close()
    return _summary(failed, len(files))


def _summary(failed: int, total: int) -> int:
    if failed:
        print(f"{failed} of {total} files failed", file=sys.stderr)
    return 1 if failed else 0

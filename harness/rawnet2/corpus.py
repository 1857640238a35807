"""A small labelled corpus built from the bundled recordings: real audio, labels by a rule.

``build_corpus(directory)`` writes bona fide clips and spoofs for each of ``ATTACKS`` (1 s,
16 kHz mono WAV) and ``protocol.txt`` in the ASVspoof 2019 format, so ``evaluate`` and the
report's decisions have labelled data on a fresh clone with no network. Same arguments, same
bytes. ``fft_resample`` and ``wav_bytes`` are its numpy-only resampler and WAV writer. How each
clip is made: docs/evaluate.md, "The bundled corpus".
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import harness
from harness.core.errors import HarnessError
from harness.core.fileio import write_atomically
from harness.rawnet2.audio import decode
from harness.rawnet2.inputs import SAMPLE_RATE

BUNDLED_AUDIO = Path(harness.__file__).parents[1] / "tests" / "data" / "audio"
PROTOCOL_NAME = "protocol.txt"
# What a source recording may be: the formats libsndfile decodes that the bundled ones use.
SOURCE_SUFFIXES = (".wav", ".flac")
CLIP_SAMPLES = SAMPLE_RATE  # 1 s
# Bona fide clip k starts SHIFT_STEP * k samples into its recording (62.5 ms steps).
SHIFT_STEP = 1_000
# Peaks the clips are scaled to, in turn: loudness varies, and no clip clips at 16 bits.
PEAKS = (0.9, 0.5, 0.7, 0.3)
# NZ: speech power over noise power. At 10 dB the noise carries a tenth of the speech's power,
# and half of white noise's power lies above 4 kHz; speech keeps well under 1% there.
NOISE_SNR_DB = 10.0
NOISE_SEED = 20_190
# Utterance ids carry four digits: 3 attacks x 3,000 spoofs stay below 10,000.
MAX_PER_CLASS = 3_000
BONAFIDE, SPOOF, NO_ATTACK = "bonafide", "spoof", "-"


@dataclass(frozen=True)
class BandLimit:
    """An attack's transform: keep only the FFT bins of the whole clip in ``[low_hz, high_hz)``
    (a brick wall)."""

    low_hz: float
    high_hz: float

    def __call__(self, clip: np.ndarray, index: int) -> np.ndarray:
        spectrum = np.fft.rfft(clip)
        freqs = np.fft.rfftfreq(len(clip), 1 / SAMPLE_RATE)
        spectrum[(freqs < self.low_hz) | (freqs >= self.high_hz)] = 0
        return np.fft.irfft(spectrum, len(clip))


@dataclass(frozen=True)
class WhiteNoise:
    """An attack's transform: add white Gaussian noise ``snr_db`` below the clip's mean power, spoof
    ``index``'s drawn from ``default_rng([seed, index])``."""

    snr_db: float
    seed: int

    def __call__(self, clip: np.ndarray, index: int) -> np.ndarray:
        noise = np.random.default_rng([self.seed, index]).standard_normal(len(clip))
        power = float(np.mean(clip ** 2))
        return clip + noise * np.sqrt(power / 10 ** (self.snr_db / 10))


# attack id -> (what it stands for, its transform of a clip; ``index`` numbers the spoof, from 0)
ATTACKS: dict[str, tuple[str, Callable[[np.ndarray, int], np.ndarray]]] = {
    "LP": ("narrow-band vocoder: nothing at or above 3.5 kHz", BandLimit(0.0, 3_500.0)),
    "TL": ("telephone channel replay: 300 Hz to 3.4 kHz", BandLimit(300.0, 3_400.0)),
    "NZ": (f"white noise added at {NOISE_SNR_DB:g} dB SNR", WhiteNoise(NOISE_SNR_DB, NOISE_SEED)),
}


@dataclass(frozen=True)
class Corpus:
    """A built corpus: its directory, protocol file, and per utterance (in protocol order) its id,
    label (``bonafide``/``spoof``) and attack (``-`` for bona fide)."""

    directory: Path
    protocol: Path
    utterances: tuple[str, ...]
    labels: tuple[str, ...]
    attacks: tuple[str, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        """Each utterance's clip, in protocol order."""
        return tuple(self.directory / f"{utt}.wav" for utt in self.utterances)


def fft_resample(samples: np.ndarray, from_rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample by truncating (or zero-padding) the spectrum of the whole signal: band-limited,
    treating the recording as one period; float64 out. The same rate returns a float64 copy."""
    samples = np.asarray(samples, dtype=np.float64)
    if from_rate == to_rate:
        return samples.copy()
    length = round(len(samples) * to_rate / from_rate)
    spectrum = np.fft.rfft(samples)
    kept = np.zeros(length // 2 + 1, dtype=complex)
    bins = min(len(kept), len(spectrum))
    kept[:bins] = spectrum[:bins]
    if length % 2 == 0:
        kept[-1] = 0  # the new Nyquist bin would keep only the real part of a bin that was not one
    return np.fft.irfft(kept, length) * (length / len(samples))


def wav_bytes(clip: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A mono 16-bit PCM WAV file of ``clip`` (floats in [-1, 1], rounded to the nearest step)."""
    pcm = np.clip(np.round(clip * 32767), -32768, 32767).astype("<i2").tobytes()
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1,
                         sample_rate, sample_rate * 2, 2, 16, b"data", len(pcm))
    return header + pcm


def build_corpus(directory: str | os.PathLike, *, sources: str | os.PathLike = BUNDLED_AUDIO,
                 per_class: int = 8) -> Corpus:
    """Write the corpus into ``directory`` (new or empty; made with its parents if missing).

    ``sources``: a directory of recordings (its ``.wav``/``.flac`` files, by name). Each file is
    written under a temporary name and renamed into place, the protocol last, so a directory
    holding ``protocol.txt`` holds every clip it lists.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or not 1 <= per_class <= MAX_PER_CLASS:
        raise HarnessError(f"per_class must be an integer from 1 to {MAX_PER_CLASS}, got {per_class!r}")
    directory = Path(directory)
    recordings = _recordings(Path(sources))
    _check_empty_directory(directory)
    directory.mkdir(parents=True, exist_ok=True)

    rows: list[tuple[str, str, str, str]] = []  # speaker, utterance, attack, label
    bases = [_bonafide_base(recordings, k) for k in range(per_class)]
    for k, (speaker, clip) in enumerate(bases):
        utt = f"FX_B_{k + 1:04d}"
        _write(directory / f"{utt}.wav", wav_bytes(_at_peak(clip, PEAKS[k % len(PEAKS)])))
        rows.append((speaker, utt, NO_ATTACK, BONAFIDE))
    for a, (attack, (_, transform)) in enumerate(ATTACKS.items()):
        for k, (speaker, clip) in enumerate(bases):
            index = a * per_class + k
            utt = f"FX_S_{index + 1:04d}"
            spoof = _at_peak(transform(clip, index), PEAKS[k % len(PEAKS)])
            _write(directory / f"{utt}.wav", wav_bytes(spoof))
            rows.append((speaker, utt, attack, SPOOF))
    protocol = directory / PROTOCOL_NAME
    _write(protocol, "".join(f"{s} {u} - {a} {label}\n" for s, u, a, label in rows).encode("ascii"))
    return Corpus(directory=directory, protocol=protocol, utterances=tuple(r[1] for r in rows),
                  labels=tuple(r[3] for r in rows), attacks=tuple(r[2] for r in rows))


def _recordings(sources: Path) -> list[tuple[str, np.ndarray]]:
    """``(speaker id, 16 kHz float64 samples)`` of every source recording, by file name."""
    try:
        files = sorted(p for p in sources.iterdir() if p.suffix.lower() in SOURCE_SUFFIXES and p.is_file())
    except OSError as exc:
        raise HarnessError(f"{sources}: cannot list the source recordings: {exc.strerror or exc}") from None
    if not files:
        raise HarnessError(f"{sources}: holds no source recording ({', '.join(SOURCE_SUFFIXES)} files)")
    recordings = []
    for path in files:
        try:
            decoded = decode(path)
        except HarnessError as exc:
            raise HarnessError(f"{path}: {exc}") from None
        samples = fft_resample(decoded.samples, decoded.sample_rate)
        if not np.any(samples):
            raise HarnessError(f"{path}: is silent; a corpus clip needs speech")
        recordings.append((f"FX_{_speaker(path.stem)}", samples))
    return recordings


def _speaker(stem: str) -> str:
    """A file stem as one protocol field: no whitespace, nothing but letters, digits and _ - ."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "_-.") else "_" for c in stem)


def _bonafide_base(recordings: list[tuple[str, np.ndarray]], k: int) -> tuple[str, np.ndarray]:
    """Bona fide clip k before its peak is set: recording ``k mod n``, from sample ``SHIFT_STEP * k``,
    wrapping around its end."""
    speaker, samples = recordings[k % len(recordings)]
    window = np.arange(SHIFT_STEP * k, SHIFT_STEP * k + CLIP_SAMPLES)
    return speaker, np.take(samples, window, mode="wrap")


def _at_peak(clip: np.ndarray, peak: float) -> np.ndarray:
    return clip * (peak / np.abs(clip).max())


def _check_empty_directory(directory: Path) -> None:
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise HarnessError(f"{directory}: is not a directory; the corpus goes into a new or empty "
                           "directory") from None
    except OSError as exc:
        raise HarnessError(f"{directory}: cannot list it: {exc.strerror or exc}") from None
    if entries:
        raise HarnessError(f"{directory}: is not empty ({len(entries)} entries, e.g. {entries[0]!r}); the "
                           "corpus goes into a new or empty directory")


def _write(path: Path, data: bytes) -> None:
    # Atomic (no clip is ever half-written under its own name) but not durable: a fixture is
    # rebuilt in a moment, and an fsync per clip would take most of the build's time.
    write_atomically(path, lambda f: f.write(data), durable=False)

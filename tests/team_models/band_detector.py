"""A stand-in detector whose scores on the fixture corpus are ordered by construction.

``HighBandDetector`` takes ``[B, T]`` audio at 16 kHz and returns a ``[B, 1]`` score in
[0, 1] meaning bona fide (one column: the harness's probability contract): the share of the
clip's energy that a fixed high-pass filter (cutoff 4 kHz, a buffer) lets through, squashed
by ``share / (share + HALF_SCORE_SHARE)``. It has no parameters and nothing to learn;
nothing here imports the harness.

Why its scores on ``harness.rawnet2.corpus.build_corpus``'s clips fall in three groups
(each clip's own loudness cancels out of the share, so the peaks do not matter):

* ``LP`` and ``TL`` spoofs hold nothing at or above 3.5 kHz, which is the filter's stopband
  (below ``STOPBAND_EDGE_HZ`` the filter's gain is under ``STOPBAND_GAIN_DB``, -70 dB). What it passes is that
  leakage and the files' 16-bit rounding noise: a share around 1e-8.
* Bona fide clips are espeak-ng speech, which keeps 0.1% to 0.7% of its energy above 4 kHz
  (its fricatives): 10^5 times more. So every LP and TL spoof scores below every bona fide clip.
* ``NZ`` spoofs are the same speech plus white noise at 10 dB SNR. Half of white noise's power
  lies above 4 kHz and the noise holds 1/11 of the sum's power, so the share is at least
  about 0.5 / 11 = 4.5%: above every bona fide clip's 0.7%.

So a bona fide-high score puts LP, TL < bona fide < NZ: perfect on the band-limited attacks,
perfectly wrong on the noisy one; ``tests/test_corpus.py`` asserts the order and the EERs
that follow from it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

SAMPLE_RATE = 16_000
CUTOFF_HZ = 4_000.0
# Odd length (a type I linear-phase high-pass); the Blackman window's transition band is about
# 5.5 * 16 kHz / 129 = 680 Hz wide around the cutoff, so below this edge is stopband.
TAPS = 129
STOPBAND_EDGE_HZ = 3_600.0
STOPBAND_GAIN_DB = -70.0  # at most, anywhere below STOPBAND_EDGE_HZ (-75 dB as designed)
# The high-band share that scores 0.5: between speech's (< 1%) and white noise's (50%).
HALF_SCORE_SHARE = 0.01
# Keeps a silent clip's share at 0 rather than 0 / 0.
ENERGY_FLOOR = 1e-12


def high_pass_taps(taps: int = TAPS, cutoff_hz: float = CUTOFF_HZ, sample_rate: int = SAMPLE_RATE
                   ) -> torch.Tensor:
    """A Blackman-windowed sinc high-pass (a unit impulse minus the low-pass): ``[1, 1, taps]``."""
    t = torch.arange(taps, dtype=torch.float64) - (taps - 1) / 2
    window = torch.blackman_window(taps, periodic=False, dtype=torch.float64)
    low_pass = 2 * cutoff_hz / sample_rate * torch.sinc(2 * cutoff_hz / sample_rate * t) * window
    low_pass = low_pass / low_pass.sum()  # unit gain at 0 Hz, so the high-pass passes none of it
    impulse = torch.zeros(taps, dtype=torch.float64)
    impulse[(taps - 1) // 2] = 1
    return (impulse - low_pass).float().reshape(1, 1, taps)


class HighBandDetector(nn.Module):
    """``[B, T]`` audio -> ``[B, 1]`` score in [0, 1], higher = more of the energy above 4 kHz."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("taps", high_pass_taps())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        high = F.conv1d(x.unsqueeze(1), self.taps).squeeze(1)  # T - TAPS + 1 outputs
        half = (self.taps.shape[-1] - 1) // 2
        whole = x[:, half:x.shape[-1] - half]  # the samples the filter's outputs are centred on
        share = high.pow(2).sum(dim=-1) / (whole.pow(2).sum(dim=-1) + ENERGY_FLOOR)
        return (share / (share + HALF_SCORE_SHARE)).unsqueeze(1)


def stopband_gain_db(frequency_hz: float) -> float:
    """The filter's gain at ``frequency_hz``, in dB (the stopband claim is tested with it)."""
    taps = high_pass_taps().double().flatten()
    n = torch.arange(len(taps), dtype=torch.float64)
    response = (taps * torch.exp(-2j * math.pi * frequency_hz / SAMPLE_RATE * n)).sum().abs()
    return 20 * math.log10(float(response) + 1e-300)

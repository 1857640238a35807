"""Validate a waveform batch before it reaches a model: one clear error instead of a deep one.

The raw variants accept almost nothing wrong silently, but they fail deep inside with
messages about conv weights or ``running_mean`` sizes, and they pass NaN/Inf through
to the scores without a word. ``validate_input`` says what was expected instead.
"""

from __future__ import annotations

import math

import torch

from harness.core.errors import HarnessError
from harness.rawnet2.audio import NUM_SAMPLES, SAMPLE_RATE  # noqa: F401 - the convention, decoded in audio
from harness.rawnet2.layouts import PROJECTION_BLOCKS

# Each projection block's stride-2 conv (kernel 3, padding 1) maps a length L to
# ceil(L / 2); every other layer keeps the length. So the last block's BatchNorms
# see ceil(T / 8) positions per sample.
DOWNSAMPLING = 2 ** len(PROJECTION_BLOCKS)


class InputError(HarnessError, ValueError):
    """A model input that is not a waveform batch the model can take (exit code 1: failed input)."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message, exit_code=exit_code)


def last_norm_values(batch: int, length: int) -> int:
    """Values per channel the last BatchNorm normalises over for a ``[batch, 1, length]`` input."""
    return batch * math.ceil(length / DOWNSAMPLING)


def min_train_length(batch: int) -> int:
    """Shortest waveform a train-mode forward accepts for this batch size.

    Train-mode BatchNorm needs more than one value per channel, i.e.
    ``last_norm_values(batch, T) >= 2``: T >= DOWNSAMPLING + 1 for a batch of one,
    T >= 1 otherwise.
    """
    if batch < 1:
        raise ValueError(f"batch size must be at least 1, got {batch}")
    return DOWNSAMPLING + 1 if batch == 1 else 1


def train_length_problem(shape: tuple[int, ...]) -> str | None:
    """Why a ``[B, 1, T]`` batch is too short for a train-mode forward of the family, or None.

    The one wording of the rule ``min_train_length`` states, for ``validate_input`` and
    for the audit's refusal of a too-small example input.
    """
    batch, length = shape[0], shape[-1]
    if length >= min_train_length(batch):
        return None
    values = last_norm_values(batch, length)
    return (f"shape {tuple(shape)} is too short for a train-mode forward: the last BatchNorm would see "
            f"{values} value per channel (B * ceil(T / {DOWNSAMPLING})) and needs at least 2; "
            f"use T >= {min_train_length(batch)} or a batch of 2 or more")


def validate_input(
    x: object,
    *,
    channels: int = 1,
    dtype: torch.dtype | None = torch.float32,
    training: bool = False,
) -> torch.Tensor:
    """Return ``x`` unchanged if it is a finite, non-empty ``[B, channels, T]`` batch, else raise.

    ``dtype`` is the dtype the model's weights have (None: any floating dtype);
    ``training=True`` also rejects inputs too short for train-mode BatchNorm.
    Raises ``InputError`` (a ``ValueError``) saying what was expected and what came.
    """
    expected = f"[B, {channels}, T]"
    if not isinstance(x, torch.Tensor):
        raise InputError(f"expected a waveform batch tensor {expected}, got {type(x).__name__}")
    shape = tuple(x.shape)
    if x.dim() != 3:
        hint = {1: "; add batch and channel dims with x.view(1, 1, -1)",
                2: "; add the channel dim with x.unsqueeze(1)"}.get(x.dim(), "")
        raise InputError(f"expected a waveform batch {expected} (3 dims), got {x.dim()} dims, "
                         f"shape {shape}{hint}")
    if shape[1] != channels:
        hint = "; channels-last? use x.transpose(1, 2)" if shape[2] == channels else ""
        raise InputError(f"expected {channels} channel(s) at dim 1 of {expected}, got {shape[1]} "
                         f"in shape {shape}{hint}")
    if not x.is_floating_point():
        raise InputError(f"expected a floating-point waveform ({dtype or 'float'}), got {x.dtype}; "
                         "convert integer PCM with x.float() / 2**(bits - 1)")
    if dtype is not None and x.dtype != dtype:
        raise InputError(f"expected a {dtype} waveform (the model's dtype), got {x.dtype}; "
                         f"convert with x.to({dtype})")
    if x.numel() == 0:
        raise InputError(f"expected a non-empty batch (B >= 1, T >= 1), got shape {shape}")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        rows = (~finite).reshape(shape[0], -1).any(1).nonzero().flatten().tolist()
        raise InputError(f"waveform has {nan} NaN and {inf} Inf values (samples {rows}); "
                         "the model would score them as NaN without an error")
    problem = train_length_problem(shape) if training else None
    if problem:
        raise InputError(problem)
    return x

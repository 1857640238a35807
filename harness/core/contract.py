"""A model's input/output contract: what one example looks like, and how a detection score
comes from the output.

``InputContract`` is one example's shape without the batch dimension (``(1, 16000)`` for a
``[B, 1, T]`` model, ``(64600,)`` for a ``[B, T]`` one) and the shortest last axis the
forward takes. Everything that makes an input for a model asks it (``example``), so no
length is hard-coded where a model goes.

``ScoreTransform`` turns an output into one score per example: ``probability`` (the output
is ``[B, 1]`` or ``[B]`` in [0, 1]), ``sigmoid[k]``, ``softmax[k]`` or ``log_softmax[k]``
(column k of the logits or log-probabilities; for log_softmax the score is that column
itself, as the ASVspoof baselines score), and whether a high score means spoof or bona fide.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from harness.core.errors import HarnessError

if TYPE_CHECKING:  # torch loads on use: score with a cached export runs without it
    import torch

SCORE_KINDS = ("probability", "sigmoid", "softmax", "log_softmax")
SCORE_MEANINGS = ("spoof", "bonafide")
# Log-softmax rows must log-sum-exp to 0; float32 rounding over a handful of classes stays far below.
LOG_PROBABILITY_SLACK = 1e-4
# The largest example (values, batch included) a forward is asked to take: 256 Mi float32 values,
# 1 GiB for the input alone; a model's activations take many times that.
MAX_INPUT_VALUES = 1 << 28

_SCORE_SPEC = re.compile(r"^(probability|sigmoid|softmax|log_softmax)(?:\[(\d+)\])?$")


@dataclass(frozen=True)
class InputContract:
    """One example's shape without the batch dimension, and the shortest last axis accepted."""

    shape: tuple[int, ...]
    min_length: int = 1

    def __post_init__(self) -> None:
        if not self.shape or any(not isinstance(n, int) or n < 1 for n in self.shape):
            raise HarnessError(f"input_shape must be positive integers (one example, no batch), got "
                               f"{list(self.shape)}")
        if not isinstance(self.min_length, int) or self.min_length < 1:
            raise HarnessError(f"min_length must be a positive integer, got {self.min_length!r}")
        if self.shape[-1] < self.min_length:
            raise HarnessError(f"input_shape {list(self.shape)} is shorter than min_length {self.min_length}")

    @property
    def length(self) -> int:
        return self.shape[-1]

    def batch_shape(self, batch: int, length: int | None = None) -> tuple[int, ...]:
        """``[batch, *shape]`` with the last axis set to ``length`` (default: the declared one)."""
        return (batch, *self.shape[:-1], self.length if length is None else length)

    def example(self, batch: int = 2, length: int | None = None, *, seed: int = 0,
                dtype: torch.dtype | None = None) -> torch.Tensor:
        """A seeded standard-normal batch (CPU Mersenne twister: the same on every platform), float32
        unless ``dtype`` says otherwise."""
        import torch

        shape = self.batch_shape(batch, length)
        check_size(shape)
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype or torch.float32)

    def fits(self, shape: tuple[int, ...]) -> str | None:
        """Why ``shape`` (batch first) is not an input of this contract, or None."""
        if len(shape) != len(self.shape) + 1 or tuple(shape[1:-1]) != self.shape[:-1]:
            return (f"shape {list(shape)} is not [B, {', '.join(map(str, self.shape[:-1]))}"
                    f"{', ' if len(self.shape) > 1 else ''}T] (the model's input_shape {list(self.shape)})")
        if shape[-1] < self.min_length:
            return f"length {shape[-1]} is shorter than the model's minimum {self.min_length}"
        return None


def check_size(shape: tuple[int, ...]) -> None:
    """Refuse a shape too large to allocate here, before anything is allocated."""
    values = math.prod(shape)
    if values > MAX_INPUT_VALUES:
        raise HarnessError(f"input shape {list(shape)} holds {values:,} values; the limit is "
                           f"{MAX_INPUT_VALUES:,} ({MAX_INPUT_VALUES * 4 >> 30} GiB of float32 for the input "
                           "alone, before any activation)")


def probe_min_length(forward: Callable[[torch.Tensor], object], contract: InputContract,
                     batch: int = 2) -> int | None:
    """The shortest last axis (up to the declared length) at which ``forward`` runs, by bisection;
    None when it does not run even at the declared length. ``forward`` runs under no_grad."""

    import torch

    def runs(length: int) -> bool:
        try:
            with torch.no_grad():
                forward(contract.example(batch, length))
        except Exception:  # noqa: BLE001 - any failure means "not at this length"
            return False
        return True

    high = contract.length
    if not runs(high):
        return None
    low = 0  # invariant: runs(high), not runs(low) (0 never runs)
    while high - low > 1:
        mid = (low + high) // 2
        if runs(mid):
            high = mid
        else:
            low = mid
    return high


@dataclass(frozen=True)
class ScoreTransform:
    """How one detection score per example comes from a model's output."""

    kind: str = "probability"
    column: int | None = None
    means: str = "spoof"

    @classmethod
    def parse(cls, text: str, means: str = "spoof") -> ScoreTransform:
        """``"probability"``, ``"sigmoid[k]"``, ``"softmax[k]"`` or ``"log_softmax[k]"``."""
        match = _SCORE_SPEC.match(text) if isinstance(text, str) else None
        if match is None:
            raise HarnessError(f"score {text!r} is not one of probability, sigmoid[k], softmax[k], "
                               "log_softmax[k] (k: the output column)")
        kind, column = match.group(1), match.group(2)
        if kind != "probability" and column is None:
            raise HarnessError(f"score {text!r} needs its column: {kind}[k]")
        if kind == "probability" and column is not None:
            raise HarnessError(f"score {text!r}: probability takes the one output column, no [k]")
        if means not in SCORE_MEANINGS:
            raise HarnessError(f"score_means {means!r} is not one of {', '.join(SCORE_MEANINGS)}")
        return cls(kind, None if column is None else int(column), means)

    def __str__(self) -> str:
        return self.kind if self.column is None else f"{self.kind}[{self.column}]"

    @property
    def score_range(self) -> tuple[float, float]:
        """The closed range a score may take."""
        return (-math.inf, 0.0) if self.kind == "log_softmax" else (0.0, 1.0)

    def score_problem(self, value: object) -> str | None:
        """Why ``value`` is not a score this transform can give, or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"score {value!r} is not a number"
        low, high = self.score_range
        if not math.isfinite(value) or not low <= value <= high:
            return f"score {value!r} is outside [{low}, {high}] ({self}: {self.range_words})"
        return None

    @property
    def range_words(self) -> str:
        return "a log-probability" if self.kind == "log_softmax" else "a probability"

    def output_problem(self, output: object) -> str | None:
        """Why ``output`` is not what this transform reads, or None: a float tensor ``[B, C]``
        (``[B]`` or ``[B, 1]`` for probability) with column k present, finite, and what the
        kind promises (probabilities in [0, 1]; softmax rows summing to 1 is not required,
        log-softmax rows log-sum-exp to 0)."""
        import torch

        if not isinstance(output, torch.Tensor):
            return f"the output is {type(output).__name__}, not a tensor (score {self} reads one tensor)"
        if not output.is_floating_point():
            return f"the output dtype {output.dtype} is not floating point"
        shape = tuple(output.shape)
        if self.kind == "probability":
            if not (output.dim() == 1 or (output.dim() == 2 and shape[1] == 1)):
                return f"the output shape {list(shape)} is not [B, 1] (score probability reads one column)"
        elif output.dim() != 2 or shape[1] <= (self.column or 0):
            return f"the output shape {list(shape)} is not [B, C] with column {self.column} (score {self})"
        if not bool(torch.isfinite(output).all()):
            return f"the output has {int((~torch.isfinite(output)).sum())} non-finite values"
        if self.kind == "probability" and (output.min() < 0 or output.max() > 1):
            return (f"the output is outside [0, 1] (min {float(output.min()):.4g}, max "
                    f"{float(output.max()):.4g}): not probabilities; declare score = \"sigmoid[0]\"?")
        if self.kind == "log_softmax":
            worst = float(torch.logsumexp(output.double(), dim=1).abs().max())
            if worst > LOG_PROBABILITY_SLACK:
                return (f"the output rows are not log-probabilities: log-sum-exp is off 0 by {worst:.3g} "
                        "(log_softmax over the class axis?)")
        return None

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        """One score per example, ``[B]`` (``HarnessError`` when ``output_problem`` says no)."""
        import torch

        problem = self.output_problem(output)
        if problem:
            raise HarnessError(problem)
        if self.kind == "probability":
            return output.reshape(output.shape[0])
        column = output[:, self.column]
        if self.kind == "sigmoid":
            return torch.sigmoid(column)
        if self.kind == "softmax":
            return torch.softmax(output, dim=1)[:, self.column]
        return column

    def numpy_scores(self, output: np.ndarray) -> np.ndarray:
        """``self(output)`` for a numpy output (ONNX Runtime's), without torch. Only the shape is
        checked here: what the values may be was checked when the graph was verified against eager."""
        output = np.asarray(output)
        if self.kind == "probability":
            if not (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
                raise HarnessError(f"the output shape {list(output.shape)} is not [B, 1] (score probability)")
            scores = output.reshape(output.shape[0])
        elif output.ndim != 2 or output.shape[1] <= (self.column or 0):
            raise HarnessError(f"the output shape {list(output.shape)} is not [B, C] with column "
                               f"{self.column} (score {self})")
        elif self.kind == "sigmoid":
            scores = 1 / (1 + np.exp(-output[:, self.column]))
        elif self.kind == "softmax":
            shifted = np.exp(output - output.max(axis=1, keepdims=True))
            scores = (shifted / shifted.sum(axis=1, keepdims=True))[:, self.column]
        else:
            scores = output[:, self.column]
        return scores.astype(np.float32, copy=False)

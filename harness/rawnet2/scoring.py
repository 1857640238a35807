"""Clips in, detection scores out: batches of decoded files through a model, in input order.

A model is fed at its input contract (``harness.core.contract.InputContract``) and its output
becomes one score per file through its ``ScoreTransform``; an output the transform cannot read
stops the run (``ForwardFailed``), a row that is not finite is that file's error.
``iter_scores`` decodes files in ``DataLoader`` worker processes, in order, while the model
scores the batch before. The rules (workers, batching): docs/scoring.md.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from harness.core.contract import InputContract, ScoreTransform
from harness.core.errors import HarnessError, error_line
from harness.rawnet2 import score_results
from harness.rawnet2.audio import NUM_SAMPLES, decoded_clip
from harness.rawnet2.score_results import PROBABILITY, FileScore, scored_chunks

# The RawNet2 family's scoring input: one channel of the ASVspoof evaluation length.
FAMILY_SCORING_CONTRACT = InputContract((1, NUM_SAMPLES))
# Decoding worker processes, at most: decoding costs ~2 ms a file against a forward's
# hundreds, so two workers keep ahead of the model and leave the cores to it.
MAX_DECODE_WORKERS = 2
# linux/prctl.h: deliver a signal to this process when its parent thread dies.
_PR_SET_PDEATHSIG = 1


class ForwardFailed(HarnessError):
    """The model itself could not score a batch: not the files' fault, so the run stops."""


# --- one forward -----------------------------------------------------------------------------------


def model_output(model: Callable[[torch.Tensor], object], x: torch.Tensor) -> object:
    """``model(x)`` under inference mode on the model's device; any failure is ``ForwardFailed``.

    A deployment form with no parameters (an ONNX Runtime session) takes CPU tensors.
    """
    first = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    device = first.device if first is not None else torch.device("cpu")
    try:
        with torch.inference_mode():
            return model(x.to(device))
    except HarnessError:  # a verified form's own refusal
        raise
    except SystemExit:
        raise ForwardFailed("the model's forward called sys.exit()") from None
    except Exception as exc:  # noqa: BLE001 - a forward that cannot take the audio: one line
        raise ForwardFailed(f"the model's forward raised {error_line(exc)}") from None


def output_scores(output: object, transform: ScoreTransform, batch: int) -> list[float | None]:
    """The ``batch`` scores ``transform`` reads from ``output``; None for a row that is not finite.

    ``ForwardFailed`` when the output is not what the transform reads (not a tensor, another
    shape, values outside what it promises).
    """
    if isinstance(output, torch.Tensor) and output.is_floating_point():
        output = output.detach().float().cpu()
        if output.dim() >= 1 and len(output) != batch:
            raise ForwardFailed(f"expected one output row per file ({batch}); got shape {list(output.shape)}")
        finite = torch.isfinite(output.reshape(len(output), -1)).all(dim=1) if output.dim() else None
        if finite is not None and not bool(finite.all()):
            scores: list[float | None] = [None] * batch
            if bool(finite.any()):
                kept = output_scores(output[finite], transform, int(finite.sum()))
                for index, value in zip(finite.nonzero().flatten().tolist(), kept, strict=True):
                    scores[index] = value
            return scores
    problem = transform.output_problem(output)
    if problem is not None:
        raise ForwardFailed(problem)
    return [float(v) for v in transform(output).tolist()]


def score_waveforms(model: Callable[[torch.Tensor], object], waveforms: torch.Tensor, *,
                    contract: InputContract = FAMILY_SCORING_CONTRACT,
                    transform: ScoreTransform = PROBABILITY) -> torch.Tensor:
    """One forward over ``[B, T]`` waveforms shaped to ``contract``; the ``[B]`` scores (NaN for
    a row that is not finite). Raises ``ForwardFailed`` when the model cannot score them."""
    batch, length = waveforms.shape
    output = model_output(model, waveforms.reshape(contract.batch_shape(batch, length)))
    scores = output_scores(output, transform, batch)
    return torch.tensor([math.nan if s is None else s for s in scores], dtype=torch.float32)


# --- decoding in worker processes --------------------------------------------------------------------


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


def die_with_parent(parent_pid: int, worker_id: int = 0) -> None:
    """A worker's first act (``worker_init_fn``): ask Linux for SIGTERM when the parent dies, so a
    parent killed with SIGKILL leaves no decoder behind; exit now if it is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(0)


class ClipFiles(Dataset):
    """Item ``i``: ``(i, clip, warning)`` for a usable file, ``(i, reason, None)`` for one that is not."""

    def __init__(self, files: Sequence[str], length: int = NUM_SAMPLES) -> None:
        self.files, self.length = list(files), length

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | str, str | None]:
        return (index, *decoded_clip(self.files[index], self.length))


def _as_is(item: object) -> object:
    return item


def decoded_in_order(files: Sequence[str], *, workers: int, ahead: int, length: int = NUM_SAMPLES,
                     ) -> Iterator[tuple[int, np.ndarray | str, str | None]]:
    """``ClipFiles(files, length)`` item by item in input order; with ``workers`` > 0 decoded by that
    many ``DataLoader`` worker processes, up to about ``ahead`` files ahead of the consumer."""
    dataset = ClipFiles(files, length)
    if workers == 0:
        yield from (dataset[i] for i in range(len(dataset)))
        return
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_as_is,
                        prefetch_factor=max(2, -(-ahead // workers)),
                        worker_init_fn=functools.partial(die_with_parent, os.getpid()))
    items = iter(loader)
    try:
        yield from items
    finally:
        del items  # stops the workers now, not whenever the iterator is collected


# --- runs ----------------------------------------------------------------------------------------------


def iter_scores(model: Callable[[torch.Tensor], object], files: Sequence[str], *, batch_size: int = 8,
                workers: int | None = None, contract: InputContract = FAMILY_SCORING_CONTRACT,
                transform: ScoreTransform = PROBABILITY) -> Iterator[list[FileScore]]:
    """Score ``files`` (clips of ``contract.length`` samples), yielding results in input order as
    each forward is done, in ``score_results.scored_chunks``' chunks. While the model scores a
    batch, ``workers`` processes (default: ``decode_workers``) decode the next one; the clips,
    batches and so the scores are the same with any number of workers.
    """
    if batch_size < 1:
        raise HarnessError(f"batch size must be at least 1, got {batch_size}")
    files = list(files)
    if workers is None:
        workers = decode_workers(len(files), batch_size)
    decoded = decoded_in_order(files, workers=workers, ahead=batch_size, length=contract.length)

    def score_batch(clips: np.ndarray) -> list[float]:
        scores = score_waveforms(model, torch.from_numpy(clips), contract=contract, transform=transform)
        return scores.tolist()

    yield from scored_chunks(files, decoded, batch_size=batch_size, score_batch=score_batch)


def score_files(model: Callable[[torch.Tensor], object], files: Sequence[str], *, batch_size: int = 8,
                progress: Callable[[int, int, int], None] | None = None, workers: int | None = None,
                contract: InputContract = FAMILY_SCORING_CONTRACT, transform: ScoreTransform = PROBABILITY,
                ) -> list[FileScore]:
    """Score every file, in input order; a file that fails gets its reason instead.

    ``batch_size`` usable files per forward, decoded ahead by ``workers`` processes
    (``iter_scores``), so memory stays at a few batches. ``progress(done, total, failed)``
    is called after each batch.
    """
    results: list[FileScore] = []
    failed = 0
    for chunk in iter_scores(model, files, batch_size=batch_size, workers=workers, contract=contract,
                             transform=transform):
        results.extend(chunk)
        failed += sum(r.error is not None for r in chunk)
        if progress is not None:
            progress(len(results), len(files), failed)
    return results


# The results' display helpers live in score_results (no torch there); importable from here as before.
_IN_SCORE_RESULTS = ("PROGRESS_MIN_FILES", "Progress", "describe_scores", "render_table", "shown_name",
                     "write_stdout")


def __getattr__(name: str) -> object:
    if name in _IN_SCORE_RESULTS:
        return getattr(score_results, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

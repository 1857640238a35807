"""A scoring run's results as the user sees them: one file's outcome (``FileScore``), the table,
the words for what a score means, progress on stderr. No torch: ``score`` with a cached export
(``harness.rawnet2.score_cached``) prints through these without importing it."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np
from tqdm import tqdm

from harness.core.contract import ScoreTransform

# What a model's output is taken to be when nothing else is said: a probability of spoof.
PROBABILITY = ScoreTransform("probability")
# Without a checkpoint or registered weights score uses freshly initialised weights from this
# seed, so that two runs print the same numbers (which still mean nothing).
RANDOM_WEIGHTS_SEED = 0
# From this many files on, progress goes to stderr after each batch; below it one
# glance at the output covers the run.
PROGRESS_MIN_FILES = 5


@dataclass(frozen=True)
class FileScore:
    """One file's outcome: a score (what the run's transform gives), or the reason it has none.
    ``warning`` is set for a file scored despite something odd about it; not in the JSON."""

    file: str
    score: float | None = None
    error: str | None = None
    warning: str | None = None

    def as_json(self) -> dict:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        return {"file": self.file, "score": self.score}


def scored_chunks(files: Sequence[str], decoded: Iterable[tuple[int, np.ndarray | str, str | None]], *,
                  batch_size: int, score_batch: Callable[[np.ndarray], Sequence[float]],
                  ) -> Iterator[list[FileScore]]:
    """Results in input order, a chunk per forward: the files after the previous chunk up to the last
    file of one batch of ``batch_size`` usable files (the failed files among them included; the last
    chunk ends at the last file). ``decoded`` gives ``(index, clip or reason, warning)`` in order;
    ``score_batch`` scores stacked clips ``[B, T]``, whatever runs the model; a score that is not
    finite is that file's error."""
    done: dict[int, FileScore] = {}
    pending: list[tuple[int, np.ndarray, str | None]] = []
    start = 0

    def flush(end: int) -> list[FileScore]:
        nonlocal start
        if pending:
            scores = score_batch(np.stack([clip for _, clip, _ in pending]))
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

    for index, item, warning in decoded:
        if isinstance(item, str):
            done[index] = FileScore(files[index], error=item)
        else:
            pending.append((index, item, warning))
        if len(pending) == batch_size:
            yield flush(index + 1)
    if start < len(files):
        yield flush(len(files))


def random_weights_warning(name: str) -> str:
    return (f"warning: no --checkpoint: {name} has random weights (seed {RANDOM_WEIGHTS_SEED}); the scores "
            "mean nothing")


def shown_name(name: str) -> str:
    """A file name as a table or message shows it: as it is when every character prints, else its
    ``repr`` (newlines, control characters and undecodable bytes escaped), so a name can never
    start a row or a line of its own."""
    return name if name.isprintable() else repr(name)


def describe_scores(transform: ScoreTransform) -> str:
    """What the numbers are, in words: ``log_softmax[1]: a log-probability <= 0, higher = bonafide``."""
    low, high = transform.score_range
    span = f"<= {high:g}" if math.isinf(low) else f"in [{low:g}, {high:g}]"
    return f"{transform}: {transform.range_words} {span}, higher = {transform.means}"


def render_table(results: Iterable[FileScore], transform: ScoreTransform = PROBABILITY) -> str:
    rows = [(shown_name(r.file), f"{r.score:.6f}" if r.error is None else f"error: {shown_name(r.error)}")
            for r in results]
    width = max((len(name) for name, _ in rows), default=4)
    lines = [f"{'file':<{width}}  score ({describe_scores(transform)})"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines) + "\n"


def write_stdout(text: str, stream: TextIO | None = None) -> None:
    """Write ``text`` whatever the stream's encoding: what it cannot encode is backslash-escaped."""
    stream = sys.stdout if stream is None else stream
    encoding = getattr(stream, "encoding", None) or "utf-8"
    stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
    stream.flush()


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

"""The loop of one ``score`` run, whatever computes the scores: progress and warnings on stderr,
the table or JSON on stdout, or the score log (with ``--resume``), Ctrl-C and SIGTERM ending it
with what is recorded kept. No torch: ``harness.rawnet2.score_cached`` runs it without."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

from harness.core.contract import ScoreTransform
from harness.rawnet2.score_results import (
    PROGRESS_MIN_FILES,
    FileScore,
    Progress,
    describe_scores,
    render_table,
    shown_name,
    write_stdout,
)
from harness.rawnet2.scorelog import ScoreLog

# Exit codes of a run stopped by Ctrl-C or SIGTERM (128 + the signal), what is recorded kept.
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that the run unwinds: decoders stopped, log closed."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` in the main thread for the block (elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ScoreRun:
    """One run's scoring loop, with its progress and warnings on stderr, whatever scores the chunks
    (the model through ``iter_scores``, or a cached export without torch)."""

    def __init__(self, files: Sequence[str], name: str, transform: ScoreTransform, output_format: str | None,
                 chunks: Callable[[Sequence[str]], Iterable[list[FileScore]]]) -> None:
        self.files, self.name, self.transform = list(files), name, transform
        self.format, self.chunks = output_format, chunks

    def scored(self, files: Sequence[str], progress: Progress, failed: int,
               done: int) -> Iterator[list[FileScore]]:
        for chunk in self.chunks(files):
            for r in chunk:
                if r.warning is not None:
                    progress.message(f"warning: {shown_name(r.file)}: {r.warning}")
            yield chunk
            done += len(chunk)
            failed += sum(r.error is not None for r in chunk)
            progress.update(done, failed)

    def to_stdout(self) -> int:
        progress = Progress(len(self.files), enabled=len(self.files) >= PROGRESS_MIN_FILES)
        try:
            results = [r for chunk in self.scored(self.files, progress, 0, 0) for r in chunk]
        except (KeyboardInterrupt, Terminated) as stop:
            progress.close()
            print("interrupted: nothing printed (without --output the scores come at the end)",
                  file=sys.stderr)
            return EXIT_INTERRUPTED if isinstance(stop, KeyboardInterrupt) else EXIT_TERMINATED
        finally:
            progress.close()
        if self.format == "json":
            document = {"variant": self.name, "score": str(self.transform),
                        "score_means": self.transform.means, "scores_are": describe_scores(self.transform),
                        "results": [r.as_json() for r in results]}
            write_stdout(json.dumps(document, indent=2) + "\n")
        else:
            write_stdout(render_table(results, self.transform))
        return summary(sum(r.error is not None for r in results), len(results))

    def to_log(self, log: ScoreLog, todo: list[str]) -> int:
        kept = log.records()
        failed = sum(r.error is not None for r in kept)
        if kept:
            print(f"resuming {log.path}: {len(kept)} of {len(self.files)} files already recorded, "
                  f"{len(todo)} to score", file=sys.stderr)
        progress = Progress(len(self.files), done=len(kept), failed=failed,
                            enabled=len(self.files) >= PROGRESS_MIN_FILES)
        written = 0
        try:
            for chunk in self.scored(todo, progress, failed, len(kept)):
                log.append(chunk)
                written += len(chunk)
            results = log.finish(self.files)
        except (KeyboardInterrupt, Terminated) as stop:
            progress.close()
            print(f"interrupted: {len(kept) + written} of {len(self.files)} files are recorded in "
                  f"{log.path}; the same command with --resume scores the rest", file=sys.stderr)
            return EXIT_INTERRUPTED if isinstance(stop, KeyboardInterrupt) else EXIT_TERMINATED
        finally:
            progress.close()
        return summary(sum(r.error is not None for r in results), len(self.files))


def summary(failed: int, total: int) -> int:
    if failed:
        print(f"{failed} of {total} files failed", file=sys.stderr)
    return 1 if failed else 0

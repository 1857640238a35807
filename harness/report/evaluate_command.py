"""What ``python -m harness evaluate`` (``harness.cli.evaluate``) needs beside the library: where the
variants' score logs go (``score_log_dir``) and a score file as a system (``file_system``).

Systems are registered variants scored by ``harness.rawnet2.evaluate_systems`` or score
files (``harness.core.score_files``); the metrics, flips and gate are
``harness.core.evaluation``; the output is validated (``evaluation_schema``) and rendered
(``evaluation_render``).
"""

from __future__ import annotations

from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.evaluation import SystemScores
from harness.core.protocols import Protocol
from harness.core.text import first_few

# Where the score logs of ``--output DIR/NAME.EXT`` go: DIR/NAME.scores/, one log per variant system.
LOG_DIR_SUFFIX = ".scores"
DEFAULT_HIGHER_MEANS = "bonafide"  # the ASVspoof score files' convention


def score_log_dir(output: str | None) -> Path | None:
    """``DIR/NAME.scores`` beside ``--output DIR/NAME.EXT`` (made here; never through a link)."""
    if output is None:
        return None
    path = Path(output)
    folder = path.with_name(path.stem + LOG_DIR_SUFFIX)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise HarnessError(f"{folder}: the score-log folder of --output {output} exists and is not a folder")
    folder.mkdir(mode=0o755, exist_ok=True)
    return folder


def file_system(name: str, found: object, protocol: Protocol, higher_means: str | None) -> SystemScores:
    """A score file as a system, oriented by what it says or ``--higher-means`` (never both disagreeing)."""
    said = found.score_means
    if said is not None and higher_means is not None and said != higher_means:
        raise HarnessError(f"--scores {name}={found.path}: the file says a high score means {said}; "
                           f"--higher-means {higher_means} contradicts it")
    means = said or higher_means or DEFAULT_HIGHER_MEANS
    wanted = set(protocol.utterances)
    if failed := [u for u in found.failed if u in wanted]:
        raise HarnessError(f"--scores {name}={found.path}: records an error instead of a score for "
                           f"{len(failed)} protocol utterance(s): {first_few(failed)}")
    how = ("as the file says" if said is not None else "--higher-means" if higher_means is not None
           else f"the default, {DEFAULT_HIGHER_MEANS}")
    return SystemScores(name=name, scores=found.scores, score_means=means,
                        source=f"scores from {found.path} ({found.kind}; a high score means {means}: {how})")

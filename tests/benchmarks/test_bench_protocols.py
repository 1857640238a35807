"""Parsing benchmarks: a 600,000-line ASVspoof 2021 LA key, CM score file and score log, each read whole.

Files are generated in a temp dir (realistic lines: 10% bona fide, thirteen attacks, seven
codecs). A plain ``pytest`` run parses a 6,000-line version once, untimed; ``make bench``
(``--benchmark-enable``) times the full size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.core.protocols import read_protocol
from harness.core.score_files import read_scores

TIMED_LINES = 600_000  # about ASVspoof 2021 DF's key (611,829 lines)
SMOKE_LINES = 6_000
ATTACKS = [f"A{n:02d}" for n in range(7, 20)]
CODECS = ["none", "alaw", "pstn", "g722", "ulaw", "gsm", "opus"]


def corpus(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """``n`` utterance ids, bona fide flags, attack indices and scores."""
    rng = np.random.default_rng(seed)
    utterances = [f"LA_E_{1_000_000 + i}" for i in range(n)]
    bonafide = rng.random(n) < 0.1
    return utterances, bonafide, rng.integers(0, len(ATTACKS), n), rng.normal(size=n)


def write_key(path: Path, n: int) -> None:
    utterances, bonafide, attacks, _ = corpus(n)
    path.write_text("".join(
        f"LA_{i % 67:04d} {u} {CODECS[i % 7]} ita_tx {'bonafide' if b else ATTACKS[a]} "
        f"{'bonafide' if b else 'spoof'} notrim eval\n"
        for i, (u, b, a) in enumerate(zip(utterances, bonafide, attacks, strict=True))))


def write_cm_scores(path: Path, n: int) -> None:
    utterances, bonafide, attacks, scores = corpus(n)
    rows = zip(utterances, bonafide, attacks, scores.tolist(), strict=True)
    path.write_text("".join(f"{u} {'-' if b else ATTACKS[a]} {'bonafide' if b else 'spoof'} {s!r}\n"
                            for u, b, a, s in rows))


def write_score_log(path: Path, n: int) -> None:
    utterances, _, _, scores = corpus(n)
    header = json.dumps({"score_log": 1, "fingerprint": {"variant": "legacy", "score": "probability",
                                                         "score_means": "spoof"}})
    path.write_text(header + "\n" + "".join(
        json.dumps({"file": f"/data/ASVspoof2021_LA_eval/flac/{u}.flac", "score": s}) + "\n"
        for u, s in zip(utterances, scores.tolist(), strict=True)))


@pytest.mark.parametrize(("what", "write", "read"), [
    ("2021 LA key", write_key, read_protocol),
    ("ASVspoof 2019 CM scores", write_cm_scores, read_scores),
    ("JSON Lines score log", write_score_log, read_scores),
], ids=["la2021_key", "cm_scores", "score_log"])
def test_parse(benchmark, tmp_path: Path, what: str, write, read) -> None:
    lines = SMOKE_LINES if benchmark.disabled else TIMED_LINES
    path = tmp_path / "input.txt"
    write(path, lines)
    benchmark.group = f"parse {lines:,} lines"
    benchmark.extra_info.update(what=what, lines=lines, bytes=path.stat().st_size)
    parsed = benchmark.pedantic(read, args=(str(path),), rounds=1 if benchmark.disabled else 3, iterations=1)
    count = len(parsed.utterances) if hasattr(parsed, "utterances") else len(parsed.scores)
    assert count == lines

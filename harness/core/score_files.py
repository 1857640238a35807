"""Score files for ``evaluate``: a system's scores by utterance id, and ASV scores for the t-DCF.

``read_scores(path)`` reads the format from the content: the JSON Lines log ``score --output``
writes (a ``{"score_log": 1, "fingerprint": {...}}`` header, then ``{"file", "score"}`` or
``{"file", "error"}`` records; also without the header), the JSON document ``score --format
json`` prints, the ASVspoof 2019 CM score format (``UTT ATTACK KEY SCORE``) and two columns
(``UTT SCORE``). A record's utterance id is its file's stem. ``read_asv_scores(path)`` reads
the ASVspoof 2019 ASV score format (``bonafide target 1.23``). Every refusal is one
``ScoreFileError`` line naming the file and the line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from harness.core.errors import HarnessError
from harness.core.fileio import PathLike
from harness.core.protocols import KEYS, file_stem, first_duplicate, gc_paused, read_text_lines, split_rows
from harness.core.text import counted

SCORE_MEANINGS = ("spoof", "bonafide")
KIND_LOG = "JSON Lines score log"
KIND_DOCUMENT = "score --format json"
KIND_CM_2019 = "ASVspoof 2019 CM scores"
KIND_TWO_COLUMNS = "two columns"
EXPECTED = ("expected a score log (JSON Lines of {\"file\", \"score\"}), score --format json's document, "
            "ASVspoof 2019 CM scores (UTT ATTACK KEY SCORE) or two columns (UTT SCORE)")
RECORD = '{"file": PATH, "score": NUMBER} or {"file": PATH, "error": TEXT}'
SCORE_RECORD, ERROR_RECORD = frozenset({"file", "score"}), frozenset({"file", "error"})
# The (KEY_SOURCE, KEY) pairs of the ASVspoof 2019 ASV score format, and the AsvScores field of each.
ASV_PAIRS = {("bonafide", "target"): "target", ("bonafide", "nontarget"): "nontarget",
             ("spoof", "spoof"): "spoof"}


class ScoreFileError(HarnessError):
    """A score file that cannot be read: one line naming the file and the line (exit 2)."""


@dataclass(frozen=True)
class ScoreFile:
    """One system's scores as its file gives them (not oriented: ``score_means`` says, where it can)."""

    path: str
    kind: str  # KIND_LOG, KIND_DOCUMENT, KIND_CM_2019 or KIND_TWO_COLUMNS
    scores: dict[str, float]  # utterance id -> score
    failed: tuple[str, ...]  # ids whose record holds an error instead of a score
    score_means: str | None  # "spoof" | "bonafide" where the file says; None for the text formats


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == of arrays is ambiguous
class AsvScores:
    """ASV scores by trial class, for the t-DCF (float64, read-only)."""

    target: np.ndarray
    nontarget: np.ndarray
    spoof: np.ndarray


# --- CM scores ---------------------------------------------------------------------------------


def read_scores(path: PathLike) -> ScoreFile:
    """The scores at ``path``, their format read from the content; one ``ScoreFileError`` line otherwise."""
    with gc_paused():
        return _read_scores(os.fspath(path))


def _read_scores(name: str) -> ScoreFile:
    lines = read_text_lines(name, ScoreFileError)
    first = next((line.strip() for line in lines if line.strip()), None)
    if first is None:
        raise ScoreFileError(f"{name}: is empty; {EXPECTED}")
    if first.startswith("{"):
        try:
            document = json.loads("\n".join(lines))
        except ValueError:  # JSON Lines (more than one value), or bad JSON: the line says which
            document = None
        if isinstance(document, dict) and "results" in document:
            return _from_document(name, document)
        return _from_json_lines(name, lines)
    return _from_columns(name, lines)


def _from_document(name: str, document: dict) -> ScoreFile:
    means = _score_means(name, document.get("score_means"), "the document's score_means")
    results = document["results"]
    if not isinstance(results, list):
        raise ScoreFileError(f"{name}: \"results\" is {type(results).__name__}; expected a list of {RECORD}")
    if not results:
        raise ScoreFileError(f"{name}: \"results\" is empty; expected {RECORD} per scored file")
    return _from_records(name, KIND_DOCUMENT, results, lambda i: f"results[{i}]", means)


def _from_json_lines(name: str, lines: list[str]) -> ScoreFile:
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    try:  # one C-speed parse; any doubt (a line holding two values...) falls back to per line
        rows = json.loads("[" + ",".join(line for _, line in numbered) + "]")
    except ValueError:
        rows = None
    if not isinstance(rows, list) or len(rows) != len(numbered):
        rows = [_json_line(name, n, line) for n, line in numbered]
    means = None
    if isinstance(rows[0], dict) and "score_log" in rows[0]:
        header = rows[0]
        fingerprint = header.get("fingerprint")
        if set(header) != {"score_log", "fingerprint"} or header["score_log"] != 1 or not isinstance(
                fingerprint, dict):
            raise ScoreFileError(f"{name}: line {numbered[0][0]} is not a score-log header "
                                 '({"score_log": 1, "fingerprint": {...}})')
        means = _score_means(name, fingerprint.get("score_means"),
                             f"line {numbered[0][0]}: the fingerprint's score_means")
        numbered, rows = numbered[1:], rows[1:]
        if not rows:
            raise ScoreFileError(f"{name}: holds a score-log header and no record; expected {RECORD} "
                                 "per scored file")
    return _from_records(name, KIND_LOG, rows, lambda i: f"line {numbered[i][0]}", means)


def _json_line(name: str, number: int, line: str) -> object:
    try:
        return json.loads(line)
    except ValueError:
        raise ScoreFileError(f"{name}: line {number} is not JSON; expected {RECORD} (JSON Lines)") from None


def _from_records(name: str, kind: str, rows: Sequence[object], where: Callable[[int], str],
                  means: str | None) -> ScoreFile:
    """``rows`` checked as records; ``where(i)`` names row ``i``'s place (a line, a list index)."""
    ids: list[str] = []  # every record's, scored or failed, in order
    scores: dict[str, float] = {}
    failed: list[str] = []
    for index, row in enumerate(rows):
        if type(row) is dict and type(row.get("file")) is str and row["file"]:
            utterance = file_stem(row["file"])
            keys = row.keys()
            if keys == SCORE_RECORD:
                score = row["score"]
                if type(score) is not float and (type(score) is bool or not isinstance(score, (int, float))):
                    raise ScoreFileError(f"{name}: {where(index)}: score {_short(score)} is not a number")
                try:
                    value = float(score)
                except OverflowError:  # an integer past float's range (JSON allows 1 followed by 400 zeros)
                    value = math.inf
                if not math.isfinite(value):
                    raise ScoreFileError(f"{name}: {where(index)}: score {_short(score)} is not finite")
                scores[utterance] = value
                ids.append(utterance)
                continue
            if keys == ERROR_RECORD and isinstance(row["error"], str):
                failed.append(utterance)
                ids.append(utterance)
                continue
        if isinstance(row, dict) and "score_log" in row:
            raise ScoreFileError(f"{name}: {where(index)} is a second score-log header (two logs joined?); a "
                                 "log holds one")
        raise ScoreFileError(f"{name}: {where(index)} is not {RECORD}")
    _refuse_duplicates(name, ids, where)
    return ScoreFile(name, kind, scores, tuple(failed), means)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _score_means(name: str, value: object, what: str) -> str | None:
    if value is None or value in SCORE_MEANINGS:
        return value  # type: ignore[return-value]
    raise ScoreFileError(f"{name}: {what} is {value!r}; expected one of {', '.join(SCORE_MEANINGS)}")


def _from_columns(name: str, lines: list[str]) -> ScoreFile:
    rows, numbers = split_rows(lines)
    width = len(rows[0])
    if width == 4:
        kind = KIND_CM_2019
    elif width == 2:
        kind = KIND_TWO_COLUMNS
    else:
        raise ScoreFileError(f"{name}: line {numbers[0]} has {counted(width, 'column')}; "
                             f"{EXPECTED}")
    if len(set(map(len, rows))) > 1:
        index = next(i for i, row in enumerate(rows) if len(row) != width)
        raise ScoreFileError(f"{name}: line {numbers[index]} has {len(rows[index])} columns; line "
                             f"{numbers[0]} has {width} ({kind}): one file holds one format")
    columns = list(zip(*rows, strict=True))
    if kind == KIND_CM_2019 and not set(columns[2]) <= set(KEYS):
        index = next(i for i, key in enumerate(columns[2]) if key not in KEYS)
        raise ScoreFileError(f"{name}: line {numbers[index]}: key {columns[2][index]!r} in column 3; "
                             f"expected bonafide or spoof ({kind}: UTT ATTACK KEY SCORE)")
    ids = columns[0]
    scores = _numbers(name, columns[-1], numbers)
    _refuse_duplicates(name, ids, lambda i: f"line {numbers[i]}")
    return ScoreFile(name, kind, dict(zip(ids, scores.tolist(), strict=True)), (), None)


def _numbers(name: str, texts: Sequence[str], numbers: Sequence[int]) -> np.ndarray:
    """``texts`` as finite float64 (parsed as ``float()`` does), else the line of the first bad one."""
    try:
        values = np.array(texts, dtype=np.float64)
    except ValueError:
        values = None
    if values is None:
        index = next(i for i, text in enumerate(texts) if not _is_number(text))
        raise ScoreFileError(f"{name}: line {numbers[index]}: score {texts[index]!r} is not a number")
    finite = np.isfinite(values)
    if not finite.all():
        index = int(np.flatnonzero(~finite)[0])
        raise ScoreFileError(f"{name}: line {numbers[index]}: score {texts[index]!r} is not finite")
    return values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _refuse_duplicates(name: str, ids: Sequence[str], where: Callable[[int], str]) -> None:
    duplicate = first_duplicate(ids)
    if duplicate is not None:
        a, b = duplicate
        raise ScoreFileError(f"{name}: {where(a)} and {where(b)} both hold utterance {ids[a]!r}; a file "
                             "is scored once")


# --- ASV scores --------------------------------------------------------------------------------


def read_asv_scores(path: PathLike) -> AsvScores:
    """ASVspoof 2019 ASV scores (``KEY_SOURCE KEY SCORE``: ``bonafide target``, ``bonafide nontarget``,
    ``spoof spoof``); one ``ScoreFileError`` line for anything else or a class without a line."""
    with gc_paused():
        return _read_asv_scores(os.fspath(path))


def _read_asv_scores(name: str) -> AsvScores:
    rows, numbers = split_rows(read_text_lines(name, ScoreFileError))
    if not rows:
        raise ScoreFileError(f"{name}: is empty; expected ASVspoof 2019 ASV scores (bonafide target 1.23)")
    if len(set(map(len, rows))) > 1 or len(rows[0]) != 3:
        index = next(i for i, row in enumerate(rows) if len(row) != 3)
        raise ScoreFileError(f"{name}: line {numbers[index]} has {len(rows[index])} columns; expected "
                             "ASVspoof 2019 ASV scores, KEY_SOURCE KEY SCORE (bonafide target 1.23)")
    sources, keys, texts = zip(*rows, strict=True)
    pairs = list(zip(sources, keys, strict=True))
    if not set(pairs) <= set(ASV_PAIRS):
        index = next(i for i, pair in enumerate(pairs) if pair not in ASV_PAIRS)
        raise ScoreFileError(f"{name}: line {numbers[index]}: {' '.join(pairs[index])!r} is not one of "
                             f"{', '.join(' '.join(p) for p in ASV_PAIRS)}")
    values = _numbers(name, texts, numbers)
    classes = np.array([ASV_PAIRS[pair] for pair in pairs])
    split = {}
    for (source, key), field in ASV_PAIRS.items():
        chosen = values[classes == field]
        if chosen.size == 0:
            raise ScoreFileError(f"{name}: holds no '{source} {key}' line; a t-DCF needs target, nontarget "
                                 "and spoof ASV scores")
        chosen.flags.writeable = False
        split[field] = chosen
    return AsvScores(**split)

"""Labelled protocols for ``evaluate``: which utterances are bona fide, which attack made each spoof,
and where each utterance's audio is.

``read_protocol(path)`` reads the shape from the lines (ASVspoof 2019, the 2021 LA/PA/DF keys, a
CSV with ``file`` and ``label``; docs/evaluate.md lists them and every refusal), one
``ProtocolError`` line otherwise. ``audio_files(protocol, root)`` finds each utterance's audio.
``read_text_lines`` and ``gc_paused`` serve ``harness.core.score_files`` too.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

from harness.core.errors import HarnessError
from harness.core.fileio import PathLike, check_regular_input, describe_unreadable
from harness.core.text import counted, first_few

# 1 GiB: ASVspoof 2021 DF's key (611,829 lines) is 21 MB and PA's (about 940,000) under 60 MB; a
# larger "protocol" is the wrong file, and reading it whole would hold gigabytes of strings.
MAX_TEXT_BYTES = 1 << 30
# 64 KiB: a protocol line is about 100 characters and a score-log record a file path (at most 4,096
# bytes on Linux) in JSON; a longer line is not one of these formats.
MAX_LINE_CHARS = 1 << 16

KEYS = ("bonafide", "spoof")
CSV_BONAFIDE = ("bonafide", "bona-fide", "bona fide")
BONAFIDE_ATTACK = "bonafide"  # the attack of every bona fide utterance
UNNAMED_ATTACK = "spoof"  # a spoof whose format names no attack (CSV, "-")
AUDIO_EXTENSIONS = (".flac", ".wav")
AUDIO_SUBFOLDERS = ("flac", "wav")  # ASVspoof2019_LA_eval/flac/LA_E_1234.flac

KIND_2019 = "ASVspoof 2019"
KIND_2021 = "ASVspoof 2021 LA/PA"
KIND_2021_DF = "ASVspoof 2021 DF"
KIND_CSV = "CSV"
EXPECTED = ("expected an ASVspoof 2019 protocol (SPEAKER UTT - ATTACK KEY), an ASVspoof 2021 key "
            "(8+ columns) or a CSV with file and label columns")


class ProtocolError(HarnessError):
    """A protocol that cannot be read: one line naming the file and the line (exit 2)."""


@dataclass(frozen=True, eq=False)  # eq=False: the bool array makes field-wise == ambiguous
class Protocol:
    """One labelled protocol, in file order."""

    path: str
    kind: str  # KIND_2019, KIND_2021, KIND_2021_DF or KIND_CSV
    utterances: tuple[str, ...]  # unique ids (the CSV's: the file's stem)
    is_bonafide: np.ndarray  # bool, one per utterance, read-only
    attacks: tuple[str, ...]  # "bonafide", the attack id ("A07", PA 2021 "c4-s4") or "spoof"
    audio: tuple[str | None, ...]  # the CSV's file column as given; None for the ASVspoof formats

    @property
    def n_bonafide(self) -> int:
        return int(np.count_nonzero(self.is_bonafide))

    @property
    def n_spoof(self) -> int:
        return len(self.utterances) - self.n_bonafide


# --- the checked read --------------------------------------------------------------------------


def read_text_lines(path: PathLike, error: type[HarnessError] = HarnessError) -> list[str]:
    """``path``'s lines (split at ``\\n``; a ``\\r`` before it stays, as whitespace) if it is a regular
    UTF-8 text file (a UTF-8 byte-order mark is dropped) of at most ``MAX_TEXT_BYTES`` without NUL
    bytes or lines over ``MAX_LINE_CHARS``; else one ``error`` line naming the file (and the line)."""
    try:
        info = check_regular_input(path)
    except HarnessError as exc:
        raise error(str(exc)) from None
    if info.st_size > MAX_TEXT_BYTES:
        raise error(f"{path}: is {info.st_size:,} bytes; a protocol or score file is at most "
                    f"{MAX_TEXT_BYTES:,} (is this the right file?)")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_TEXT_BYTES + 1)
    except OSError as exc:
        raise error(describe_unreadable(path, exc)) from None
    if len(data) > MAX_TEXT_BYTES:  # grew since the stat
        raise error(f"{path}: is over {MAX_TEXT_BYTES:,} bytes; a protocol or score file is at most that")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise error(f"{path}: line {_line_at(data, nul)} holds a NUL byte (UTF-16 or binary?); "
                    "expected UTF-8 text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: line {_line_at(data, exc.start)} is not UTF-8 (byte "
                    f"0x{data[exc.start]:02x}); expected UTF-8 text") from None
    lines = text.split("\n")
    if max(map(len, lines)) > MAX_LINE_CHARS:
        number = next(n for n, line in enumerate(lines, 1) if len(line) > MAX_LINE_CHARS)
        raise error(f"{path}: line {number} is {len(lines[number - 1]):,} characters long; a line is at "
                    f"most {MAX_LINE_CHARS:,} (is this the right file?)")
    return lines


def _line_at(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a parse makes millions of small lists and strings (none
    of them cyclic): its passes over them, not the parsing, would take most of the time (5x)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def split_rows(lines: Sequence[str]) -> tuple[list[list[str]], list[int]]:
    """The whitespace-split non-blank lines and their line numbers (1-based)."""
    rows = list(map(str.split, lines))
    if all(rows):
        return rows, list(range(1, len(rows) + 1))
    kept = [i for i, row in enumerate(rows) if row]
    return [rows[i] for i in kept], [i + 1 for i in kept]


def first_duplicate(ids: Sequence[str]) -> tuple[int, int] | None:
    """The indices of the first id seen twice (its first and second place), or None."""
    if len(set(ids)) == len(ids):
        return None
    seen: dict[str, int] = {}
    for index, name in enumerate(ids):
        if name in seen:
            return seen[name], index
        seen[name] = index
    return None


def file_stem(path: str) -> str:
    """``PurePosixPath(path).stem`` at a fraction of its cost (one per score record): the last
    component's name without its last suffix."""
    name = path.rstrip("/").rpartition("/")[2]
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name


def unsafe_id(utterance: str) -> bool:
    """An utterance id that would name a path (a separator or ``..``): a hostile protocol."""
    return "/" in utterance or "\\" in utterance or ".." in utterance


# --- reading a protocol ------------------------------------------------------------------------


def read_protocol(path: PathLike) -> Protocol:
    """The protocol at ``path``, its format read from its lines; one ``ProtocolError`` line otherwise."""
    with gc_paused():
        return _read_protocol(os.fspath(path))


def _read_protocol(name: str) -> Protocol:
    lines = read_text_lines(name, ProtocolError)
    first = next((n for n, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise ProtocolError(f"{name}: is empty; {EXPECTED}")
    if "," in lines[first]:
        return _read_csv(name, lines)
    rows, numbers = split_rows(lines)
    kind, key, attack = _shape(name, rows[0], numbers[0])
    width = len(rows[0])
    if len(set(map(len, rows))) > 1:
        index = next(i for i, row in enumerate(rows) if len(row) != width)
        raise ProtocolError(f"{name}: line {numbers[index]} has {len(rows[index])} columns; line "
                            f"{numbers[0]} has {width} (an {kind} protocol)")
    columns = list(zip(*rows, strict=True))
    keys = [value.lower() for value in columns[key]]
    if not set(keys) <= set(KEYS):
        index = next(i for i, value in enumerate(keys) if value not in KEYS)
        raise ProtocolError(f"{name}: line {numbers[index]}: key {columns[key][index]!r} in column "
                            f"{key + 1}; expected bonafide or spoof (an {kind} protocol)")
    is_bonafide = [value == "bonafide" for value in keys]
    if len(attack) == 1:
        named = columns[attack[0]]
    else:  # PA 2021: attacker-to-talker distance and replay device, what 2019 PA's "AB" ids encode
        named = [f"{c}-{s}" for c, s in zip(columns[attack[0]], columns[attack[1]], strict=True)]
    attacks = tuple(BONAFIDE_ATTACK if bona else (UNNAMED_ATTACK if a == "-" else a)
                    for bona, a in zip(is_bonafide, named, strict=True))
    utterances = columns[1]
    joined = "\n".join(utterances)
    if "/" in joined or "\\" in joined or ".." in joined:
        index = next(i for i, u in enumerate(utterances) if unsafe_id(u))
        raise ProtocolError(f"{name}: line {numbers[index]}: utterance id {utterances[index]!r} names a path "
                            "(a separator or '..'); an utterance id is a file name without extension")
    return _protocol(name, kind, utterances, is_bonafide, attacks, (None,) * len(utterances), numbers)


def _shape(name: str, row: list[str], number: int) -> tuple[str, int, tuple[int, ...]]:
    """(kind, key column, attack columns) of a whitespace protocol, read from its first line."""
    def is_key(column: int) -> bool:
        return len(row) > column and row[column].lower() in KEYS

    width = len(row)
    if width == 5 and is_key(4):
        return KIND_2019, 4, (3,)
    if width == 12 and is_key(9):  # PA: SPK UTT R M D r m s c KEY TRIM SUBSET
        return KIND_2021, 9, (8, 7)
    if width >= 8 and is_key(5):  # DF: the LA columns, then vocoder, task, team, gender pair, language
        df = width > 8 or row[1].startswith("DF_")
        return (KIND_2021_DF if df else KIND_2021), 5, (4,)
    raise ProtocolError(f"{name}: line {number} has {counted(width, 'column')}; {EXPECTED}")


def _read_csv(name: str, lines: list[str]) -> Protocol:
    reader = csv.reader(lines)
    header: list[str] = []
    for header in reader:
        if header:
            break
    header_line = reader.line_num
    fields = [field.strip().lower() for field in header]
    if "file" not in fields or "label" not in fields:
        raise ProtocolError(f"{name}: line {header_line} is a CSV header without a file and a label column "
                            f"(its columns: {', '.join(header)}); {EXPECTED}")
    for field in ("file", "label"):
        if fields.count(field) > 1:
            raise ProtocolError(f"{name}: line {header_line}: the CSV header has {fields.count(field)} "
                                f"{field!r} columns; expected one")
    file_at, label_at = fields.index("file"), fields.index("label")
    files: list[str] = []
    labels: list[bool] = []
    numbers: list[int] = []
    for row in reader:
        if not row or not any(cell.strip() for cell in row):
            continue
        number = reader.line_num
        if len(row) != len(header):
            raise ProtocolError(f"{name}: line {number} has {len(row)} fields; the CSV header (line "
                                f"{header_line}) has {len(header)}")
        label = row[label_at].strip().lower()
        if label not in CSV_BONAFIDE and label != "spoof":
            raise ProtocolError(f"{name}: line {number}: label {row[label_at]!r}; expected bona-fide, "
                                "bonafide, bona fide or spoof")
        file = row[file_at].strip()
        problem = _csv_file_problem(file)
        if problem:
            raise ProtocolError(f"{name}: line {number}: file {file!r} {problem}")
        files.append(file)
        labels.append(label in CSV_BONAFIDE)
        numbers.append(number)
    utterances = tuple(file_stem(file) for file in files)
    attacks = tuple(BONAFIDE_ATTACK if bona else UNNAMED_ATTACK for bona in labels)
    return _protocol(name, KIND_CSV, utterances, labels, attacks, tuple(files), numbers)


def _csv_file_problem(file: str) -> str | None:
    if not file:
        return "is empty; expected an audio file's path"
    pure = PurePath(file)
    if pure.is_absolute() or file.startswith(("/", "\\")):
        return "is an absolute path; expected a path relative to the audio root"
    if ".." in pure.parts or ".." in file.replace("\\", "/").split("/"):
        return "climbs out of the audio root ('..'); expected a path inside it"
    return None


def _protocol(name: str, kind: str, utterances: Sequence[str], is_bonafide: Sequence[bool],
              attacks: tuple[str, ...], audio: tuple[str | None, ...], numbers: Sequence[int]) -> Protocol:
    """The checks every format shares (unique ids, both classes present), then the Protocol."""
    if not utterances:
        raise ProtocolError(f"{name}: holds a header and no utterance; {EXPECTED}")
    duplicate = first_duplicate(utterances)
    if duplicate is not None:
        a, b = duplicate
        raise ProtocolError(f"{name}: lines {numbers[a]} and {numbers[b]} both hold utterance "
                            f"{utterances[a]!r}; an utterance is listed once")
    labels = np.array(is_bonafide, dtype=bool)
    labels.flags.writeable = False
    if labels.all() or not labels.any():
        present, absent = ("bona fide", "spoof") if labels.all() else ("spoof", "bona fide")
        raise ProtocolError(f"{name}: all {labels.size:,} utterances are {present} and none is {absent}; an "
                            "evaluation needs both classes")
    return Protocol(name, kind, tuple(utterances), labels, attacks, audio)


# --- where the audio is ------------------------------------------------------------------------


def audio_files(protocol: Protocol, audio_root: str | None) -> list[str]:
    """Each utterance's audio file, in protocol order; one ``ProtocolError`` for every one missing.

    ASVspoof: ``ROOT/UTT.flac``, else ``ROOT/UTT.wav``, else the same in ``ROOT/flac/`` and
    ``ROOT/wav/``. CSV: the file column, relative to ``ROOT``. ``ROOT`` defaults to the
    protocol's folder. Each folder is listed once (``os.scandir``), never stat-ed per file.
    """
    root = audio_root if audio_root is not None else (os.path.dirname(protocol.path) or ".")
    if not os.path.isdir(root):
        raise ProtocolError(f"{root}: the audio root is not a directory")
    if protocol.kind == KIND_CSV:
        found = _csv_audio(protocol, root)
    else:
        found = _asvspoof_audio(protocol, root)
    missing = [i for i, path in enumerate(found) if path is None]
    if missing:
        shown = [protocol.audio[i] or protocol.utterances[i] for i in missing[:5]]
        where = root if protocol.kind == KIND_CSV else f"{root} (nor its {'/, '.join(AUDIO_SUBFOLDERS)}/)"
        raise ProtocolError(f"{protocol.path}: {len(missing):,} of {len(found):,} protocol utterances have "
                            f"no audio under {where}: {first_few(shown, total=len(missing))}")
    return [path for path in found if path is not None]


def _listing(folder: str) -> set[str]:
    """The names of the files (or links to files) in ``folder``; empty when it is no folder."""
    try:
        with os.scandir(folder) as entries:
            return {entry.name for entry in entries if entry.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()
    except OSError as exc:
        raise ProtocolError(describe_unreadable(folder, exc)) from None


def _asvspoof_audio(protocol: Protocol, root: str) -> list[str | None]:
    bad = next((u for u in protocol.utterances if unsafe_id(u)), None)
    if bad is not None:
        raise ProtocolError(f"{protocol.path}: utterance id {bad!r} names a path (a separator or '..'); an "
                            "utterance id is a file name without extension")
    folders = [root] + [os.path.join(root, sub) for sub in AUDIO_SUBFOLDERS]
    listings = [(folder, _listing(folder)) for folder in folders]
    candidates = [(folder, names, ext) for folder, names in listings if names for ext in AUDIO_EXTENSIONS]
    found: list[str | None] = []
    for utterance in protocol.utterances:
        path = None
        for folder, names, ext in candidates:
            if utterance + ext in names:
                path = os.path.join(folder, utterance + ext)
                break
        found.append(path)
    return found


def _csv_audio(protocol: Protocol, root: str) -> list[str | None]:
    listings: dict[str, set[str]] = {}
    found: list[str | None] = []
    for file in protocol.audio:
        if file is None or _csv_file_problem(file):
            raise ProtocolError(f"{protocol.path}: file {file!r} is not a path inside the audio root")
        path = os.path.join(root, file)
        folder, base = os.path.split(path)
        if folder not in listings:
            listings[folder] = _listing(folder)
        found.append(path if base in listings[folder] else None)
    return found

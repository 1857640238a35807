"""A score log: the JSON Lines record of ONE ``score`` run, written as it goes, resumable, never mixed.

A header line holds the run's ``fingerprint(...)`` (everything that decides the scores), then
one line per file. ``ScoreLog.open(path, fingerprint, resume=, force=)`` checks everything
before anything on disk changes and locks the log for the run; ``records``, ``todo``,
``append`` and ``finish`` resume, extend and finish it, byte for byte the log an uninterrupted
run writes. ``read_score_log(path)`` reads a finished log (``evaluate``). The format and the
resume rules: docs/scoring.md, "The score log".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import stat
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.core.contract import InputContract, ScoreTransform
from harness.core.errors import HarnessError
from harness.core.fileio import check_output_path, file_sha256, fsync_directory
from harness.core.text import first_few
from harness.rawnet2.audio import SAMPLE_RATE
from harness.rawnet2.score_results import FileScore

LOG_FORMAT = 1
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO put in the log's place must not block the open
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BOMS = {b"\xef\xbb\xbf": "a UTF-8 byte-order mark", b"\xff\xfe": "UTF-16 (little-endian byte-order mark)",
         b"\xfe\xff": "UTF-16 (big-endian byte-order mark)"}
_RECORD = 'a score record ({"file": PATH, "score": NUMBER} or {"file": PATH, "error": TEXT})'


def _versions() -> dict[str, str]:
    from importlib import metadata

    import numpy
    import soundfile
    import soxr

    def version(distribution: str) -> str | None:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:  # a checkout never installed; onnxruntime not installed
            return None

    # what computes a score: the model (torch, or ONNX Runtime for that form), the decoder, the resampler;
    # torch's version is read, not imported: a run from the export cache has no torch
    return {"harness": version("rawnet2-harness"), "torch": version("torch"),
            "onnxruntime": version("onnxruntime"), "numpy": numpy.__version__,
            "soundfile": soundfile.__version__, "libsndfile": soundfile.__libsndfile_version__,
            "soxr": soxr.__version__}


def fingerprint(*, variant: str, factory: str, kwargs: Mapping[str, object], checkpoint: str | None,
                weights: str | os.PathLike | None, form: str, device: str, length: int, sample_rate: int,
                transform: ScoreTransform, options: Mapping[str, object] | None = None) -> dict[str, object]:
    """The configuration a score log records: two runs with equal fingerprints score alike.

    ``checkpoint`` and ``weights`` (the variant's registered weights) are paths, recorded by
    the SHA-256 of their bytes; ``options`` holds any other setting that changes a score
    (batch size, conversion policy). Versions of what computes a score are added here.
    """
    return {
        "variant": variant,
        "factory": factory,
        "kwargs": json.loads(json.dumps(dict(kwargs), sort_keys=True, default=repr)),
        "checkpoint_sha256": None if checkpoint is None else file_sha256(checkpoint),
        "weights_sha256": None if weights is None else file_sha256(weights),
        "form": form,
        "device": device,
        "length": length,
        "sample_rate": sample_rate,
        "score": str(transform),
        "score_means": transform.means,
        **{key: options[key] for key in sorted(options or {})},
        **_versions(),
    }


def run_fingerprint(*, variant: str, factory: str, kwargs: Mapping[str, object], checkpoint: str | None,
                    weights: str | os.PathLike | None, form: str, device: str, contract: InputContract,
                    transform: ScoreTransform, batch_size: int, policy: str) -> dict[str, object]:
    """``fingerprint`` of a ``score`` or ``evaluate`` run: its clips at ``contract`` (16 kHz), and the
    batch size and conversion policy that change a score."""
    options = {"batch_size": batch_size, "policy": policy, "input_shape": list(contract.shape)}
    return fingerprint(variant=variant, factory=factory, kwargs=kwargs, checkpoint=checkpoint,
                       weights=weights, form=form, device=device, length=contract.length,
                       sample_rate=SAMPLE_RATE, transform=transform, options=options)


def header_line(print_: Mapping[str, object]) -> bytes:
    return json.dumps({"score_log": LOG_FORMAT, "fingerprint": print_}).encode() + b"\n"


def transform_of(print_: Mapping[str, object]) -> ScoreTransform:
    """The score transform a fingerprint names."""
    return ScoreTransform.parse(print_.get("score"), print_.get("score_means", "spoof"))


def record_line(result: FileScore) -> bytes:
    # ASCII (a valid UTF-8 subset): undecodable bytes of a file name are \udcXX escapes
    return json.dumps(result.as_json()).encode() + b"\n"


# --- reading ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    """What a log's bytes hold: its fingerprint (None: no header yet), its records with their line
    numbers and raw lines, and how many bytes hold whole lines."""

    fingerprint: dict | None
    records: list[tuple[int, FileScore, bytes]]
    keep: int
    header: bytes | None = None


def parse_score_log(data: bytes, path: str, expected: Mapping[str, object] | None = None) -> Parsed:
    """Validate a log's bytes: UTF-8 (no byte-order mark), a header, records the header's
    transform allows. With ``expected``, the header must hold that fingerprint.

    A last line without its newline is what a kill in the middle of a write leaves: it is not
    a record (its file is scored again). A log without a header is refused, unless it is empty
    or only the start of ``expected``'s header (a kill while the header was written).
    """
    where = f"{path}: "
    for bom, what in _BOMS.items():
        if data.startswith(bom):
            raise HarnessError(f"{where}is {what}, not a UTF-8 score log; give another --output, or --force "
                               "to start over")
    if b"\x00" in data:
        raise HarnessError(f"{where}holds NUL bytes (UTF-16 or binary?), not a UTF-8 score log; give another "
                           "--output, or --force to start over")
    keep = data.rfind(b"\n") + 1
    lines = data[:keep].split(b"\n")[:-1]
    if not lines:
        if expected is not None and header_line(expected).startswith(data):
            return Parsed(None, [], 0, None)
        raise HarnessError(f"{where}holds no score-log header (not a score log, or written by an older "
                           "harness); give another --output, or --force to start over")
    found = _parse_header(lines[0], where)
    if expected is not None and found != dict(expected):
        raise HarnessError(f"{where}was written under another configuration: {differences(found, expected)}; "
                           "the same options resume it, or give another --output, or --force to start over")
    transform = transform_of(found)
    records = [(number, _parse_record(line, where, number, transform), line + b"\n")
               for number, line in enumerate(lines[1:], start=2)]
    return Parsed(found, records, keep, lines[0] + b"\n")


def _parse_header(line: bytes, where: str) -> dict:
    try:
        row = json.loads(line.decode("utf-8"))
    except ValueError:
        row = None
    if (isinstance(row, dict) and set(row) == {"score_log", "fingerprint"} and row["score_log"] == LOG_FORMAT
            and isinstance(row["fingerprint"], dict)):
        try:
            transform_of(row["fingerprint"])
            return row["fingerprint"]
        except HarnessError:
            pass
    raise HarnessError(f"{where}line 1 is not a score-log header ({{\"score_log\": {LOG_FORMAT}, "
                       "\"fingerprint\": {...}}): not a score log, or written by an older harness; give "
                       "another --output, or --force to start over")


def _parse_record(line: bytes, where: str, number: int, transform: ScoreTransform) -> FileScore:
    try:
        row = json.loads(line.decode("utf-8"))
    except ValueError:  # bad JSON or bad UTF-8
        row = None
    problem = f"not {_RECORD}"
    if isinstance(row, dict) and isinstance(row.get("file"), str):
        score, error = row.get("score"), row.get("error")
        if set(row) == {"file", "score"}:
            problem = transform.score_problem(score) or ""
            if not problem:
                return FileScore(row["file"], score=float(score))
        elif set(row) == {"file", "error"} and isinstance(error, str):
            return FileScore(row["file"], error=error)
    raise HarnessError(f"{where}line {number}: {problem}; fix or delete that line, or --force to start over")


def differences(found: Mapping[str, object], expected: Mapping[str, object]) -> str:
    """``key (X in the log, Y now)`` for every key whose value differs."""
    keys = [k for k in [*found, *(k for k in expected if k not in found)] if found.get(k) != expected.get(k)]
    return ", ".join(f"{k} ({_short(found.get(k))} in the log, {_short(expected.get(k))} now)" for k in keys)


def _short(value: object) -> str:
    text = json.dumps(value, sort_keys=True, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def read_score_log(path: str | os.PathLike) -> tuple[dict, list[FileScore]]:
    """A finished log's fingerprint and records, validated; refused while a run holds its lock."""
    from harness.core.fileio import check_regular_input

    check_regular_input(path)
    fd = _open_existing(str(path), os.O_RDONLY)
    try:
        _lock(fd, str(path), fcntl.LOCK_SH)
        parsed = parse_score_log(_read_all(fd), str(path))
    finally:
        os.close(fd)
    if parsed.fingerprint is None:
        raise HarnessError(f"{path}: holds no score-log header")
    return parsed.fingerprint, [record for _, record, _ in parsed.records]


# --- the log a run writes ----------------------------------------------------------------------------


class ScoreLog:
    """The log of one run (see the module docstring). Use ``ScoreLog.open``, then as a context manager."""

    def __init__(self, path: str, print_: Mapping[str, object], *, resume: bool, force: bool) -> None:
        self.path, self.fingerprint, self.resume, self.force = path, dict(print_), resume, force
        self.transform = transform_of(self.fingerprint)
        self._fd: int | None = None
        self._lines: list[tuple[FileScore, bytes]] = []  # the records, in the order the file holds them
        self._numbers: list[int] = []  # the line numbers of the records read from a resumed log
        self._header: bytes | None = None
        self._keep = 0
        self._replace_link = False
        self._started = False

    @classmethod
    def open(cls, path: str, print_: Mapping[str, object], *, resume: bool = False,
             force: bool = False) -> ScoreLog:
        """Check ``path`` and, with ``resume``, what it holds, and lock it; nothing on disk changes
        until the first write. Refused (``HarnessError``, one line): a path ``check_output_path``
        refuses, an existing file without ``resume`` or ``force``, a log another run holds, and
        with ``resume`` a log that is not UTF-8, has no header or another fingerprint, or a bad record.
        """
        log = cls(path, print_, resume=resume, force=force)
        target = check_output_path(path, force=force)
        if not os.path.lexists(target):
            return log
        if not (resume or force):
            raise HarnessError(f"{path}: already exists; --resume finishes it, --force overwrites it")
        if os.path.islink(target):  # only with force: the link itself is replaced, never followed
            log._replace_link = True
            return log
        fd = _open_existing(path, os.O_RDWR | os.O_APPEND)
        try:
            _lock(fd, path, fcntl.LOCK_EX)
            if resume and not force:
                parsed = parse_score_log(_read_all(fd), path, log.fingerprint)
                log._lines = [(record, line) for _, record, line in parsed.records]
                log._numbers = [number for number, _, _ in parsed.records]
                log._keep, log._header = parsed.keep, parsed.header
        except BaseException:
            os.close(fd)
            raise
        log._fd = fd
        return log

    def __enter__(self) -> ScoreLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock and the file (what is written stays)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def records(self) -> list[FileScore]:
        """The records the log holds, in its order."""
        return [record for record, _ in self._lines]

    def todo(self, files: Sequence[str]) -> list[str]:
        """``files`` the log does not record yet, in input order (a file given twice needs two records).

        Refuses a log that records a file not given this time, or a file more often than given,
        naming the files and their lines: the finished log would not be this run's.
        """
        given = Counter(files)
        lines: dict[str, list[int]] = {}
        for number, (record, _) in zip(self._numbers, self._lines, strict=False):
            lines.setdefault(record.file, []).append(number)
        if extra := [f for f in lines if f not in given]:
            shown = first_few([f"{f!r} (line {', '.join(map(str, lines[f]))})" for f in extra[:5]],
                              total=len(extra))
            raise HarnessError(f"{self.path}: records {len(extra)} file(s) not given this time: {shown}; "
                               "give the same files to resume it, or --force to start over")
        for name, numbers in lines.items():
            if len(numbers) > given[name]:
                raise HarnessError(f"{self.path}: {name!r} is recorded {len(numbers)} times (lines "
                                   f"{', '.join(map(str, numbers))}) but given {given[name]} time(s); delete "
                                   "the duplicate line(s), or --force to start over")
        left = Counter(record.file for record, _ in self._lines)
        todo = []
        for name in files:
            if left[name]:
                left[name] -= 1
            else:
                todo.append(name)
        return todo

    def append(self, batch: Iterable[FileScore]) -> None:
        """Write one line per result and make them durable before returning."""
        batch = list(batch)
        for result in batch:
            if result.error is None and (problem := self.transform.score_problem(result.score)):
                raise HarnessError(f"{self.path}: {result.file!r}: {problem}: not written")
        self._start()
        lines = [record_line(r) for r in batch]
        self._write(b"".join(lines))
        self._lines += list(zip(batch, lines, strict=True))

    def finish(self, files: Sequence[str]) -> list[FileScore]:
        """Put the records in the order of ``files`` (one each), rewriting the log only if it is not
        (a resumed run given the files in another order); the records in that order."""
        self._start()
        pool: dict[str, list[tuple[FileScore, bytes]]] = {}
        for entry in self._lines:
            pool.setdefault(entry[0].file, []).append(entry)
        try:
            ordered = [pool[name].pop(0) for name in files]
        except (KeyError, IndexError):
            raise HarnessError(f"{self.path}: does not record every file given; --resume finishes it",
                               ) from None
        if any(pool.values()):
            raise HarnessError(f"{self.path}: records files not given")
        if ordered != self._lines:
            self._rewrite(b"".join(line for _, line in ordered))
            self._lines = ordered
        return [record for record, _ in ordered]

    # --- on disk -------------------------------------------------------------------------------------

    def _start(self) -> None:
        """The first change on disk: create (exclusively) or empty the log, or drop a resumed log's
        half-written last line; write the header where there is none."""
        if self._started:
            return
        if self._replace_link:
            os.unlink(self.path)  # the link itself; what it points to is never opened
        if self._fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW
                             | _O_CLOEXEC, 0o666)
            except FileExistsError:
                raise HarnessError(f"{self.path}: appeared while the run started; --resume finishes it, "
                                   "--force overwrites it") from None
            except OSError as exc:
                raise HarnessError(f"{self.path}: cannot create: {exc.strerror or exc}") from None
            self._fd = fd
            _lock(fd, self.path, fcntl.LOCK_EX)
            fsync_directory(Path(self.path).parent)  # the new name itself survives a crash
        keep = self._keep if self._header is not None else 0
        try:
            os.ftruncate(self._fd, keep)  # --force: empty; --resume: a half-written last line goes
        except OSError as exc:
            raise HarnessError(f"{self.path}: cannot write: {exc.strerror or exc}") from None
        self._started = True
        if self._header is None:
            self._header = header_line(self.fingerprint)
            self._write(self._header)
        else:
            os.fsync(self._fd)

    def _write(self, data: bytes) -> None:
        assert self._fd is not None, "the log is closed"
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as exc:
            raise HarnessError(f"{self.path}: cannot write: {exc.strerror or exc}") from None

    def _rewrite(self, records: bytes) -> None:
        """Replace the log by header + ``records`` atomically (temp file, locked, same mode, rename)."""
        assert self._fd is not None and self._header is not None
        target = Path(self.path)
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.fchmod(fd, stat.S_IMODE(os.fstat(self._fd).st_mode))
            old, self._fd = self._fd, fd
            self._write(self._header + records)
            os.replace(tmp, target)
        except BaseException:
            if self._fd == fd:
                self._fd = old
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(old)
        fsync_directory(target.parent)


def _open_existing(path: str, flags: int) -> int:
    try:
        fd = os.open(path, flags | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise HarnessError(f"{path}: became a symbolic link while the run started") from None
        raise HarnessError(f"{path}: cannot open: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise HarnessError(f"{path}: not a regular file (a FIFO, device or socket); give a file name")
    return fd


def _lock(fd: int, path: str, kind: int) -> None:
    """Take ``kind`` (``LOCK_EX``/``LOCK_SH``) on ``fd`` without waiting, or refuse: another run holds it."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        raise HarnessError(f"{path}: another score run is writing this log (it holds its lock); wait for it "
                           "to end, or give another --output") from None
    try:
        same = os.fstat(fd).st_ino == os.lstat(path).st_ino
    except OSError:
        same = False
    if not same:
        raise HarnessError(f"{path}: was replaced while the run started; run again")


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)

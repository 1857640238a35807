"""A content-addressed cache of verified exports: a run pays for an export and its verification once.

``export_key_parts`` lists everything that decides the exported bytes and ``cache_key`` hashes
it; ``ExportCache.get`` / ``put`` / ``evict`` read, write and drop one checked entry;
``open_cache`` opens the directory (``default_cache_dir`` when none is named). A bad entry is
never trusted: it is deleted, warned about and read as a miss. The key's parts, the entry
format and where the cache lives: docs/deployment.md, "The export cache".
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import sys
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.fileio import file_kind, file_sha256, fsync_directory  # noqa: F401 - file_sha256 re-exported

# Bumped whenever what an entry holds or how its key is made changes: older entries then miss.
CACHE_FORMAT = 1
CACHE_DIR_ENV = "RAWNET2_HARNESS_CACHE_DIR"
CACHE_SUBDIR = "rawnet2-harness"
ENTRY_SUFFIX = ".entry"
# Temp files older than this are what a killed writer left: removed by the next put.
STALE_TEMP_SECONDS = 24 * 3600
# The distributions whose versions decide an exported graph (the exporter, the checker, the runtime).
VERSIONED = ("torch", "onnx", "onnxruntime", "rawnet2-harness")
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)

Warn = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def default_cache_dir() -> Path:
    """``$RAWNET2_HARNESS_CACHE_DIR``, else ``$XDG_CACHE_HOME/rawnet2-harness``, else
    ``~/.cache/rawnet2-harness`` (an empty variable counts as unset, as XDG says)."""
    if explicit := os.environ.get(CACHE_DIR_ENV):
        return Path(explicit)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / CACHE_SUBDIR
    return Path.home() / ".cache" / CACHE_SUBDIR


# --- the key ------------------------------------------------------------------------------------------


def canonical_json(parts: Mapping[str, object]) -> str:
    """``parts`` as canonical JSON; ``HarnessError`` when a value is not plain JSON (its ``repr``
    could name two different things alike, so such parts get no key: they are never cached)."""
    try:
        return json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise HarnessError(f"cache key parts are not plain JSON ({exc})") from None


def cache_key(parts: Mapping[str, object]) -> str:
    """The SHA-256 (hex) of ``parts``' canonical JSON: equal parts, equal key."""
    return hashlib.sha256(canonical_json(parts).encode("ascii")).hexdigest()


def state_dict_sha256(model: object) -> str:
    """The SHA-256 (hex) of a model's ``state_dict`` tensors: each entry's name, dtype, shape and
    bytes, in name order. An entry that is not a tensor (extra state) refuses: ``HarnessError``."""
    import torch

    digest = hashlib.sha256()
    state = model.state_dict()  # type: ignore[attr-defined]
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            raise HarnessError(f"state_dict entry {name!r} is {type(tensor).__name__}, not a tensor: the "
                               "weights have no content hash")
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())  # any dtype, bfloat16 included
    return digest.hexdigest()


def versions() -> dict[str, str | None]:
    """The installed versions of ``VERSIONED`` (None: not installed), read without importing them."""
    found: dict[str, str | None] = {}
    for distribution in VERSIONED:
        try:
            found[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[distribution] = None
    return found


def export_key_parts(*, name: str, factory: str, kwargs: Mapping[str, object], source_sha256: str | None,
                     weights: Mapping[str, object], form: str, opset: int, input_shape: tuple[int, ...],
                     min_length: int, verified_length: int, exporter_sha256: str | None = None,
                     settings: Mapping[str, object] | None = None) -> dict[str, object]:
    """Everything that decides an export's bytes, as the key's parts (the module docstring lists them)."""
    return {
        "cache_format": CACHE_FORMAT,
        "spec": {"name": name, "factory": factory, "kwargs": dict(kwargs), "source_sha256": source_sha256},
        "weights": dict(weights),
        "form": form,
        "settings": dict(settings or {}),
        "opset": opset,
        "input_shape": list(input_shape),
        "min_length": min_length,
        "verified_length": verified_length,
        "exporter_sha256": exporter_sha256,
        "versions": versions(),
    }


# --- the cache ----------------------------------------------------------------------------------------


def _directory_problem(directory: Path) -> str | None:
    """Why ``directory`` (existing or not) cannot hold this user's cache, or None after making it."""
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        try:
            os.makedirs(directory, mode=0o700)
        except FileExistsError:
            pass  # another run made it meanwhile: checked below like any existing one
        except OSError as exc:
            return f"cannot create it: {exc.strerror or exc}"
        try:
            info = os.lstat(directory)
        except OSError as exc:
            return f"cannot check it: {exc.strerror or exc}"
    except OSError as exc:
        return f"cannot check it: {exc.strerror or exc}"
    if stat.S_ISLNK(info.st_mode):
        return f"is a symbolic link (to {os.readlink(directory)!r}), not a directory of its own"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        return f"belongs to another user (uid {info.st_uid}): they could plant an export"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by others (mode {stat.S_IMODE(info.st_mode):o}): they could plant an export"
    if not os.access(directory, os.W_OK | os.X_OK):
        return "is not writable"
    return None


class ExportCache:
    """Verified export bytes by key, in one directory this user owns (checked when opened)."""

    def __init__(self, directory: str | os.PathLike, *, warn: Warn = _stderr) -> None:
        self.directory = Path(directory)
        self.warn = warn
        if problem := _directory_problem(self.directory):
            raise HarnessError(f"cache directory {self.directory}: {problem}; give another --cache-dir, or "
                               "--no-cache")

    def path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise HarnessError(f"cache key {key!r} is not a SHA-256 hex digest")  # a key never names a path
        return self.directory / f"{key}{ENTRY_SUFFIX}"

    def get(self, key: str) -> bytes | None:
        """The payload stored under ``key``, checked; None on a miss (a bad entry is deleted, warned)."""
        path = self.path(key)
        try:  # O_NONBLOCK: a FIFO planted there must not block the open
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a symbolic link planted there (ELOOP), unreadable: never followed
            self._discard(path, None, f"cannot be opened ({exc.strerror or exc})")
            return None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            self._discard(path, info, f"is {file_kind(info.st_mode)}, not a regular file")
            return None
        with os.fdopen(fd, "rb") as handle:
            data = handle.read()
        payload, problem = _unpack(key, data)
        if problem:
            self._discard(path, info, problem)
            return None
        return payload

    def put(self, key: str, data: bytes, parts: Mapping[str, object]) -> bool:
        """Store ``data`` under ``key`` atomically; False (with a warning) when the write fails."""
        path = self.path(key)
        if cache_key(parts) != key:
            raise HarnessError(f"cache key {key[:12]}... is not the key of the parts given")  # a caller's bug
        header = {"cache_format": CACHE_FORMAT, "key": key, "size": len(data),
                  "sha256": hashlib.sha256(data).hexdigest(), "parts": parts}
        tmp = self.directory / f".{key}.{secrets.token_hex(6)}.tmp"
        created = False
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600)
            created = True
            with os.fdopen(fd, "wb") as handle:
                handle.write(canonical_json(header).encode("ascii") + b"\n")
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)  # atomic: a reader sees the old entry or the new one, never half
        except OSError as exc:
            if created:
                tmp.unlink(missing_ok=True)
            self.warn(f"warning: export cache {self.directory}: cannot store an entry "
                      f"({exc.strerror or exc}); this run goes on without it")
            return False
        fsync_directory(self.directory)
        self._remove_stale_temps()
        return True

    def evict(self, key: str, why: str) -> None:
        """Delete ``key``'s entry, good as it looked: what was made from it failed a later check."""
        self._discard(self.path(key), None, why)

    def _discard(self, path: Path, seen: os.stat_result | None, problem: str) -> None:
        """Delete the bad entry at ``path`` (only the file that was read: one a writer renamed in
        meanwhile stays) and say so in one line."""
        self.warn(f"warning: export cache entry {path.name} {problem}: deleted, it will be rebuilt")
        try:
            now = os.lstat(path)
            if seen is None or (now.st_ino, now.st_dev) == (seen.st_ino, seen.st_dev):
                if stat.S_ISDIR(now.st_mode):
                    os.rmdir(path)  # an empty one only: what is in a directory is not ours to judge
                else:
                    path.unlink()
        except OSError:
            pass  # gone already, or not ours to delete: a miss either way

    def _remove_stale_temps(self) -> None:
        cutoff = time.time() - STALE_TEMP_SECONDS
        try:
            names = [n for n in os.listdir(self.directory) if n.startswith(".") and n.endswith(".tmp")]
        except OSError:
            return
        for name in names:
            temp = self.directory / name
            try:
                if os.lstat(temp).st_mtime < cutoff:
                    temp.unlink()
            except OSError:
                pass


def _unpack(key: str, data: bytes) -> tuple[bytes, str | None]:
    """The payload of an entry's bytes, or why they are not a whole, matching entry for ``key``."""
    line, newline, payload = data.partition(b"\n")
    if not newline:
        return b"", "has no header line (truncated?)"
    try:
        header = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        return b"", "has an unreadable header (corrupt)"
    if not isinstance(header, dict) or header.get("cache_format") != CACHE_FORMAT:
        return b"", f"is not a format-{CACHE_FORMAT} entry"
    if header.get("key") != key or not isinstance(header.get("parts"), dict):
        return b"", "was written for another key (foreign)"
    try:
        parts_key = cache_key(header["parts"])
    except HarnessError:
        parts_key = None
    if parts_key != key:
        return b"", "records parts whose key is another (foreign)"
    if header.get("size") != len(payload):
        return b"", f"holds {len(payload):,} bytes where its header says {header.get('size')!r} (truncated?)"
    if header.get("sha256") != hashlib.sha256(payload).hexdigest():
        return b"", "does not match its recorded SHA-256 (corrupt)"
    return payload, None


def open_cache(directory: str | os.PathLike | None, *, enabled: bool = True,
               warn: Warn = _stderr) -> ExportCache | None:
    """The cache a run uses: None with ``enabled`` False (``--no-cache``). ``directory`` None means
    the default location (``default_cache_dir``): named by ``$RAWNET2_HARNESS_CACHE_DIR`` it is
    the user's choice and a problem refuses (exit 2); else a problem there is a warning and no cache."""
    if not enabled:
        return None
    if directory is not None and os.fspath(directory) == "":
        raise HarnessError("--cache-dir '': give a directory (or --no-cache)")
    if directory is not None or os.environ.get(CACHE_DIR_ENV):
        return ExportCache(directory if directory is not None else default_cache_dir(), warn=warn)
    default = default_cache_dir()
    if problem := _directory_problem(default):
        warn(f"warning: cache directory {default}: {problem}; going on without an export cache")
        return None
    return ExportCache(default, warn=warn)

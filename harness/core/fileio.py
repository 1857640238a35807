"""Atomic file output: a reader sees the old file or the whole new one, never half of one.

The one home for writing results (checkpoints, reports, golden files): temp file in the
target directory (O_EXCL, so a link planted at the temp name is never followed), flush,
fsync, ``os.replace``, then fsync of the directory; the temp file is removed on failure.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from harness.core.errors import HarnessError


def check_writable_target(path: Path, *, force: bool = True) -> None:
    """Refuse a target whose directory is missing, that is a directory, or that exists (unless force)."""
    if not path.parent.is_dir():
        raise HarnessError(f"{path}: directory {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise HarnessError(f"{path}: is a directory")
    if not force and os.path.lexists(path):
        raise HarnessError(f"{path}: already exists; use --force (force=True) to overwrite it")


def write_atomically(path: Path, write: Callable[[BinaryIO], None], *, force: bool = True) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, then move it into place atomically."""
    path = Path(path)
    check_writable_target(path, force=force)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        # 0o666: the umask decides, as for any ordinary file the user writes.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise HarnessError(f"{path}: cannot write: {exc.strerror or exc}") from None
        raise
    _fsync_directory(path.parent)


def write_text_atomically(path: Path, text: str, *, force: bool = True) -> None:
    write_atomically(path, lambda f: f.write(text.encode("utf-8")), force=force)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

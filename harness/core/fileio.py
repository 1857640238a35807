"""Where the harness may write and read files: the one home for output paths and atomic writes.

Output (checkpoints, reports, golden files) goes only to a regular file or a new path, checked
before any work and written so that no reader ever sees half a file. Entry points:
``check_output_path`` and ``write_atomically`` (output), ``check_not_read`` (an output is never
a file the run reads), ``check_regular_input`` and ``describe_unreadable`` (input),
``file_sha256`` (a file's content hash). The rules each enforces: docs/index.md, "Files".
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from harness.core.errors import HarnessError

PathLike = str | os.PathLike


# --- what a path is --------------------------------------------------------------------------------


def file_kind(mode: int) -> str:
    """``a directory``, ``a FIFO (named pipe)``, ``a character device``...: what a mode says, in words."""
    for test, kind in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


def _link_target(path: PathLike) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def describe_unreadable(path: PathLike, exc: OSError) -> str:
    """The one line (``PATH: why``) for an ``OSError`` met while opening or stat-ing ``path`` to read it.

    A symlink loop says so (``ELOOP`` is otherwise read as "no such file" by careless
    callers); a broken link names where it points.
    """
    code = exc.errno
    if code == errno.ELOOP:
        return f"{path}: symlink loop (too many levels of symbolic links)"
    if code == errno.ENOENT:
        if os.path.islink(path):
            return f"{path}: broken symbolic link (points to {_link_target(path)!r}, which does not exist)"
        return f"{path}: no such file"
    if code == errno.ENOTDIR:
        return f"{path}: no such file (a component of the path is not a directory)"
    if code in (errno.EACCES, errno.EPERM):
        return f"{path}: cannot read: permission denied"
    if code == errno.ENAMETOOLONG:
        return f"{path}: file name too long"
    return f"{path}: cannot read: {exc.strerror or exc}"


def check_regular_input(path: PathLike) -> os.stat_result:
    """``os.stat(path)`` of a regular file to read, else one ``HarnessError`` line (exit 2) saying why.

    Refuses an empty path, a missing file, a broken link, a symlink loop, a directory and
    a special file (a FIFO or a device would block or stream forever). Symlinks to a
    regular file are followed, as any reader does.
    """
    if os.fspath(path) == "":
        raise HarnessError("empty path ('') given for an input file")
    try:
        info = os.stat(path)
    except OSError as exc:
        raise HarnessError(describe_unreadable(path, exc)) from None
    if stat.S_ISDIR(info.st_mode):
        raise HarnessError(f"{path}: is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise HarnessError(f"{path}: is {file_kind(info.st_mode)}, not a regular file")
    return info


def file_sha256(path: PathLike) -> str:
    """The SHA-256 (hex) of a file's bytes: a checkpoint's identity, whatever its name."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return digest.hexdigest()


# --- where output may go ---------------------------------------------------------------------------


def check_output_path(path: PathLike, *, force: bool = False, overwrite: bool = True) -> Path:
    """``path`` as a ``Path`` if the harness may write there, else one ``HarnessError`` line (exit 2).

    Call it before any measuring or loading. ``overwrite``: an existing regular file may be
    replaced (reports, golden files); without it only ``force`` may (checkpoints).
    ``force`` also lets a symbolic link be replaced: the link itself, never its target.
    The directory must exist and be writable (``os.access``; a write that still fails,
    e.g. as root on a read-only mount, is caught when it happens).
    """
    raw = os.fspath(path)
    if raw == "":
        raise HarnessError("empty path ('') given for the output; give a file name")
    separators = (os.sep, os.altsep) if os.altsep else (os.sep,)
    target = Path(raw)
    if raw.endswith(separators) or os.path.basename(raw) in (".", ".."):
        if os.path.isdir(raw):
            raise HarnessError(f"{raw}: is a directory; give a file name inside it")
        end = repr(raw[-1]) if raw.endswith(separators) else repr(os.path.basename(raw))
        raise HarnessError(f"{raw}: ends with {end}, so it names a directory, not a file; give a file name")
    _check_directory(target)
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return target  # a new path
    except OSError as exc:
        raise HarnessError(f"{target}: cannot check the output path: {exc.strerror or exc}") from None
    _check_existing(target, info, force=force, overwrite=overwrite)
    return target


def check_not_read(output: PathLike, reads: Iterable[tuple[str, PathLike]]) -> None:
    """Refuse ``output`` (``force`` or not) when it is a file the run reads, one ``HarnessError`` line
    naming both.

    ``reads`` holds ``(what, path)`` pairs (``("the checkpoint", "w.pt")``). The same file is the
    same path in any spelling (``./``, ``..``, through symbolic links) or the same inode (a hard
    link). A symbolic link at ``output`` itself is left to ``check_output_path``: ``--force``
    replaces the link, never what it points to.
    """
    if os.path.islink(output):
        return
    real = os.path.realpath(output)
    for what, path in reads:
        same = os.path.realpath(path) == real
        if not same:
            try:
                same = os.path.samefile(path, output)
            except OSError:  # either is missing or unreadable: not the same existing file
                same = False
        if same:
            name = os.fspath(output)
            shown = name if name.isprintable() else repr(name)  # a name never forges a line of its own
            raise HarnessError(f"{shown}: is {what} {os.fspath(path)!r}, which this run reads; give another "
                               "output file")


def _check_directory(target: Path) -> None:
    directory = target.parent
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        raise HarnessError(f"{target}: directory {str(directory)!r} does not exist") from None
    except NotADirectoryError:
        raise HarnessError(f"{target}: {str(directory)!r} is not a directory") from None
    except OSError as exc:
        raise HarnessError(f"{target}: directory {str(directory)!r}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise HarnessError(f"{target}: {str(directory)!r} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise HarnessError(f"{target}: directory {str(directory)!r} is not writable")


def _check_existing(target: Path, info: os.stat_result, *, force: bool, overwrite: bool) -> None:
    """Refuse what already exists at ``target`` (``info`` from ``lstat``) unless it may be replaced."""
    mode = info.st_mode
    if stat.S_ISLNK(mode):
        if not force:
            raise HarnessError(
                f"{target}: is a symbolic link (to {_link_target(target)!r}); output goes only to a regular "
                "file or a new path; use --force (force=True) to replace the link itself (what it points "
                "to is never written)")
        return
    if stat.S_ISDIR(mode):
        raise HarnessError(f"{target}: is a directory; give a file name inside it")
    if not stat.S_ISREG(mode):
        raise HarnessError(f"{target}: is {file_kind(mode)}, not a regular file; output goes only to a "
                           "regular file or a new path")
    if not (force or overwrite):
        raise HarnessError(f"{target}: already exists; use --force (force=True) to overwrite it")


def _recheck(target: Path, *, force: bool, overwrite: bool) -> None:
    """The destination again, just before the rename: what appeared there meanwhile is not replaced."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise HarnessError(f"{target}: cannot check the output path: {exc.strerror or exc}") from None
    _check_existing(target, info, force=force, overwrite=overwrite)


# --- writing -------------------------------------------------------------------------------------


def write_atomically(path: PathLike, write: Callable[[BinaryIO], None], *, force: bool = False,
                     overwrite: bool = True, durable: bool = True) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, then move it into place atomically.

    ``force`` and ``overwrite`` as in ``check_output_path``, which runs first. ``durable``: fsync
    the file before the rename and the directory after it; without it the rename is still atomic
    (no reader sees a half-written file) but may not survive a crash.
    """
    target = check_output_path(path, force=force, overwrite=overwrite)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    created = False
    try:
        # 0o666: the umask decides, as for any ordinary file the user writes.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        created = True
        with os.fdopen(fd, "wb") as f:
            _keep_owner_and_mode(target, f.fileno())  # before any byte is written: never more readable
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        _recheck(target, force=force, overwrite=overwrite)
        os.replace(tmp, target)
    except BaseException as exc:
        if created:  # never a file someone else planted at the temp name
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise HarnessError(f"{target}: cannot write: {exc.strerror or exc}") from None
        raise
    if durable:
        fsync_directory(target.parent)


def _keep_owner_and_mode(target: Path, fd: int) -> None:
    """Give the temp file ``fd`` the owner, group and permission bits of the regular file it will
    replace at ``target`` (a symbolic link replaced is not followed: the new file gets the defaults).

    The owner and group only where this process may set them (root, or a group it belongs to);
    the permission bits always (the file is ours), setuid, setgid and sticky left off: a file
    written here is data.
    """
    try:
        info = os.lstat(target)
    except OSError:
        return
    if not stat.S_ISREG(info.st_mode):
        return
    if hasattr(os, "fchown"):
        for uid, gid in ((info.st_uid, info.st_gid), (-1, info.st_gid)):
            try:
                os.fchown(fd, uid, gid)
                break
            except OSError:
                continue
    if hasattr(os, "fchmod"):
        os.fchmod(fd, stat.S_IMODE(info.st_mode) & 0o777)


def write_text_atomically(path: PathLike, text: str, *, force: bool = False, overwrite: bool = True) -> None:
    write_atomically(path, lambda f: f.write(text.encode("utf-8")), force=force, overwrite=overwrite)


def fsync_directory(directory: Path) -> None:
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

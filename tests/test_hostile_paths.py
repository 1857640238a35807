"""Hostile destinations and inputs: output goes only to a regular file or a new path.

Every place the harness writes (``report --output``, ``migrate DST``, ``save_checkpoint``,
golden files) goes through ``harness.core.fileio``. A character device, a FIFO, a socket,
a directory, an empty path or a path ending in a separator is refused before any work,
in one line naming it; a symbolic link is refused unless ``--force`` (``force=True``),
and then the link itself is replaced, never what it points to. Each case checks the exit
code, the one ``error: ...`` line, that nothing was opened for writing, and that nothing
outside the intended destination changed (mode, inode, device number, bytes, link target).

The report CLI runs with ``build_report`` replaced (nothing is measured): a refusal must
come before it is called.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import harness.report as report_module
from harness import HarnessError, build
from harness.core.checkpoints import load_checkpoint, save_checkpoint
from harness.core.fileio import (
    check_output_path,
    check_regular_input,
    describe_unreadable,
    write_text_atomically,
)
from tests.helpers import IS_ROOT, assert_one_error_line, refusal, replace_build_report, run_cli, snapshot

DEV_NULL = Path("/dev/null")


# --- what must not change -----------------------------------------------------------------------


def besides(entries: dict[str, tuple], path: Path) -> dict[str, tuple]:
    """Every entry but ``path``: what a write to ``path`` must leave alone."""
    return {k: v for k, v in entries.items() if k != str(path)}


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path opened for writing in this process meanwhile (``os.open`` and ``open``)."""
    opened: list[str] = []
    real_os_open, real_open = os.open, builtins.open

    def spy_os_open(path, flags, *args, **kwargs):
        if flags & _WRITE_FLAGS:
            opened.append(os.fspath(path))
        return real_os_open(path, flags, *args, **kwargs)

    def spy_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            opened.append(os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(builtins, "open", spy_open)
    return opened


# --- hostile destinations, made in a directory --------------------------------------------------


def _victim(directory: Path) -> Path:
    victim = directory / "victim.txt"
    victim.write_bytes(b"what the link points to")
    return victim


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
    finally:
        sock.close()  # the socket file stays


# name -> (make the destination at path, what the refusal says, refused even with --force)
HOSTILE: dict[str, tuple[Callable[[Path], None], str, bool]] = {
    "fifo": (lambda p: os.mkfifo(p), "is a FIFO (named pipe), not a regular file", True),
    "directory": (lambda p: p.mkdir(), "is a directory", True),
    "socket": (_socket, "is a socket, not a regular file", True),
    "symlink_to_file": (lambda p: p.symlink_to(_victim(p.parent)), "is a symbolic link", False),
    "symlink_to_stdout": (lambda p: p.symlink_to("/proc/self/fd/1"),
                          "is a symbolic link (to '/proc/self/fd/1')", False),
    "symlink_to_dev_null": (lambda p: p.symlink_to(DEV_NULL), "is a symbolic link (to '/dev/null')", False),
    "dangling_symlink": (lambda p: p.symlink_to(p.parent / "nowhere"), "is a symbolic link", False),
}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a unix socket's path must fit in about 100 bytes."""
    with tempfile.TemporaryDirectory(prefix="hp-") as name:
        yield Path(name)


@contextlib.contextmanager
def dev_null_untouched() -> Iterator[None]:
    """``/dev/null`` is still the same character device afterwards (mode, inode, device number)."""
    before = os.lstat(DEV_NULL)
    yield
    after = os.lstat(DEV_NULL)
    assert stat.S_ISCHR(after.st_mode)
    assert (after.st_mode, after.st_ino, after.st_rdev, after.st_dev) == \
        (before.st_mode, before.st_ino, before.st_rdev, before.st_dev)


# --- harness.core.fileio -------------------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True], ids=["", "force"])
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_writes_refuse_a_hostile_destination_before_opening_anything(kind, force, short_dir, writes):
    make, expected, always = HOSTILE[kind]
    target = short_dir / "out"
    make(target)
    before = snapshot(short_dir)
    if always or not force:
        for write in (lambda: write_text_atomically(target, "x", force=force),
                      lambda: save_checkpoint({"w": torch.zeros(1)}, target, force=force)):
            message = refusal(write)
            assert message.startswith(f"{target}: ") and expected in message
        assert writes == []
        assert snapshot(short_dir) == before
    else:  # --force replaces the link itself; what it pointed to is untouched
        write_text_atomically(target, "new", force=True)
        assert not target.is_symlink() and target.read_text() == "new"
        after = snapshot(short_dir)
        assert besides(after, target) == besides(before, target)
        assert sorted(after) == sorted(before)  # no temp file left


def test_a_character_device_is_refused_even_with_force(writes):
    with dev_null_untouched():
        for force in (False, True):
            with pytest.raises(HarnessError, match=r"^/dev/null: is a character device, not a regular file"):
                write_text_atomically(DEV_NULL, "x", force=force)
            with pytest.raises(HarnessError, match=r"^/dev/null: is a character device"):
                save_checkpoint({"w": torch.zeros(1)}, DEV_NULL, force=force)
    assert writes == []


@pytest.mark.parametrize(("spelling", "expected"), [
    ("", "empty path ('') given for the output"),
    ("{d}/newdir/", "ends with '/', so it names a directory, not a file"),
    ("{d}/", "is a directory"),
    ("{d}/newdir/.", "ends with '.', so it names a directory, not a file"),
    ("{d}/newdir/..", "ends with '..', so it names a directory, not a file"),
    ("{d}/.", "is a directory"),
    ("{d}/missing/out.txt", "does not exist"),
    ("{d}/file.txt/out.txt", "is not a directory"),
], ids=["empty", "trailing-separator", "existing-dir-with-separator", "dot", "dot-dot", "existing-dot",
        "missing-dir", "file-as-dir"])
def test_paths_that_name_no_file_are_refused(tmp_path, writes, spelling, expected):
    (tmp_path / "file.txt").write_text("keep")
    path = spelling.format(d=tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(HarnessError) as caught:
        check_output_path(path, force=True)
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(HarnessError) as caught:
        write_text_atomically(path, "x", force=True)
    assert expected in str(caught.value)
    assert writes == [] and snapshot(tmp_path) == before


def unwritable(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """``os.access`` says ``directory`` is not writable (as it would for a non-root user of a 0o555 one)."""
    real_access = os.access

    def no_write_here(path, mode, *args, **kwargs):
        if Path(path) == directory and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", no_write_here)


def test_an_unwritable_directory_is_refused_up_front(tmp_path, monkeypatch, writes):
    unwritable(monkeypatch, tmp_path)
    with pytest.raises(HarnessError, match=rf"^{tmp_path}/out.md: directory '{tmp_path}' is not writable$"):
        check_output_path(tmp_path / "out.md")
    assert writes == [] and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(IS_ROOT or not hasattr(os, "geteuid"),
                    reason="root writes into a read-only directory anyway")
def test_a_read_only_directory_is_refused_up_front(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(HarnessError, match="is not writable"):
            check_output_path(locked / "out.md")
    finally:
        locked.chmod(0o755)


def test_a_write_refused_by_the_system_after_the_check_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """Root passes os.access on a read-only mount: the write itself fails, and says so in one line."""
    real_os_open = os.open

    def read_only_fs(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_fs)
    with pytest.raises(HarnessError, match=r"out.md: cannot write: Read-only file system$"):
        write_text_atomically(tmp_path / "out.md", "x")
    assert list(tmp_path.iterdir()) == []


def test_a_fifo_that_appears_during_the_write_is_not_replaced(tmp_path, monkeypatch):
    """The destination is checked again just before the rename."""
    target = tmp_path / "out.md"

    def planted(f) -> None:
        f.write(b"report")
        os.mkfifo(target)

    from harness.core.fileio import write_atomically

    with pytest.raises(HarnessError, match="is a FIFO"):
        write_atomically(target, planted)
    assert stat.S_ISFIFO(os.lstat(target).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["out.md"]  # the temp file is gone


# --- reading: check_regular_input / describe_unreadable ------------------------------------------


@pytest.mark.parametrize(("make", "expected"), [
    (lambda p: p.symlink_to(p.name), "symlink loop (too many levels of symbolic links)"),
    (lambda p: (p.parent / "b").symlink_to(p.name) or p.symlink_to("b"),
     "symlink loop (too many levels of symbolic links)"),
    (lambda p: p.symlink_to("gone.wav"), "broken symbolic link (points to 'gone.wav', which does not exist)"),
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "is a directory, not a file"),
    (lambda p: os.mkfifo(p), "is a FIFO (named pipe), not a regular file"),
], ids=["self-loop", "two-link-loop", "broken-link", "missing", "directory", "fifo"])
def test_check_regular_input_says_what_the_path_is(tmp_path, make, expected):
    path = tmp_path / "in.wav"
    make(path)
    with pytest.raises(HarnessError) as caught:
        check_regular_input(path)
    assert str(caught.value) == f"{path}: {expected}"


def test_check_regular_input_follows_a_link_to_a_file_and_refuses_a_device(tmp_path):
    target = tmp_path / "real.wav"
    target.write_bytes(b"RIFF")
    (tmp_path / "link.wav").symlink_to(target)
    assert check_regular_input(tmp_path / "link.wav").st_size == 4
    with pytest.raises(HarnessError, match=r"^/dev/null: is a character device, not a regular file$"):
        check_regular_input(DEV_NULL)
    with pytest.raises(HarnessError, match=r"^empty path"):
        check_regular_input("")


def test_describe_unreadable_names_a_loop(tmp_path):
    path = tmp_path / "loop.pt"
    path.symlink_to(path.name)
    try:
        path.open("rb")
    except OSError as exc:
        assert describe_unreadable(path, exc) == f"{path}: symlink loop (too many levels of symbolic links)"
    else:
        pytest.fail("opening a symlink loop succeeded")


# --- python -m harness report --output ------------------------------------------------------------


@pytest.fixture
def no_measuring(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """``build_report`` replaced: records its calls; renders to a fixed text."""
    monkeypatch.setitem(report_module.RENDERERS, "markdown", lambda report: "# the report\n")
    return replace_build_report(monkeypatch, {})


@pytest.mark.parametrize("force", [False, True], ids=["", "force"])
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_report_output_to_a_hostile_destination(kind, force, short_dir, no_measuring, writes):
    make, expected, always = HOSTILE[kind]
    target = short_dir / "out"
    make(target)
    before = snapshot(short_dir)
    code, out, err = run_cli("report", "--output", str(target), *(["--force"] if force else []))
    if always or not force:
        assert code == 2 and out == ""
        assert_one_error_line(err, f"error: {target}: {expected}")
        assert no_measuring == [], "measured before refusing"
        assert writes == [] and snapshot(short_dir) == before
    else:
        assert code == 0 and out == ""
        assert not target.is_symlink() and target.read_text() == "# the report\n"
        assert besides(snapshot(short_dir), target) == besides(before, target)


def test_report_output_dev_null_is_refused_and_dev_null_stays(no_measuring, writes):
    with dev_null_untouched():
        for extra in ([], ["--force"]):
            code, out, err = run_cli("report", "--output", str(DEV_NULL), *extra)
            assert code == 2 and out == ""
            assert_one_error_line(err, "error: /dev/null: is a character device, not a regular file")
    assert no_measuring == [] and writes == []


def test_report_output_empty_path_is_refused(no_measuring, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("report", "--output", "")
    assert code == 2 and out == ""  # not silently printed to stdout
    assert_one_error_line(err, "error: empty path ('') given for the output")
    assert no_measuring == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("spelling", "expected"), [
    ("{d}/sub/", "ends with '/', so it names a directory"),
    ("{d}", "is a directory"),
    ("{d}/missing/r.md", "does not exist"),
], ids=["trailing-separator", "directory", "missing-directory"])
def test_report_output_that_names_no_file_is_refused(spelling, expected, tmp_path, no_measuring):
    path = spelling.format(d=tmp_path)
    before = snapshot(tmp_path)
    code, out, err = run_cli("report", "--output", path)
    assert code == 2 and out == ""
    assert_one_error_line(err, expected)
    assert no_measuring == [] and snapshot(tmp_path) == before


def test_report_into_an_unwritable_directory_fails_before_measuring(tmp_path, monkeypatch, no_measuring):
    unwritable(monkeypatch, tmp_path)
    code, out, err = run_cli("report", "--output", str(tmp_path / "r.md"))
    assert code == 2 and out == ""
    assert_one_error_line(err, f"error: {tmp_path}/r.md: directory '{tmp_path}' is not writable")
    assert no_measuring == [] and list(tmp_path.iterdir()) == []


def test_report_replaces_a_regular_file_without_force(tmp_path, no_measuring):
    target = tmp_path / "r.md"
    target.write_text("old")
    code, _, _ = run_cli("report", "--output", str(target))
    assert code == 0 and target.read_text() == "# the report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"]


# --- python -m harness migrate SRC DST ------------------------------------------------------------


@pytest.fixture(scope="module")
def legacy_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(build("legacy").state_dict(), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("force", [False, True], ids=["", "force"])
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_migrate_to_a_hostile_destination(kind, force, short_dir, legacy_bytes, writes):
    make, expected, always = HOSTILE[kind]
    src = short_dir / "legacy.pt"
    src.write_bytes(legacy_bytes)
    target = short_dir / "out"
    make(target)
    before = snapshot(short_dir)
    code, out, err = run_cli("migrate", str(src), str(target), "--to", "skip_modules",
                             *(["--force"] if force else []))
    if always or not force:
        assert code == 2 and out == ""
        assert_one_error_line(err, f"error: {target}: {expected}")
        assert writes == [] and snapshot(short_dir) == before
    else:
        assert code == 0 and err == ""
        assert not target.is_symlink() and len(load_checkpoint(target)) == 116
        assert besides(snapshot(short_dir), target) == besides(before, target)


def test_migrate_to_dev_null_is_refused_and_dev_null_stays(tmp_path, legacy_bytes, writes):
    src = tmp_path / "legacy.pt"
    src.write_bytes(legacy_bytes)
    with dev_null_untouched():
        for extra in ([], ["--force"]):
            code, out, err = run_cli("migrate", str(src), str(DEV_NULL), "--to", "skip_modules", *extra)
            assert code == 2 and out == ""
            assert_one_error_line(err, "error: /dev/null: is a character device, not a regular file")
    assert writes == []


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444])
def test_migrate_force_over_a_private_checkpoint_keeps_it_private(tmp_path, legacy_bytes, mode):
    """``migrate ... p.pt --force`` over a ``chmod 600`` file: still 0600 (before: the umask's 0644,
    a private checkpoint made world-readable)."""
    src, target = tmp_path / "legacy.pt", tmp_path / "p.pt"
    src.write_bytes(legacy_bytes)
    target.write_bytes(b"old weights")
    os.chmod(target, mode)
    code, _, err = run_cli("migrate", str(src), str(target), "--to", "skip_modules", "--force")
    assert code == 0, err
    assert stat.S_IMODE(os.lstat(target).st_mode) == mode
    assert len(load_checkpoint(target)) == 116
    assert sorted(p.name for p in tmp_path.iterdir()) == ["legacy.pt", "p.pt"]

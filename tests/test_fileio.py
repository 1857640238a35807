"""Atomic writes: the target holds the old bytes or the new ones, never a mix, and no temp file stays."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import HarnessError
from harness.core.fileio import check_not_read, write_atomically, write_text_atomically
from tests.helpers import IS_ROOT


@given(old=st.binary(max_size=64), new=st.binary(max_size=64))
def test_write_replaces_the_whole_file(tmp_path_factory: pytest.TempPathFactory, old: bytes, new: bytes):
    target = tmp_path_factory.mktemp("w") / "out.bin"
    target.write_bytes(old)
    write_atomically(target, lambda f: f.write(new))
    assert target.read_bytes() == new
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_failure_mid_write_keeps_the_old_file_and_removes_the_temp(tmp_path: Path):
    target = tmp_path / "report.md"
    target.write_text("old")

    def half_then_fail(f) -> None:
        f.write(b"half of the new")
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_atomically(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_os_error_becomes_one_line_harness_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(HarnessError, match=r"out.txt: cannot write: No space left on device$"):
        write_text_atomically(tmp_path / "out.txt", "x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d / "missing" / "out.txt", "does not exist"),
        (lambda d: d, "is a directory"),
    ],
    ids=["missing-directory", "directory"],
)
def test_impossible_targets_are_refused_before_writing(tmp_path: Path, make, expected: str):
    with pytest.raises(HarnessError, match=expected):
        write_text_atomically(make(tmp_path), "x")


def test_existing_target_needs_force_unless_overwrite(tmp_path: Path):
    target = tmp_path / "ckpt.pt"
    target.write_text("keep me")
    with pytest.raises(HarnessError, match="already exists; use --force"):
        write_text_atomically(target, "new", overwrite=False)
    assert target.read_text() == "keep me"
    write_text_atomically(target, "new", force=True, overwrite=False)
    assert target.read_text() == "new"
    write_text_atomically(target, "newer")  # reports and golden files: a regular file is replaced
    assert target.read_text() == "newer"


# --- a replaced file keeps who may read it ---------------------------------------------------------



@given(mode=st.integers(0, 0o777))
def test_a_replaced_file_keeps_its_permission_bits(tmp_path_factory: pytest.TempPathFactory, mode: int):
    """A ``chmod 600`` checkpoint replaced with --force stays private (before: the umask's 0644)."""
    target = tmp_path_factory.mktemp("mode") / "ckpt.pt"
    target.write_bytes(b"old")
    os.chmod(target, mode)
    write_atomically(target, lambda f: f.write(b"new"), force=True)
    assert stat.S_IMODE(os.lstat(target).st_mode) == mode
    os.chmod(target, 0o600)
    assert target.read_bytes() == b"new"


def test_setuid_and_sticky_bits_are_not_carried(tmp_path: Path):
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"old")
    os.chmod(target, 0o4755 | stat.S_ISVTX)
    write_text_atomically(target, "new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_a_new_file_gets_the_umask_default(tmp_path: Path):
    mask = os.umask(0o027)
    try:
        write_text_atomically(tmp_path / "new.txt", "x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640


def test_a_replaced_link_is_a_new_file_and_its_target_keeps_its_mode(tmp_path: Path):
    private = tmp_path / "private.pt"
    private.write_bytes(b"secret")
    os.chmod(private, 0o600)
    link = tmp_path / "link.pt"
    link.symlink_to(private.name)
    mask = os.umask(0o022)
    try:
        write_text_atomically(link, "new", force=True)
    finally:
        os.umask(mask)
    assert not link.is_symlink() and stat.S_IMODE(link.stat().st_mode) == 0o644
    assert private.read_bytes() == b"secret" and stat.S_IMODE(private.stat().st_mode) == 0o600


@pytest.mark.skipif(not IS_ROOT, reason="only root may give a file to another owner")
def test_a_replaced_file_keeps_its_owner_and_group_where_we_may(tmp_path: Path):
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"old")
    os.chown(target, 4321, 4322)
    write_text_atomically(target, "new")
    info = target.stat()
    assert (info.st_uid, info.st_gid) == (4321, 4322)


def test_an_owner_we_may_not_give_is_skipped_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def not_permitted(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", not_permitted)
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    write_text_atomically(target, "new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o640


# --- what a run reads is never its output ----------------------------------------------------------


SPELLINGS = ["ckpt.pt", "./ckpt.pt", "sub/../ckpt.pt", "hard.pt", "link_dir/ckpt.pt"]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_an_output_that_is_a_file_the_run_reads_is_refused_in_any_spelling(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt.pt").write_bytes(b"weights")
    (tmp_path / "sub").mkdir()
    os.link("ckpt.pt", "hard.pt")
    os.symlink(".", "link_dir")
    expected = rf"^{re.escape(spelling)}: is the checkpoint 'ckpt.pt', which this run reads"
    with pytest.raises(HarnessError, match=expected):
        check_not_read(spelling, [("the registry", "reg.toml"), ("the checkpoint", "ckpt.pt")])


def test_another_file_a_missing_one_and_a_link_at_the_output_pass(tmp_path: Path):
    (tmp_path / "ckpt.pt").write_bytes(b"weights")
    (tmp_path / "link.pt").symlink_to("ckpt.pt")
    reads = [("the checkpoint", tmp_path / "ckpt.pt"), ("the registry", tmp_path / "missing.toml")]
    check_not_read(tmp_path / "new.pt", reads)
    # A link: check_output_path refuses it without --force; with it the link is replaced, never ckpt.pt.
    check_not_read(tmp_path / "link.pt", reads)

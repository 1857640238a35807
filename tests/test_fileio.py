"""Atomic writes: the target holds the old bytes or the new ones, never a mix, and no temp file stays."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import HarnessError
from harness.core.fileio import write_atomically, write_text_atomically


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

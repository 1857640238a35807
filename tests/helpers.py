"""Helpers the test modules share, one home each (like PyTorch's ``common_modules``): the fixture data's
paths, the registry fixtures' predicates, the registry restored after a test, small models, and the
assertions that several suites make (one error line, a directory left as it was)."""

from __future__ import annotations

import copy
import io
import os
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import harness.report as report_module
from harness.__main__ import main
from harness.core.audits import AuditReport
from harness.core.errors import HarnessError
from harness.core.onnx import onnx_missing
from harness.rawnet2.architecture import ReferenceSpec
from harness.rawnet2.registry import SUBJECTS, VariantSpec, in_family, register, unregister

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes where permissions say it may not

TEAM_MODELS = Path(__file__).parent / "team_models"
# A production-style model unlike the family and two correct refactors; and two broken refactors.
TEAM_REGISTRY = TEAM_MODELS / "correct.toml"
BROKEN_REGISTRY = TEAM_MODELS / "broken.toml"
# The band-energy detector, whose scores separate the labelled fixture corpus (harness.rawnet2.corpus).
CORPUS_REGISTRY = TEAM_MODELS / "corpus.toml"

AUDIO = Path(__file__).parent / "data" / "audio"
# Every decodable recording of the fixture audio: two rates, stereo, and FLAC.
AUDIO_FILES = [str(AUDIO / name) for name in ("hello.wav", "numbers.wav", "hello_44k_stereo.wav",
                                              "hello_16k.flac")]

needs_onnx = pytest.mark.skipif(onnx_missing() is not None, reason=f"ONNX form unavailable: {onnx_missing()}")


# --- the registry ---------------------------------------------------------------------------------

# registry fixture name (tests/conftest.py) -> which specs it is parametrized over
VARIANT_FIXTURES: dict[str, Callable[[VariantSpec], bool]] = {
    "variant_name": lambda spec: True,
    "runnable_name": lambda spec: spec.runs,
    "referenced_name": lambda spec: spec.reference is not None,
    "golden_name": lambda spec: bool(spec.golden_modes),
    "layout_name": lambda spec: spec.layout is not None,
    "foldable_name": lambda spec: spec.runs and bool(spec.forms),
    # The RawNet2 family's own facts (num_classes, [B, 1, T] rules, the guide's layouts) apply only here.
    "family_name": lambda spec: spec.runs and in_family(spec),
    # Its output turns into a detection score (spec.score_transform): score and evaluate take it.
    "scored_name": lambda spec: spec.runs and spec.score_transform is not None,
}


def variants(fixture: str) -> list[str]:
    """The registered names a registry fixture runs over (for hypothesis strategies and loops)."""
    return [name for name, spec in SUBJECTS.items() if VARIANT_FIXTURES[fixture](spec)]


def function_of(name: str) -> ReferenceSpec | None:
    """The function the family variant ``name`` computes: its spec's ``architecture``, else its
    reference's."""
    spec = SUBJECTS[name]
    if spec.architecture is not None:
        return spec.architecture
    return function_of(spec.reference) if spec.reference is not None else None


@contextmanager
def restored_registry() -> Iterator[None]:
    """Whatever the block registers, replaces or unregisters is undone afterwards, and sys.path
    restored (a registry file puts its directory there)."""
    before, path = dict(SUBJECTS), list(sys.path)
    try:
        yield
    finally:
        for name in set(SUBJECTS) - set(before):
            unregister(name)
        for spec in before.values():  # in registration order: a reference before what names it
            register(spec, replace=True)
        sys.path[:] = path


# --- small models ---------------------------------------------------------------------------------


class PeakNormalised(nn.Module):
    """Audio louder than full scale is scaled to peak 1 first: a data-dependent branch, which a traced
    graph (ONNX) freezes the way its example input took it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 9)
        self.fc = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        peak = x.abs().amax()
        if peak > 1:
            x = x / peak
        return torch.sigmoid(self.fc(torch.relu(self.conv(x)).mean(dim=-1)))


class TinyDetector(nn.Module):
    """A [B, 1, T] detector giving a probability [B, 1], cheap to export and to run: its export costs a
    fraction of a second where a RawNet2's costs seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, kernel_size=64, stride=64)
        self.head = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.conv(x).mean(dim=-1)))


TINY = f"{__name__}:TinyDetector"
# Two recordings scored by TinyDetector through ONNX Runtime: the export cache's and int8's runs.
TINY_FILES = AUDIO_FILES[:2]
SCORE_TINY = ["score", *TINY_FILES, "--variant", TINY, "--score", "probability", "--form", "onnxruntime"]


# --- what a run printed, changed, or measured -----------------------------------------------------


def run_cli(*argv: str | Path) -> tuple[int, str, str]:
    """``python -m harness ARGV`` in this process: its exit code, stdout and stderr (captured here, so
    that it serves where pytest's capsys does not reach, as in a unittest-style state machine)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def refusal(call: Callable[[], object], *fragments: str, error: type[HarnessError] = HarnessError) -> str:
    """The message of the ``error`` that ``call()`` raises, checked to be one line holding each fragment
    and a refusal of bad input (exit code 2)."""
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 2, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def assert_one_error_line(err: str, *fragments: str) -> None:
    """stderr is one ``error:`` line holding each fragment, and no traceback; where argparse refused,
    its usage block comes first and its line reads ``PROG: error: ...``."""
    lines = err.splitlines()
    if lines and lines[0].startswith("usage:"):
        lines = lines[1:]
        while lines and lines[0].startswith(" "):  # the usage block's continuation lines
            lines = lines[1:]
        assert len(lines) == 1 and ": error: " in lines[0], err
    else:
        assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def entry_state(path: Path) -> tuple:
    """Everything about one directory entry that a write could change (never following a link, never
    reading what is not a regular file: a FIFO would block)."""
    info = os.lstat(path)
    if stat.S_ISREG(info.st_mode):
        content: object = path.read_bytes()
    elif stat.S_ISLNK(info.st_mode):
        content = os.readlink(path)
    else:
        content = None
    return (info.st_mode, info.st_ino, info.st_dev, info.st_rdev, info.st_size, info.st_mtime_ns,
            info.st_nlink, content)


def snapshot(*roots: Path) -> dict[str, tuple]:
    """The ``entry_state`` of every entry below ``roots``, by its path (links not followed): equal
    before and after a run that must change nothing there."""
    state: dict[str, tuple] = {}
    for root in roots:
        for where, dirs, names in os.walk(root):
            for name in [*dirs, *names]:
                path = Path(where) / name
                state[str(path)] = entry_state(path)
    return state


def paths_of(report: AuditReport, check: str) -> set[str]:
    """Every path the findings of ``check`` name."""
    return {p for f in report.findings if f.check == check for p in f.paths}


def replace_build_report(monkeypatch: pytest.MonkeyPatch, report: dict) -> list[dict]:
    """``harness.report.build_report`` replaced by one that reports progress ("measuring") and returns
    a copy of ``report``: the command is tested without measuring. Returns the calls' arguments."""
    calls: list[dict] = []

    def fake_build_report(**kwargs) -> dict:
        calls.append(kwargs)
        kwargs["progress"]("measuring")
        return copy.deepcopy(report)

    monkeypatch.setattr(report_module, "build_report", fake_build_report)
    return calls

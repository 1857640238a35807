"""Hostile command lines: each refusal is exit 2, exactly one ``error:`` line, nothing changed on disk.

Each case runs the CLI (``harness.__main__.main``) in a scratch working directory and checks
the exit code, that stderr holds exactly one line with ``error:`` (no traceback, never exit
1, which means findings), and that no file below the scratch directory appeared, vanished
or changed. The cases: ``export`` of models the exporter cannot take as they are (an output
that is a dict, a NamedTuple or None, a forward of two inputs, float64 and half weights, an
opset it does not write); ``audit``/``compare`` with an input shape too large to allocate;
``mutate`` with a non-finite timeout factor; an unexpected exception in any verb (exit 2, one
``internal error`` line; ``--debug`` re-raises it) and Ctrl-C (exit 130).

The fast gate runs them in-process, and one of them and the top-level guard as real
processes; the slow twin runs each case as a real ``python -m harness`` process (``-m slow``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch.nn as nn

from harness.__main__ import INTERNAL_ERROR_EXIT, INTERRUPTED_EXIT, STDOUT_CLOSED_EXIT, main
from harness.core.contract import MAX_INPUT_VALUES
from tests.helpers import REPO, assert_one_error_line, restored_registry, snapshot

HERE = Path(__file__).parent
# The models below, as MODULE:ATTR: this module by the name pytest imported it (in-process), by
# its file name with tests/ on PYTHONPATH (subprocess).
IN_PROCESS = __name__
BY_FILE = Path(__file__).stem


# --- models the exporter cannot take as they are ---------------------------------------------------


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x.mean(dim=-1)))


class DictOutput(_Tiny):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"score": self.score(x)}


class Scores(NamedTuple):
    score: torch.Tensor
    logit: torch.Tensor


class NamedTupleOutput(_Tiny):
    def forward(self, x: torch.Tensor) -> Scores:
        return Scores(self.score(x), self.fc(x.mean(dim=-1)))


class NoneOutput(_Tiny):
    def forward(self, x: torch.Tensor) -> None:
        self.score(x)


class TwoInputs(_Tiny):
    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.score(x) * lengths


class Float64Model(_Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x.double())


class HalfModel(_Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x.half())


# --- the cases -------------------------------------------------------------------------------------


def _export(model: type[nn.Module]) -> list[str]:
    return ["export", f"{{module}}:{model.__name__}", "out.onnx"]


HUGE = "100000,1,100000"
# case id -> (argv, with {module} for the models' module; expected exit code; text the error line holds)
CASES: dict[str, tuple[list[str], int, str]] = {
    "export-dict": (_export(DictOutput), 2, "its output is a dict (keys 'score')"),
    "export-namedtuple": (_export(NamedTupleOutput), 2, "its output is a NamedTuple (Scores: score, logit)"),
    "export-none": (_export(NoneOutput), 2, "its output is None"),
    "export-two-inputs": (_export(TwoInputs), 2, "its forward takes 2 inputs (x, lengths)"),
    "export-float64": (_export(Float64Model), 2, "its weights are float64, not float32"),
    "export-half": (_export(HalfModel), 2, "its weights are float16, not float32"),
    # torch's own refusal comes after a dump of the whole graph on stderr: refused before exporting.
    "export-opset-99": (["export", "skip_modules", "out.onnx", "--opset", "99"], 2,
                        "cannot export: opset 99 is not one the exporter writes (7 to 20; default 17)"),
    "audit-huge-shape": (["audit", "skip_modules", "--input-shape", HUGE], 2,
                         f"input shape [100000, 1, 100000] holds 10,000,000,000 values; the limit is "
                         f"{MAX_INPUT_VALUES:,}"),
    "compare-huge-shape": (["compare", "skip_modules", "basic_blocks", "--input-shape", HUGE], 2,
                           "holds 10,000,000,000 values"),
    "mutate-nan-timeout": (["mutate", "fixed/skip_modules.py", "--timeout-factor", "nan"], 2,
                           "argument --timeout-factor: expected a finite number, got 'nan'"),
    "mutate-zero-timeout": (["mutate", "fixed/skip_modules.py", "--timeout-factor", "0"], 2,
                            "argument --timeout-factor: expected a number > 0, got '0'"),
    "mutate-inf-fail-under": (["mutate", "fixed/skip_modules.py", "--fail-under", "inf"], 2,
                              "argument --fail-under: expected a finite number, got 'inf'"),
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch working directory (no pyproject.toml: the built-in registry only), and fixed/ for mutate."""
    work = tmp_path / "work"
    (work / "fixed").mkdir(parents=True)
    (work / "fixed" / "skip_modules.py").write_bytes((REPO / "fixed" / "skip_modules.py").read_bytes())
    monkeypatch.chdir(work)
    return work


def run_in_process(argv: list[str], capfd: pytest.CaptureFixture) -> tuple[int, str]:
    try:
        with restored_registry():  # a --registry run registers its variants: undone for the next test
            code = main(argv)
    except SystemExit as exc:  # argparse's refusals
        code = exc.code
    return code, capfd.readouterr().err


def run_subprocess(argv: list[str], cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-m", "harness", *argv], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    return result.returncode, result.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_refused_in_one_line_changing_nothing(case: str, workdir: Path, capfd: pytest.CaptureFixture):
    argv, expected_code, expected = CASES[case]
    before = snapshot(workdir)
    code, err = run_in_process([a.format(module=IN_PROCESS) for a in argv], capfd)
    assert code == expected_code, err
    assert_one_error_line(err, expected)
    assert snapshot(workdir) == before


# One case runs as a real process in the fast gate too (argparse's refusal, before any handler); every
# case does under -m slow (a process costs 1.5-2.5 s of CPU importing torch and onnx: the gate's budget).
FAST_AS_PROCESS = ("mutate-nan-timeout",)


@pytest.mark.parametrize("case", [c if c in FAST_AS_PROCESS else pytest.param(c, marks=pytest.mark.slow)
                                  for c in CASES])
def test_refused_in_one_line_changing_nothing_as_a_real_process(case: str, workdir: Path):
    argv, expected_code, expected = CASES[case]
    before = snapshot(workdir)
    code, err = run_subprocess([a.format(module=BY_FILE) for a in argv], workdir)
    assert code == expected_code, err
    assert_one_error_line(err, expected)
    assert snapshot(workdir) == before


# --- the top-level guard ---------------------------------------------------------------------------


def _raise(exc: BaseException):
    def handler(args) -> int:
        raise exc

    return handler


@pytest.mark.parametrize("verb, module, attr, argv", [
    ("export", "harness.cli.export", "run", ["export", "skip_modules", "out.onnx"]),
    ("audit", "harness.cli.audit", "run", ["audit", "skip_modules"]),
    ("migrate", "harness.cli.migrate", "run", ["migrate", "a.pt", "b.pt", "--to", "legacy"]),
])
def test_an_unexpected_exception_is_exit_2_in_one_line(verb: str, module: str, attr: str, argv: list[str],
                                                      workdir: Path, capfd: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch):
    """A bug is never exit 1 (findings) nor a traceback: one line naming the verb and the exception."""
    monkeypatch.setattr(f"{module}.{attr}", _raise(ZeroDivisionError("division by zero\nsecond line")))
    code, err = run_in_process(argv, capfd)
    assert code == INTERNAL_ERROR_EXIT
    assert err == f"error: internal error in {verb}: ZeroDivisionError: division by zero\n"
    with pytest.raises(ZeroDivisionError):  # --debug: the traceback, for the bug report
        main(["--debug", *argv])


def test_ctrl_c_in_any_verb_is_exit_130(workdir: Path, capfd: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("harness.cli.audit.run", _raise(KeyboardInterrupt()))
    code, err = run_in_process(["audit", "skip_modules"], capfd)
    assert code == INTERRUPTED_EXIT
    assert err == "error: interrupted (Ctrl-C) during audit\n"


def test_the_guard_holds_in_a_real_process(workdir: Path):
    """The process's own exit status and stderr, as a script calling the CLI sees them: a bug is one
    line and exit 2; then stdout's reader gone (``| head``) is exit 141 with nothing more on stderr
    (not "internal error", not the interpreter's "Exception ignored" at exit). One process for both."""
    script = ("import sys, harness.cli.export as export, harness.cli.audit as audit\n"
              "def broken(args):\n    raise KeyError('out')\n"
              "def chatty(args):\n    print('finding\\n' * 100_000)\n    return 0\n"
              "export.run, audit.run = broken, chatty\n"
              "from harness.__main__ import main\n"
              "print(f'export: {main([\"export\", \"skip_modules\", \"out.onnx\"])}', file=sys.stderr)\n"
              "sys.exit(main(['audit', 'skip_modules']))\n")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        result = subprocess.run([sys.executable, "-c", script], cwd=workdir, env=env, stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert result.stderr == "error: internal error in export: KeyError: 'out'\nexport: 2\n"
    assert result.returncode == STDOUT_CLOSED_EXIT


# --- what a run reads is never its output ----------------------------------------------------------

TINY_MODULE = "hostile_cli_tiny_model"
TINY_SOURCE = '''import torch
import torch.nn as nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 1)

    def forward(self, x):
        return torch.sigmoid(self.fc(x.mean(dim=-1)))
'''
TINY_REGISTRY = f'''[tool.rawnet2-harness.variants.tiny]
factory = "{TINY_MODULE}:Tiny"
input_shape = [1, 100]
'''


@pytest.fixture
def files_a_run_reads(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """In the scratch directory: weights, a hard link to them, a --kwargs file, a registry and the
    factory's source it names (imported from there, no bytecode written); what it registers goes."""
    from harness import build
    from harness.rawnet2.registry import SUBJECTS, unregister

    torch.save(build("skip_modules").state_dict(), workdir / "w.pt")
    os.link(workdir / "w.pt", workdir / "hard.pt")
    (workdir / "k.json").write_text("{}")
    (workdir / "reg.toml").write_text(TINY_REGISTRY)
    (workdir / f"{TINY_MODULE}.py").write_text(TINY_SOURCE)
    (workdir / "sub").mkdir()
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.delitem(sys.modules, TINY_MODULE, raising=False)
    before = set(SUBJECTS)
    yield workdir
    if "tiny" not in before:
        unregister("tiny")
    sys.modules.pop(TINY_MODULE, None)


NEVER_ITS_INPUT = {
    "out-is-the-weights": (["export", "skip_modules", "w.pt", "--weights", "w.pt", "--force"],
                           "w.pt: is a file skip_modules is built from"),
    "out-is-the-weights-spelled-otherwise": (
        ["export", "skip_modules", "sub/../w.pt", "--weights", "./w.pt", "--force"],
        "sub/../w.pt: is a file skip_modules is built from"),
    "out-is-a-hard-link-to-the-weights": (
        ["export", "skip_modules", "hard.pt", "--weights", "w.pt", "--force"],
        "hard.pt: is a file skip_modules is built from"),
    "out-is-the-kwargs-file": (["export", "skip_modules", "k.json", "--kwargs", "@k.json", "--force"],
                               "k.json: is the --kwargs file 'k.json', which this run reads"),
    "out-is-the-registry": (["--registry", "reg.toml", "export", "tiny", "reg.toml", "--force"],
                            "reg.toml: is a file tiny is built from"),
    "out-is-the-factory-source": (
        ["--registry", "reg.toml", "export", "tiny", f"{TINY_MODULE}.py", "--force"],
        f"{TINY_MODULE}.py: is a file tiny is built from"),
}


@pytest.mark.parametrize("case", list(NEVER_ITS_INPUT))
def test_export_never_writes_over_a_file_it_reads(case: str, files_a_run_reads: Path,
                                                   capfd: pytest.CaptureFixture):
    """--force or not (before: w.pt replaced by the ONNX bytes of the model built from it)."""
    argv, expected = NEVER_ITS_INPUT[case]
    before = snapshot(files_a_run_reads)
    code, err = run_in_process(argv, capfd)
    assert code == 2, err
    assert_one_error_line(err, expected)
    assert snapshot(files_a_run_reads) == before

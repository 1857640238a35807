"""mutmut, driven: the function mutants of one file run by mutmut 3.8, its results read as they arrive.

The driver configures mutmut from a JSON file (the project's own ``pyproject.toml`` stays
untouched) and appends the model operators to its table. Every ``POLL_S`` seconds the
per-file meta file mutmut rewrites after each mutant is read, so results reach the
caller (and the partial report) while mutmut runs; past the run's deadline mutmut's
whole process group (fork server and workers) is stopped.
"""

from __future__ import annotations

import difflib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.mutation.config import Clock, MutationRun
from harness.core.mutation.mutants import TOOL, TOOL_SPEC, Mutant
from harness.core.mutation.workspace import PLUGIN

POLL_S = 2.0  # how often mutmut's results are read while it runs (and the partial report refreshed)
STOP_GRACE_S = 5.0  # after SIGTERM, how long mutmut's process group has before SIGKILL

# Runs as `python -c` in the project root: loads the model operators by file path (importing the
# harness package would import the code under test before mutmut puts its copy first on sys.path),
# appends them to mutmut's table, configures mutmut from a JSON file (the project's own
# pyproject.toml stays untouched) and runs it.
_DRIVER = r"""
import importlib.util, json, sys
settings = json.load(open(sys.argv[1], encoding="utf-8"))
spec = importlib.util.spec_from_file_location("_harness_mutation_operators", settings.pop("operators_file"))
operators = importlib.util.module_from_spec(spec)
spec.loader.exec_module(operators)
from mutmut.mutation import mutators
mutators.mutation_operators.extend(operators.OPERATORS)
import mutmut.configuration as configuration
workers, names = settings.pop("workers"), settings.pop("mutants")
configuration._config_reader = lambda: (lambda key, default: settings.get(key, default))
configuration.reset_config()
from mutmut.__main__ import _run
_run(names, workers)
"""


class _Progress:
    """Forwards mutmut's output line by line; its in-place status lines at most every 20 s; not its
    closing per-mutant list (the report has it)."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit, self.pending, self.last, self.done = emit, "", 0.0, False

    def feed(self, text: str) -> None:
        for i, line in enumerate(text.split("\n")):
            if self.done:
                return
            if i:  # a newline ended the previous segment
                if self.pending.strip() == "Mutant results":
                    self.done = True
                    return
                if self.pending.strip():
                    self.emit(self.pending.rstrip())
                self.pending = ""
            if "\r" in line:
                self.pending = line.split("\r")[-1]
                if time.monotonic() - self.last > 20 and self.pending.strip():
                    self.emit(self.pending.strip())
                    self.last, self.pending = time.monotonic(), ""
            else:
                self.pending += line


def _mutmut_status(exit_code: int | None) -> str | None:
    if exit_code is None:
        return None
    if exit_code in (1, 3, 37):  # tests failed; pytest internal error; caught by a type check
        return "killed"
    if exit_code == 0:
        return "survived"
    if exit_code in (5, 33):  # no test ran / none reaches the function
        return "no_tests"
    if exit_code in (24, -24, 152, 255, 36, -9):  # SIGXCPU (wall or CPU limit), then SIGKILL
        return "timeout"
    return "crashed"  # a signal, an interrupted session, a collection error: not a clean pass


def read_meta(path: Path) -> dict | None:
    """mutmut's meta file, or None while it is missing or half-written (mutmut rewrites it in place)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _stop(process: subprocess.Popen) -> None:
    """mutmut, its fork server and its workers (one process group) stopped: SIGTERM, then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            if sig == signal.SIGTERM:
                os.killpg(process.pid, signal.SIGKILL)  # workers the fork server left behind
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


Found = Callable[[dict[str, tuple[str, float]]], None]  # receives {mutant: (status, seconds)} as they arrive


def run_mutmut(run: MutationRun, names: list[str], workspace: Path, entries: list[str],
               env: dict[str, str], clock: Clock, found: Found) -> bool:
    """mutmut on ``names``; ``found`` gets results as they arrive. False when the budget stopped it."""
    from harness.core.mutation import operators

    settings = {
        "operators_file": str(Path(operators.__file__).resolve()),
        "workers": run.workers,
        "mutants": names,  # the sampled, non-equivalent function mutants
        "source_paths": [run.path],
        "also_copy": entries,
        "pytest_add_cli_args_test_selection": list(run.selection),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", PLUGIN, *run.pytest_args],
        "process_isolation": "forkserver",
        "forkserver_warmup": "collect",
        "timeout_multiplier": run.timeout_factor,
        "timeout_constant": run.timeout_constant_s,
        "use_git_change_detection": False,
    }
    settings_file = workspace / "harness-mutmut.json"
    settings_file.write_text(json.dumps(settings, indent=1))
    log_path = workspace / "mutmut.log"
    meta_path = workspace / (run.path + ".meta")
    wanted = set(names)
    progress = _Progress(run.progress)

    def harvest() -> None:
        meta = read_meta(meta_path)
        if meta is None:
            return
        durations = meta.get("durations_by_key", {})
        found({name: (status, float(durations.get(name, 0.0)))
               for name, code in meta.get("exit_code_by_key", {}).items()
               if name in wanted and (status := _mutmut_status(code)) is not None})

    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen([sys.executable, "-c", _DRIVER, str(settings_file)], cwd=run.root, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

        def pump() -> None:
            assert process.stdout is not None
            while chunk := process.stdout.read1(4096):
                text = chunk.decode("utf-8", "replace")
                log.write(text)
                progress.feed(text)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        stopped = False
        try:
            while process.poll() is None:
                time.sleep(POLL_S)
                harvest()
                if clock.spent():
                    run.progress(f"{run.shown_path or run.path}: time budget spent; stopping {TOOL}")
                    _stop(process)
                    stopped = True
        except BaseException:  # Ctrl-C: stop mutmut's process group too, keep what it recorded
            _stop(process)
            harvest()
            raise
        reader.join(timeout=30)
        returncode = process.wait()
    harvest()
    if not stopped and returncode != 0:
        tail = [line.split("\r")[-1] for line in log_path.read_text(encoding="utf-8").splitlines()[-15:]]
        raise HarnessError(f"{TOOL} failed (exit {returncode}) on {run.path}; its log is {log_path}:\n"
                           + "\n".join(tail))
    return not stopped


def check_against_mutmut(mutants: list[Mutant], root: Path, path: str,
                          exit_codes: Mapping[str, object]) -> None:
    """The harness's enumeration must be mutmut's: same names, same code (else its version changed)."""
    import libcst as cst
    from mutmut.mutation.diff_apply import read_functions_from_index
    from mutmut.utils.file_utils import change_cwd

    ours = {m.id for m in mutants if m.engine == TOOL}
    if ours != set(exit_codes):
        raise HarnessError(f"{TOOL} made {len(exit_codes)} function mutants of {path}, the harness "
                           f"enumerated {len(ours)}: {TOOL}'s version is not the one this harness reads "
                           f"({TOOL_SPEC})")
    by_id = {m.id: m for m in mutants}
    with change_cwd(root):
        for name in exit_codes:
            functions = read_functions_from_index(name, path)
            if functions is None:
                continue
            original, mutated = (cst.Module([f]).code.splitlines() for f in functions)
            body = list(difflib.unified_diff(original, mutated, lineterm="", n=0))[2:]
            theirs = ([line[1:].strip() for line in body if line.startswith("-")],
                      [line[1:].strip() for line in body if line.startswith("+")])
            if theirs != by_id[name].changed_text():
                raise HarnessError(f"{name}: {TOOL}'s mutant differs from the one the harness enumerated "
                                   f"({TOOL_SPEC})")


def coverage(workspace: Path) -> dict[str, list[str]]:
    """mutmut's measured coverage: mangled function name -> the selected tests that call it."""
    stats = workspace / "mutmut-stats.json"
    try:
        data = json.loads(stats.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {name: sorted(tests) for name, tests in data.get("tests_by_mangled_function_name", {}).items()}

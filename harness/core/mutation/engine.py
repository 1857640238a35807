"""Running the mutants: mutmut for function mutants, the harness for module-level ones.

``check_clean`` runs the selection once on the unmutated code (it must pass); ``run_mutation``
then runs every mutant within the time budget: function mutants through mutmut
(``mutmut_driver``), each module-level mutant in the harness's own copy of the project.
Results reach ``MutationRun.on_update`` as they arrive; what never ran is reported as not run,
never dropped. How mutmut runs a mutant: docs/mutation.md, "Engine".
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.mutation.config import Clock, MutationRun
from harness.core.mutation.mutants import (
    TOOL,
    Mutant,
    enumerate_mutants,
    equivalence_of,
    read_source,
    relative_path,
    tool_version,
)
from harness.core.mutation.mutmut_driver import (
    POLL_S,
    Found,
    check_against_mutmut,
    coverage,
    read_meta,
    run_mutmut,
)
from harness.core.mutation.sampling import sample_evenly
from harness.core.mutation.workspace import (
    PLUGIN,
    install_plugin,
    link_entries,
    prepare_workspace,
    project_entries,
)
from harness.core.text import first_few

RECORDS = "mutation-runs.jsonl"  # what the plugin records of each mutant's test run
CLEAN = "mutation-clean.jsonl"  # what the plugin records of the clean run, test by test
NOT_SAMPLED = "not in the sample: --max-mutants {limit} of {total}"
BUDGET_SPENT = "the time budget ({budget:g} s) was spent before it ran"


def _environment(workspace: Path) -> dict[str, str]:
    env = dict(os.environ)
    # Workers run in parallel: one intra-op thread each (and no OpenMP pool for fork to break).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    env.setdefault("HYPOTHESIS_PROFILE", "ci")  # derandomized: every mutant meets the same examples
    env["HARNESS_MUTATION_RECORDS"] = str(workspace / RECORDS)
    env["HARNESS_MUTATION_DURATIONS"] = str(workspace / "mutmut-stats.json")
    env.pop("MUTANT_UNDER_TEST", None)
    env.pop("HARNESS_MUTATION_CLEAN", None)
    return env


# --- the clean run ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CleanRun:
    """The selection on the unmutated code: the tests that passed, fastest first, and their durations."""

    tests: list[str]
    durations: dict[str, float]


def check_clean(run: MutationRun, workspace: Path, env: Mapping[str, str], clock: Clock,
                shown: str) -> CleanRun:
    """Run the selection once on the unmutated code; one-line ``HarnessError`` unless it is green."""
    records = workspace / CLEAN
    records.unlink(missing_ok=True)
    child_env = {**env, "HARNESS_MUTATION_CLEAN": str(records),
                 "PYTHONPATH": os.pathsep.join(p for p in (str(workspace), env.get("PYTHONPATH", "")) if p)}
    child_env.pop("HARNESS_MUTATION_RECORDS", None)
    child_env.pop("HARNESS_MUTATION_DURATIONS", None)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", PLUGIN, "-q", "--rootdir=.",
               *run.selection, *run.pytest_args]
    what = " ".join([*run.selection, *run.pytest_args])
    run.progress(f"{shown}: checking the selected tests pass on the unmutated file ({what})")
    left = clock.left()
    try:
        done = subprocess.run(command, cwd=run.root, env=child_env, capture_output=True, text=True,
                              timeout=None if left is None else max(left, 1.0))
    except subprocess.TimeoutExpired:
        raise HarnessError(f"the selected tests did not finish on the unmutated {shown} within the time "
                           f"budget ({run.time_budget_s:g} s): give a larger --time-budget or select fewer "
                           "tests") from None
    rows = []
    if records.is_file():
        for line in records.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    failures = {r["test"]: r.get("message", "") for r in rows if r.get("outcome") == "failed"}
    failing = list(failures)
    if failing:
        first = f"{failing[0]} ({failures[failing[0]]})" if failures[failing[0]] else failing[0]
        shown_tests = first_few([first, *failing[1:8]], 8, total=len(failing))
        raise HarnessError(f"{len(failing)} selected test(s) fail on the unmutated {shown}, so no mutant can "
                           f"be judged: {shown_tests}; fix them or choose the tests with --tests")
    if done.returncode == 5:
        raise HarnessError(f"no test is selected by {what} (for {shown})")
    if done.returncode != 0:
        tail = " ".join((done.stdout + done.stderr).strip().splitlines()[-1:])[:300]
        raise HarnessError(f"pytest could not run the selected tests on the unmutated {shown} "
                           f"(exit {done.returncode}): {tail}")
    durations = {r["test"]: float(r.get("duration_s", 0.0)) for r in rows if r.get("outcome") == "passed"}
    return CleanRun(tests=sorted(durations, key=durations.get), durations=durations)


# --- module-level mutants: the harness ---------------------------------------------------------


def _run_module_level(run: MutationRun, mutants: list[Mutant], workspace: Path, entries: list[str],
                      env: dict[str, str], clean: CleanRun, clock: Clock,
                      found: Found) -> None:
    """Each module-level mutant in a copy of the project, its tests in a subprocess (``-x``, timeout)."""
    import shutil

    timeout = (sum(clean.durations.values()) + run.timeout_constant_s) * run.timeout_factor
    copies = []
    for k in range(max(1, min(run.workers, len(mutants)))):
        copy = workspace / "module-level" / f"w{k}"
        copy.mkdir(parents=True)
        for entry in entries:
            source = run.root / entry
            if source.is_dir():
                shutil.copytree(source, copy / entry, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, copy / entry)
        link_entries(run.root, run.linked, copy)
        install_plugin(copy)
        copies.append(copy)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", PLUGIN, "-x", "-q",
               "--rootdir=.", *run.pytest_args, *clean.tests]
    original = (run.root / run.path).read_text(encoding="utf-8")

    def pytest_in(copy: Path, mutant: Mutant | None) -> tuple[str, float] | None:
        """The status (None: the budget ran out first)."""
        target = copy / run.path
        target.write_text(mutant.source if mutant else original)
        for stale in (target.parent / "__pycache__").glob(f"{target.stem}.*.pyc"):
            stale.unlink()  # a same-size mutant written in the same second would reuse the old bytecode
        child_env = {**env, "PYTHONPATH": os.pathsep.join([str(copy), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep), "MUTANT_UNDER_TEST": mutant.id if mutant else ""}
        left = clock.left()
        start = time.monotonic()
        try:
            done = subprocess.run(command, cwd=copy, env=child_env, capture_output=True, text=True,
                                  timeout=timeout if left is None else min(timeout, max(left, 0.1)))
        except subprocess.TimeoutExpired:
            return None if clock.spent() else ("timeout", time.monotonic() - start)
        status = {0: "survived", 1: "killed", 2: "killed", 3: "killed", 5: "no_tests"}.get(done.returncode)
        if done.returncode == 4 and mutant is not None:
            # The clean copy ran these very arguments: a usage error now means the mutant broke a test
            # module's import ("found no collectors for ..."), which the plugin records as its killer.
            status = "killed"
        if status is None:
            what = mutant.id if mutant else "the clean copy"
            raise HarnessError(f"pytest could not run the tests for {what} (exit {done.returncode}): "
                               f"{done.stdout[-500:]}{done.stderr[-500:]}")
        return status, time.monotonic() - start

    # The copy itself must be sound: the selection passes in it unmutated (else every mutant "dies").
    clean_copy = pytest_in(copies[0], None)
    if clean_copy is None:
        return
    if clean_copy[0] != "survived":
        raise HarnessError(f"the selected tests do not pass in the harness's copy of the project for "
                           f"{run.path}: {' '.join(run.selection)}")
    queue = list(mutants)
    lock = threading.Lock()

    def worker(copy: Path) -> None:
        while not clock.spent():
            with lock:
                if not queue:
                    return
                mutant = queue.pop(0)
            result = pytest_in(copy, mutant)
            if result is None:
                return
            found({mutant.id: result})
            run.progress(f"  {mutant.id}: {result[0]} (module-level)")

    with ThreadPoolExecutor(len(copies)) as pool:
        for future in [pool.submit(worker, copy) for copy in copies]:
            future.result()


def _records(workspace: Path) -> tuple[dict[str, dict[str, str]], dict[str, dict]]:
    """(mutant -> its killer {test, message}, mutant -> {duration_s, tests_run}), as the plugin recorded."""
    killers: dict[str, dict[str, str]] = {}
    finished: dict[str, dict] = {}
    path = workspace / RECORDS
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "killed":
                killers.setdefault(record["mutant"], {"test": record["test"], "message": record["message"]})
            elif record.get("event") == "finished":
                finished[record["mutant"]] = {key: record[key] for key in ("duration_s", "tests_run")}
    return killers, finished


# --- one file ---------------------------------------------------------------------------------


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


@dataclasses.dataclass
class _RunState:
    """What a run knows so far: results per mutant, the selected tests."""

    unsampled: dict[str, str]  # mutant -> why it is not in the sample
    results: dict[str, tuple[str, float]] = dataclasses.field(default_factory=dict)
    tests: list[str] = dataclasses.field(default_factory=list)
    finished: bool = False

    def not_run(self, chosen: Sequence[Mutant], clock: Clock, run: MutationRun) -> dict[str, str]:
        """Mutant -> why it has no result: not sampled, the budget spent, or (while running) not yet."""
        if clock.spent():
            waiting = BUDGET_SPENT.format(budget=run.time_budget_s)
        else:
            waiting = "not run: the run stopped before it" if self.finished else "not run yet"
        return {**self.unsampled, **{m.id: waiting for m in chosen if m.id not in self.results}}


def run_mutation(run: MutationRun) -> dict:
    """Mutation-test one file; returns its report section (``MUTATION_REPORT_SCHEMA``'s ``files`` item)."""
    from harness.core.mutation.report import file_section

    clock = Clock(run.time_budget_s)
    run.root = Path(run.root).resolve()
    run.path = relative_path(run.path, run.root)
    shown = run.shown_path or run.path
    version = tool_version()
    source = read_source(run.root / run.path, shown)
    for declaration in run.equivalences:
        if declaration.path == run.path:
            declaration.check(source)
    mutants = enumerate_mutants(run.path, root=run.root, source=source)
    if not mutants:
        raise HarnessError(f"{shown}: {TOOL} and the model operators make no mutant of it")
    load_before = _load()
    # A declared equivalent is not run (no test can tell it apart; tests/test_mutation.py proves each
    # declaration): it is reported as equivalent, with its reason.
    declared = {m.id for m in mutants if equivalence_of(m, run.equivalences) is not None}
    chosen, unsampled = sample_evenly([m for m in mutants if m.id not in declared], run.max_mutants)
    state = _RunState(unsampled={m.id: NOT_SAMPLED.format(limit=run.max_mutants,
                                                          total=len(mutants) - len(declared))
                                 for m in unsampled})
    workspace = prepare_workspace(run.root)
    link_entries(run.root, run.linked, workspace)
    env = _environment(workspace)
    entries = project_entries(run.root, [*run.selection, *run.pytest_args])
    entries += [e for e in run.copied if e not in entries and e != run.path]  # mutmut copies the model itself
    function_level = [m for m in chosen if m.engine == TOOL]
    module_level = [m for m in chosen if m.engine != TOOL]
    last_update = [0.0]

    def section(status: str) -> dict:
        killers, finished = _records(workspace)
        return file_section(run, mutants, state.results, killers, finished, tests=state.tests,
                            tool_version=version, duration_s=time.monotonic() - clock.start,
                            load=(load_before, _load()), not_run=state.not_run(chosen, clock, run),
                            coverage=coverage(workspace), status=status)

    def found(results: dict[str, tuple[str, float]]) -> None:
        fresh = {k: v for k, v in results.items() if state.results.get(k) != v}
        if not fresh:
            return
        state.results.update(fresh)
        if run.on_update is not None and time.monotonic() - last_update[0] >= POLL_S:
            last_update[0] = time.monotonic()
            run.on_update(section("partial"))

    run.progress(f"{shown}: {len(function_level)} function mutants ({TOOL} {version}), "
                 f"{len(module_level)} module-level (harness), {len(declared)} declared equivalent, "
                 f"{len(unsampled)} not sampled; tests: {' '.join([*run.selection, *run.pytest_args])}")
    clean = check_clean(run, workspace, env, clock, shown)
    state.tests = clean.tests
    complete = True
    try:
        if run.on_update is not None:
            run.on_update(section("partial"))
        if function_level:
            complete = run_mutmut(run, [m.id for m in function_level], workspace, entries, env, clock, found)
            meta = read_meta(workspace / (run.path + ".meta"))
            if meta is not None:
                check_against_mutmut(mutants, run.root, run.path, meta["exit_code_by_key"])
        if module_level and not clock.spent():
            _run_module_level(run, module_level, workspace, entries, env, clean, clock, found)
    except BaseException:  # Ctrl-C, a failed run: the report on disk keeps every result so far
        if run.on_update is not None:
            run.on_update(section("partial"))
        raise
    state.finished = True
    ran_all = all(m.id in state.results for m in chosen)
    return section("complete" if complete and ran_all else "partial")

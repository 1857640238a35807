"""Mutation testing of a model's source file: would the gate notice a change to it?

The engine is mutmut (3.8): it copies the project into ``mutants/``, writes every mutant
of every function into that copy behind a trampoline, runs the selected tests once to
learn which tests reach which function, and then runs, per mutant, only those tests, in
a process forked from a fork server (``process_isolation = "forkserver"``: the server has
collected the tests and computed nothing, so no cache of one mutant's run leaks into
another's), with ``-x`` and a per-mutant timeout. The harness extends it where it lacks:

- **model operators** (``harness.core.mutation_operators``): appended to mutmut's operator
  table, so mutmut generates, runs and numbers them like its own;
- **module-level code** (constants such as a block table or a slope): mutmut mutates
  functions only; the harness applies each such mutant to its own copy of the project and
  runs the same tests in a subprocess (``-x``, same timeout rule);
- **the first test that killed each mutant** (``harness.core.mutation_plugin``, which also
  orders the tests fastest first and keeps Hypothesis from shrinking), diffs with real line
  numbers, declared equivalent mutants (``Equivalence``: not run, since no test can tell
  them apart, but never dropped: reported as equivalent with the reason) and the report
  (``mutation-report.json``, ``MUTATION_REPORT_SCHEMA``).

Nothing here knows a particular model: which tests to run and which mutants are
equivalent come from the caller (``harness.rawnet2.mutation`` for the registered
variants). The source tree itself is never written: mutants live in ``mutants/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from harness.core.errors import HarnessError

TOOL = "mutmut"
TOOL_SPEC = "mutmut>=3.8,<3.9"  # the operator table, names and meta files this module reads are 3.8's
WORKSPACE = "mutants"  # mutmut's own name for its copy of the project
MARKER = ".harness-mutate"  # written in WORKSPACE: only a workspace carrying it is ever deleted
MODULE_LEVEL = "<module>"
RECORDS = "mutation-runs.jsonl"  # what the plugin records of each mutant's test run
PLUGIN = "_harness_mutation_plugin"  # harness/core/mutation_plugin.py, copied into each copy of the project
CONFIG_FILES = ("pyproject.toml", "setup.cfg", "pytest.ini", "tox.ini", "conftest.py")
# What the report says of a mutant. Detected: the gate notices it.
DETECTED = ("killed", "timeout", "crashed")
STATUSES = (*DETECTED, "survived", "no_tests", "equivalent", "not_checked")
# A mutant may take TIMEOUT_FACTOR x (its tests' clean duration + TIMEOUT_CONSTANT_S) before it counts
# as a timeout (mutmut's rule). Generous: the clean durations are measured one process at a time, the
# mutants run one per worker on a machine others may load; a tight bound turns survivors into
# "timeouts" (detected) on a busy machine. Model code has no loops to hang in, so it costs nothing.
TIMEOUT_FACTOR = 5.0
TIMEOUT_CONSTANT_S = 30.0
REPORT_VERSION = 1


# --- mutants ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One mutant of a source file: mutmut's name for it, what it changes and where."""

    id: str
    path: str  # relative to the project root, POSIX
    function: str  # "Class.method", "function", or MODULE_LEVEL
    operator: str
    lines: tuple[int, ...]  # lines of the original file it changes
    diff: str
    source: str = dataclasses.field(repr=False)  # the whole mutated file

    @property
    def engine(self) -> str:
        """``mutmut`` runs function mutants; the harness runs module-level ones itself."""
        return "harness" if self.function == MODULE_LEVEL else TOOL

    def changed_text(self) -> tuple[list[str], list[str]]:
        """(removed lines, added lines) of the diff, stripped."""
        body = self.diff.splitlines()[2:]
        removed = [line[1:].strip() for line in body if line.startswith("-")]
        added = [line[1:].strip() for line in body if line.startswith("+")]
        return removed, added


_MISSING = f"mutation testing needs {TOOL} ({TOOL_SPEC}): pip install -e '.[mutation]'"


def _mutmut():
    try:
        from mutmut.mutation import file_mutation, mutators, pragma_handling
    except ImportError:
        raise HarnessError(_MISSING) from None
    return file_mutation, mutators, pragma_handling


@contextlib.contextmanager
def _mutmut_config(settings: Mapping[str, object]) -> Iterator[None]:
    """mutmut's configuration read from ``settings`` (not from the project's files) while inside."""
    from mutmut import configuration

    saved = configuration._config_reader, configuration._config
    configuration._config_reader = lambda: (lambda key, default: settings.get(key, default))
    configuration._config = None
    try:
        yield
    finally:
        configuration._config_reader, configuration._config = saved


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(TOOL)
    except PackageNotFoundError:
        raise HarnessError(_MISSING) from None


def operator_table() -> list[tuple[type, Callable]]:
    """mutmut's operators, then the model operators: the order mutmut numbers mutants in."""
    from harness.core import mutation_operators

    _, mutators, _ = _mutmut()
    own = [entry for entry in mutators.mutation_operators
           if not getattr(entry[1], "__module__", "").endswith("mutation_operators")]
    return [*own, *mutation_operators.OPERATORS]


def _changed_lines(original: list[str], mutated: list[str]) -> tuple[int, ...]:
    lines: set[int] = set()
    for tag, i1, i2, _, _ in difflib.SequenceMatcher(a=original, b=mutated, autojunk=False).get_opcodes():
        if tag != "equal":
            lines.update(range(i1 + 1, max(i2, i1 + 1) + 1))
    return tuple(sorted(lines))


def enumerate_mutants(path: str | os.PathLike, *, root: str | os.PathLike = ".", source: str | None = None,
                      within: Iterable[tuple[int, int]] | None = None) -> list[Mutant]:
    """Every mutant of ``path`` (relative to ``root``), named and numbered exactly as mutmut names them.

    Function mutants are ``MODULE.xǁClassǁmethod__mutmut_N`` / ``MODULE.x_function__mutmut_N``;
    module-level ones (which mutmut does not run) ``MODULE.<module>__mutmut_N``. ``within``
    (line spans, inclusive) keeps only the mutants of code inside them, numbered as in the
    whole file.
    """
    import libcst as cst
    from libcst.metadata import MetadataWrapper, PositionProvider
    from mutmut.mutation.trampoline_templates import mangle_function_name
    from mutmut.utils.format_utils import get_mutant_name

    file_mutation, _, pragma_handling = _mutmut()
    rel = relative_path(path, root)
    code = source if source is not None else (Path(root) / rel).read_text(encoding="utf-8")

    origin: dict[int, str] = {}

    def tagged(op: Callable) -> Callable:
        def run(node: cst.CSTNode):
            for new in op(node):
                origin[id(new)] = op.__name__.removeprefix("operator_")
                yield new
        return run

    table = [(node_type, tagged(op)) for node_type, op in operator_table()]
    wrapper = MetadataWrapper(cst.parse_module(code))
    with _mutmut_config({"source_paths": [rel]}):  # pragma handling reads mutmut's config
        ignored = pragma_handling.get_ignored_lines(rel, code, wrapper, None)
    visitor = file_mutation.MutationVisitor(table, ignored, None)
    module = wrapper.visit(visitor)
    spans = None if within is None else list(within)
    positions = wrapper.resolve(PositionProvider) if spans is not None else {}

    functions: dict[int, tuple[str, str]] = {}  # id(FunctionDef) -> (qualname, mangled)
    for statement in module.body:
        if isinstance(statement, cst.FunctionDef):
            functions[id(statement)] = (statement.name.value,
                                        mangle_function_name(name=statement.name.value, class_name=None))
        elif isinstance(statement, cst.ClassDef) and isinstance(statement.body, cst.IndentedBlock):
            for method in statement.body.body:
                if isinstance(method, cst.FunctionDef):
                    functions[id(method)] = (f"{statement.name.value}.{method.name.value}",
                                             mangle_function_name(name=method.name.value,
                                                                  class_name=statement.name.value))

    original_lines = code.splitlines(keepends=True)
    counters: dict[str, int] = defaultdict(int)
    mutants = []
    for mutation in visitor.mutations:
        owner = mutation.contained_by_top_level_function
        qualname, mangled = functions.get(id(owner), (MODULE_LEVEL, MODULE_LEVEL)) if owner else (
            MODULE_LEVEL, MODULE_LEVEL)
        counters[mangled] += 1
        name = get_mutant_name(Path(rel), f"{mangled}__mutmut_{counters[mangled]}")
        if spans is not None:
            where = positions[mutation.original_node]
            if not any(a <= where.start.line and where.end.line <= b for a, b in spans):
                continue
        mutated = file_mutation.deep_replace(module, mutation.original_node, mutation.mutated_node).code
        mutated_lines = mutated.splitlines(keepends=True)
        diff = "".join(difflib.unified_diff(original_lines, mutated_lines, f"a/{rel}", f"b/{rel}", n=1))
        mutants.append(Mutant(id=name, path=rel, function=qualname,
                              operator=origin.get(id(mutation.mutated_node), "?"),
                              lines=_changed_lines(original_lines, mutated_lines), diff=diff, source=mutated))
    return mutants


def relative_path(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` relative to ``root`` (POSIX); ``HarnessError`` if it is not a Python file under it."""
    root = Path(root).resolve()
    full = (root / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    if not full.is_file() or full.suffix != ".py":
        raise HarnessError(f"{path}: not a Python source file")
    try:
        return full.relative_to(root).as_posix()
    except ValueError:
        raise HarnessError(f"{path}: not under the project root {root}") from None


# --- equivalent mutants -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Equivalence:
    """A declaration that mutants are equivalent: same outputs and gradients for every input.

    Matches every mutant of ``path`` whose changed lines all lie in ``first``..``last``
    (a dead branch, say) or, with ``after``, only those that turn the line into exactly
    that text (stripped). ``anchor`` is what line ``first`` holds, stripped, so that a
    declaration cannot silently drift onto other code.
    """

    path: str
    first: int
    anchor: str
    reason: str
    last: int | None = None
    after: str | None = None

    @property
    def span(self) -> tuple[int, int]:
        return self.first, self.last if self.last is not None else self.first

    def check(self, source: str) -> None:
        lines = source.splitlines()
        first, last = self.span
        if not 1 <= first <= last <= len(lines) or lines[first - 1].strip() != self.anchor:
            raise HarnessError(f"{self.path}:{first}: an equivalence is declared for {self.anchor!r} but the "
                               "line reads otherwise: update the declaration")

    def matches(self, mutant: Mutant) -> bool:
        first, last = self.span
        if mutant.path != self.path or not mutant.lines or not all(first <= n <= last for n in mutant.lines):
            return False
        return self.after is None or mutant.changed_text()[1] == [self.after]


def equivalence_of(mutant: Mutant, declarations: Iterable[Equivalence]) -> Equivalence | None:
    return next((d for d in declarations if d.matches(mutant)), None)


# --- running ----------------------------------------------------------------------------------

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


@dataclasses.dataclass
class MutationRun:
    """What to mutate, which tests judge it, and how."""

    path: str  # the source file, relative to root
    selection: list[str]  # pytest arguments that select the tests (paths, --ignore, -k EXPR)
    root: Path = Path(".")
    workers: int = 2
    timeout_factor: float = TIMEOUT_FACTOR
    timeout_constant_s: float = TIMEOUT_CONSTANT_S
    equivalences: Sequence[Equivalence] = ()
    excluded: Mapping[str, str] = dataclasses.field(default_factory=dict)  # test path -> why left out
    progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)


def project_entries(root: Path, selection: Sequence[str]) -> list[str]:
    """What the copy of the project needs: every top-level package, the test paths, the config files."""
    entries = []
    for child in sorted(root.iterdir()):
        if child.name == WORKSPACE or child.name.startswith("."):
            continue
        if child.is_dir() and (child / "__init__.py").is_file():
            entries.append(child.name)
        elif child.is_file() and child.name in CONFIG_FILES:
            entries.append(child.name)
    for arg in selection:
        top = arg.split("::")[0].split("/")[0]
        if not arg.startswith("-") and (root / top).exists() and top not in entries:
            entries.append(top)
    return entries


def _prepare_workspace(root: Path) -> Path:
    workspace = root / WORKSPACE
    if workspace.is_symlink() or (workspace.exists() and not workspace.is_dir()):
        raise HarnessError(f"{workspace}: exists and is not a directory the harness made; move it away")
    if workspace.exists():
        if not (workspace / MARKER).is_file() and any(workspace.iterdir()):
            raise HarnessError(f"{workspace}: exists and was not made by 'harness mutate'; move it away")
        shutil.rmtree(workspace)
    workspace.mkdir()
    (workspace / MARKER).write_text("made by python -m harness mutate; deleted and remade by each run\n")
    _install_plugin(workspace)
    return workspace


def _install_plugin(directory: Path) -> None:
    """The pytest plugin as a top-level module of the copy: loading it imports nothing of the harness."""
    from harness.core import mutation_plugin

    shutil.copyfile(mutation_plugin.__file__, directory / f"{PLUGIN}.py")


def _environment(workspace: Path) -> dict[str, str]:
    env = dict(os.environ)
    # Workers run in parallel: one intra-op thread each (and no OpenMP pool for fork to break).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    env.setdefault("HYPOTHESIS_PROFILE", "ci")  # derandomized: every mutant meets the same examples
    env["HARNESS_MUTATION_RECORDS"] = str(workspace / RECORDS)
    env["HARNESS_MUTATION_DURATIONS"] = str(workspace / "mutmut-stats.json")
    env.pop("MUTANT_UNDER_TEST", None)
    return env


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


def _run_mutmut(run: MutationRun, names: list[str], workspace: Path, entries: list[str],
                env: dict[str, str]) -> None:
    from harness.core import mutation_operators

    settings = {
        "operators_file": str(Path(mutation_operators.__file__).resolve()),
        "workers": run.workers,
        "mutants": names,  # declared equivalents are not run: every other function mutant
        "source_paths": [run.path],
        "also_copy": entries,
        "pytest_add_cli_args_test_selection": list(run.selection),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", PLUGIN],
        "process_isolation": "forkserver",
        "forkserver_warmup": "collect",
        "timeout_multiplier": run.timeout_factor,
        "timeout_constant": run.timeout_constant_s,
        "use_git_change_detection": False,
    }
    settings_file = workspace / "harness-mutmut.json"
    settings_file.write_text(json.dumps(settings, indent=1))
    log_path = workspace / "mutmut.log"
    progress = _Progress(run.progress)
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen([sys.executable, "-c", _DRIVER, str(settings_file)], cwd=run.root, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        while chunk := process.stdout.read1(4096):
            text = chunk.decode("utf-8", "replace")
            log.write(text)
            progress.feed(text)
        returncode = process.wait()
    if returncode != 0:
        tail = [line.split("\r")[-1] for line in log_path.read_text(encoding="utf-8").splitlines()[-15:]]
        raise HarnessError(f"{TOOL} failed (exit {returncode}) on {run.path}; its log is {log_path}:\n"
                           + "\n".join(tail))


def _mutmut_status(exit_code: int | None) -> str:
    if exit_code is None:
        return "not_checked"
    if exit_code in (1, 3, 37):  # tests failed; pytest internal error; caught by a type check
        return "killed"
    if exit_code == 0:
        return "survived"
    if exit_code in (5, 33):  # no test ran / none reaches the function
        return "no_tests"
    if exit_code in (24, -24, 152, 255, 36, -9):  # SIGXCPU (wall or CPU limit), then SIGKILL
        return "timeout"
    return "crashed"  # a signal, an interrupted session, a collection error: not a clean pass


def _selected_tests(run: MutationRun, workspace: Path, env: dict[str, str]) -> tuple[list[str], dict]:
    """The selected test ids, fastest first (mutmut's measured durations where it ran)."""
    stats_file = workspace / "mutmut-stats.json"
    durations = json.loads(stats_file.read_text())["duration_by_test"] if stats_file.is_file() else {}
    if durations:
        return sorted(durations, key=durations.get), durations
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             *run.selection], cwd=run.root, env=env, capture_output=True, text=True)
    tests = [line for line in listed.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    return tests, {}


def _run_module_level(run: MutationRun, mutants: list[Mutant], workspace: Path, entries: list[str],
                      env: dict[str, str]) -> dict[str, tuple[str, float]]:
    """Each module-level mutant in a copy of the project, its tests in a subprocess (``-x``, timeout)."""
    tests, durations = _selected_tests(run, workspace, env)
    if not tests:
        raise HarnessError(f"no test is selected by {' '.join(run.selection)}")
    estimate = sum(durations.values()) or 60.0
    timeout = (estimate + run.timeout_constant_s) * run.timeout_factor
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
        _install_plugin(copy)
        copies.append(copy)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", PLUGIN, "-x", "-q",
               "--rootdir=.", *tests]

    def pytest_in(copy: Path, mutant: Mutant | None) -> tuple[str, float]:
        target = copy / run.path
        target.write_text(mutant.source if mutant else (run.root / run.path).read_text(encoding="utf-8"))
        for stale in (target.parent / "__pycache__").glob(f"{target.stem}.*.pyc"):
            stale.unlink()  # a same-size mutant written in the same second would reuse the old bytecode
        child_env = {**env, "PYTHONPATH": os.pathsep.join([str(copy), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep), "MUTANT_UNDER_TEST": mutant.id if mutant else ""}
        start = time.monotonic()
        try:
            done = subprocess.run(command, cwd=copy, env=child_env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout", time.monotonic() - start
        status = {0: "survived", 1: "killed", 2: "killed", 3: "killed", 5: "no_tests"}.get(done.returncode)
        if status is None:
            what = mutant.id if mutant else "the clean copy"
            raise HarnessError(f"pytest could not run the tests for {what} (exit {done.returncode}): "
                               f"{done.stdout[-500:]}{done.stderr[-500:]}")
        return status, time.monotonic() - start

    clean, _ = pytest_in(copies[0], None)
    if clean != "survived":
        raise HarnessError(f"the selected tests do not pass on the unmutated {run.path} ({clean}): "
                           f"{' '.join(run.selection)}")
    results: dict[str, tuple[str, float]] = {}
    queue = list(mutants)

    def worker(copy: Path) -> None:
        while queue:
            mutant = queue.pop(0)
            results[mutant.id] = pytest_in(copy, mutant)
            run.progress(f"  {mutant.id}: {results[mutant.id][0]} "
                         f"({len(results)}/{len(mutants)} module-level)")

    with ThreadPoolExecutor(len(copies)) as pool:
        for future in [pool.submit(worker, copy) for copy in copies]:
            future.result()
    return results


def _check_against_mutmut(mutants: list[Mutant], root: Path, path: str,
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


def run_mutation(run: MutationRun) -> dict:
    """Mutation-test one file; returns its report section (``MUTATION_REPORT_SCHEMA``'s ``files`` item)."""
    run.root = Path(run.root).resolve()
    run.path = relative_path(run.path, run.root)
    version = tool_version()
    source = (run.root / run.path).read_text(encoding="utf-8")
    for declaration in run.equivalences:
        if declaration.path == run.path:
            declaration.check(source)
    mutants = enumerate_mutants(run.path, root=run.root, source=source)
    if not mutants:
        raise HarnessError(f"{run.path}: {TOOL} and the model operators make no mutant of it")
    start, load_before = time.monotonic(), _load()
    workspace = _prepare_workspace(run.root)
    env = _environment(workspace)
    entries = project_entries(run.root, run.selection)
    results: dict[str, tuple[str, float]] = {}
    # A declared equivalent is not run (no test can tell it apart; tests/test_mutation.py proves each
    # declaration): it is reported as equivalent, with its reason.
    declared = {m.id for m in mutants if equivalence_of(m, run.equivalences) is not None}
    function_level = [m for m in mutants if m.engine == TOOL and m.id not in declared]
    module_level = [m for m in mutants if m.engine != TOOL and m.id not in declared]
    run.progress(f"{run.path}: {len(function_level)} function mutants ({TOOL} {version}), "
                 f"{len(module_level)} module-level (harness), {len(declared)} declared equivalent; "
                 f"tests: {' '.join(run.selection)}")
    if function_level:
        _run_mutmut(run, [m.id for m in function_level], workspace, entries, env)
        meta = json.loads((workspace / (run.path + ".meta")).read_text())
        _check_against_mutmut(mutants, run.root, run.path, meta["exit_code_by_key"])
        for name, exit_code in meta["exit_code_by_key"].items():
            if name not in declared:
                results[name] = (_mutmut_status(exit_code), float(meta["durations_by_key"].get(name, 0.0)))
    if module_level:
        results.update(_run_module_level(run, module_level, workspace, entries, env))
    tests, _ = _selected_tests(run, workspace, env)
    killers, finished = _records(workspace)
    return file_section(run, mutants, results, killers, finished, tests=tests, tool_version=version,
                        duration_s=time.monotonic() - start, load=(load_before, _load()))


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# --- the report -------------------------------------------------------------------------------


def file_section(run: MutationRun, mutants: list[Mutant], results: Mapping[str, tuple[str, float]],
                 killers: Mapping[str, Mapping[str, str]], finished: Mapping[str, Mapping] | None = None, *,
                 tests: Sequence[str], tool_version: str,
                 duration_s: float, load: tuple[float | None, float | None] = (None, None)) -> dict:
    """One file's report: every mutant with its status, diff, killer or equivalence reason."""
    from harness.core.mutation_operators import operator_names

    entries, refuted = [], []
    finished = finished or {}
    for mutant in mutants:
        status, seconds = results.get(mutant.id, ("not_checked", 0.0))
        declared = equivalence_of(mutant, run.equivalences)
        ran = finished.get(mutant.id, {})
        entry = {"id": mutant.id, "function": mutant.function,
                 "line": mutant.lines[0] if mutant.lines else None,
                 "operator": mutant.operator, "engine": mutant.engine, "status": status,
                 "killed_by": killers.get(mutant.id) if status in DETECTED else None,
                 "tested": mutant.id in results, "tests_run": ran.get("tests_run"),
                 "duration_s": round(ran.get("duration_s", seconds), 2), "diff": mutant.diff}
        if declared is not None:
            if status in ("survived", "no_tests", "not_checked"):
                entry["status"], entry["reason"] = "equivalent", declared.reason
            else:  # a test told it apart: the declaration is wrong, and the tool's verdict stands
                entry["refutes_equivalence"] = declared.reason
                refuted.append(mutant.id)
        entries.append(entry)
    counts = {status: sum(e["status"] == status for e in entries) for status in STATUSES}
    return {
        "path": run.path,
        "tool": {"name": TOOL, "version": tool_version, "operators_added": operator_names(),
                 "module_level": "run by the harness (mutmut mutates functions only)"},
        "tests": {"selection": list(run.selection), "count": len(tests),
                  "excluded": [{"path": p, "why": why} for p, why in run.excluded.items()]},
        "workers": run.workers,
        "timeout_rule": f"{run.timeout_factor:g} x (clean duration of the mutant's tests + "
                        f"{run.timeout_constant_s:g} s)",
        "duration_s": round(duration_s, 1),
        "load_average": {"start": load[0], "end": load[1], "cpus": os.cpu_count()},
        "summary": summarize(counts),
        "refuted_equivalences": refuted,
        "mutants": entries,
        "survivors": [{"id": e["id"], "line": e["line"], "operator": e["operator"], "diff": e["diff"]}
                      for e in entries if e["status"] in ("survived", "no_tests", "not_checked")],
    }


def summarize(counts: Mapping[str, int]) -> dict:
    """Counts per status, the total, and the score: detected / (total - equivalent)."""
    total = sum(counts.values())
    detected = sum(counts.get(s, 0) for s in DETECTED)
    judged = total - counts.get("equivalent", 0)
    return {**{s: counts.get(s, 0) for s in STATUSES}, "total": total, "detected": detected,
            "score": round(100.0 * detected / judged, 2) if judged else None}


def build_report(sections: Sequence[dict]) -> dict:
    counts = {s: sum(section["summary"][s] for section in sections) for s in STATUSES}
    return {"version": REPORT_VERSION, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tool": TOOL, "summary": summarize(counts), "files": list(sections)}


def render_summary(report: Mapping) -> str:
    """The stdout summary: per file the counts, the score, the time, each survivor with its diff."""
    out = []
    for section in report["files"]:
        s, tests, tool = section["summary"], section["tests"], section["tool"]
        excluded = ", ".join(e["path"] for e in tests["excluded"]) or "none"
        load = section["load_average"]
        judged = s["total"] - s["equivalent"]
        out += [f"mutation testing of {section['path']} ({tool['name']} {tool['version']} "
                f"+ {len(tool['operators_added'])} model operators)",
                f"  tests: {tests['count']} selected by {' '.join(tests['selection'])} "
                f"(excluded: {excluded})",
                f"  mutants {s['total']}: killed {s['killed']}, timeout {s['timeout']}, "
                f"crashed {s['crashed']}, survived {s['survived']}, no tests {s['no_tests']}, "
                f"equivalent {s['equivalent']}"
                + (f", not checked {s['not_checked']}" if s["not_checked"] else ""),
                f"  score {_pct(s['score'])}: {s['detected']} of {judged} non-equivalent mutants detected",
                f"  time {section['duration_s']:.0f} s with {section['workers']} workers on {load['cpus']} "
                f"CPUs (load average {load['start']} at start, {load['end']} at end)"]
        for entry in section["mutants"]:
            if entry["status"] in ("survived", "no_tests", "not_checked"):
                out.append(f"  {entry['status'].upper()} {entry['id']} "
                           f"(line {entry['line']}, {entry['operator']})")
                out += [f"      {line}" for line in entry["diff"].splitlines()[2:]]
        if section["refuted_equivalences"]:
            out.append(f"  declared equivalent but killed (fix the declaration): "
                       f"{', '.join(section['refuted_equivalences'])}")
    if len(report["files"]) > 1:
        s = report["summary"]
        out.append(f"all files: {s['detected']} of {s['total'] - s['equivalent']} non-equivalent mutants "
                   f"detected ({_pct(s['score'])}), {s['equivalent']} equivalent")
    return "\n".join(out)


def _pct(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.1f} %"


_COUNTS = {s: {"type": "integer", "minimum": 0} for s in (*STATUSES, "total", "detected")}
_SUMMARY = {"type": "object", "required": [*STATUSES, "total", "detected", "score"],
            "properties": {**_COUNTS, "score": {"type": ["number", "null"]}}}
_KILLER = {"type": ["object", "null"], "required": ["test", "message"],
           "properties": {"test": {"type": "string"}, "message": {"type": "string"}}}
_MUTANT = {
    "type": "object",
    "required": ["id", "function", "line", "operator", "engine", "status", "killed_by", "duration_s", "diff"],
    "properties": {
        "id": {"type": "string", "pattern": "__mutmut_[0-9]+$"}, "function": {"type": "string"},
        "line": {"type": ["integer", "null"]}, "operator": {"type": "string"},
        "engine": {"enum": [TOOL, "harness"]}, "status": {"enum": list(STATUSES)}, "killed_by": _KILLER,
        "duration_s": {"type": "number"}, "tests_run": {"type": ["integer", "null"]},
        "tested": {"type": "boolean"},
        "diff": {"type": "string", "minLength": 1},
        "reason": {"type": "string", "minLength": 1}, "refutes_equivalence": {"type": "string"},
    },
    # an equivalent mutant always says why
    "if": {"properties": {"status": {"const": "equivalent"}}}, "then": {"required": ["reason"]},
}
MUTATION_REPORT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "mutation-report.json",
    "type": "object",
    "required": ["version", "created", "tool", "summary", "files"],
    "properties": {
        "version": {"const": REPORT_VERSION}, "created": {"type": "string"}, "tool": {"const": TOOL},
        "summary": _SUMMARY,
        "files": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["path", "tool", "tests", "workers", "duration_s", "summary", "mutants", "survivors",
                         "refuted_equivalences", "load_average", "timeout_rule"],
            "properties": {
                "path": {"type": "string"},
                "tool": {"type": "object", "required": ["name", "version", "operators_added"]},
                "tests": {"type": "object", "required": ["selection", "count", "excluded"],
                          "properties": {"count": {"type": "integer", "minimum": 0}}},
                "summary": _SUMMARY,
                "mutants": {"type": "array", "items": _MUTANT},
                "survivors": {"type": "array", "items": {"type": "object",
                                                         "required": ["id", "line", "operator", "diff"]}},
                "refuted_equivalences": {"type": "array", "items": {"type": "string"}},
            },
        }},
    },
}

"""The mutants of a source file, named and numbered exactly as mutmut names them, and the
declarations that some of them are equivalent (same outputs and gradients for every input).

A file is checked before anything is made of it: Python source, UTF-8, and parseable (a
syntax error is one line naming ``file:line``).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from harness.core.errors import HarnessError

TOOL = "mutmut"
TOOL_SPEC = "mutmut>=3.8,<3.9"  # the operator table, names and meta files this package reads are 3.8's
MODULE_LEVEL = "<module>"


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

    @property
    def mangled_function(self) -> str:
        """mutmut's name for the function it mutates (the key of its per-function test coverage)."""
        return self.id.rpartition("__mutmut_")[0]

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
def mutmut_config(settings: Mapping[str, object]) -> Iterator[None]:
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
    from harness.core.mutation.operators import OPERATORS

    _, mutators, _ = _mutmut()
    ours = {op.__name__ for _, op in OPERATORS}
    own = [entry for entry in mutators.mutation_operators if getattr(entry[1], "__name__", "") not in ours]
    return [*own, *OPERATORS]


def read_source(path: str | os.PathLike, shown: str | None = None) -> str:
    """The text of a Python source file, or one line naming ``file:line`` and what is wrong."""
    shown = shown or os.fspath(path)
    try:
        code = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise HarnessError(f"{shown}: not UTF-8 text") from None
    except OSError as exc:
        raise HarnessError(f"{shown}: cannot read it ({exc.strerror})") from None
    try:
        ast.parse(code, filename=shown)
    except SyntaxError as exc:
        raise HarnessError(f"{shown}:{exc.lineno}: not valid Python ({exc.msg}); fix it before mutating it") \
            from None
    except ValueError as exc:  # source holding a NUL byte
        raise HarnessError(f"{shown}: not valid Python ({exc})") from None
    return code


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
    code = source if source is not None else read_source(Path(root) / rel, rel)

    origin: dict[int, str] = {}

    def tagged(op: Callable) -> Callable:
        def run(node: cst.CSTNode):
            for new in op(node):
                origin[id(new)] = op.__name__.removeprefix("operator_")
                yield new
        return run

    table = [(node_type, tagged(op)) for node_type, op in operator_table()]
    wrapper = MetadataWrapper(cst.parse_module(code))
    with mutmut_config({"source_paths": [rel]}):  # pragma handling reads mutmut's config
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

"""Mutation testing of a registered variant's source: ``python -m harness mutate PATH [--tests EXPR]``.

The engine is generic (``harness.core.mutation``: mutmut plus the model operators); this
module knows the house. The tests that judge a file are the behavioural tests of the
variants whose registry ``source`` it is (``-k skip_modules`` for ``fixed/skip_modules.py``:
test ids carry the variant's name), never the text-pinning ones (``TEXT_PINNING``), and
the equivalent mutants of the built-in variants are declared here, each with its reason
(``EQUIVALENCES``; ``tests/test_mutation.py`` checks every one by running the mutant
against the original, outputs and gradients, train and eval).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.fileio import check_output_path, write_text_atomically
from harness.core.mutation import (
    Equivalence,
    MutationRun,
    build_report,
    relative_path,
    render_summary,
    run_mutation,
)
from harness.rawnet2.registry import SUBJECTS

TESTS_DIR = "tests"
# Left out of every run: they judge the text, not the behaviour.
TEXT_PINNING = {
    "tests/test_sources.py": "compares the variants' source with the fix guide token for token: kills every "
                             "mutant by its spelling and measures nothing",
}
NOT_THE_MODEL = {
    "tests/test_mutation.py": "tests the mutation tooling itself, not the model",
}

_DEAD_THEN = ("dead branch: skip{i} is None ({c} -> {c}, stride 1: _make_skip_connection returns None), so "
              "the `if self.skip{i} is not None` branch never runs, whatever the input")
_DEAD_ELSE = ("dead branch: skip{i} is a projection ({cin} -> {cout}, stride 2), so the `else` branch never "
              "runs, whatever the input")
_NONE_SKIP = ("_make_skip_connection({c}, {c}, 1) returns None without building anything (no module, no "
              "random draw): the mutant stores the same None")

_DEFAULT_STRIDE = "nn.Conv1d's stride defaults to 1: dropping `stride=1` builds the same layer"

_TOGETHER = ("every block of this model changes stride and channels together (32->64, 64->128, 128->256 at "
             "stride 2) or neither, so `and` decides exactly as `or` at every call")
_SAME_CELL = "BLOCKS[1][0] and BLOCKS[0][1] are 32, as BLOCKS[0][0] is: the same number from another cell"

_SKIP_MODULES = "fixed/skip_modules.py"
_BASIC_BLOCKS = "fixed/basic_blocks.py"
# block -> (line of its `then` branch, line building its skip, channels)
_IDENTITY_BLOCKS = {1: (74, 34, 32), 3: (88, 36, 64), 5: (102, 38, 128)}
# block -> (line of its `else` branch, in channels, out channels)
_PROJECTION_BLOCKS = {2: (83, 32, 64), 4: (97, 64, 128), 6: (111, 128, 256)}

EQUIVALENCES: tuple[Equivalence, ...] = (
    *(Equivalence(_SKIP_MODULES, line, f"x = x + self.skip{i}(identity)", _DEAD_THEN.format(i=i, c=c))
      for i, (line, _, c) in _IDENTITY_BLOCKS.items()),
    *(Equivalence(_SKIP_MODULES, line, "x = x + identity", _DEAD_ELSE.format(i=i, cin=cin, cout=cout))
      for i, (line, cin, cout) in _PROJECTION_BLOCKS.items()),
    *(Equivalence(_SKIP_MODULES, line, f"self.skip{i} = self._make_skip_connection({c}, {c}, 1)",
                  _NONE_SKIP.format(c=c), after=after)
      for i, (_, line, c) in _IDENTITY_BLOCKS.items()
      for after in (f"self.skip{i} = None",
                    f'object.__setattr__(self, "skip{i}", self._make_skip_connection({c}, {c}, 1))')),
    *(Equivalence(_SKIP_MODULES, line, f"self.skip{i} = self._make_skip_connection({c}, {c}, 1)",
                  f"stride defaults to 1: _make_skip_connection({c}, {c}) is the same call",
                  after=f"self.skip{i} = self._make_skip_connection({c}, {c}, )")
      for i, (_, line, c) in _IDENTITY_BLOCKS.items()),
    Equivalence(_SKIP_MODULES, 20, "nn.Conv1d(1, 32, kernel_size=3, stride=1, padding=1),",
                _DEFAULT_STRIDE, after="nn.Conv1d(1, 32, kernel_size=3, padding=1),"),
    Equivalence(_SKIP_MODULES, 52,
                "layers.append(nn.Conv1d(out_channels, out_channels, kernel_size=3, stride=1, padding=1))",
                _DEFAULT_STRIDE,
                after="layers.append(nn.Conv1d(out_channels, out_channels, kernel_size=3, padding=1))"),
    Equivalence(_SKIP_MODULES, 58, "def _make_skip_connection(self, in_channels, out_channels, stride=1):",
                "every call passes stride explicitly: the default is never used",
                after="def _make_skip_connection(self, in_channels, out_channels, stride=2):"),
    Equivalence(_SKIP_MODULES, 59, "if stride != 1 or in_channels != out_channels:", _TOGETHER,
                after="if stride != 1 and in_channels != out_channels:"),
    # fixed/basic_blocks.py
    Equivalence(_BASIC_BLOCKS, 29,
                "def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:",
                "RawNet2 builds every block with an explicit stride: the default is never used",
                after="def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:"),
    Equivalence(_BASIC_BLOCKS, 33,
                "self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)",
                _DEFAULT_STRIDE,
                after="self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size=3, padding=1)"),
    Equivalence(_BASIC_BLOCKS, 37, "if stride != 1 or in_channels != out_channels:", _TOGETHER,
                after="if stride != 1 and in_channels != out_channels:"),
    Equivalence(_BASIC_BLOCKS, 58, "nn.Conv1d(1, BLOCKS[0][0], kernel_size=3, stride=1, padding=1),",
                _DEFAULT_STRIDE, after="nn.Conv1d(1, BLOCKS[0][0], kernel_size=3, padding=1),"),
    *(Equivalence(_BASIC_BLOCKS, 58, "nn.Conv1d(1, BLOCKS[0][0], kernel_size=3, stride=1, padding=1),",
                  _SAME_CELL, after=f"nn.Conv1d(1, {cell}, kernel_size=3, stride=1, padding=1),")
      for cell in ("BLOCKS[1][0]", "BLOCKS[0][1]")),
    *(Equivalence(_BASIC_BLOCKS, 59, "nn.BatchNorm1d(BLOCKS[0][0]),", _SAME_CELL,
                  after=f"nn.BatchNorm1d({cell}),")
      for cell in ("BLOCKS[1][0]", "BLOCKS[0][1]")),
)


def variants_of(path: str | os.PathLike, *, root: Path) -> list[str]:
    """The registered variants (and derived forms) whose ``source`` is ``path``."""
    target = (root / path).resolve()
    return [name for name, spec in SUBJECTS.items()
            if spec.source and (root / spec.source).resolve() == target]


def selection_for(path: str | os.PathLike, tests: str | None = None, *, root: Path = Path(".")) -> list[str]:
    """pytest arguments selecting the behavioural tests that judge ``path``: ``-k`` its variants' names."""
    expression = tests
    if expression is None:
        names = variants_of(path, root=root)
        if not names:
            raise HarnessError(f"{path} is the source of no registered variant; say which tests judge it "
                               "with --tests EXPR (a pytest -k expression)")
        expression = " or ".join(names)
    ignored = [f"--ignore={p}" for p in (*TEXT_PINNING, *NOT_THE_MODEL) if (root / p).exists()]
    return [TESTS_DIR, *ignored, "-k", expression]


def load_equivalences(path: str | os.PathLike) -> list[Equivalence]:
    """Declared equivalent mutants from a JSON file: a list of ``Equivalence`` fields."""
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
        return [Equivalence(**item) for item in items]
    except (OSError, ValueError, TypeError) as exc:
        raise HarnessError(f"{path}: not a list of equivalences ({exc})") from None


def cli_mutate(args) -> int:
    """``python -m harness mutate``: summary on stdout, JSON report; 1 when a score is under --fail-under."""
    root = Path.cwd()
    output = check_output_path(args.output)
    workers = args.workers or os.cpu_count() or 1
    if workers < 1:
        raise HarnessError("--workers must be at least 1")
    equivalences = [*EQUIVALENCES, *(load_equivalences(args.equivalences) if args.equivalences else [])]
    sections = []
    for path in args.paths:
        rel = relative_path(path, root)
        run = MutationRun(path=rel, selection=selection_for(rel, args.tests, root=root), root=root,
                          workers=workers, timeout_factor=args.timeout_factor, equivalences=equivalences,
                          excluded={p: why for p, why in {**TEXT_PINNING, **NOT_THE_MODEL}.items()
                                    if (root / p).exists()})
        sections.append(run_mutation(run))
    report = build_report(sections)
    write_text_atomically(output, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(render_summary(report))
    print(f"report: {output}")
    sys.stdout.flush()
    low = [s["path"] for s in report["files"]
           if args.fail_under is not None and (s["summary"]["score"] or 0.0) < args.fail_under]
    if low:
        print(f"score under {args.fail_under:g} %: {', '.join(low)}", file=sys.stderr)
        return 1
    return 0

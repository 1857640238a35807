"""Mutation testing of a registered variant's source: ``python -m harness mutate PATH [--tests EXPR]``.

The engine is generic (``harness.core.mutation``); this module knows the house: which tests
judge a file (the behavioural tests of the variants whose source it is, never the
text-pinning ones, ``TEXT_PINNING``), the built-in variants' equivalent mutants with their
reasons (``EQUIVALENCES``) and the contracts a survivor is attributed to (``CONTRACTS``).
How they are chosen and checked: docs/mutation.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.mutation import (
    Contract,
    Equivalence,
    MutationRun,
    read_source,
    relative_path,
    stage_outside_file,
)
from harness.core.mutation.attribution import ANY
from harness.rawnet2.registry import SUBJECTS, VariantSpec

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


# --- which contract should have caught a survivor ---------------------------------------------------

# The contracts of this suite, by what marks their tests (a substring of the test id: the nine audits
# run in one test per variant, so "audit" marks each audit's contract) and which changes each exists to
# catch. A survivor's report lists, of the contracts that claim its change, those whose tests reach the
# mutated function (and passed: a gap in them) and those none of whose tests reach it (missing there).
_OUTPUT_CHANGES = dict(operators=(ANY,), not_operators=("detach", "unregister_module"))
CONTRACTS: tuple[Contract, ...] = (
    Contract("skip_wiring", "each residual block's output is main(input) + shortcut(input), the shortcut "
             "computed from this block's own input and added once (the audit, and the wiring tests)",
             keywords=("skip_wiring", "audit", "shortcut", "residual", "wiring"), operators=("drop_addend",),
             text=("identity", "shortcut", "skip", "downsample", "residual"), module_level=False),
    Contract("golden outputs", "the outputs on the recorded inputs equal the golden file's, train and eval",
             keywords=("golden",), **_OUTPUT_CHANGES),
    Contract("equivalence to the reference", "a variant held to a reference computes exactly its function "
             "given matched weights, outputs and gradients", keywords=("reference", "equivalen", "compare"),
             **_OUTPUT_CHANGES),
    Contract("registration / state_dict round trip", "every tensor the forward uses is a registered "
             "parameter, buffer or submodule, so state_dict(), .to() and eval() reach it and a checkpoint "
             "loaded into a fresh instance computes the same function",
             keywords=("registration", "registers", "state_dict", "round_trip", "roundtrip", "checkpoint",
                       "device_transfer", "audit"),
             operators=("unregister_module", "batchnorm_batch_statistics"), functions=("__init__",)),
    Contract("train/eval modes", "eval() reaches every BatchNorm, which then uses its running statistics",
             keywords=("mode_propagation", "eval_mode", "running", "audit"),
             operators=("batchnorm_batch_statistics", "unregister_module")),
    Contract("gradients", "the backward is the gradient of the forward: every parameter gets one, and the "
             "input gradient equals the reference's", keywords=("gradient", "audit"), operators=("detach",)),
)


# --- which tests judge a file ------------------------------------------------------------------------


def source_file(spec: VariantSpec, *, root: Path) -> Path | None:
    """The file a variant's factory is defined in: its ``source`` (relative to its registry file's
    directory for a TOML variant, else to ``root``), or the callable's own file."""
    if spec.source:
        base = Path(spec.origin).parent if spec.origin.endswith(".toml") else root
        return (base / spec.source).resolve()
    if callable(spec.factory):
        import inspect

        try:
            return Path(inspect.getsourcefile(spec.factory) or "").resolve()
        except TypeError:
            return None
    return None


def variants_of(path: str | os.PathLike, *, root: Path) -> list[str]:
    """The registered variants (and derived forms) whose source is ``path``."""
    target = (root / path).resolve()
    return [name for name, spec in SUBJECTS.items() if source_file(spec, root=root) == target]


def selection_for(path: str | os.PathLike, tests: str | None = None, *, root: Path = Path(".")) -> list[str]:
    """pytest arguments selecting the behavioural tests that judge ``path``: ``-k`` its variants' names."""
    expression = tests
    if expression is None:
        names = variants_of(path, root=root)
        if not names:
            raise HarnessError(f"{path} is the source of no registered variant; say which tests judge it "
                               "with --tests EXPR (a pytest -k expression), or register its variants "
                               "(--registry FILE)")
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


# --- the command -------------------------------------------------------------------------------------


def model_file(path: str | os.PathLike, *, root: Path) -> Path:
    """``path`` resolved, if it is a readable Python file that parses (else one line: file, line, why)."""
    full = (root / path).resolve()
    if not full.is_file() or full.suffix != ".py":
        raise HarnessError(f"{path}: not a Python source file")
    read_source(full, os.fspath(path))
    return full


def plan_run(path: str, *, root: Path, tests: str | None, registry: str | None, workers: int,
             timeout_factor: float, equivalences: list[Equivalence], max_mutants: int | None = None,
             time_budget_s: float | None = None) -> MutationRun:
    """The run for one PATH: in the checkout as it is, or staged into the workspace when outside it."""
    full = model_file(path, root=root)
    excluded = {p: why for p, why in {**TEXT_PINNING, **NOT_THE_MODEL}.items() if (root / p).exists()}
    common = dict(workers=workers, timeout_factor=timeout_factor, max_mutants=max_mutants,
                  time_budget_s=time_budget_s, excluded=excluded, contracts=CONTRACTS)
    registry_path = Path(registry).resolve() if registry is not None else None
    if full.is_relative_to(root):
        rel = relative_path(full, root)
        selection = selection_for(rel, tests, root=root)
        pytest_args = []
        if registry_path is not None:
            shown = registry_path.relative_to(root).as_posix() if registry_path.is_relative_to(root) else str(
                registry_path)
            pytest_args = [f"--registry={shown}"]
        return MutationRun(path=rel, selection=selection, root=root, pytest_args=pytest_args,
                           equivalences=equivalences, **common)
    selection = selection_for(full, tests, root=root)
    staged = stage_outside_file(full, project=root, selection=selection, registry=registry_path)
    # A team's declarations name its file as it gave it: they apply to the staged copy.
    own = [dataclasses.replace(e, path=staged.path) for e in equivalences
           if (root / e.path).resolve() == full or Path(e.path).resolve() == full]
    return MutationRun(path=staged.path, selection=selection, root=staged.root,
                       pytest_args=[f"--registry={staged.registry}"] if staged.registry else [],
                       copied=staged.copied, linked=staged.linked, shown_path=str(full),
                       equivalences=[*equivalences, *own],
                       **common)

"""A mutation run's settings (``MutationRun``, every number checked when it is made) and its clock."""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.mutation.attribution import Contract
from harness.core.mutation.mutants import Equivalence

# A mutant may take TIMEOUT_FACTOR x (its tests' clean duration + TIMEOUT_CONSTANT_S) before it counts
# as a timeout (mutmut's rule). Generous: the clean durations are measured one process at a time, the
# mutants run one per worker on a machine others may load; a tight bound turns survivors into
# "timeouts" (detected) on a busy machine. Model code has no loops to hang in, so it costs nothing.
TIMEOUT_FACTOR = 5.0
TIMEOUT_CONSTANT_S = 30.0


def _positive(name: str, value: object, *, integer: bool = False, zero: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value) and (
        value >= 0 if zero else value > 0)
    if not ok:
        what = "an integer" if integer else "a finite number"
        raise HarnessError(f"{name} must be {what} {'>= 0' if zero else '> 0'}, got {value!r}")


@dataclasses.dataclass
class MutationRun:
    """What to mutate, which tests judge it, and how (every number checked when it is made)."""

    path: str  # the source file, relative to root
    selection: list[str]  # pytest arguments that select the tests (paths, --ignore, -k EXPR)
    root: Path = Path(".")
    workers: int = 2
    timeout_factor: float = TIMEOUT_FACTOR
    timeout_constant_s: float = TIMEOUT_CONSTANT_S
    equivalences: Sequence[Equivalence] = ()
    excluded: Mapping[str, str] = dataclasses.field(default_factory=dict)  # test path -> why left out
    pytest_args: Sequence[str] = ()  # given to every pytest run (e.g. --registry=FILE)
    max_mutants: int | None = None  # a sample spread evenly across functions (sampling.sample_evenly)
    time_budget_s: float | None = None  # stop after this long; what never ran is reported as not run
    copied: Sequence[str] = ()  # entries of root every copy needs besides the project's (a team's modules)
    linked: Sequence[str] = ()  # entries of root the copies link rather than copy (weights, data)
    shown_path: str | None = None  # how the report names the file (a staged one: where the team keeps it)
    contracts: Sequence[Contract] = ()  # what the survivors are attributed to (attribution.attribute)
    progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)
    on_update: Callable[[dict], None] | None = None  # the file's report section as results arrive

    def __post_init__(self) -> None:
        _positive("the timeout factor", self.timeout_factor)
        _positive("the timeout constant", self.timeout_constant_s, zero=True)
        _positive("the number of workers", self.workers, integer=True)
        if self.max_mutants is not None:
            _positive("--max-mutants", self.max_mutants, integer=True)
        if self.time_budget_s is not None:
            _positive("--time-budget", self.time_budget_s)


class Clock:
    """The run's deadline (``time_budget_s`` from the start), if any."""

    def __init__(self, budget_s: float | None) -> None:
        self.start, self.budget_s = time.monotonic(), budget_s

    def left(self) -> float | None:
        return None if self.budget_s is None else self.budget_s - (time.monotonic() - self.start)

    def spent(self) -> bool:
        left = self.left()
        return left is not None and left <= 0

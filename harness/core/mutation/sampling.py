"""A sample of a file's mutants, spread evenly across its functions (``--max-mutants N``).

Deterministic: the same file gives the same sample. Each function (and the module-level
code, as one more) is a stratum; the sample takes one mutant from each stratum in turn,
in file order, until it has ``N``, so a small function is not crowded out by a large
``__init__``. Within a function the turns go round its operators, the model operators
first (they make the defects the gate exists for: a dropped shortcut, a changed slope, an
unregistered module), each operator's mutants in file order; so a function's first
turns cover different kinds of change.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.core.mutation.mutants import Mutant


def _operator_order(mutants: Sequence[Mutant]) -> list[Mutant]:
    from harness.core.mutation.operators import operator_names

    model_operators = operator_names()
    by_operator: dict[str, list[Mutant]] = {}
    for mutant in mutants:
        by_operator.setdefault(mutant.operator, []).append(mutant)
    names = sorted(by_operator, key=lambda op: (op not in model_operators,
                                                model_operators.index(op) if op in model_operators else 0))
    queues = [by_operator[name] for name in names]
    ordered = []
    while any(queues):
        for queue in queues:
            if queue:
                ordered.append(queue.pop(0))
    return ordered


def sample_evenly(mutants: Sequence[Mutant], limit: int | None) -> tuple[list[Mutant], list[Mutant]]:
    """(chosen, left out), each in the original order; everything is chosen when ``limit`` is None."""
    if limit is None or limit >= len(mutants):
        return list(mutants), []
    strata: dict[str, list[Mutant]] = {}
    for mutant in mutants:  # file order: a function's first mutant fixes its place
        strata.setdefault(mutant.function, []).append(mutant)
    queues = [_operator_order(group) for group in strata.values()]
    chosen: set[str] = set()
    while len(chosen) < limit:
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.add(queue.pop(0).id)
    return ([m for m in mutants if m.id in chosen], [m for m in mutants if m.id not in chosen])

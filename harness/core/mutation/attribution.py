"""Which contract should have caught a surviving mutant, from the tests that reach it.

``attribute`` lists the tests that reach a survivor's function (as mutmut measured them),
grouped by test function, and which of the ``Contract``s that claim the change (by operator
or by function) they include; a claiming contract with no test reaching the function is named
as missing there. Nothing here knows a model or a test suite: the contracts are the caller's
(``harness.rawnet2.mutation``). The rules: docs/mutation.md, "Survivors, attributed".
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping, Sequence

from harness.core.mutation.mutants import MODULE_LEVEL, Mutant

ANY = "*"
SHOWN_TESTS = 5  # tests named per contract in the report (the count says how many there are)


@dataclasses.dataclass(frozen=True)
class Contract:
    """A property the tests hold, how to recognise its tests, and which changes it exists to catch.

    ``keywords``: substrings (case-insensitive) of a test id that make it a test of this
    contract (``skip_wiring`` in ``test_audit_equals_declaration[asv-skip_wiring]``).
    ``operators``: the mutation operators whose changes it claims (``*``: any but ``not_operators``).
    ``functions``: ``fnmatch`` patterns on the mutated function's own name (``__init__``),
    claiming any change there; ``text``: substrings of the changed lines that it claims;
    ``module_level``: False for a contract about what functions do (a module constant's
    ``a + b`` is no residual connection).
    """

    name: str
    why: str
    keywords: tuple[str, ...]
    operators: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    text: tuple[str, ...] = ()
    not_operators: tuple[str, ...] = ()
    module_level: bool = True  # whether it claims changes to module-level code too

    def claims(self, mutant: Mutant) -> bool:
        if mutant.operator in self.not_operators:
            return False
        if mutant.function == MODULE_LEVEL and not self.module_level:
            return False
        if ANY in self.operators or mutant.operator in self.operators:
            return True
        own_name = mutant.function.rpartition(".")[2]
        if mutant.function != MODULE_LEVEL and any(fnmatch.fnmatchcase(own_name, p) for p in self.functions):
            return True
        removed, added = mutant.changed_text()
        changed = " ".join([*removed, *added]).lower()
        return any(word.lower() in changed for word in self.text)

    def tests_among(self, tests: Sequence[str]) -> list[str]:
        return [t for t in tests if any(word.lower() in t.lower() for word in self.keywords)]


def test_function(test_id: str) -> str:
    """``tests/test_x.py::test_y[asv-2]`` -> ``tests/test_x.py::test_y``."""
    return test_id.split("[", 1)[0]


def reaching_tests(mutant: Mutant, coverage: Mapping[str, Sequence[str]] | None,
                   selected: Sequence[str]) -> tuple[list[str] | None, str]:
    """(the tests that reach the mutated code, how that is known); None when nothing is known."""
    if mutant.function == MODULE_LEVEL:
        return list(selected), "module level: taken as reached by every selected test (imports run it once)"
    if not coverage:
        return None, "no coverage data (the function mutants did not run)"
    return list(coverage.get(mutant.mangled_function, ())), "measured: the tests that call the function"


def attribute(mutant: Mutant, contracts: Sequence[Contract], coverage: Mapping[str, Sequence[str]] | None,
              selected: Sequence[str]) -> dict:
    """The survivor's attribution: who reaches it, which claiming contract let it through or is missing."""
    reached, how = reaching_tests(mutant, coverage, selected)
    claiming = [c for c in contracts if c.claims(mutant)]
    where = "module-level code" if mutant.function == MODULE_LEVEL else mutant.function
    out: dict = {"reached_by": {"how": how, "count": None if reached is None else len(reached)},
                 "claimed_by": [c.name for c in claiming], "should_have_caught": [], "missing_contracts": []}
    if reached is None:
        out["verdict"] = f"unknown which tests reach {where} ({how})"
        return out
    groups: dict[str, int] = {}
    for test in reached:
        groups[test_function(test)] = groups.get(test_function(test), 0) + 1
    out["reached_by"]["tests"] = [{"test": name, "cases": n} for name, n in groups.items()]
    for contract in claiming:
        tests = contract.tests_among(reached)
        if tests:
            out["should_have_caught"].append({"contract": contract.name, "why": contract.why,
                                              "tests": tests[:SHOWN_TESTS], "count": len(tests)})
        else:
            out["missing_contracts"].append({"contract": contract.name, "why": contract.why})
    if not reached:
        out["verdict"] = f"no selected test reaches {where}: no test can catch any change there"
    elif out["should_have_caught"]:
        caught = out["should_have_caught"][0]
        more = ", ..." if caught["count"] > 1 else ""
        out["verdict"] = (f"{caught['contract']} should have caught it: {caught['count']} of its tests reach "
                          f"{where} and passed ({caught['tests'][0]}{more}): a gap in that contract, unless "
                          "the mutant is equivalent (then declare it)")
    elif claiming:
        names = ", ".join(c.name for c in claiming)
        out["verdict"] = (f"no test of {names} reaches {where} ({len(reached)} other tests do, in "
                          f"{len(groups)} test functions): that contract is missing for this code")
    else:
        out["verdict"] = (f"no declared contract claims this change; {len(reached)} tests reach {where} "
                          f"and passed")
    return out

"""The audits on a registered variant: ``CHECKS`` is ``GENERIC_CHECKS``, run with the spec's own
output kind, score transform and input rules (``audit_spec``).

``audit`` is ``harness.core.audits.audit`` over ``CHECKS``; ``python -m harness audit`` is
``harness.cli.audit``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

import torch
import torch.nn as nn

from harness.core import audits as core_audits
from harness.core.audits import (
    GENERIC_CHECKS,
    NOT_APPLICABLE,
    AuditContext,
    AuditReport,
    CheckTable,
    ModelFailure,
    matches_declaration,
    resolve_checks,
)
from harness.core.errors import HarnessError, error_line
from harness.core.introspect import Cycle, cycles
from harness.core.loading import UserCodeExit, call_user_code
from harness.rawnet2.inputs import train_length_problem
from harness.rawnet2.registry import NOT_APPLICABLE_PREFIX, VariantSpec, in_family

# Every check the harness runs on a RawNet2 variant, in report order.
CHECKS: CheckTable = GENERIC_CHECKS


def audit(factory: Callable[[], nn.Module], example_input: torch.Tensor, *,
          checks: Iterable[str] | None = None, output: str = "probability") -> AuditReport:
    """``harness.core.audits.audit`` over every check in ``CHECKS`` (or those named).

    ``output`` defaults to the guide's models' sigmoid scores; a spec says its own.
    """
    return core_audits.audit(factory, example_input, checks=checks, table=CHECKS, output=output)


def declared_results(expected_defects: Mapping[str, str], checks: Iterable[str] | None = None,
                     ) -> dict[str, str]:
    """Check -> expected result from a spec's ``expected_defects``: fail, n/a (``"n/a: why"``) or pass."""
    results = core_audits.declared_results(expected_defects, checks, CHECKS)
    return {c: NOT_APPLICABLE if expected_defects.get(c, "").startswith(NOT_APPLICABLE_PREFIX) else r
            for c, r in results.items()}


# Checks that run the example through a train-mode forward whose failure they report as the
# model's (state_dict_roundtrip's warm-up forward only notes a failure; the others run in eval).
TRAIN_MODE_CHECKS = ("mode_propagation", "gradient_coverage")
# Checks that never run a forward.
FORWARDLESS_CHECKS = ("registration",)
# What torch's normalisation layers raise for an input with too few values per channel.
_TOO_FEW_VALUES = ("Expected more than 1 value per channel when training",
                   "Expected more than 1 spatial element when training")


def audit_spec(spec: VariantSpec, example_input: torch.Tensor, *,
               checks: Iterable[str] | None = None) -> AuditReport:
    """Audit a registered (or resolved) variant with its own output kind.

    One instance is built first, outside the audit: a factory or import that fails is
    the caller's error (``HarnessError``, exit 2), never a finding. So is an example input
    too small for the train-mode forward that ``TRAIN_MODE_CHECKS`` run
    (``check_example_input``). A module registered inside itself (``introspect.cycles``)
    makes torch's own recursive methods overflow the stack: each check that meets that
    fails with a finding saying so, instead of a RecursionError ending the audit.
    """
    names = resolve_checks(checks, CHECKS)
    with torch.random.fork_rng(devices=[]):
        model = spec.build_or_refuse()
        try:  # the walk may meet the model's own code (properties): sys.exit there is exit 2, not 0
            loops = [c for c in call_user_code(cycles, model, what="the model's code") if c.registered]
        except UserCodeExit:
            raise
        except Exception:  # noqa: BLE001 - the audit's registration check meets it and reports it
            loops = []
        if not loops:
            check_example_input(spec, model, example_input, names)
    table = CHECKS if not loops else MappingProxyType(
        {name: _recursion_is_a_finding(check, loops[0]) for name, check in CHECKS.items()})
    return core_audits.audit(spec.build, example_input, checks=names, table=table, output=spec.output,
                             score=spec.score_transform if spec.score is not None else None)


def check_example_input(spec: VariantSpec, model: nn.Module, example: torch.Tensor,
                        checks: Iterable[str]) -> None:
    """Refuse (``HarnessError``, exit 2) an example too small for the forwards ``checks`` run.

    For the family (``in_family``, a ``[B, 1, T]`` example) the rule is known
    (``inputs.min_train_length``) and holds for every check that runs a forward: a
    variant whose ``eval()`` misses its BatchNorms (tuple_blocks) normalises per batch in
    eval mode too. Any model is probed when a check of ``TRAIN_MODE_CHECKS`` is selected:
    one train-mode forward of the example; a normalisation layer refusing it for too few
    values per channel is the caller's too-small example, not the model's defect. The
    probe's other failures are left to the audit, which reports them as findings.
    """
    checks = list(checks)
    shape = tuple(example.shape)
    train = [c for c in checks if c in TRAIN_MODE_CHECKS]
    uses = f"{' and '.join(train)} run{'s' * (len(train) == 1)} the model in train mode"
    if in_family(spec) and len(shape) == 3 and shape[1] == 1 and any(c not in FORWARDLESS_CHECKS
                                                                      for c in checks):
        problem = train_length_problem(shape)
        if problem:
            why = uses if train else "the family's BatchNorms may normalise per batch even after eval()"
            raise HarnessError(f"example input {list(shape)}: {problem} ({why})")
    if not train:
        return
    refused = _train_forward_refusal(model, example)
    if refused is None:
        return
    hint = "use a larger example input"
    pair = example.repeat(2, *([1] * (example.dim() - 1)))
    if shape[0] == 1 and _train_forward_refusal(model, pair) is None:
        hint = "use a batch of 2 or more (a batch of 2 works)"
    raise HarnessError(f"example input {list(shape)}: too small for a train-mode forward of {spec.name} "
                       f"({uses}): it raises {refused}; {hint}")


def _train_forward_refusal(model: nn.Module, example: torch.Tensor) -> str | None:
    """The error line when a train-mode forward refuses ``example`` for too few values per channel."""
    try:
        call_user_code(model.train, what="the model's train()")
        with torch.no_grad():
            call_user_code(model, example, what="the forward")
    except UserCodeExit:
        raise
    except ValueError as exc:
        return error_line(exc) if any(m in str(exc) for m in _TOO_FEW_VALUES) else None
    except Exception:  # noqa: BLE001 - the audit reports the model's own failures
        return None
    return None


def _recursion_is_a_finding(check: Callable[[AuditContext], list], loop: Cycle,
                            ) -> Callable[[AuditContext], list]:
    def guarded(ctx: AuditContext) -> list:
        try:
            return check(ctx)
        except RecursionError:
            raise ModelFailure(f"torch recursed without end: {loop.describe()} (a module registered inside "
                               "itself)") from None

    return guarded


def matches_expected(result: str, expected: str) -> bool:
    """Whether a check's result is what the variant declares: a declared n/a must not apply; otherwise
    the core's rule (declared failures fail)."""
    return result == NOT_APPLICABLE if expected == NOT_APPLICABLE else matches_declaration(result, expected)

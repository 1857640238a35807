"""The runner: ``audit`` runs the checks of a table (``GENERIC_CHECKS`` by default) on fresh
instances of a model and gathers their results into an ``AuditReport``; ``declared_results``
is what a declaration of defects expects of the same table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

import torch
import torch.nn as nn

from harness.core.audits import forward_checks, module_checks
from harness.core.audits.context import BUILD_SEED, AuditContext, CheckTable, ModelFailure, NotApplicable
from harness.core.audits.outputs import OUTPUT_KINDS
from harness.core.audits.results import FAIL, NOT_APPLICABLE, PASS, AuditReport
from harness.core.audits.skip_wiring import check_skip_wiring
from harness.core.contract import ScoreTransform
from harness.core.errors import HarnessError
from harness.core.loading import exit_error

# The checks that apply to any model, in report order. skip_wiring finds residual blocks by
# dataflow (harness.core.residuals), so it applies to any model too (n/a where none are found).
GENERIC_CHECKS: CheckTable = MappingProxyType({
    "registration": module_checks.check_registration,
    "mode_propagation": module_checks.check_mode_propagation,
    "device_transfer": module_checks.check_device_transfer,
    "state_dict_roundtrip": module_checks.check_state_dict_roundtrip,
    "batch_independence": forward_checks.check_batch_independence,
    "gradient_coverage": forward_checks.check_gradient_coverage,
    "determinism": forward_checks.check_determinism,
    "output_contract": forward_checks.check_output_contract,
    "skip_wiring": check_skip_wiring,
})


def resolve_checks(checks: Iterable[str] | None, table: CheckTable = GENERIC_CHECKS) -> list[str]:
    """Check names from ``table`` in its order: all of them for None, else the ones named (validated)."""
    if checks is None:
        return list(table)
    names = [checks] if isinstance(checks, str) else list(checks)
    unknown = [c for c in names if c not in table]
    if unknown:
        raise HarnessError(f"unknown check(s) {', '.join(map(repr, unknown))}; known: {', '.join(table)}")
    if not names:
        raise HarnessError(f"no checks selected; known: {', '.join(table)}")
    return [c for c in table if c in names]


def audit(factory: Callable[[], nn.Module], example_input: torch.Tensor, *,
          checks: Iterable[str] | None = None, table: CheckTable = GENERIC_CHECKS,
          output: str = "any", score: ScoreTransform | None = None) -> AuditReport:
    """Run the contract checks on fresh instances from ``factory``.

    ``example_input`` has the batch dimension first (any further shape the model
    takes). ``checks`` picks check names from ``table`` (default: all of them). ``output``
    (one of ``OUTPUT_KINDS``) is what the forward promises to return; ``check_output_contract``
    says what each kind requires. The forward may return a tensor or a tuple, list, dict,
    namedtuple or dataclass of tensors: every check compares and differentiates leaf by leaf
    and names the leaf (``output [1]: ...``). The global RNG is left as it was; the audit
    itself is seeded, so it is reproducible.

    An ordinary exception from the factory or the model fails the checks that need it
    (findings); ``sys.exit``, ``KeyboardInterrupt`` and every other non-``Exception`` exit
    from the model's code stop the audit with a ``UserCodeExit`` (a ``HarnessError``,
    exit code 2): never findings, never a pass.
    """
    if not callable(factory):
        raise HarnessError(f"factory must be a zero-argument callable, got {type(factory).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() == 0:
        raise HarnessError("example_input must be a tensor with a batch dimension first")
    if output not in OUTPUT_KINDS:
        raise HarnessError(f"unknown output kind {output!r}; known: {', '.join(OUTPUT_KINDS)}")
    names = resolve_checks(checks, table)
    ctx = AuditContext(factory, example_input, output, score)
    report = AuditReport(results={})
    devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=devices):
        for name in names:
            torch.manual_seed(BUILD_SEED)
            ctx.check, ctx.notes = name, []
            try:
                findings = table[name](ctx)
            except NotApplicable as exc:
                report.results[name] = NOT_APPLICABLE
                report.notes[name] = str(exc)
                continue
            except ModelFailure as exc:
                findings = [ctx.finding(str(exc))]
            except Exception:
                raise
            except BaseException as exc:
                # A check that called the model's code directly (not via ctx): sys.exit & co.
                raise exit_error(exc, f"the model's code (during {name})") from exc
            report.results[name] = FAIL if findings else PASS
            report.findings.extend(findings)
            if ctx.notes:
                report.notes[name] = "; ".join(ctx.notes)
    return report


def declared_results(expected_defects: Mapping[str, str], checks: Iterable[str] | None = None,
                     table: CheckTable = GENERIC_CHECKS) -> dict[str, str]:
    """Check -> expected result from a variant's declaration: its declared defects fail, the rest pass."""
    return {c: FAIL if c in expected_defects else PASS for c in resolve_checks(checks, table)}


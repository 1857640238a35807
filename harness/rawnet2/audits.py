"""The audits as they apply to the RawNet2 family: the generic checks plus ``skip_wiring``.

``audit`` is ``harness.core.audits.audit`` over ``CHECKS``; ``cli_audit`` is
``python -m harness audit``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

import torch
import torch.nn as nn

from harness.core import audits as core_audits
from harness.core.audits import (
    BUILD_SEED,
    GENERIC_CHECKS,
    NOT_APPLICABLE,
    AuditReport,
    CheckTable,
    matches_declaration,
    parse_shape,
    resolve_checks,
)
from harness.core.errors import HarnessError, error_line
from harness.core.loading import parse_kwargs
from harness.rawnet2.registry import NOT_APPLICABLE_PREFIX, SUBJECTS, VariantSpec, resolve
from harness.rawnet2.wiring import check_skip_wiring

# Every check the harness runs on a RawNet2 variant, in report order.
CHECKS: CheckTable = MappingProxyType({**GENERIC_CHECKS, "skip_wiring": check_skip_wiring})


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


def audit_spec(spec: VariantSpec, example_input: torch.Tensor, *,
               checks: Iterable[str] | None = None) -> AuditReport:
    """Audit a registered (or resolved) variant with its own output kind.

    One instance is built first, outside the audit: a factory or import that fails is
    the caller's error (``HarnessError``, exit 2), never a finding.
    """
    try:
        spec.build()
    except HarnessError:
        raise
    except Exception as exc:
        raise HarnessError(f"cannot build {spec.name}: the factory raises {error_line(exc)}") from None
    return audit(spec.build, example_input, checks=checks, output=spec.output)


def cli_audit(args: argparse.Namespace) -> int:
    """``python -m harness audit MODEL``: 0 only when every check ran and passed (or does not apply),
    1 on findings, 2 when the model cannot even be built."""
    if bool(args.target) == bool(args.variant):
        raise HarnessError("give either MODEL (a registered name or MODULE:ATTR) or --variant NAME "
                           "(one of them)")
    if args.variant and args.variant not in SUBJECTS:
        raise HarnessError(f"unknown variant {args.variant!r}; known: {', '.join(SUBJECTS)}")
    shape = parse_shape(args.input_shape)
    checks = [c.strip() for c in args.checks.split(",") if c.strip()] if args.checks else None
    names = resolve_checks(checks, CHECKS)
    spec = resolve(args.variant or args.target, kwargs=parse_kwargs(args.kwargs) if args.kwargs else None,
                   weights=args.weights, output=args.output)
    registered = spec.name in SUBJECTS
    declared = declared_results(spec.expected_defects, names) if registered else None
    example = torch.randn(shape, generator=torch.Generator().manual_seed(BUILD_SEED))
    report = audit_spec(spec, example, checks=names)
    mismatched = [c for c, r in report.results.items() if declared and not _matches(r, declared[c])]
    if args.format == "json":
        data = report.as_json()
        data.update(model=spec.name, output=spec.output, input_shape=list(shape))
        if declared is not None:
            data.update(declared=declared, matches_declaration=not mismatched)
        print(json.dumps(data, indent=2))
    else:
        title = f"audit of {spec.name}" + (f" ({spec.source})" if registered else "")
        print(report.render(f"{title}, input {list(shape)}, output {spec.output}", declared), end="")
        if declared is not None:
            print(f"\n{'differs from' if mismatched else 'matches'} the declared expected defects"
                  f"{': ' + ', '.join(mismatched) if mismatched else ''}")
    return 0 if report.ok else 1


def _matches(result: str, expected: str) -> bool:
    # A declared n/a must not apply; otherwise the core's rule (declared failures fail).
    return result == NOT_APPLICABLE if expected == NOT_APPLICABLE else matches_declaration(result, expected)

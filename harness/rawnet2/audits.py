"""The audits as they apply to the RawNet2 family: the generic checks plus ``skip_wiring``.

``audit`` is ``harness.core.audits.audit`` over ``CHECKS``; ``cli_audit`` is
``python -m harness audit``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

import torch
import torch.nn as nn

from harness.core import audits as core_audits
from harness.core.audits import (
    BUILD_SEED,
    GENERIC_CHECKS,
    AuditReport,
    CheckTable,
    load_factory,
    matches_declaration,
    parse_shape,
    resolve_checks,
)
from harness.core.errors import HarnessError
from harness.rawnet2.registry import SUBJECTS
from harness.rawnet2.wiring import check_skip_wiring

# Every check the harness runs on a RawNet2 variant, in report order.
CHECKS: CheckTable = MappingProxyType({**GENERIC_CHECKS, "skip_wiring": check_skip_wiring})


def audit(factory: Callable[[], nn.Module], example_input: torch.Tensor, *,
          checks: Iterable[str] | None = None) -> AuditReport:
    """``harness.core.audits.audit`` over every check in ``CHECKS`` (or those named)."""
    return core_audits.audit(factory, example_input, checks=checks, table=CHECKS)


def declared_results(expected_defects: Mapping[str, str], checks: Iterable[str] | None = None,
                     ) -> dict[str, str]:
    """``harness.core.audits.declared_results`` over ``CHECKS``."""
    return core_audits.declared_results(expected_defects, checks, CHECKS)


def cli_audit(args: argparse.Namespace) -> int:
    """``python -m harness audit``: 0 when every check passes or does not apply, 1 on findings."""
    if bool(args.target) == bool(args.variant):
        raise HarnessError("give either MODULE:ATTR or --variant NAME (one of them)")
    shape = parse_shape(args.input_shape)
    checks = [c.strip() for c in args.checks.split(",") if c.strip()] if args.checks else None
    names = resolve_checks(checks, CHECKS)
    declared = None
    if args.variant:
        if args.variant not in SUBJECTS:
            raise HarnessError(f"unknown variant {args.variant!r}; known: {', '.join(SUBJECTS)}")
        subject = SUBJECTS[args.variant]
        factory: Callable[[], nn.Module] = subject.factory
        title = f"audit of {subject.name} ({subject.source})"
        declared = declared_results(subject.expected_defects, names)
    else:
        factory = load_factory(args.target)
        title = f"audit of {args.target}"
    example = torch.randn(shape, generator=torch.Generator().manual_seed(BUILD_SEED))
    report = audit(factory, example, checks=names)
    print(report.render(f"{title}, input {list(shape)}", declared), end="")
    if declared is not None:
        mismatched = [c for c, r in report.results.items() if not matches_declaration(r, declared[c])]
        print(f"\n{'differs from' if mismatched else 'matches'} the declared expected defects"
              f"{': ' + ', '.join(mismatched) if mismatched else ''}")
    return 0 if report.ok else 1

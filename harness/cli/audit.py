"""``python -m harness audit MODEL``: the contract audits on one model, against its declared defects."""

from __future__ import annotations

import argparse
import json

from harness.cli.options import MODEL_HELP, add_model_options, resolve_model
from harness.core.errors import HarnessError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="run the contract audits on a model")
    p.add_argument("target", nargs="?", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--variant", help="audit a registered variant by name (same as MODEL)")
    add_model_options(p)
    p.add_argument("--output", choices=("probability", "logits", "any"),
                   help="what the forward returns (default: the spec's, else any)")
    p.add_argument("--input-shape", default=None,
                   help="example input shape, batch first (default: 2 examples of the model's input "
                        "contract: its declared input_shape, else the first of [B, 1, 16000] and [B, 16000] "
                        "it takes)")
    p.add_argument("--checks", help="comma-separated check names (default: all that apply)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0 only when every check ran and passed (or does not apply), 1 on findings, 2 when the model
    cannot even be built."""
    import torch

    from harness.core.audits import BUILD_SEED, parse_shape, resolve_checks
    from harness.rawnet2.audits import CHECKS, audit_spec, declared_results, matches_expected
    from harness.rawnet2.registry import SUBJECTS

    if bool(args.target) == bool(args.variant):
        raise HarnessError("give either MODEL (a registered name or MODULE:ATTR) or --variant NAME "
                           "(one of them)")
    if args.variant and args.variant not in SUBJECTS:
        raise HarnessError(f"unknown variant {args.variant!r}; known: {', '.join(SUBJECTS)}")
    checks = [c.strip() for c in args.checks.split(",") if c.strip()] if args.checks else None
    names = resolve_checks(checks, CHECKS)
    spec = resolve_model(args.variant or args.target, args.kwargs, weights=args.weights, output=args.output)
    shape = parse_shape(args.input_shape) if args.input_shape else spec.input_contract().batch_shape(2)
    registered = spec.name in SUBJECTS
    declared = declared_results(spec.expected_defects, names) if registered else None
    example = torch.randn(shape, generator=torch.Generator().manual_seed(BUILD_SEED))
    report = audit_spec(spec, example, checks=names)
    mismatched = [c for c, r in report.results.items() if declared and not matches_expected(r, declared[c])]
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

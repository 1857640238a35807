"""``python -m harness compare REF OTHER``: do two models compute the same function (weights matched
by structure)?"""

from __future__ import annotations

import argparse
import json

from harness.cli.options import KWARGS_HELP, MODEL_HELP, kwargs, resolve_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="do two models compute the same function? (weights matched by "
                                       "structure)")
    p.add_argument("ref", metavar="REF", help=f"the reference: {MODEL_HELP}")
    p.add_argument("other", metavar="OTHER", help=f"the model held to it: {MODEL_HELP}")
    p.add_argument("--weights", metavar="CKPT", help="REF's weights (default: seeded random weights)")
    p.add_argument("--ref-kwargs", type=kwargs, metavar="JSON", help=f"REF's {KWARGS_HELP}")
    p.add_argument("--other-kwargs", type=kwargs, metavar="JSON", help=f"OTHER's {KWARGS_HELP}")
    p.add_argument("--input-shape", default=None,
                   help="input shape, batch first (default: 3 examples of REF's input contract)")
    p.add_argument("--mode", choices=("train", "eval", "both"), default="both")
    p.add_argument("--tolerance", default="EXACT", metavar="NAME",
                   help="a tolerance of harness.core.tolerances (default EXACT: bit for bit)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0 equivalent, 1 they differ, 2 cannot compare."""
    from harness.core.tolerances import tolerance_named
    from harness.rawnet2.equivalence import compare_input, compare_specs
    from harness.rawnet2.registry import MODES

    ref = resolve_model(args.ref, args.ref_kwargs, weights=args.weights)
    other = resolve_model(args.other, args.other_kwargs)
    modes = MODES if args.mode == "both" else (args.mode,)
    tolerance = tolerance_named(args.tolerance)
    x = compare_input(ref, args.input_shape)
    shape = tuple(x.shape)
    result = compare_specs(ref, other, x, modes=modes, tolerance=tolerance)
    if args.format == "json":
        print(json.dumps(result.as_json(), indent=2, allow_nan=False))
    else:
        weights = f"{ref.weights}" if ref.weights else "seeded random weights"
        print(f"compare {ref.name} (reference, {weights}) with {other.name}: input {list(shape)}, "
              f"tolerance {args.tolerance} ({tolerance.reason})")
        print(f"weights: {len(result.mapping)} tensors paired by structure")
        for row in result.modes:
            verdict = "equivalent" if row.equivalent else "DIFFERENT"
            where = f"; first divergence: {row.first_divergence}" if row.first_divergence else ""
            print(f"  {row.mode:5}  max abs diff {row.max_abs_diff:.3g}  {verdict}{where}")
        print("equivalent" if result.equivalent else "not equivalent")
    return 0 if result.equivalent else 1

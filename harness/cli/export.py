"""``python -m harness export MODEL OUT.onnx``: an ONNX export, verified against eager before it is kept."""

from __future__ import annotations

import argparse

from harness.cli.options import MODEL_HELP, add_model_options, kwargs_file_read, resolve_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX, verified against eager before it is kept")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("out", metavar="OUT.onnx")
    add_model_options(p)
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--force", action="store_true", help="overwrite an existing OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0 written and verified, 2 refused (nothing written)."""
    from harness.core.fileio import check_not_read
    from harness.rawnet2.deploy import export_variant

    target = resolve_model(args.model, args.kwargs, weights=args.weights)
    # OUT is never what the export reads: the weights, the registry, the factory's source, --kwargs @FILE.
    reads = [(f"a file {target.name} is built from", path) for path in target.files_read()]
    reads += [("the --registry file", args.registry)] if args.registry else []
    reads += kwargs_file_read(args.kwargs)
    check_not_read(args.out, reads)
    exported = export_variant(target, args.out, force=args.force, opset=args.opset)
    for check in exported.checks:
        print(f"  input {list(check.input_shape)} ({check.label}): ONNX Runtime vs eager max abs diff "
              f"{check.max_abs_diff:.3g}")
    print(f"wrote {args.out} ({len(exported.onnx_bytes):,} bytes, opset {exported.opset}, dynamic batch "
          "and time axes): onnx.checker passed, no tracer warning, ONNX Runtime matches eager within "
          "DEPLOYMENT_TOLERANCES['onnxruntime'] on every input above")
    return 0

"""Deploying a registered variant: ``python -m harness export MODEL OUT.onnx``.

The export itself (verified with ``onnx.checker`` and ONNX Runtime vs eager before anything
is written) is generic: ``harness.core.onnx``. Here: which inputs a RawNet2 model is
exported with and verified on (the 16 kHz convention: up to the 64600-sample input), and
the command line.
"""

from __future__ import annotations

import argparse
import os

import torch

from harness.core.errors import HarnessError, error_line
from harness.core.loading import parse_kwargs
from harness.core.onnx import OPSET, ExportedModel, export_onnx
from harness.rawnet2.inputs import NUM_SAMPLES
from harness.rawnet2.registry import VariantSpec, resolve

EXPORT_EXAMPLE_SHAPE = (2, 1, 4000)
# Several batch sizes and lengths, up to the 4 s input: the batch and time axes are dynamic.
VERIFY_SHAPES = ((1, 1, 1000), (3, 1, 4000), (2, 1, 16_000), (1, 1, NUM_SAMPLES))


def _inputs(seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(EXPORT_EXAMPLE_SHAPE, generator=generator)
    return example, [torch.randn(shape, generator=generator) for shape in VERIFY_SHAPES]


def export_variant(target: VariantSpec, path: str | os.PathLike | None = None, *, force: bool = False,
                   opset: int = OPSET) -> ExportedModel:
    """Export ``target`` as built (its spec's weights, or its fresh initialisation), verified."""
    if not target.runs:
        raise HarnessError(f"cannot export {target.name}: its forward does not run (declared runs = false)")
    try:
        model = target.build()
    except HarnessError:
        raise
    except Exception as exc:
        raise HarnessError(f"cannot build {target.name}: the factory raises {error_line(exc)}") from None
    example, verify = _inputs()
    return export_onnx(model, example, verify, path=path, force=force, opset=opset)


def cli_export(args: argparse.Namespace) -> int:
    """``python -m harness export MODEL OUT.onnx``: 0 written and verified, 2 refused (nothing written)."""
    target = resolve(args.model, kwargs=parse_kwargs(args.kwargs) if args.kwargs else None,
                     weights=args.weights)
    exported = export_variant(target, args.out, force=args.force, opset=args.opset)
    for check in exported.checks:
        print(f"  input {list(check.input_shape)}: ONNX Runtime vs eager max abs diff "
              f"{check.max_abs_diff:.3g}")
    print(f"wrote {args.out} ({len(exported.onnx_bytes):,} bytes, opset {exported.opset}, dynamic batch "
          "and time axes): onnx.checker passed, ONNX Runtime matches eager within "
          "DEPLOYMENT_TOLERANCES['onnxruntime']")
    return 0

"""ONNX export, verified before it is kept, and ONNX Runtime as a deployment form.

``export_onnx(model, example_input, verify_inputs)`` exports an eval-mode copy with dynamic
batch and time axes at a named opset, checks the graph with ``onnx.checker``, then runs it
in ONNX Runtime on every verification input and compares with eager PyTorch within
``DEPLOYMENT_TOLERANCES["onnxruntime"]``; only then are the bytes returned (or written,
atomically). A model whose ``eval()`` cannot reach every module its forward calls is
refused before exporting: the exporter would bake those modules' training behaviour into
the graph. ``OnnxRuntimeSession`` runs exported bytes like a model.

onnx and onnxruntime are an optional extra (``pip install 'rawnet2-harness[onnx]'``);
``onnx_missing()`` says why the form is unavailable where they are absent.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

from harness.core.errors import HarnessError, error_line
from harness.core.fileio import write_atomically
from harness.core.introspect import held_modules
from harness.core.tolerances import DEPLOYMENT_TOLERANCES, all_close, max_abs_diff

# The opset every export names: 17 has every op these models use (BatchNormalization,
# Conv, LeakyRelu, GlobalAveragePool) and runs on every onnxruntime since 1.11.
OPSET = 17
INPUT_NAME = "waveform"
# Dimension index -> name of the axes left dynamic: the batch, and the time (last) axis.
DYNAMIC_DIMS: Mapping[int, str] = {0: "batch", -1: "time"}


def onnx_missing() -> str | None:
    """Why ONNX export or ONNX Runtime cannot run here, or None when both are installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install 'rawnet2-harness[onnx]')"
    return None


def unreachable_by_eval(model: nn.Module) -> list[str]:
    """Paths of modules the model holds outside ``nn.Module`` registration whose training
    behaviour ``eval()`` cannot switch off (BatchNorm, dropout, instance norm)."""
    sensitive = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd,
                 nn.modules.instancenorm._InstanceNorm)
    return [h.path for h in held_modules(model) if not h.registered and isinstance(h.obj, sensitive)]


@dataclass(frozen=True)
class ExportCheck:
    """ONNX Runtime vs eager on one verification input."""

    input_shape: tuple[int, ...]
    max_abs_diff: float
    within: bool


@dataclass(frozen=True)
class ExportedModel:
    """The verified ONNX bytes and what was checked."""

    onnx_bytes: bytes
    opset: int
    checks: tuple[ExportCheck, ...]


def _leaves(out: object) -> list[torch.Tensor]:
    return [leaf for leaf in pytree.tree_leaves(out) if isinstance(leaf, torch.Tensor)]


def export_onnx(model: nn.Module, example_input: torch.Tensor, verify_inputs: Sequence[torch.Tensor], *,
                path: str | os.PathLike | None = None, force: bool = False, opset: int = OPSET,
                ) -> ExportedModel:
    """Export ``model`` (an eval-mode copy) to ONNX, verify it, and return (or write) the bytes.

    Refuses, with nothing written: a model ``eval()`` cannot fully reach; a graph
    ``onnx.checker`` rejects; any verification input whose ONNX Runtime output is not
    within ``DEPLOYMENT_TOLERANCES["onnxruntime"]`` of eager.
    """
    if missing := onnx_missing():
        raise HarnessError(f"cannot export to ONNX: {missing}")
    if hidden := unreachable_by_eval(model):
        shown = ", ".join(hidden[:3]) + (f" and {len(hidden) - 3} more" if len(hidden) > 3 else "")
        raise HarnessError(
            f"cannot export: {len(hidden)} modules ({shown}) are held outside nn.Module registration, "
            "so eval() leaves them in training mode and the exporter would bake training behaviour into "
            "the graph (BatchNormalization with batch statistics: every score would depend on its "
            "batch-mates, and no exported graph equals the model's eval output)")
    import onnx

    eager = copy.deepcopy(model).eval()
    onnx_bytes = _export_bytes(eager, example_input, opset)
    try:
        onnx.checker.check_model(onnx.load_from_string(onnx_bytes), full_check=True)
    except Exception as exc:  # noqa: BLE001 - any checker complaint refuses the export
        raise HarnessError(f"cannot export: onnx.checker rejects the graph: {error_line(exc)}") from None
    session = OnnxRuntimeSession(onnx_bytes)
    tol = DEPLOYMENT_TOLERANCES["onnxruntime"]
    checks = []
    for x in verify_inputs:
        with torch.no_grad():
            expected = _leaves(eager(x))
        actual = _leaves(session(x))
        if len(actual) != len(expected):
            raise HarnessError(f"cannot export: ONNX Runtime gives {len(actual)} outputs, "
                               f"eager {len(expected)}")
        diffs = [max_abs_diff(a, e) if a.shape == e.shape else float("inf")
                 for a, e in zip(actual, expected, strict=True)]
        within = all(all_close(a, e, tol) for a, e in zip(actual, expected, strict=True))
        checks.append(ExportCheck(tuple(x.shape), max(diffs), within))
        if not within:
            raise HarnessError(
                f"cannot export: on input {list(x.shape)} ONNX Runtime differs from eager by "
                f"{max(diffs):.3g} (tolerance rtol={tol.rtol:g}, atol={tol.atol:g}); nothing written")
    if path is not None:
        # An existing file (or a symbolic link) is replaced only with force; never a special file.
        write_atomically(path, lambda f: f.write(onnx_bytes), force=force, overwrite=force)
    return ExportedModel(onnx_bytes, opset, tuple(checks))


def _export_bytes(model: nn.Module, example_input: torch.Tensor, opset: int) -> bytes:
    rank = example_input.dim()
    dynamic = {INPUT_NAME: {d % rank: name for d, name in DYNAMIC_DIMS.items()}}
    with torch.no_grad():
        outputs = _leaves(model(example_input))
    output_names = [f"output_{i}" for i in range(len(outputs))]
    dynamic.update({name: {0: "batch"} for name in output_names})
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo's, which costs ~7 s a
            # model here against ~0.6 s; for these conv nets both give the same graph.
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example_input,), buffer, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=output_names, dynamic_axes=dynamic)
    except Exception as exc:  # noqa: BLE001 - the exporter's many failure types: one line
        raise HarnessError(f"cannot export: torch.onnx.export fails: {error_line(exc)}") from None
    return buffer.getvalue()


class OnnxRuntimeSession:
    """Exported bytes in an ``onnxruntime.InferenceSession``, called like the model (CPU).

    Intra-op threads follow ``torch.get_num_threads()`` so the form competes on the same
    cores as eager; graph optimisation at its highest level.
    """

    def __init__(self, onnx_bytes: bytes, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        feed = {self.input_name: np.ascontiguousarray(x.detach().cpu().float().numpy())}
        outputs = [torch.from_numpy(out) for out in self.session.run(None, feed)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def eval(self) -> OnnxRuntimeSession:  # the timing helpers put every form in eval mode
        return self

"""ONNX export, verified before it is kept, and ONNX Runtime as a deployment form.

``export_onnx(model, example_input, verify_inputs)`` exports an eval-mode copy, checks the graph
and compares ONNX Runtime with eager PyTorch on every verification input before it returns (or
writes) the bytes; what it refuses is refused in one line. ``verification_inputs(contract)``
gives inputs that take different branches; ``OnnxRuntimeSession`` runs exported bytes like a
model; ``onnx_missing()`` says why the form is unavailable (onnx and onnxruntime are the
``[onnx]`` extra). The rules: docs/deployment.md.
"""

from __future__ import annotations

import copy
import inspect
import io
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

from harness.core.contract import InputContract, check_size
from harness.core.errors import HarnessError, error_line
from harness.core.fileio import write_atomically
from harness.core.introspect import held_modules
from harness.core.loading import UserCodeExit, call_user_code
from harness.core.text import counted, first_few
from harness.core.tolerances import DEPLOYMENT_TOLERANCES, all_close, max_abs_diff

# The opset every export names: 17 has every op these models use (BatchNormalization,
# Conv, LeakyRelu, GlobalAveragePool) and runs on every onnxruntime since 1.11.
OPSET = 17
INPUT_NAME = "waveform"
# Dimension index -> name of the axes left dynamic: the batch, and the time (last) axis.
DYNAMIC_DIMS: Mapping[int, str] = {0: "batch", -1: "time"}
# The verification inputs' loudness: a quiet clip (standard normal x 0.01, peak far below 1) and a
# loud one (peak 4, as unnormalised or clipped audio): a branch on loudness that the tracer froze at
# the example's value gives a different graph output on one of the two.
QUIET_SCALE = 0.01
LOUD_PEAK = 4.0
# The several-example batch size of the verification inputs (the batch axis is dynamic).
SEVERAL = 3


def onnx_missing() -> str | None:
    """Why ONNX export or ONNX Runtime cannot run here, or None when both are installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install 'rawnet2-harness[onnx]')"
    return None


def opset_range() -> tuple[int, int]:
    """The lowest and highest opset the TorchScript exporter writes (torch's own bounds)."""
    from torch.onnx import _constants

    return (getattr(_constants, "ONNX_MIN_OPSET", 7),
            getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", OPSET))


def unreachable_by_eval(model: nn.Module) -> list[str]:
    """Paths of modules the model holds outside ``nn.Module`` registration whose training
    behaviour ``eval()`` cannot switch off (BatchNorm, dropout, instance norm)."""
    sensitive = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd,
                 nn.modules.instancenorm._InstanceNorm)
    return [h.path for h in held_modules(model) if not h.registered and isinstance(h.obj, sensitive)]


@dataclass(frozen=True)
class VerifyInput:
    """One input the exported graph is verified on, and what it stands for (named in a refusal)."""

    label: str
    tensor: torch.Tensor


@dataclass(frozen=True)
class ExportCheck:
    """ONNX Runtime vs eager on one verification input, within tolerance (else the export is refused)."""

    input_shape: tuple[int, ...]
    max_abs_diff: float
    label: str = "input"


def verification_inputs(contract: InputContract, *, longer: int | None = None, seed: int = 0,
                        ) -> tuple[torch.Tensor, list[VerifyInput]]:
    """The example to trace (a batch of two at the declared length) and the inputs to verify on.

    Quiet and loud inputs (``QUIET_SCALE``, ``LOUD_PEAK``), batch 1 and ``SEVERAL``, at the
    contract's minimum length, its declared length and ``longer`` (default twice the declared
    one); the longest comes last. Seeded: the same inputs on every run.
    """
    generator = torch.Generator().manual_seed(seed)
    lengths = {"minimum": contract.min_length, "declared": contract.length,
               "longer": 2 * contract.length if longer is None else longer}

    def draw(batch: int, length: int) -> torch.Tensor:
        shape = contract.batch_shape(batch, length)
        check_size(shape)
        return torch.randn(shape, generator=generator)

    def made(loudness: str, batch: int, which: str) -> VerifyInput:
        x = draw(batch, lengths[which])
        if loudness == "quiet":
            x, how = x * QUIET_SCALE, f"x {QUIET_SCALE:g}"
        else:
            x, how = x * (LOUD_PEAK / x.abs().amax().clamp_min(1e-30)), f"peak {LOUD_PEAK:g}"
        return VerifyInput(f"{loudness} ({how}), batch {batch}, {which} length", x)

    example = draw(2, contract.length)
    verify = [made("quiet", 1, "minimum"), made("loud", SEVERAL, "minimum"), made("loud", 1, "declared"),
              made("quiet", SEVERAL, "declared"), made("loud", 1, "longer")]
    return example, verify


@dataclass(frozen=True)
class ExportedModel:
    """The verified ONNX bytes and what was checked."""

    onnx_bytes: bytes
    opset: int
    checks: tuple[ExportCheck, ...]


def _leaves(out: object) -> list[torch.Tensor]:
    return [leaf for leaf in pytree.tree_leaves(out) if isinstance(leaf, torch.Tensor)]


def export_onnx(model: nn.Module, example_input: torch.Tensor,
                verify_inputs: Sequence[torch.Tensor | VerifyInput], *, path: str | os.PathLike | None = None,
                force: bool = False, opset: int = OPSET) -> ExportedModel:
    """Export ``model`` (an eval-mode copy) to ONNX, verify it, and return (or write) the bytes.

    Refuses, with nothing written: a model the exporter cannot take as it is
    (``_check_exportable``); a trace that raised a ``TracerWarning``; a graph ``onnx.checker``
    rejects; any verification input on which ONNX Runtime fails or is not within
    ``DEPLOYMENT_TOLERANCES["onnxruntime"]`` of eager (the refusal names the input).
    """
    if missing := onnx_missing():
        raise HarnessError(f"cannot export to ONNX: {missing}")
    low, high = opset_range()
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        # Checked here: the exporter's own refusal comes after it has dumped its whole graph to stderr.
        raise HarnessError(f"cannot export: opset {opset!r} is not one the exporter writes ({low} to {high}; "
                           f"default {OPSET})")
    if hidden := unreachable_by_eval(model):
        shown = first_few(hidden, 3)
        raise HarnessError(
            f"cannot export: {len(hidden)} modules ({shown}) are held outside nn.Module registration, "
            "so eval() leaves them in training mode and the exporter would bake training behaviour into "
            "the graph (BatchNormalization with batch statistics: every score would depend on its "
            "batch-mates, and no exported graph equals the model's eval output)")
    import onnx

    eager = copy.deepcopy(model).eval()
    outputs = _check_exportable(eager, example_input)
    onnx_bytes = _export_bytes(eager, example_input, len(outputs), opset)
    try:
        onnx.checker.check_model(onnx.load_from_string(onnx_bytes), full_check=True)
    except Exception as exc:  # noqa: BLE001 - any checker complaint refuses the export
        raise HarnessError(f"cannot export: onnx.checker rejects the graph: {error_line(exc)}") from None
    try:
        session = OnnxRuntimeSession(onnx_bytes)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's failure types: one line
        raise HarnessError(f"cannot export: ONNX Runtime cannot load the graph: {error_line(exc)}") from None
    checks = [_verify(eager, session, item if isinstance(item, VerifyInput) else VerifyInput("input", item))
              for item in verify_inputs]
    if path is not None:
        # An existing file (or a symbolic link) is replaced only with force; never a special file.
        write_atomically(path, lambda f: f.write(onnx_bytes), force=force, overwrite=force)
    return ExportedModel(onnx_bytes, opset, tuple(checks))


def _check_exportable(model: nn.Module, example: torch.Tensor) -> list[torch.Tensor]:
    """The eval-mode output's tensors on ``example``, after refusing what the exporter cannot take
    as the model runs: a forward of more than one input, a model that is not float32 (audio comes
    in as float32), an output that is not a tensor or a plain tuple of tensors."""
    if len(inputs := _required_inputs(model)) > 1:
        raise HarnessError(f"cannot export {type(model).__name__}: its forward takes {len(inputs)} inputs "
                           f"({', '.join(inputs)}); the exported graph takes one, the waveform")
    if other := sorted({str(t.dtype).removeprefix("torch.") for t in (*model.parameters(), *model.buffers())
                        if t.is_floating_point() and t.dtype != torch.float32}):
        raise HarnessError(f"cannot export {type(model).__name__}: its weights are {', '.join(other)}, not "
                           "float32; the exported graph takes float32 audio (export model.float())")
    try:
        with torch.no_grad():
            out = call_user_code(model, example, what="the forward")
    except UserCodeExit:
        raise
    except Exception as exc:  # noqa: BLE001 - a forward that fails on its own example: one line
        raise HarnessError(f"cannot export {type(model).__name__}: its forward fails on the example "
                           f"{list(example.shape)}: {error_line(exc)}") from None
    if isinstance(out, torch.Tensor):
        return [out]
    if type(out) in (tuple, list) and out and all(isinstance(t, torch.Tensor) for t in out):
        return list(out)
    raise HarnessError(f"cannot export {type(model).__name__}: its output is {_describe_output(out)}; the "
                       "exporter takes a tensor or a plain tuple of tensors")


def _required_inputs(model: nn.Module) -> list[str]:
    """The names of the forward's parameters that need an argument."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a builtin forward: nothing to read, let the call decide
        return []
    return [p.name for p in parameters if p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _describe_output(out: object) -> str:
    if out is None:
        return "None"
    if isinstance(out, tuple) and hasattr(type(out), "_fields"):
        return (f"a NamedTuple ({type(out).__name__}: {', '.join(type(out)._fields)}), whose field names "
                "the graph would drop")
    if isinstance(out, Mapping):
        return f"a {type(out).__name__} (keys {', '.join(map(repr, list(out)[:4]))})"
    if isinstance(out, (tuple, list)):
        kinds = sorted({type(item).__name__ for item in out})
        return f"a {type(out).__name__} of {', '.join(kinds) or 'nothing'}"
    return f"a {type(out).__name__}"


def _verify(eager: nn.Module, session: OnnxRuntimeSession, item: VerifyInput) -> ExportCheck:
    """ONNX Runtime vs eager on one input; ``HarnessError`` naming the input when they differ."""
    x, where = item.tensor, f"on input {list(item.tensor.shape)} ({item.label})"
    tol = DEPLOYMENT_TOLERANCES["onnxruntime"]
    try:
        with torch.no_grad():
            expected = _leaves(call_user_code(eager, x, what="the forward"))
    except UserCodeExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the model's own failure on an input of its contract
        raise HarnessError(f"cannot export: {where} the eager forward fails: {error_line(exc)}; nothing "
                           "written") from None
    try:
        actual = _leaves(session(x))
    except Exception as exc:  # noqa: BLE001 - onnxruntime's failure types: one line
        raise HarnessError(f"cannot export: {where} ONNX Runtime fails where eager runs: "
                           f"{error_line(exc)}; nothing written") from None
    if len(actual) != len(expected):
        raise HarnessError(f"cannot export: {where} ONNX Runtime gives {len(actual)} outputs, "
                           f"eager {len(expected)}; nothing written")
    pairs = list(zip(actual, expected, strict=True))
    if bad := [(a.shape, e.shape) for a, e in pairs if a.shape != e.shape]:
        raise HarnessError(f"cannot export: {where} ONNX Runtime gives shape {list(bad[0][0])} where eager "
                           f"gives {list(bad[0][1])}; nothing written")
    diff = max(max_abs_diff(a, e) for a, e in pairs)
    if not all(all_close(a, e, tol) for a, e in pairs):
        raise HarnessError(
            f"cannot export: {where} ONNX Runtime differs from eager by {diff:.3g} (tolerance "
            f"rtol={tol.rtol:g}, atol={tol.atol:g}); nothing written")
    return ExportCheck(tuple(x.shape), diff, item.label)


def _export_bytes(model: nn.Module, example_input: torch.Tensor, n_outputs: int, opset: int) -> bytes:
    rank = example_input.dim()
    dynamic = {INPUT_NAME: {d % rank: name for d, name in DYNAMIC_DIMS.items()}}
    output_names = [f"output_{i}" for i in range(n_outputs)]
    dynamic.update({name: {0: "batch"} for name in output_names})
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(record=True) as caught:
            # The TorchScript exporter is deprecated in favour of dynamo's, which costs ~7 s a
            # model here against ~0.6 s; for these conv nets both give the same graph. Its other
            # warnings are noise; a TracerWarning from the model's code (torch's own are left
            # ignored, as torch.jit does) means the trace froze a Python value: collected, refused.
            warnings.simplefilter("ignore")
            warnings.simplefilter("always", torch.jit.TracerWarning)
            torch.jit.TracerWarning.ignore_lib_warnings()
            torch.onnx.export(model, (example_input,), buffer, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=output_names, dynamic_axes=dynamic)
    except Exception as exc:  # noqa: BLE001 - the exporter's many failure types: one line
        raise HarnessError(f"cannot export: torch.onnx.export fails: {error_line(exc)}") from None
    if traced := [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]:
        first = traced[0]
        raise HarnessError(
            f"cannot export: the trace is not the model's function: {_first_line(first.message)} "
            f"({os.path.basename(first.filename)}:{first.lineno}; {counted(len(traced), 'tracer warning')}): "
            "a Python branch or value taken from a tensor is frozen at the example input's value; nothing "
            "written")
    return buffer.getvalue()


def _first_line(message: Warning | str) -> str:
    text = str(message).strip()
    return text.splitlines()[0].strip() if text else type(message).__name__


class OnnxRuntimeSession:
    """Exported bytes in an ``onnxruntime.InferenceSession``, called like the model (CPU).

    Intra-op threads follow ``torch.get_num_threads()`` so the form competes on the same
    cores as eager; graph optimisation at its highest level.
    """

    def __init__(self, onnx_bytes: bytes, *, threads: int | None = None) -> None:
        from harness.core.ort import inference_session

        self.session = inference_session(onnx_bytes, threads=threads or torch.get_num_threads())
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        feed = {self.input_name: np.ascontiguousarray(x.detach().cpu().float().numpy())}
        outputs = [torch.from_numpy(out) for out in self.session.run(None, feed)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def eval(self) -> OnnxRuntimeSession:  # the timing helpers put every form in eval mode
        return self

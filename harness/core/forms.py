"""The forms a model is deployed in, and how far each one's outputs are from eager's.

* ``optimize_for_inference(model)`` folds each Conv+BatchNorm pair and compiles the
  result, falling back to the folded eager model when compiling fails.
* ``compare_form`` / ``compare_forms`` measure the differences the report
  prints and the tests bound (``harness.core.tolerances.DEPLOYMENT_TOLERANCES``).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.module import register_module_forward_hook
from torch.nn.utils.fusion import fuse_conv_bn_eval

from harness.core.errors import HarnessError
from harness.core.introspect import batchnorms
from harness.core.text import first_few
from harness.core.tolerances import DEPLOYMENT_TOLERANCES, Tolerance, abs_diff, all_close

# --- inference form ------------------------------------------------------------------------

# oneDNN's 1-D convolutions cost about twice as much per sample in batches of 3 or more
# as in batches of one or two (2-core CI CPU, 1 and 2 threads, T = 4000..64600: eager
# skip_modules at 8 x 64600 took 2.86 s in one batch, 1.12 s in 2-sample chunks). An
# eval-mode model is batch independent (the batch_independence audit), so splitting
# the batch changes only the float summation order, well inside the float32 tolerance.
CPU_BATCH_CHUNK = 2


@dataclass
class InferenceInfo:
    """What ``optimize_for_inference`` produced.

    ``compiled`` is None until the first call (``torch.compile`` is lazy), then True
    when the compiled forward ran, False when it failed and the folded eager model is
    used instead (``fallback_reason`` says why).
    """

    folded: list[str]
    unfolded_batchnorms: list[str]
    backend: str | None
    cpu_batch_chunk: int | None = None
    compiled: bool | None = None
    fallback_reason: str | None = None

    @property
    def form(self) -> str:
        chunks = f", CPU batches in chunks of {self.cpu_batch_chunk}" if self.cpu_batch_chunk else ""
        if self.backend is None:
            return f"folded eager{chunks}"
        if self.compiled is None:
            return f"folded, compiled with {self.backend}{chunks} (not run yet)"
        if self.compiled:
            return f"folded, compiled with {self.backend}{chunks}"
        return f"folded eager{chunks} (compiling with {self.backend} failed: {self.fallback_reason})"


class InferenceModel(nn.Module):
    """A folded eval-mode copy of a model, called through ``torch.compile`` where that works."""

    def __init__(self, model: nn.Module, info: InferenceInfo,
                 backend: str | Callable | None) -> None:
        super().__init__()
        self.model = model
        self.info = info
        # A compiled function, not a module: registering the compiled wrapper would list
        # every parameter twice.
        self._compiled = None if backend is None else torch.compile(model.forward, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunk = self.info.cpu_batch_chunk
        if chunk and x.device.type == "cpu" and x.dim() > 0 and x.shape[0] > chunk:
            return torch.cat([self._forward(part) for part in x.split(chunk)])
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is None or self.info.compiled is False:
            return self.model(x)
        try:
            out = self._compiled(x)
        except Exception as exc:  # compile is lazy: any backend failure surfaces here
            out = self.model(x)  # a model or input error raises again here, unmasked
            self.info.compiled = False
            self.info.fallback_reason = _root_cause(exc)
            warnings.warn(f"optimize_for_inference: {self.info.form}", RuntimeWarning, stacklevel=2)
            return out
        self.info.compiled = True
        return out


def _root_cause(exc: BaseException) -> str:
    """``Outer (Inner: first line)`` for a wrapped error such as dynamo's BackendCompilerFailed."""
    root = exc
    while (inner := getattr(root, "inner_exception", None) or root.__cause__) is not None:
        root = inner
    lines = [line for line in str(root).splitlines() if line.strip()]
    text = f"{type(root).__name__}: {lines[0].strip() if lines else ''}".rstrip(": ")
    return text if root is exc else f"{type(exc).__name__} ({text})"


def fold_batchnorms(model: nn.Module, example_input: torch.Tensor | None = None) -> list[str]:
    """Fold each eval-mode BatchNorm into the convolution that feeds it, in place.

    The pairs come from a traced forward on ``example_input`` (default: ``trace_input``):
    a BatchNorm whose input is exactly the output of a convolution called just before it,
    wherever the two are held (inside an ``nn.Sequential`` or as attributes of a block, as
    torchvision's BasicBlock holds ``conv1``/``bn1``). The convolution is replaced by the
    fused one and the BatchNorm by an ``nn.Identity``. When no trace can be made (the
    forward refuses the input), adjacent pairs inside each ``nn.Sequential`` are folded
    instead. Returns the paths of the folded BatchNorms. ``model`` must be in eval mode
    (folding bakes in the running statistics, which only eval mode uses).
    """
    if training := [n or "(model)" for n, m in model.named_modules() if m.training]:
        shown = ", ".join(training[:3])
        raise HarnessError(f"fold_batchnorms needs an eval-mode model; in training mode: {shown}")
    pairs = conv_batchnorm_pairs(model, example_input)
    if pairs is None:
        pairs = [(f"{p}.{i}" if p else str(i), f"{p}.{i + 1}" if p else str(i + 1))
                 for p, seq in model.named_modules() if isinstance(seq, nn.Sequential)
                 for i in range(len(seq) - 1) if _foldable(seq[i], seq[i + 1])]
    for conv_path, norm_path in pairs:
        conv, norm = model.get_submodule(conv_path), model.get_submodule(norm_path)
        _replace(model, conv_path, fuse_conv_bn_eval(conv, norm))
        _replace(model, norm_path, nn.Identity())
    return [norm_path for _, norm_path in pairs]


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return (isinstance(conv, _ConvNd) and not conv.transposed and isinstance(norm, _BatchNorm)
            and norm.running_mean is not None and norm.num_features == conv.out_channels)


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, module)


def trace_input(model: nn.Module) -> torch.Tensor | None:
    """A small input for the first convolution (``[2, C, 64]`` for a Conv1d), on its device; or None."""
    first = next((m for m in model.modules() if isinstance(m, _ConvNd)), None)
    if first is None:
        return None
    spatial = (64,) * (first.weight.dim() - 2)
    x = torch.randn(2, first.in_channels, *spatial, generator=torch.Generator().manual_seed(0))
    return x.to(device=first.weight.device, dtype=first.weight.dtype)


def conv_batchnorm_pairs(model: nn.Module, example_input: torch.Tensor | None = None,
                         ) -> list[tuple[str, str]] | None:
    """(conv path, BatchNorm path) for every registered BatchNorm fed directly by a convolution.

    Observed in one eval forward: the BatchNorm's input must be the very tensor the
    convolution returned, and the convolution must have been called once (a shared one
    cannot be folded for one of its users). None when the forward fails on the input.
    """
    x = trace_input(model) if example_input is None else example_input
    if x is None:
        return []
    paths = {id(m): p for p, m in model.named_modules() if p}
    # output tensor id -> (conv that returned it, the tensor: held so that its id is not reused)
    produced: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    calls: dict[int, int] = {}
    pairs: list[tuple[str, str]] = []

    def after(module: nn.Module, args: tuple, output: object) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1
        if isinstance(module, _ConvNd) and isinstance(output, torch.Tensor):
            produced[id(output)] = (module, output)
        elif isinstance(module, _BatchNorm) and args and isinstance(args[0], torch.Tensor):
            conv = produced.get(id(args[0]), (None,))[0]
            if conv is not None and _foldable(conv, module) and id(conv) in paths and id(module) in paths:
                pairs.append((paths[id(conv)], paths[id(module)]))

    handle = register_module_forward_hook(after)
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # noqa: BLE001 - the caller falls back to the structural scan
        return None
    finally:
        handle.remove()
    return [(c, n) for c, n in dict.fromkeys(pairs) if calls.get(id(model.get_submodule(c))) == 1]


def optimize_for_inference(
    model: nn.Module, *, backend: str | Callable | None = "inductor",
    cpu_batch_chunk: int | None = CPU_BATCH_CHUNK, example_input: torch.Tensor | None = None,
) -> InferenceModel:
    """The folded, compiled eval-mode equivalent of ``model``; ``model`` itself is not modified.

    ``example_input`` is what ``fold_batchnorms`` traces to find the Conv->BatchNorm pairs
    (default: a small input for the first convolution).

    ``cpu_batch_chunk``: a CPU input batch larger than this runs in chunks of this many
    samples (see ``CPU_BATCH_CHUNK``; None: never split). ``backend`` is passed to
    ``torch.compile`` (None: no compiling). When compiling
    fails at the first call (e.g. no C++ compiler for inductor) the folded eager model
    is used from then on, with a ``RuntimeWarning``; ``result.info`` records the form.

    Refuses a model that holds BatchNorms outside ``nn.Module`` registration (in a plain
    tuple, say): ``eval()`` cannot reach them, so the model's eval output uses
    batch statistics, which no folded model computes.
    """
    hidden = [h.path for h in batchnorms(model) if not h.registered]
    if hidden:
        shown = first_few(hidden, 3)
        raise HarnessError(
            f"cannot optimize for inference: {len(hidden)} BatchNorms ({shown}) are held outside "
            "nn.Module registration, so eval() leaves them in training mode and the model's eval "
            "output uses batch statistics, which no folded model computes; register them as submodules "
            "(an nn.ModuleList, not a tuple) or copy the weights into a model that does"
        )
    folded_model = copy.deepcopy(model).eval()
    folded_model.requires_grad_(False)
    folded = fold_batchnorms(folded_model, example_input)
    unfolded = [n for n, m in folded_model.named_modules() if isinstance(m, _BatchNorm)]
    backend_name = None if backend is None else getattr(backend, "__name__", str(backend))
    if cpu_batch_chunk is not None and cpu_batch_chunk < 1:
        raise HarnessError(f"cpu_batch_chunk must be a positive sample count or None, got {cpu_batch_chunk}")
    info = InferenceInfo(folded=folded, unfolded_batchnorms=unfolded, backend=backend_name,
                         cpu_batch_chunk=cpu_batch_chunk)
    return InferenceModel(folded_model, info, backend)


# --- measured differences ------------------------------------------------------------------


def max_differences(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max abs difference, max relative difference) of ``actual`` vs ``expected``, in float64.

    NaN as everywhere (``harness.core.tolerances.abs_diff``): 0 against NaN, inf against a number.
    """
    if actual.shape != expected.shape:
        raise HarnessError(f"cannot compare outputs of shapes {tuple(actual.shape)} and "
                           f"{tuple(expected.shape)}")
    diff = abs_diff(actual, expected)
    if not diff.numel():
        return 0.0, 0.0
    scale = expected.detach().double().cpu().abs().clamp_min(torch.finfo(torch.float64).tiny)
    return float(diff.max()), float((diff / scale.nan_to_num(nan=1.0)).max())



# --- deployment forms ----------------------------------------------------------------------


# Each runner returns the form's output and, where the form may not be what was asked for,
# what actually ran.
FormOutput = tuple[torch.Tensor, str | None]


def _folded(model: nn.Module, x: torch.Tensor, backend: str | Callable) -> FormOutput:
    return optimize_for_inference(model, backend=None)(x), None


def _compiled(model: nn.Module, x: torch.Tensor, backend: str | Callable) -> FormOutput:
    optimized = optimize_for_inference(model, backend=backend)
    with warnings.catch_warnings():  # the fallback is reported in the note instead
        warnings.simplefilter("ignore", RuntimeWarning)
        out = optimized(x)
    return out, optimized.info.form


def _float64(model: nn.Module, x: torch.Tensor, backend: str | Callable) -> FormOutput:
    return copy.deepcopy(model).double()(x.double()), None


def _bfloat16_autocast(model: nn.Module, x: torch.Tensor, backend: str | Callable) -> FormOutput:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(x), None


@contextlib.contextmanager
def ieee_float32_on_cuda() -> Iterator[None]:
    """Switch TF32 off for cuDNN convolutions and cuBLAS matmuls, restoring the settings after.

    PyTorch enables TF32 for cuDNN convolutions by default; parity with the CPU is a float32
    question, so the ``cuda`` form is measured without it.
    """
    if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9: per-backend fp32_precision
        flags, attr, off = [torch.backends.cudnn.conv, torch.backends.cuda.matmul], "fp32_precision", "ieee"
    else:
        flags, attr, off = [torch.backends.cudnn, torch.backends.cuda.matmul], "allow_tf32", False
    saved = [getattr(f, attr) for f in flags]
    try:
        for f in flags:
            setattr(f, attr, off)
        yield
    finally:
        for f, value in zip(flags, saved, strict=True):
            setattr(f, attr, value)


def _cuda(model: nn.Module, x: torch.Tensor, backend: str | Callable) -> FormOutput:
    with ieee_float32_on_cuda():
        return copy.deepcopy(model).cuda()(x.cuda()), torch.cuda.get_device_name()


def _onnxruntime(model: nn.Module, x: torch.Tensor, backend: str | Callable) -> FormOutput:
    from harness.core.onnx import OnnxRuntimeSession, export_onnx

    exported = export_onnx(model, x, verify_inputs=())  # compare_form itself is the verification
    import onnxruntime

    return OnnxRuntimeSession(exported.onnx_bytes)(x), f"onnxruntime {onnxruntime.__version__}"


def _no_cuda() -> str | None:
    return None if torch.cuda.is_available() else "needs a CUDA GPU; none is available"


def _no_onnx() -> str | None:
    from harness.core.onnx import onnx_missing

    return onnx_missing()


@dataclass(frozen=True)
class DeploymentForm:
    name: str
    description: str
    run: Callable[[nn.Module, torch.Tensor, str | Callable], FormOutput] = field(repr=False)
    needs_cuda: bool = False
    # Why the form cannot run on this machine (a missing GPU or package), or None.
    unavailable: Callable[[], str | None] = field(default=lambda: None, repr=False)

    @property
    def missing(self) -> str | None:
        return self.unavailable()


_FORMS = (
    DeploymentForm("folded", "BatchNorm folded into the preceding convolutions (eager)", _folded),
    DeploymentForm("compiled", "folded, then torch.compile", _compiled),
    DeploymentForm("float64", "the model and input cast to float64", _float64),
    DeploymentForm("bfloat16_autocast", "torch.autocast('cpu', dtype=torch.bfloat16)", _bfloat16_autocast),
    DeploymentForm("cuda", "the same float32 model on a CUDA GPU, TF32 off", _cuda,
                   needs_cuda=True, unavailable=_no_cuda),
    DeploymentForm("onnxruntime", "exported to ONNX (dynamic batch and time axes), run by ONNX Runtime on "
                   "the CPU", _onnxruntime, unavailable=_no_onnx),
)
DEPLOYMENT_FORMS: Mapping[str, DeploymentForm] = MappingProxyType({f.name: f for f in _FORMS})


@dataclass(frozen=True)
class FormDifference:
    """A deployment form's output vs the float32 eager CPU output of the same eval-mode model."""

    form: str
    max_abs: float
    max_rel: float
    tolerance: Tolerance
    within: bool
    ran: str | None = None  # what ran, where it may differ from the form's name (compile fallback, GPU)


def compare_form(model: nn.Module, x: torch.Tensor, form: str, *,
                 compile_backend: str | Callable = "inductor") -> FormDifference:
    """Run ``model`` (float32, CPU) eagerly and in ``form``, both in eval mode; measure and judge.

    Works on a copy: ``model``'s mode and state are left as they were.
    """
    if form not in DEPLOYMENT_FORMS:
        raise HarnessError(f"unknown deployment form {form!r}; known: {', '.join(DEPLOYMENT_FORMS)}")
    if missing := DEPLOYMENT_FORMS[form].missing:
        raise HarnessError(f"deployment form {form!r} {missing}")
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        expected = model(x)
        actual, ran = DEPLOYMENT_FORMS[form].run(model, x, compile_backend)
    actual = actual.float().cpu()
    tol = DEPLOYMENT_TOLERANCES[form]
    max_abs, max_rel = max_differences(actual, expected)
    within = all_close(actual, expected, tol)
    return FormDifference(form, max_abs, max_rel, tol, within, ran)


def compare_forms(model: nn.Module, x: torch.Tensor, *, compile_backend: str | Callable = "inductor",
                  ) -> list[FormDifference]:
    """``compare_form`` for every deployment form this machine can run."""
    return [compare_form(model, x, name, compile_backend=compile_backend)
            for name, form in DEPLOYMENT_FORMS.items() if form.missing is None]

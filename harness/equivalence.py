"""Where two models compute the same function, and the forms a model is deployed in.

* ``copy_weights(src, dst)`` moves every parameter and buffer between live models of
  any two layouts (``harness.layouts.canonical_modules`` names them), tuple_blocks'
  unregistered tuple members included.
* ``seed_weights(model, seed)`` gives every canonical module deterministic random
  weights *and* BatchNorm statistics (default init's mean 0 / var 1 would hide
  folding bugs); modules with the same canonical name get the same values in every
  layout.
* ``optimize_for_inference(model)`` folds each Conv+BatchNorm pair and compiles the
  result, falling back to the folded eager model when compiling fails.
* ``compare_variants`` and ``compare_forms`` measure the differences the report
  prints and the tests bound (``harness.core.tolerances.DEPLOYMENT_TOLERANCES``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils.fusion import fuse_conv_bn_eval

from harness.core.errors import HarnessError
from harness.core.introspect import batchnorms
from harness.layouts import canonical_modules
from harness.core.tolerances import DEPLOYMENT_TOLERANCES, Tolerance
from harness.variants import SUBJECTS, build

# --- weights -------------------------------------------------------------------------------


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy every parameter and buffer of ``src`` into ``dst``, module by canonical module.

    Both models keep their own tensors (device and dtype of ``dst`` are kept; values
    are copied in place). Raises ``HarnessError`` naming every module or tensor that
    has no counterpart or a different shape; nothing is copied then.
    """
    src_modules, dst_modules = canonical_modules(src), canonical_modules(dst)
    problems = []
    if missing := [n for n in src_modules if n not in dst_modules]:
        problems.append(f"the target has no module for {', '.join(missing)}")
    if unfilled := [n for n in dst_modules if n not in src_modules]:
        problems.append(f"the source has no module for {', '.join(unfilled)}")
    pairs = []
    for name in (n for n in src_modules if n in dst_modules):
        src_state = src_modules[name].state_dict(keep_vars=True)
        dst_state = dst_modules[name].state_dict(keep_vars=True)
        for key in sorted(src_state.keys() ^ dst_state.keys()):
            side = "target" if key in src_state else "source"
            problems.append(f"the {side} has no tensor {name}.{key}")
        for key in (k for k in src_state if k in dst_state):
            s, d = src_state[key], dst_state[key]
            if s.shape != d.shape:
                problems.append(f"{name}.{key} has shape {tuple(s.shape)} in the source "
                                f"but {tuple(d.shape)} in the target")
            else:
                pairs.append((s, d))
    if problems:
        raise HarnessError("cannot copy weights between these layouts: " + "; ".join(problems))
    with torch.no_grad():
        for s, d in pairs:
            d.copy_(s)


# Ranges for seed_weights: conv/linear weights keep unit activation variance (LeCun
# uniform), so outputs stay input-dependent through 13 conv layers instead of
# collapsing to the biases or saturating the sigmoid; BN values are kept away from
# the identity (weight 1, bias 0, mean 0, var 1) so that folding is really exercised.
_BIAS_RANGE = (-0.1, 0.1)
_BN_RANGES = {
    "weight": (0.5, 1.5),
    "bias": (-0.2, 0.2),
    "running_mean": (-0.2, 0.2),
    "running_var": (0.5, 2.0),
}


def _fill_uniform(tensor: torch.Tensor, low: float, high: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)


def seed_weights(model: nn.Module, seed: int) -> nn.Module:
    """Overwrite every weight and BatchNorm statistic of ``model`` from ``seed``; returns ``model``.

    Each canonical module draws from its own generator (seeded by ``seed`` and its
    canonical name), so two layouts seeded alike hold identical values in the modules
    they share, whatever else they hold. Uses the CPU Mersenne twister only, so the
    values are the same on every platform.
    """
    for name, module in canonical_modules(model).items():
        # The CPU generator keeps only 32 bits of its seed: hash seed and name together.
        generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{name}".encode()))
        for sub in module.modules():
            if isinstance(sub, (_ConvNd, nn.Linear)):
                bound = math.sqrt(3.0 / sub.weight[0].numel())
                _fill_uniform(sub.weight, -bound, bound, generator)
                if sub.bias is not None:
                    _fill_uniform(sub.bias, *_BIAS_RANGE, generator)
            elif isinstance(sub, _BatchNorm):
                for attr, (low, high) in _BN_RANGES.items():
                    _fill_uniform(getattr(sub, attr), low, high, generator)
                sub.num_batches_tracked.zero_()
    return model


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


def fold_batchnorms(model: nn.Module) -> list[str]:
    """Fold each eval-mode BatchNorm into the convolution before it, in place.

    Every ``nn.Sequential`` (conv1, each residual block's main path, each projection
    shortcut) is searched for a convolution directly followed by a BatchNorm over its
    outputs; the pair becomes one convolution and an ``nn.Identity``. Returns the
    paths of the folded BatchNorms. ``model`` must be in eval mode (folding bakes in the
    running statistics, which only eval mode uses).
    """
    if training := [n or "(model)" for n, m in model.named_modules() if m.training]:
        shown = ", ".join(training[:3])
        raise HarnessError(f"fold_batchnorms needs an eval-mode model; in training mode: {shown}")
    folded = []
    for path, seq in [(p, m) for p, m in model.named_modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, norm = seq[i], seq[i + 1]
            if (isinstance(conv, _ConvNd) and not conv.transposed and isinstance(norm, _BatchNorm)
                    and norm.running_mean is not None and norm.num_features == conv.out_channels):
                seq[i] = fuse_conv_bn_eval(conv, norm)
                seq[i + 1] = nn.Identity()
                folded.append(f"{path}.{i + 1}" if path else str(i + 1))
    return folded


def optimize_for_inference(
    model: nn.Module, *, backend: str | Callable | None = "inductor",
    cpu_batch_chunk: int | None = CPU_BATCH_CHUNK,
) -> InferenceModel:
    """The folded, compiled eval-mode equivalent of ``model``; ``model`` itself is not modified.

    ``cpu_batch_chunk``: a CPU input batch larger than this runs in chunks of this many
    samples (see ``CPU_BATCH_CHUNK``; None: never split). ``backend`` is passed to
    ``torch.compile`` (None: no compiling). When compiling
    fails at the first call (e.g. no C++ compiler for inductor) the folded eager model
    is used from then on, with a ``RuntimeWarning``; ``result.info`` records the form.

    Refuses a model that holds BatchNorms outside ``nn.Module`` registration (as
    tuple_blocks does): ``eval()`` cannot reach them, so the model's eval output uses
    batch statistics, which no folded model computes.
    """
    hidden = [h.path for h in batchnorms(model) if not h.registered]
    if hidden:
        shown = ", ".join(hidden[:3]) + (f" and {len(hidden) - 3} more" if len(hidden) > 3 else "")
        raise HarnessError(
            f"cannot optimize for inference: {len(hidden)} BatchNorms ({shown}) are held outside "
            "nn.Module registration, so eval() leaves them in training mode and the model's eval "
            "output uses batch statistics, which no folded model computes; copy the weights into "
            "skip_modules with copy_weights first"
        )
    folded_model = copy.deepcopy(model).eval()
    folded_model.requires_grad_(False)
    folded = fold_batchnorms(folded_model)
    unfolded = [n for n, m in folded_model.named_modules() if isinstance(m, _BatchNorm)]
    backend_name = None if backend is None else getattr(backend, "__name__", str(backend))
    if cpu_batch_chunk is not None and cpu_batch_chunk < 1:
        raise HarnessError(f"cpu_batch_chunk must be a positive sample count or None, got {cpu_batch_chunk}")
    info = InferenceInfo(folded=folded, unfolded_batchnorms=unfolded, backend=backend_name,
                         cpu_batch_chunk=cpu_batch_chunk)
    return InferenceModel(folded_model, info, backend)


# --- measured differences ------------------------------------------------------------------


def max_differences(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max abs difference, max relative difference) of ``actual`` vs ``expected``, in float64."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if a.shape != e.shape:
        raise HarnessError(f"cannot compare outputs of shapes {tuple(a.shape)} and {tuple(e.shape)}")
    diff = (a - e).abs()
    rel = diff / e.abs().clamp_min(torch.finfo(torch.float64).tiny)
    return float(diff.max()), float(rel.max())


@dataclass(frozen=True)
class VariantDifference:
    """Outputs of two variants holding the same weights, on the same input."""

    a: str
    b: str
    mode: str  # "train" or "eval"
    weights: str  # how b got a's weights: "copy_weights" or a convert_state_dict policy
    input_shape: tuple[int, ...]
    max_abs: float
    max_rel: float

    @property
    def identical(self) -> bool:
        return self.max_abs == 0.0


def shared_weights(a: str, b: str, seed: int) -> tuple[nn.Module, nn.Module, str]:
    """Variant ``a`` with seeded weights and variant ``b`` holding the same function's weights.

    Layouts that hold the same modules share them through ``copy_weights``; otherwise
    ``a``'s state_dict is converted to ``b`` under the ``preserve-function`` policy.
    """
    model_a, model_b = seed_weights(build(a), seed), build(b)
    if canonical_modules(model_a).keys() == canonical_modules(model_b).keys():
        copy_weights(model_a, model_b)
        return model_a, model_b, "copy_weights"
    from harness.checkpoints import convert_state_dict

    state, _ = convert_state_dict(model_a.state_dict(), SUBJECTS[b].checkpoint_layout,
                                  source=SUBJECTS[a].checkpoint_layout, policy="preserve-function")
    model_b.load_state_dict(state)
    return model_a, model_b, "preserve-function"


def compare_variants(a: str, b: str, mode: str, *, seed: int = 0, x: torch.Tensor | None = None,
                     ) -> VariantDifference:
    """Max difference between variants ``a`` and ``b`` holding the same weights, in ``mode``.

    The default input is three seeded 4000-sample waveforms.
    """
    if mode not in ("train", "eval"):
        raise HarnessError(f"mode must be 'train' or 'eval', not {mode!r}")
    if x is None:
        x = torch.randn(3, 1, 4000, generator=torch.Generator().manual_seed(seed))
    model_a, model_b, how = shared_weights(a, b, seed)
    with torch.no_grad():
        out_a = model_a.train(mode == "train")(x)
        out_b = model_b.train(mode == "train")(x)
    return VariantDifference(a, b, mode, how, tuple(x.shape), *max_differences(out_a, out_b))


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


@dataclass(frozen=True)
class DeploymentForm:
    name: str
    description: str
    run: Callable[[nn.Module, torch.Tensor, str | Callable], FormOutput] = field(repr=False)
    needs_cuda: bool = False


_FORMS = (
    DeploymentForm("folded", "BatchNorm folded into the preceding convolutions (eager)", _folded),
    DeploymentForm("compiled", "folded, then torch.compile", _compiled),
    DeploymentForm("float64", "the model and input cast to float64", _float64),
    DeploymentForm("bfloat16_autocast", "torch.autocast('cpu', dtype=torch.bfloat16)", _bfloat16_autocast),
    DeploymentForm("cuda", "the same float32 model on a CUDA GPU, TF32 off", _cuda,
                   needs_cuda=True),
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
    if DEPLOYMENT_FORMS[form].needs_cuda and not torch.cuda.is_available():
        raise HarnessError(f"deployment form {form!r} needs a CUDA GPU; none is available")
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        expected = model(x)
        actual, ran = DEPLOYMENT_FORMS[form].run(model, x, compile_backend)
    actual = actual.float().cpu()
    tol = DEPLOYMENT_TOLERANCES[form]
    max_abs, max_rel = max_differences(actual, expected)
    within = bool(torch.isclose(actual, expected, rtol=tol.rtol, atol=tol.atol).all())
    return FormDifference(form, max_abs, max_rel, tol, within, ran)


def compare_forms(model: nn.Module, x: torch.Tensor, *, compile_backend: str | Callable = "inductor",
                  ) -> list[FormDifference]:
    """``compare_form`` for every deployment form this machine can run."""
    cuda = torch.cuda.is_available()
    return [compare_form(model, x, name, compile_backend=compile_backend)
            for name, form in DEPLOYMENT_FORMS.items() if cuda or not form.needs_cuda]

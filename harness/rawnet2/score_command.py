"""``score``'s model path: a variant's detection scores for audio files, at its own contract.

``run_score(request)`` refuses, before any file is decoded, what cannot be scored; builds the
model and its deployment form, which must match eager on the run's first batch (``VerifiedForm``);
and writes the scores to stdout or a resumable score log (docs/scoring.md). An ONNX Runtime run
leaves its export and a request record in the export cache, so the next run of the command can
score without torch (``harness.rawnet2.score_cached``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn as nn

from harness.core.audits.cli_support import parse_positive_ints
from harness.core.contract import InputContract, ScoreTransform
from harness.core.errors import HarnessError, error_line
from harness.core.export_cache import ExportCache, cache_key, open_cache
from harness.core.fileio import check_not_read, check_regular_input
from harness.core.tolerances import DEPLOYMENT_TOLERANCES, Tolerance, all_close, max_abs_diff
from harness.rawnet2.audio import NUM_SAMPLES
from harness.rawnet2.checkpoints import get_audio_model
from harness.rawnet2.deploy import (
    CACHED_EXPORT,
    INT8_FORM,
    export_cache_parts,
    factory_name,
    weights_identity,
)
from harness.rawnet2.registry import VariantSpec, in_family, resolve
from harness.rawnet2.score_cached import remember
from harness.rawnet2.score_request import ScoreRequest
from harness.rawnet2.score_results import RANDOM_WEIGHTS_SEED, random_weights_warning
from harness.rawnet2.score_run import ScoreRun, sigterm_raises
from harness.rawnet2.scorelog import ScoreLog, run_fingerprint
from harness.rawnet2.scoring import (
    ForwardFailed,
    iter_scores,
    model_output,
    output_scores,
)

# The first batch is verified a second time scaled to this peak: a graph that froze a
# data-dependent branch (``if x.abs().amax() > 1``) on quiet input shows on loud input.
LOUD_PEAK = 4.0


# --- what is scored, and how -------------------------------------------------------------------------


def score_target(request: ScoreRequest) -> VariantSpec:
    """The variant with the request's kwargs, score transform, score meaning and input shape applied."""
    target = resolve(request.variant, kwargs=request.kwargs)
    changes: dict[str, object] = {}
    if request.score is not None:
        changes["score"] = request.score
    if request.score_means is not None:
        changes["score_means"] = request.score_means
    if request.input_shape is not None:
        changes["input_shape"] = parse_clip_shape(request.input_shape)
    return target.replace(**changes) if changes else target


_CLIP_SHAPE_REFUSAL = ("--input-shape {text!r}: expected positive integers separated by commas, one clip's "
                       "input without the batch axis (1,64600 for [B, 1, T]; 64600 for [B, T])")


def parse_clip_shape(text: str) -> tuple[int, ...]:
    """``"1,64600"`` -> ``(1, 64600)``: one clip's input without the batch axis."""
    return parse_positive_ints(text, _CLIP_SHAPE_REFUSAL)


def score_transform(target: VariantSpec) -> ScoreTransform:
    """How the target's output becomes a score, or the refusal (exit 2) when its spec says no way."""
    transform = target.score_transform
    if transform is None:
        raise HarnessError(f"{target.score_refusal()} (or pass --score TRANSFORM)")
    return transform


def scoring_contract(target: VariantSpec) -> InputContract:
    """The clip shape the target is fed: its declared ``input_shape`` (the RawNet2 family's is a
    short gate length, so the family is scored at the ASVspoof length, 64,600 samples); a
    variant that declares none is probed for its layout and scored at the ASVspoof length."""
    if target.input_shape is not None and not in_family(target):
        return InputContract(tuple(target.input_shape), target.min_length or 1)
    shape = tuple(target.input_shape) if target.input_shape is not None else target.input_contract().shape
    return InputContract((*shape[:-1], NUM_SAMPLES))


# --- what the run reads is never its output ---------------------------------------------------------


def files_read(request: ScoreRequest, target: VariantSpec) -> list[tuple[str, str]]:
    """``(what, path)`` for every file the run reads."""
    reads = [("the input file", f) for f in request.files]
    if request.checkpoint is not None:
        reads.append(("the checkpoint", request.checkpoint))
    if request.kwargs_file is not None:
        reads.append(("the --kwargs file", request.kwargs_file))
    reads += [("a --calibrate-on file", f) for f in request.calibrate_on or ()]
    for path in target.files_read():
        what = ("the registered weights" if path == target.weights_path else
                "the registry file" if str(path) == target.origin else "the factory's source")
        reads.append((f"{what} of {target.name}", os.fspath(path)))
    return reads


# --- the model -----------------------------------------------------------------------------------------


def build_score_model(request: ScoreRequest, target: VariantSpec) -> nn.Module:
    """The eager model: ``target`` holding the request's checkpoint, else its registered weights, else
    seeded random weights (with a warning: only then has it none)."""
    try:
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = get_audio_model(request.variant, request.checkpoint, policy=request.policy,
                                    kwargs=request.kwargs)
    except HarnessError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's factory: a model that cannot be built is refused
        raise HarnessError(f"cannot build {target.name}: {error_line(exc)}") from None
    if has_random_weights(request.checkpoint, target, model):
        print(random_weights_warning(target.name), file=sys.stderr)
    return model


def has_random_weights(checkpoint: str | None, target: VariantSpec, model: nn.Module) -> bool:
    """Whether ``model`` scores with the seeded random weights: no checkpoint, no registered weights,
    and parameters to hold them."""
    return checkpoint is None and target.weights is None and any(True for _ in model.parameters())


def check_scorable(model: nn.Module, target: VariantSpec, contract: InputContract,
                   transform: ScoreTransform) -> None:
    """Refuse, before any file is decoded, a model that is not float32 or whose forward on a short
    example of its contract gives nothing ``transform`` reads (a dict, a tuple, None, another shape)."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            raise HarnessError(f"{target.name}: {name} is {tensor.dtype}; score feeds float32 audio to a "
                               "float32 model: cast it with .float() (or save a float32 checkpoint)")
    length = target.input_shape[-1] if target.input_shape is not None else contract.length
    example = contract.example(2, max(length, contract.min_length))
    output_scores(model_output(model, example), transform, 2)


# --- the deployment form, verified on the first batch ---------------------------------------------


def form_tolerance(built: object, ran: str) -> tuple[str, Tolerance] | None:
    """The tolerance the form that ran is held to against eager (None: it is eager, or the int8 form,
    which changes scores by design and is judged by its decisions, not by a float tolerance)."""
    if ran.startswith(INT8_FORM):
        return None
    if ran.startswith("onnxruntime"):
        return "onnxruntime", DEPLOYMENT_TOLERANCES["onnxruntime"]
    if ran.startswith("optimized"):
        key = "compiled" if getattr(getattr(built, "info", None), "backend", None) else "folded"
        return key, DEPLOYMENT_TOLERANCES[key]
    return None


class VerifiedForm:
    """A deployment form that scores only after matching eager on the run's first batch, as it is
    and scaled to ``LOUD_PEAK``. On a difference: ``forget()`` (a form made from a cached export
    evicts the entry), then ``fallback`` (``--form auto``) scores with eager from then on, saying
    why through ``say``; else the run is refused naming the difference."""

    def __init__(self, form: Callable[[torch.Tensor], object], eager: nn.Module, *, name: str,
                 tolerance: tuple[str, Tolerance], fallback: bool, say: Callable[[str], None],
                 forget: Callable[[], None] | None = None) -> None:
        self.form, self.eager, self.name, self.tolerance = form, eager, name, tolerance
        self.fallback, self.say, self.forget = fallback, say, forget
        self.current: Callable[[torch.Tensor], object] | None = None

    def __call__(self, x: torch.Tensor) -> object:
        if self.current is not None:
            return self.current(x)
        peak = float(x.abs().amax()) if x.numel() else 0.0
        checks = [("the first batch", x), (f"the first batch scaled to peak {LOUD_PEAK:g}",
                                           x * (LOUD_PEAK / peak) if peak > 0 else x)]
        first: tuple[object, object] | None = None  # eager's and the form's output for the batch itself
        for label, inputs in checks:
            expected = model_output(self.eager, inputs)
            try:
                actual = model_output(self.form, inputs)
            except ForwardFailed as exc:
                problem = f"fails on {label}: {exc}"
            else:
                problem = self._difference(actual, expected)
                problem = problem and f"differs from eager on {label}: {problem}"
            first = first or (expected, actual)
            if problem:
                self._fall_back_or_refuse(f"{self.name} {problem}")
                return first[0]
        self.current = self.form
        return first[1]

    def _difference(self, actual: object, expected: object) -> str | None:
        key, tol = self.tolerance
        if not (isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor)):
            return f"it gives {type(actual).__name__} where eager gives {type(expected).__name__}"
        actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
        if actual.shape != expected.shape:
            return f"output shape {list(actual.shape)}, eager's {list(expected.shape)}"
        if all_close(actual, expected, tol):
            return None
        return (f"max abs difference {max_abs_diff(actual, expected):.3g} (DEPLOYMENT_TOLERANCES[{key}]: "
                f"rtol={tol.rtol:g}, atol={tol.atol:g})")

    def _fall_back_or_refuse(self, message: str) -> None:
        if self.forget is not None:
            self.forget()
        if not self.fallback:
            raise HarnessError(f"--form {self.name.split()[0]}: {message}; --form eager scores with the "
                               "model itself")
        self.say(f"score: --form auto: {message}; scoring with eager instead")
        self.current = self.eager


def scoring_model(eager: nn.Module, target: VariantSpec, form: str, device: str,
                  say: Callable[[str], None], *, cache: ExportCache | None = None,
                  weights: Mapping[str, object] | None = None,
                  calibrate_on: Sequence[str | os.PathLike] | None = None,
                  ) -> tuple[Callable[[torch.Tensor], object], str]:
    """The form that scores (verified on the first batch unless it is eager) and what ran.

    ``cache`` and ``weights`` (the export cache and the weights' identity, ``deployment_model``):
    without a cache every run exports afresh."""
    from harness.rawnet2.deploy import deployment_model

    try:
        built, ran = deployment_model(eager, target, form, device, cache=cache, weights=weights,
                                      calibrate_on=calibrate_on)
    except HarnessError:
        raise
    except Exception as exc:  # noqa: BLE001 - building a form runs the exporter and the user's model
        if form != "auto":
            raise HarnessError(f"--form {form}: cannot build it: {error_line(exc)}") from None
        eager = eager.to(device).eval()
        return eager, f"eager on {device} (auto; building a faster form failed: {error_line(exc)})"
    tolerance = form_tolerance(built, ran)
    if tolerance is None:
        return built, ran
    forget = None
    if cache is not None and CACHED_EXPORT in ran:  # a stale entry is deleted: the next run exports afresh
        identity = weights if weights is not None else weights_identity(eager)
        key = cache_key(export_cache_parts(target, identity))
        forget = functools.partial(cache.evict, key, "differs from eager on the run's first batch")
    return VerifiedForm(built, eager, name=ran, tolerance=tolerance, fallback=form == "auto", say=say,
                        forget=forget), ran


# --- the command --------------------------------------------------------------------------------------


def run_score(request: ScoreRequest) -> int:
    """``python -m harness score``: exit 0 when every file scored, 1 when any failed, 2 refused."""
    if request.batch_size < 1:
        raise HarnessError(f"--batch-size must be at least 1, got {request.batch_size}")
    output, resume, force = request.output, request.resume, request.force
    if output is None and (resume or force):
        flag = "--resume" if resume else "--force"
        raise HarnessError(f"{flag} applies to --output PATH, and none was given")
    if output is not None and request.format is not None:
        raise HarnessError("--format is for stdout; --output always writes JSON Lines (stdout stays empty)")
    target = score_target(request)
    transform = score_transform(target)
    if output is not None:  # before any work: a run never writes over what it reads
        check_not_read(output, files_read(request, target))
    contract = scoring_contract(target)
    form, device = request.form, request.device
    log = None
    if output is not None:  # before the model loads: a bad path, a locked or foreign log stops the run here
        if request.checkpoint is not None:
            check_regular_input(request.checkpoint)
        print_ = run_fingerprint(
            variant=target.name, factory=factory_name(target), kwargs=target.kwargs,
            checkpoint=request.checkpoint, weights=target.weights_path, form=form, device=device,
            contract=contract, transform=transform, batch_size=request.batch_size, policy=request.policy)
        log = ScoreLog.open(output, print_, resume=resume, force=force)
    cache = score_cache(request, form, device)  # before the model loads: a --cache-dir refused stops it here
    with log if log is not None else contextlib.nullcontext():
        todo = log.todo(request.files) if log is not None else list(request.files)
        model = build_score_model(request, target)
        try:
            check_scorable(model, target, contract, transform)
            weights = None if cache is None else weights_identity(
                model, checkpoint=request.checkpoint, policy=request.policy, registered=target.weights_path)
            scorer, ran = scoring_model(model, target, form, device,
                                        say=lambda line: print(line, file=sys.stderr, flush=True),
                                        cache=cache, weights=weights, calibrate_on=request.calibrate_on)
            print(f"score: {target.name} as {ran}", file=sys.stderr)
            if cache is not None and ran.startswith("onnxruntime") and not ran.startswith(INT8_FORM):
                # the next run of this command needs no torch
                remember(cache, request, export_key=cache_key(export_cache_parts(target, weights)),
                         reads=[path for what, path in files_read(request, target)
                                if what != "the input file"],
                         name=target.name, factory=factory_name(target), kwargs=target.kwargs,
                         weights=None if target.weights_path is None else os.fspath(target.weights_path),
                         ran=ran, transform=transform, contract=contract,
                         warnings=[random_weights_warning(target.name)]
                         if has_random_weights(request.checkpoint, target, model) else [])
            run = ScoreRun(request.files, target.name, transform, request.format, functools.partial(
                iter_scores, scorer, batch_size=request.batch_size, contract=contract, transform=transform))
            with sigterm_raises():
                if log is None:
                    return run.to_stdout()
                return run.to_log(log, todo)
        except ForwardFailed as exc:
            raise ForwardFailed(f"variant {request.variant!r} cannot score audio: {exc}") from None


def score_cache(request: ScoreRequest, form: str, device: str) -> ExportCache | None:
    """The export cache this run uses: only a form that exports (ONNX Runtime, on the CPU) opens one;
    ``--no-cache`` none; ``--cache-dir`` (else the default location) the one named."""
    if form not in ("auto", "onnxruntime", INT8_FORM) or device != "cpu":
        return None
    return open_cache(request.cache_dir, enabled=not request.no_cache)

"""Deploying a registered variant: its verified ONNX export (``export_variant``, the library side of
``python -m harness export``) and the forms ``score`` runs in (``deployment_model``).

The export itself (verified with ``onnx.checker`` and ONNX Runtime vs eager before anything
is written) is generic: ``harness.core.onnx``. Here: which inputs a variant is exported
with and verified on (its own input contract, up to the clip length ``score`` feeds it).
``score``'s ONNX Runtime form is kept in the export cache
(``harness.core.export_cache``): a run pays for the export and its verification once.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping, Sequence

import torch

import harness.core.onnx as onnx_module
from harness.core.contract import InputContract
from harness.core.errors import HarnessError, error_line
from harness.core.export_cache import ExportCache, cache_key, export_key_parts, file_sha256, state_dict_sha256
from harness.core.fileio import check_output_path
from harness.core.onnx import OPSET, ExportedModel, VerifyInput, export_onnx, verification_inputs
from harness.rawnet2.corpus import BUNDLED_AUDIO
from harness.rawnet2.inputs import NUM_SAMPLES
from harness.rawnet2.registry import VariantSpec
from harness.rawnet2.score_request import INT8_FORM, SCORE_FORMS
from harness.rawnet2.variants import FAMILY_CONTRACT as _FAMILY_SPEC_FIELDS

# The contract used when no variant is named: the family's [B, 1, T]; a caller with a spec passes it.
_FAMILY_CONTRACT = InputContract(_FAMILY_SPEC_FIELDS["input_shape"], _FAMILY_SPEC_FIELDS["min_length"])


def _inputs(target: VariantSpec | None = None, seed: int = 0) -> tuple[torch.Tensor, list[VerifyInput]]:
    """The trace example and the verification inputs at ``target``'s input contract: quiet and loud,
    batch 1 and several, its minimum and declared length, and the clip length ``score`` feeds every
    model (``NUM_SAMPLES``, harness.rawnet2.audio.fit_length) or twice the declared one if longer;
    the longest comes last."""
    contract = target.input_contract() if target is not None else _FAMILY_CONTRACT
    return verification_inputs(contract, longer=_longest(contract), seed=seed)


def _longest(contract: InputContract) -> int:
    """The length of the last (longest) verification input: score's clip length or twice the declared."""
    return max(NUM_SAMPLES, 2 * contract.length)


def export_variant(target: VariantSpec, path: str | os.PathLike | None = None, *, force: bool = False,
                   opset: int = OPSET) -> ExportedModel:
    """Export ``target`` as built (its spec's weights, or its fresh initialisation), verified at its
    own input contract."""
    if not target.runs:
        raise HarnessError(f"cannot export {target.name}: its forward does not run (declared runs = false)")
    if path is not None:
        check_output_path(path, force=force, overwrite=force)  # before any work; checked again at the write
    model = target.build_or_refuse()
    example, verify = _inputs(target)
    return export_onnx(model, example, verify, path=path, force=force, opset=opset)


# --- the form score runs ----------------------------------------------------------------------

# Without --calibrate-on the int8 form is calibrated on the bundled recordings (harness.rawnet2.corpus's
# BUNDLED_AUDIO: four files; harness.core.quantize.calibration_set makes CALIBRATION_CLIPS clips of them).
# Calibration batches: each is one float forward of the export while ranges are collected.
CALIBRATION_BATCH = 4


class _Unavailable(Exception):
    """A deployment form that cannot run for this model or machine; the message says why."""


# What the description of the ONNX Runtime form says when its export came from the cache.
CACHED_EXPORT = "cached export"


def factory_name(target: VariantSpec) -> str:
    """The spec's factory as ``"module:qualname"`` (as registered when it is a string)."""
    factory = target.factory
    if isinstance(factory, str):
        return factory
    return f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', repr(factory))}"


def export_cache_parts(target: VariantSpec, weights: Mapping[str, object], *, form: str = "onnxruntime",
                       opset: int = OPSET, settings: Mapping[str, object] | None = None) -> dict[str, object]:
    """The export cache's key parts for ``target`` exported as ``_onnxruntime_form`` does.

    ``weights``: the weights' identity (``weights_identity``)."""
    contract = target.input_contract()
    source = next((path for path in target.files_read()
                   if path != target.weights_path and str(path) != target.origin), None)
    return export_key_parts(
        name=target.name, factory=factory_name(target), kwargs=target.kwargs,
        source_sha256=file_sha256(source) if source is not None else None, weights=weights, form=form,
        opset=opset, input_shape=contract.shape, min_length=contract.min_length,
        verified_length=_longest(contract), exporter_sha256=file_sha256(onnx_module.__file__),
        settings=settings)


def weights_identity(model: torch.nn.Module, *, checkpoint: str | os.PathLike | None = None,
                     policy: str | None = None, registered: str | os.PathLike | None = None,
                     ) -> dict[str, object]:
    """What the weights in ``model`` are, for the cache key: the checkpoint file's SHA-256 and the
    conversion policy that loaded it, else the registered weights file's SHA-256, else the hash
    of the model's own tensors (seeded random weights)."""
    if checkpoint is not None:
        return {"file_sha256": file_sha256(checkpoint), "policy": policy}
    if registered is not None:
        return {"file_sha256": file_sha256(registered)}
    return {"state_dict_sha256": state_dict_sha256(model)}


def _onnxruntime_form(model: torch.nn.Module, target: VariantSpec, device: str, *,
                      cache: ExportCache | None = None,
                      weights: Mapping[str, object] | None = None) -> tuple[object, str]:
    version = _check_onnxruntime(target, device)
    ran = "onnxruntime ({how}; onnxruntime " + version + ") on cpu"
    key, parts = _cache_key(model, target, cache, weights)
    example, verify = _inputs(target)

    def export() -> bytes:
        return export_onnx(model, example, verify[-1:]).onnx_bytes  # verified on a full-length clip

    session, hit = _session(cache, key, parts, export)
    # A cached export was verified against eager when it was stored; score verifies the first batch again.
    return session, ran.format(how=f"{CACHED_EXPORT}, verified when made" if hit else "exported, verified")


def _check_onnxruntime(target: VariantSpec, device: str, needed_by: str = "") -> str:
    """ONNX Runtime's version where the form can run for ``target`` on ``device``, else why not."""
    from harness.core.onnx import onnx_missing

    if missing := onnx_missing():
        raise _Unavailable(missing)
    if "onnxruntime" not in target.forms:
        raise _Unavailable(f"{target.name} does not list onnxruntime among its forms{needed_by}")
    if device != "cpu":
        raise _Unavailable("ONNX Runtime runs on the CPU here (the wheel has no GPU provider)")
    import onnxruntime

    return onnxruntime.__version__


def _session(cache: ExportCache | None, key: str | None, parts: Mapping[str, object] | None,
             build: Callable[[], bytes]) -> tuple[object, bool]:
    """A session of the cache entry ``key`` when it loads (True), else of ``build()``'s bytes, stored
    under ``key`` (False). An entry ONNX Runtime cannot load is rebuilt and replaced."""
    from harness.core.onnx import OnnxRuntimeSession

    if key is not None and (cached := cache.get(key)) is not None:
        try:
            return OnnxRuntimeSession(cached), True
        except Exception as exc:  # noqa: BLE001 - onnxruntime's failure types: rebuilt, the entry replaced
            print(f"warning: export cache entry {key[:12]}... does not load in ONNX Runtime "
                  f"({error_line(exc)}): exporting again", file=sys.stderr)
    try:
        data = build()
    except HarnessError as exc:
        raise _Unavailable(str(exc)) from None
    if key is not None:
        cache.put(key, data, parts)
    return OnnxRuntimeSession(data), False


def _cache_key(model: torch.nn.Module, target: VariantSpec, cache: ExportCache | None,
               weights: Mapping[str, object] | None, *, form: str = "onnxruntime",
               settings: Mapping[str, object] | None = None) -> tuple[str | None, dict[str, object] | None]:
    """The export's cache key and parts; (None, None) without a cache, or when ``target`` has no
    plain-JSON identity (a kwarg that is an object: its repr could name two models alike)."""
    if cache is None:
        return None, None
    try:
        parts = export_cache_parts(target, weights if weights is not None else weights_identity(model),
                                   form=form, settings=settings)
        return cache_key(parts), parts
    except HarnessError as exc:
        print(f"warning: {target.name}'s export is not cached: {exc}", file=sys.stderr)
        return None, None


def calibration_clips(target: VariantSpec, files: Sequence[str | os.PathLike] | None = None) -> list:
    """The int8 form's calibration clips: ``files`` (--calibrate-on) or the bundled recordings, decoded
    and fitted to the clip length score feeds (``NUM_SAMPLES``), in ``target``'s input layout, made up
    to ``CALIBRATION_CLIPS`` by ``calibration_set``."""
    from harness.core.quantize import calibration_set
    from harness.rawnet2.audio import load_clip

    bundled = sorted(BUNDLED_AUDIO.glob("*.wav")) + sorted(BUNDLED_AUDIO.glob("*.flac"))
    paths = list(files) if files else bundled
    if not paths:
        raise HarnessError(f"--form {INT8_FORM}: no calibration audio: {BUNDLED_AUDIO} holds none (an "
                           "installed package ships no test data); give --calibrate-on FILES")
    example_shape = target.input_contract().batch_shape(1, NUM_SAMPLES)[1:]
    clips = []
    for path in paths:
        try:
            clips.append(load_clip(path).reshape(example_shape))
        except HarnessError as exc:  # UnusableAudio names no path and exits 1: here it is a usage error
            raise HarnessError(f"--calibrate-on {os.fspath(path)!r}: {exc}") from None
    return calibration_set(clips)


def _onnxruntime_int8_form(model: torch.nn.Module, target: VariantSpec, device: str, *,
                           cache: ExportCache | None = None, weights: Mapping[str, object] | None = None,
                           calibrate_on: Sequence[str | os.PathLike] | None = None) -> tuple[object, str]:
    from harness.core.quantize import INT8_SETTINGS, calibration_batches, calibration_digest, quantize_int8

    version = _check_onnxruntime(target, device, " (the int8 form quantizes that export)")
    clips = calibration_clips(target, calibrate_on)  # a file that does not decode: the user's error, exit 2
    batches = calibration_batches(clips, CALIBRATION_BATCH)
    settings = {**INT8_SETTINGS, "calibration_sha256": calibration_digest(batches)}
    ran = (INT8_FORM + " ({how}; static int8 QDQ calibrated on " + str(len(clips)) + " clips; scores differ "
           "from eager: judge it by decisions; onnxruntime " + version + ") on cpu")
    key, parts = _cache_key(model, target, cache, weights, form=INT8_FORM, settings=settings)
    example, verify = _inputs(target)

    def quantized() -> bytes:
        exported = export_onnx(model, example, verify[-1:])  # the float32 graph, verified as onnxruntime's
        return quantize_int8(exported.onnx_bytes, batches)

    session, hit = _session(cache, key, parts, quantized)
    return session, ran.format(how=CACHED_EXPORT if hit else "exported, verified in float32, quantized")


def _optimized_form(model: torch.nn.Module, target: VariantSpec, device: str) -> tuple[object, str]:
    from harness.core.forms import optimize_for_inference

    if "folded" not in target.forms:
        raise _Unavailable(f"{target.name} does not list folded among its forms")
    try:
        # Compiling costs 5-15 s per batch shape on a 2-core CPU: folded eager there, compiled on CUDA.
        optimized = optimize_for_inference(model, backend="inductor" if device == "cuda" else None)
    except HarnessError as exc:
        raise _Unavailable(str(exc)) from None
    return optimized, f"optimized ({optimized.info.form}) on {device}"


def _eager_form(model: torch.nn.Module, target: VariantSpec, device: str) -> tuple[object, str]:
    return model, f"eager on {device}"


_FORM_BUILDERS = {"onnxruntime": _onnxruntime_form, INT8_FORM: _onnxruntime_int8_form,
                  "optimized": _optimized_form, "eager": _eager_form}


def deployment_model(model: torch.nn.Module, target: VariantSpec, form: str = "auto",
                     device: str = "cpu", *, cache: ExportCache | None = None,
                     weights: Mapping[str, object] | None = None,
                     calibrate_on: Sequence[str | os.PathLike] | None = None) -> tuple[object, str]:
    """``model`` (weights loaded) in the deployment form that scores audio, and what ran.

    ``auto`` takes the fastest form the machine and the spec allow: on the CPU ONNX Runtime
    (where onnxruntime is installed and the spec lists it), else the optimized form (folded,
    CPU batches in chunks of 2), else eager; on CUDA the folded and compiled form, else eager.
    A form asked for by name that cannot run is refused (``HarnessError``, exit 2); under
    ``auto`` the next one is taken and the description says why. With a ``cache`` the ONNX
    Runtime form's verified export is taken from it, or stored there once made; ``weights``
    (``weights_identity``) says which weights ``model`` holds, for the key (default: the hash
    of its tensors).
    """
    if form not in SCORE_FORMS:
        raise HarnessError(f"unknown form {form!r}; known: {', '.join(SCORE_FORMS)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise HarnessError("--device cuda: CUDA is not available on this machine")
    model = model.to(device).eval()
    order = ["onnxruntime", "optimized", "eager"] if form == "auto" else [form]
    if form == "auto" and INT8_FORM in target.forms:  # the team opted in (its spec lists the form)
        order.insert(0, INT8_FORM)
    builders = {**_FORM_BUILDERS,
                "onnxruntime": functools.partial(_onnxruntime_form, cache=cache, weights=weights),
                INT8_FORM: functools.partial(_onnxruntime_int8_form, cache=cache, weights=weights,
                                             calibrate_on=calibrate_on)}
    passed_over = []
    for candidate in order:
        try:
            built, ran = builders[candidate](model, target, device)
        except _Unavailable as exc:
            if form != "auto":
                raise HarnessError(f"--form {candidate}: {exc}") from None
            passed_over.append(f"{candidate}: {exc}")
            continue
        return built, ran + (f" (auto; passed over {'; '.join(passed_over)})" if passed_over else "")
    raise AssertionError("the eager form always runs")  # pragma: no cover

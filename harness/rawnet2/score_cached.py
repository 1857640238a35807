"""``score`` with a warm export cache, without torch: only ONNX Runtime, numpy and the decoders.

A ``score`` run that scored with ONNX Runtime leaves a *request record* in the export cache
(``remember``): keyed by what the command line names (the variant as written, ``--kwargs``,
the registry file's and checkpoint's bytes, the options that change a score, the harness's
source and the versions), it holds the key of the verified export, the hashes of every other
file the model was built from, and what the run needs to score and print (the transform,
the input contract, the score log's fingerprint). ``score_from_cache(request)`` finds it, checks
every recorded file is unchanged and the export entry whole, and runs the same loop as the
model path (``harness.rawnet2.score_run``); anything missing or changed is a miss, and the
model path runs instead (None). The export was verified against eager when it was made, and
the run that made it checked its first batch too; a run from the record checks neither again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

import harness
from harness.core.contract import InputContract, ScoreTransform
from harness.core.errors import HarnessError
from harness.core.export_cache import ExportCache, cache_key, file_sha256, open_cache, versions
from harness.core.fileio import check_not_read
from harness.rawnet2.audio import decoded_clip
from harness.rawnet2.score_request import ScoreRequest
from harness.rawnet2.score_results import FileScore, scored_chunks
from harness.rawnet2.score_run import ScoreRun, sigterm_raises
from harness.rawnet2.scorelog import ScoreLog, run_fingerprint

REQUEST_FORMAT = 1
# Source trees whose every byte decides a score: the harness, and the model code it ships.
_SOURCE_ROOTS = ("harness", "fixed", "legacy")


@functools.cache
def sources_sha256() -> str:
    """SHA-256 over the harness's and the built-in models' Python sources (path and bytes)."""
    root = Path(harness.__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for top in _SOURCE_ROOTS:
        for path in sorted((root / top).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _file_identity(path: str | None) -> dict | None:
    if path is None:
        return None
    return {"path": os.path.abspath(path), "sha256": file_sha256(path)}


def request_parts(request: ScoreRequest) -> dict | None:
    """What decides this request's scores, as far as the command line says (None: a run that never
    uses the cache: another form or device, ``--no-cache``)."""
    form, device = request.form, request.device
    if form not in ("auto", "onnxruntime") or device != "cpu" or request.no_cache:
        return None
    registry = request.registry
    if registry is None and os.path.isfile("pyproject.toml"):  # the default project registry
        registry = "pyproject.toml"
    kwargs_file = request.kwargs_file
    return {
        "kind": "score request", "format": REQUEST_FORMAT, "variant": request.variant,
        "kwargs": _file_identity(kwargs_file) if kwargs_file is not None else request.kwargs_text,
        "registry": _file_identity(registry), "cwd": os.getcwd(),
        "checkpoint": _file_identity(request.checkpoint), "policy": request.policy, "form": form,
        "device": device, "input_shape": request.input_shape, "score": request.score,
        "score_means": request.score_means, "sources": sources_sha256(), "versions": versions(),
    }


def remember(cache: ExportCache, request: ScoreRequest, *, export_key: str, reads: Sequence[str],
             name: str, factory: str, kwargs: Mapping[str, object], weights: str | None, ran: str,
             transform: ScoreTransform, contract: InputContract, warnings: Sequence[str] = ()) -> None:
    """Record what a later run of the same command needs to score from the cache without torch."""
    parts = request_parts(request)
    if parts is None:
        return
    # The checkpoint, registry and --kwargs file are hashed into the request's key already.
    keyed = {part["path"] for part in parts.values() if isinstance(part, dict) and "path" in part}
    others = {os.path.abspath(p) for p in reads} - keyed
    record = {"export_key": export_key, "reads": {p: file_sha256(p) for p in sorted(others)},
              "name": name, "factory": factory, "kwargs": dict(kwargs), "weights": weights, "ran": ran,
              "score": str(transform), "score_means": transform.means, "input_shape": list(contract.shape),
              "min_length": contract.min_length, "warnings": list(warnings)}
    try:
        data = json.dumps(record, sort_keys=True).encode()
    except (TypeError, ValueError):  # kwargs that are not JSON: such a command is not remembered
        return
    cache.put(cache_key(parts), data, parts)


def _record(cache: ExportCache, parts: dict) -> dict | None:
    data = cache.get(cache_key(parts))
    if data is None:
        return None
    try:
        record = json.loads(data)
        for path, sha256 in record["reads"].items():
            if not os.path.isfile(path) or file_sha256(path) != sha256:
                return None  # a weights file, registry or factory source changed since
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        return None
    return record


def score_from_cache(request: ScoreRequest) -> int | None:
    """The run's exit code when the cache holds this command's export, else None (and nothing done)."""
    parts = request_parts(request)
    output = request.output
    misused = ((output is None and (request.resume or request.force)) or
               (output is not None and request.format))
    if parts is None or request.batch_size < 1 or misused:  # the model path refuses it in its words
        return None
    try:
        cache = open_cache(request.cache_dir, warn=lambda line: None)
        if cache is None:
            return None
        record = _record(cache, parts)
        onnx = cache.get(record["export_key"]) if record is not None else None
    except (HarnessError, OSError):  # the model path says what is wrong, in its words
        return None
    if record is None or onnx is None:
        return None
    return _run(request, record, onnx, parts)


def _run(request: ScoreRequest, record: dict, onnx: bytes, parts: dict) -> int:
    from harness.core.ort import inference_session

    transform = ScoreTransform.parse(record["score"], record["score_means"])
    contract = InputContract(tuple(record["input_shape"]), record["min_length"])
    output = request.output
    log = None
    if output is not None:
        reads = [("the input file", f) for f in request.files] + [("a file the model is built from", p)
                                                              for p in record["reads"]]
        if request.checkpoint is not None:
            reads.append(("the checkpoint", request.checkpoint))
        check_not_read(output, reads)
        print_ = run_fingerprint(variant=record["name"], factory=record["factory"], kwargs=record["kwargs"],
                                 checkpoint=request.checkpoint, weights=record["weights"], form=request.form,
                                 device=request.device, contract=contract, transform=transform,
                                 batch_size=request.batch_size, policy=request.policy)
        log = ScoreLog.open(output, print_, resume=request.resume, force=request.force)
    session = inference_session(onnx)
    for line in record.get("warnings", []):
        print(line, file=sys.stderr)
    print(f"score: {record['name']} as {record['ran']} (from the cache, without torch)", file=sys.stderr)
    chunks = functools.partial(_chunks, session, batch_size=request.batch_size, contract=contract,
                               transform=transform)
    run = ScoreRun(request.files, record["name"], transform, request.format, chunks)
    if log is None:
        with sigterm_raises():
            return run.to_stdout()
    with log, sigterm_raises():
        return run.to_log(log, log.todo(request.files))


def _chunks(session: object, files: Sequence[str], *, batch_size: int, contract: InputContract,
            transform: ScoreTransform) -> Iterator[list[FileScore]]:
    """``iter_scores``' chunks, decoded here in order and scored by ONNX Runtime."""
    name = session.get_inputs()[0].name

    def score_batch(clips: np.ndarray) -> list[float]:
        batch = clips.reshape(contract.batch_shape(len(clips), contract.length))
        return transform.numpy_scores(session.run(None, {name: batch})[0]).tolist()

    decoded = ((index, *decoded_clip(path, contract.length)) for index, path in enumerate(files))
    yield from scored_chunks(files, decoded, batch_size=batch_size, score_batch=score_batch)

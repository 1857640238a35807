"""Static int8 quantization of an exported ONNX graph with ONNX Runtime's own tooling.

``quantize_int8(onnx_bytes, calibration)`` runs ``quant_pre_process`` (symbolic shape
inference and graph optimisation), then ``quantize_static`` in QDQ format: per-channel int8
weights, uint8 activations whose ranges are calibrated by running the float graph on the
``calibration`` batches. The result is ONNX bytes that ``harness.core.onnx.OnnxRuntimeSession``
runs like the float32 export. ``INT8_SETTINGS`` is the recipe: plain JSON values, so it can
be part of a cache key. Any model with one float32 input works; nothing here knows a model family.

The quantized graph changes scores (docs/deployment.md has a measured figure): judge it by its
decisions, not by a float tolerance. onnx and onnxruntime are the optional ``[onnx]`` extra.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from harness.core.errors import HarnessError, error_line

# The recipe. QDQ (QuantizeLinear/DequantizeLinear pairs around float ops, fused by ONNX Runtime
# into int8 kernels) is the format ONNX Runtime recommends for CPUs; per-channel int8 weights
# give each conv filter its own scale, so a filter with small weights is not rounded on the
# largest one's grid (on skip_modules with random weights, whose filters are alike, per tensor was
# no worse: 7.1e-5 held out vs 1.4e-4; trained filters differ in scale, which is what per channel
# is for); uint8 activations with int8 weights is the U8S8 pairing of ONNX Runtime's x86 kernels.
# MinMax calibration: on skip_modules (seeded random weights, the 8 bundled clips) Entropy gave
# the same held-out max abs diff (1.4e-4) with 1.4x the calibration time, Distribution 9.7e-5 with
# 1.5x, and Percentile fails on that graph (its histogram: "Too many bins for data range").
# reduce_range (7-bit weights) only matters on x86 CPUs without VNNI, where U8S8 products can
# saturate; off, as ONNX Runtime defaults it.
# float_head: the last weighted op before each graph output (the classifier's Gemm) and every
# op after it (sigmoid, softmax) stay float32. Quantized, the output is clamped to the range
# the calibration clips produced and rounded to 256 levels: on RawNet2 with random weights
# every score of a random input came out as the calibration set's maximum (2e-3 off), and a
# detector's scores outside the calibration set's range would all tie. The head is the
# classifier's last matrix product, a small part of the forward's work.
INT8_SETTINGS: Mapping[str, object] = {
    "format": "QDQ",
    "per_channel": True,
    "weight_type": "QInt8",
    "activation_type": "QUInt8",
    "calibrate_method": "MinMax",
    "reduce_range": False,
    "pre_process": True,
    "float_head": True,
}

# How many clips the int8 form is calibrated on (the measurement used 8; ``calibration_set``
# makes them from fewer recordings). MinMax ranges settle after a few clips of speech; more cost
# calibration time (one float forward each) for ranges that only widen.
CALIBRATION_CLIPS = 8

_KNOWN_FORMATS = ("QDQ", "QOperator")
_KNOWN_TYPES = ("QInt8", "QUInt8")
_KNOWN_METHODS = ("MinMax", "Entropy", "Percentile", "Distribution")
_BOOLEAN_KEYS = ("per_channel", "reduce_range", "pre_process", "float_head")
# The ops whose weights make them the head's start when walking back from an output.
_WEIGHTED_OPS = frozenset({"Gemm", "MatMul", "Conv", "ConvTranspose", "Einsum"})


def quantize_missing() -> str | None:
    """Why static quantization cannot run here, or None when onnx and onnxruntime are installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install 'rawnet2-harness[onnx]')"
    return None


def check_settings(settings: Mapping[str, object]) -> None:
    """Refuse, in one line, a settings mapping that is not ``INT8_SETTINGS``'s keys with known values."""
    if unknown := sorted(set(settings) - set(INT8_SETTINGS)):
        raise HarnessError(f"int8 settings: unknown key {unknown[0]!r}; known: {', '.join(INT8_SETTINGS)}")
    if missing := [key for key in INT8_SETTINGS if key not in settings]:
        raise HarnessError(f"int8 settings: key {missing[0]!r} is missing (INT8_SETTINGS has every key)")
    allowed = {"format": _KNOWN_FORMATS, "weight_type": _KNOWN_TYPES, "activation_type": _KNOWN_TYPES,
               "calibrate_method": _KNOWN_METHODS}
    for key, values in allowed.items():
        if settings[key] not in values:
            raise HarnessError(f"int8 settings: {key} is {settings[key]!r}; expected one of "
                               f"{', '.join(values)}")
    for key in _BOOLEAN_KEYS:
        if not isinstance(settings[key], bool):
            raise HarnessError(f"int8 settings: {key} is {settings[key]!r}; expected true or false")


def calibration_set(clips: Sequence[np.ndarray], count: int = CALIBRATION_CLIPS) -> list[np.ndarray]:
    """``count`` calibration clips from a few recordings (each in the model's input layout, no
    batch axis): the clips as given, then copies in rounds: round ``k`` (1, 2, ...) at gain
    ``0.5 ** k``, rolled along the time (last) axis by ``1 / (k + 1)`` of the length.

    Why: activation ranges are measured on what calibration runs, so the set should span the
    levels (a quieter copy) and frame alignments (a shifted copy) the model will meet; a
    rolled copy of a recording fitted by tiling is still a recording of the same speech.
    """
    if not clips:
        raise HarnessError("calibration: no clips; give at least one clip of the model's input")
    if count < 1:
        raise HarnessError(f"calibration: {count} clips asked for; expected at least 1")
    made = []
    for i in range(count):
        k, clip = divmod(i, len(clips))
        clip = np.asarray(clips[clip], dtype=np.float32)
        if k:
            clip = np.roll(clip, clip.shape[-1] // (k + 1), axis=-1) * np.float32(0.5 ** k)
        made.append(clip)
    return made


def calibration_digest(batches: Sequence[np.ndarray]) -> str:
    """SHA-256 of the calibration batches (each one's dtype, shape and bytes, in order): the part
    of an int8 export's cache key that says what it was calibrated on."""
    digest = hashlib.sha256()
    for batch in batches:
        array = np.ascontiguousarray(batch)
        digest.update(f"{array.dtype.str}{list(array.shape)};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def calibration_batches(clips: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """``clips`` (each one example in the model's input layout without the batch axis, all one
    shape) stacked into float32 batches of ``batch_size`` (the last may be smaller)."""
    if batch_size < 1:
        raise HarnessError(f"calibration batch size {batch_size}: expected at least 1")
    if not clips:
        raise HarnessError("calibration: no clips; give at least one clip of the model's input")
    shapes = sorted({tuple(np.shape(clip)) for clip in clips})
    if len(shapes) > 1:
        raise HarnessError(f"calibration: clips of {len(shapes)} shapes ({list(shapes[0])}, "
                           f"{list(shapes[1])}, ...); expected one shape (fit every clip to one length)")
    return [np.stack(clips[i:i + batch_size]).astype(np.float32, copy=False)
            for i in range(0, len(clips), batch_size)]


class _Batches:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over in-memory batches (duck-typed:
    the tool calls ``get_next`` until it returns None, and may ``rewind``)."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches = batches
        self._iter: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._iter = iter(self.batches)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:  # SmoothQuant iterates a copy of the reader
        return ({self.input_name: batch} for batch in self.batches)


def quantize_int8(onnx_bytes: bytes, calibration: Sequence[np.ndarray], *,
                  settings: Mapping[str, object] = INT8_SETTINGS) -> bytes:
    """The int8 QDQ form of ``onnx_bytes``, its activation ranges calibrated on ``calibration``.

    ``calibration``: batches in the graph's input layout (batch axis first; see
    ``calibration_batches``). The tools want paths: every file lives in a temporary
    directory that is removed afterwards. One ``HarnessError`` line when onnx or
    onnxruntime is missing, the settings, the bytes or the calibration are unusable, or
    the tool fails (its error's first line).
    """
    if missing := quantize_missing():
        raise HarnessError(f"cannot quantize: {missing}")
    check_settings(settings)
    if not calibration:
        raise HarnessError("cannot quantize: the calibration set is empty; static quantization needs at "
                           "least one batch of the model's input to measure activation ranges")
    import onnx

    try:
        model = onnx.load_from_string(onnx_bytes)
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - protobuf's and the checker's failure types: one line
        raise HarnessError(f"cannot quantize: the bytes are not a valid ONNX model ({len(onnx_bytes):,} "
                           f"bytes): {error_line(exc)}") from None
    inputs = _graph_inputs(model)
    if len(inputs) != 1:
        raise HarnessError(f"cannot quantize: the graph takes {len(inputs)} inputs ({', '.join(inputs)}); "
                           "expected one, calibrated by the given batches")
    batches = [_checked_batch(batch, i) for i, batch in enumerate(calibration)]
    with tempfile.TemporaryDirectory(prefix="harness-int8-") as tmp:
        source, prepared, quantized = (os.path.join(tmp, name) for name in
                                       ("float32.onnx", "prepared.onnx", "int8.onnx"))
        with open(source, "wb") as f:
            f.write(onnx_bytes)
        if settings["pre_process"]:
            _run_tool("ONNX Runtime's quant_pre_process", _pre_process, source, prepared)
            source = prepared
        _run_tool("ONNX Runtime's quantize_static", _quantize_static, source, quantized,
                  _Batches(inputs[0], batches), settings)
        with open(quantized, "rb") as f:
            return f.read()


def _graph_inputs(model: object) -> list[str]:
    """The graph's inputs that are fed (initializers listed as inputs by old exporters are not)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value.name for value in model.graph.input if value.name not in initializers]


def _checked_batch(batch: object, index: int) -> np.ndarray:
    array = np.asarray(batch)
    if array.ndim < 1 or array.shape[0] < 1 or not np.issubdtype(array.dtype, np.floating):
        raise HarnessError(f"cannot quantize: calibration batch {index} has shape {list(array.shape)} and "
                           f"dtype {array.dtype}; expected a float array with a batch axis first")
    if not np.isfinite(array).all():
        raise HarnessError(f"cannot quantize: calibration batch {index} holds NaN or infinity; the "
                           "activation ranges would be meaningless")
    return np.ascontiguousarray(array, dtype=np.float32)


@contextlib.contextmanager
def _tool_quiet() -> Iterator[None]:
    """The quantization tool talks while it works: notes through the root logger
    (``logging.warning``: e.g. a BatchNormalization scale quantized per tensor where per
    channel was asked), progress printed to stdout by the histogram calibrators, numpy
    warnings from their statistics. A failure still raises. Quiet while it runs, so that a
    command's stdout holds its own output only (``score`` may write JSON Lines there)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _run_tool(what: str, tool, *args: object) -> None:
    try:
        with _tool_quiet():
            tool(*args)
    except HarnessError:
        raise
    except Exception as exc:  # noqa: BLE001 - the quantization tool's many failure types: one line
        raise HarnessError(f"cannot quantize: {what} fails: {error_line(exc)}") from None


def _pre_process(source: str, target: str) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(source, target)


def _quantize_static(source: str, target: str, reader: _Batches, settings: Mapping[str, object]) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    head = head_nodes(onnx.load(source)) if settings["float_head"] else []
    quantize_static(
        source, target, reader,
        quant_format=QuantFormat[str(settings["format"])],
        per_channel=bool(settings["per_channel"]),
        reduce_range=bool(settings["reduce_range"]),
        weight_type=QuantType[str(settings["weight_type"])],
        activation_type=QuantType[str(settings["activation_type"])],
        calibrate_method=CalibrationMethod[str(settings["calibrate_method"])],
        nodes_to_exclude=head,
    )


def head_nodes(model: object) -> list[str]:
    """Names of the nodes from each graph output back to (and including) the nearest weighted op
    (``_WEIGHTED_OPS``) on every path: the head that ``float_head`` keeps in float32. A path that
    reaches a graph input without one adds nothing beyond the nodes it passed."""
    producer = {out: node for node in model.graph.node for out in node.output}
    head: dict[str, None] = {}  # insertion-ordered set
    stack = [value.name for value in model.graph.output]
    seen: set[str] = set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        head[node.name] = None
        if node.op_type not in _WEIGHTED_OPS:
            stack.extend(node.input)
    return list(head)

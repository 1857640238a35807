"""Golden outputs: fixed weights and inputs, recorded outputs, and the reference that vouches for them.

``golden_model``, ``golden_input`` and ``golden_outputs`` make a variant's golden outputs;
``golden_sources`` says which variant's file holds each mode's expected outputs;
``reference_forward`` recomputes them with plain ``torch.nn.functional`` calls from the
guide's architecture, so a golden file never enshrines a model bug; ``golden_path``,
``write_golden``, ``read_golden`` and ``compare_golden`` keep and check the files. The rules:
docs/equivalence.md, "Golden outputs".
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.core.errors import HarnessError
from harness.core.fileio import write_text_atomically
from harness.core.forms import max_differences
from harness.core.tolerances import Tolerance, all_close, close_elements
from harness.rawnet2 import registry
from harness.rawnet2.architecture import (
    BLOCKS,
    BN_EPS,
    CONV1,
    IDENTITY,
    LEAKY_SLOPE,
    PROJECTION,
    ReferenceSpec,
)
from harness.rawnet2.equivalence import copy_weights, seed_weights
from harness.rawnet2.layouts import canonical_modules

GOLDEN_SEED = 20240501
GOLDEN_MODES = ("train", "eval")
GOLDEN_BATCH = 4
# One amplitude per sample: near-silence to full scale, so every sample exercises the
# BatchNorms differently in eval mode.
GOLDEN_AMPLITUDES = (0.05, 0.2, 0.5, 1.0)
GOLDEN_FORMAT = 1

# What the guide puts in each canonical module, in order (to name a missing tensor's place).
_MODULE_LAYERS = {
    "conv1": "Conv1d, BatchNorm1d, LeakyReLU",
    "res_block": "Conv1d, BatchNorm1d, LeakyReLU, Conv1d, BatchNorm1d, LeakyReLU",
    "skip": "Conv1d(kernel_size=1), BatchNorm1d",
    "fc": "Linear",
}


def _tensor(states: Mapping[str, Mapping[str, torch.Tensor]], module: str, key: str,
            shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``states[module][key]``, or a ``HarnessError`` saying what the guide has there."""
    kind = module.rstrip("0123456789")
    try:
        tensor = states[module][key]
    except KeyError:
        raise HarnessError(f"{module} has no tensor {key!r}; the guide's {module} is "
                           f"{_MODULE_LAYERS.get(kind, kind)} with biases") from None
    if shape is not None and tuple(tensor.shape) != shape:
        raise HarnessError(f"{module}.{key} has shape {tuple(tensor.shape)}; the guide's architecture "
                           f"needs {shape}")
    return tensor


def reference_forward(model: nn.Module, x: torch.Tensor, spec: ReferenceSpec, *, train: bool,
                      trace: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``model``'s output recomputed from its weights alone, as the fix guide specifies it.

    Reads only tensors (via ``canonical_modules``); never calls the model's modules. In
    ``train`` mode every BatchNorm uses batch statistics; in eval mode only those of
    ``spec.eval_batch_statistics``. Running statistics are read, never updated. ``trace``,
    if given, receives the intermediate values under the names of ``model_trace``.
    """
    states = {name: module.state_dict() for name, module in canonical_modules(model).items()}
    trace = {} if trace is None else trace

    def conv_bn(h: torch.Tensor, name: str, conv: int, cin: int, cout: int, kernel: int,
                stride: int) -> torch.Tensor:
        weight = _tensor(states, name, f"{conv}.weight", (cout, cin, kernel))
        h = F.conv1d(h, weight, _tensor(states, name, f"{conv}.bias"), stride=stride, padding=kernel // 2)
        batch = train or name in spec.eval_batch_statistics
        bn = f"{conv + 1}."
        return F.batch_norm(
            h,
            None if batch else _tensor(states, name, bn + "running_mean"),
            None if batch else _tensor(states, name, bn + "running_var"),
            _tensor(states, name, bn + "weight"),
            _tensor(states, name, bn + "bias"),
            training=batch,
            eps=BN_EPS,
        )

    h = trace["conv1"] = F.leaky_relu(conv_bn(x, "conv1", 0, *CONV1, 3, 1), LEAKY_SLOPE)
    for index, (cin, cout, stride) in enumerate(BLOCKS, start=1):
        block = f"res_block{index}"
        main = F.leaky_relu(conv_bn(h, block, 0, cin, cout, 3, stride), LEAKY_SLOPE)
        main = F.leaky_relu(conv_bn(main, block, 3, cout, cout, 3, 1), LEAKY_SLOPE)
        trace[f"{block} main path"] = main
        shortcut = spec.shortcuts[index]
        if shortcut == IDENTITY:
            h = main + h
        elif shortcut == PROJECTION:
            projected = trace[f"skip{index}"] = conv_bn(h, f"skip{index}", 0, cin, cout, 1, stride)
            h = main + projected
        else:
            h = main
        trace[f"{block} output (main path + shortcut)"] = h
    h = trace["pooled (fc1 input)"] = h.mean(dim=-1)
    fc1 = trace["fc1"] = F.linear(h, _tensor(states, "fc1", "weight"), _tensor(states, "fc1", "bias"))
    fc2 = trace["fc2 (logits)"] = F.linear(F.leaky_relu(fc1, LEAKY_SLOPE), _tensor(states, "fc2", "weight"),
                                           _tensor(states, "fc2", "bias"))
    out = trace["output (sigmoid)"] = torch.sigmoid(fc2)
    return out


def model_trace(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``model(x)`` and its intermediate values, observed with hooks on its canonical modules.

    A block's output is what the next module receives (its forward pre-hook), so the
    residual addition is observed as the forward really does it.
    """
    modules = canonical_modules(model)
    blocks = sorted(int(n.removeprefix("res_block")) for n in modules if n.startswith("res_block"))
    trace: dict[str, torch.Tensor] = {}
    handles = []

    def record_output(name: str):
        return lambda module, inputs, output: trace.__setitem__(name, output)

    def record_input(name: str):
        return lambda module, inputs: trace.__setitem__(name, inputs[0])

    handles.append(modules["conv1"].register_forward_hook(record_output("conv1")))
    for i in blocks:
        main_hook = record_output(f"res_block{i} main path")
        handles.append(modules[f"res_block{i}"].register_forward_hook(main_hook))
        if f"skip{i}" in modules:
            handles.append(modules[f"skip{i}"].register_forward_hook(record_output(f"skip{i}")))
        receiver = modules.get(f"res_block{i + 1}", getattr(model, "global_pool", None))
        if receiver is not None:
            name = f"res_block{i} output (main path + shortcut)"
            handles.append(receiver.register_forward_pre_hook(record_input(name)))
    handles.append(modules["fc1"].register_forward_pre_hook(record_input("pooled (fc1 input)")))
    handles.append(modules["fc1"].register_forward_hook(record_output("fc1")))
    handles.append(modules["fc2"].register_forward_hook(record_output("fc2 (logits)")))
    try:
        out = trace["output (sigmoid)"] = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return out, trace


def first_divergence(model: nn.Module, x: torch.Tensor, spec: ReferenceSpec, *, train: bool,
                     tol: Tolerance) -> str | None:
    """Where ``model`` first departs from ``reference_forward``, in forward order; None if nowhere.

    Runs a copy of ``model`` (a train-mode forward would move its running statistics).
    E.g. ``res_block5 output (main path + shortcut): max abs diff 0.31 (everything before
    it agrees)`` points at block 5's residual addition.
    """
    expected: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        try:
            reference_forward(model, x, spec, train=train, trace=expected)
        except HarnessError as exc:  # the model does not even hold the guide's tensors
            return f"weights: {exc}"
        _, observed = model_trace(copy.deepcopy(model).train(train), x)
    for stage, want in expected.items():
        got = observed.get(stage)
        if got is None:
            return f"{stage}: never observed in the model's forward (a module is skipped or replaced)"
        if got.shape != want.shape:
            return f"{stage}: shape {tuple(got.shape)}, the guide's architecture gives {tuple(want.shape)}"
        if not all_close(got, want, tol):
            return (f"{stage}: max abs diff {max_differences(got, want)[0]:.3g} "
                    "(every earlier stage agrees with the guide's architecture)")
    return None


# --- golden outputs ------------------------------------------------------------------------


def golden_input(name: str = "skip_modules") -> torch.Tensor:
    """Four fixed examples of ``name``'s input contract, one per amplitude (the family's: four
    1000-sample waveforms; CPU Mersenne twister: the same on every platform)."""
    shape = registry.spec(name).input_contract().batch_shape(GOLDEN_BATCH)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(GOLDEN_SEED))
    return noise * torch.tensor(GOLDEN_AMPLITUDES).view(-1, *[1] * (len(shape) - 1))


def golden_model(name: str) -> nn.Module:
    """Variant ``name`` holding the golden weights.

    A variant without a reference is seeded (``seed_weights(GOLDEN_SEED)``); one with a
    reference receives its reference's golden weights, matched by structure and proven
    bit for bit in the modes where it must compute the reference's function.
    """
    variant = registry.spec(name)
    model = variant.build()
    if variant.reference is None:
        return seed_weights(model, GOLDEN_SEED)
    copy_weights(golden_model(variant.reference), model, golden_input(name), modes=variant.reference_modes)
    return model


BUILT_IN_GOLDEN_DIR = Path(__file__).resolve().parents[2] / "tests" / "golden"


def golden_path(name: str) -> Path:
    """Where ``name``'s golden file lives: beside the registry file that declared it."""
    origin = registry.spec(name).origin
    directory = Path(origin).parent / "golden" if origin.endswith(".toml") else BUILT_IN_GOLDEN_DIR
    return directory / f"{name}.json"


def golden_sources(name: str) -> dict[str, str]:
    """Mode -> the variant whose golden file holds ``name``'s expected outputs in that mode.

    A variant is held to its reference's golden outputs in its reference modes (no file
    of its own needed) and to its own file in the rest (``VariantSpec.golden_modes``).
    """
    variant = registry.spec(name)
    sources = {mode: name for mode in variant.golden_modes}
    if variant.reference is not None:
        inherited = golden_sources(variant.reference)
        sources.update({mode: inherited[mode] for mode in variant.reference_modes if mode in inherited})
    return {mode: sources[mode] for mode in GOLDEN_MODES if mode in sources}


def golden_outputs(model: nn.Module, x: torch.Tensor,
                   modes: tuple[str, ...] = GOLDEN_MODES) -> dict[str, torch.Tensor]:
    """``model``'s output on ``x`` in each mode, each from an untouched copy (train mode
    updates running statistics, which would leak into a later eval call)."""
    outputs = {}
    with torch.no_grad():
        for mode in modes:
            outputs[mode] = copy.deepcopy(model).train(mode == "train")(x)
    return outputs


@dataclass(frozen=True)
class GoldenRecord:
    variant: str
    seed: int
    input_shape: tuple[int, ...]
    outputs: Mapping[str, torch.Tensor]


def write_golden(path: Path, record: GoldenRecord) -> None:
    """Write ``record`` as JSON, atomically (a crash leaves the old file intact)."""
    data = {
        "format": GOLDEN_FORMAT,
        "variant": record.variant,
        "seed": record.seed,
        "input_shape": list(record.input_shape),
        "produced_with": f"torch {torch.__version__}",
        # float32 -> Python float is exact, and JSON round-trips it exactly.
        "outputs": {mode: out.detach().cpu().float().tolist() for mode, out in record.outputs.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(data, indent=1) + "\n")


def read_golden(path: Path) -> GoldenRecord:
    """Read a golden file; a missing or malformed one is a ``HarnessError`` saying how to make it."""
    hint = "run `pytest --update-golden` to record it"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"golden file {path} does not exist; {hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HarnessError(f"golden file {path} is unreadable ({exc}); {hint}") from None
    try:
        if data["format"] != GOLDEN_FORMAT:
            raise ValueError(f"format {data['format']!r}, expected {GOLDEN_FORMAT}")
        outputs = {mode: torch.tensor(values, dtype=torch.float32)
                   for mode, values in data["outputs"].items()}
        return GoldenRecord(data["variant"], int(data["seed"]), tuple(data["input_shape"]), outputs)
    except (KeyError, TypeError, ValueError) as exc:
        raise HarnessError(f"golden file {path} is malformed ({exc!r}); {hint}") from None


@dataclass(frozen=True)
class GoldenDiff:
    """One mode's outputs vs the golden ones."""

    mode: str
    max_abs: float
    max_rel: float
    moved: tuple[int, ...]  # samples with any output outside the tolerance
    problem: str | None = None  # a missing mode or a shape change

    @property
    def ok(self) -> bool:
        return not self.moved and self.problem is None

    def describe(self) -> str:
        if self.problem:
            return f"{self.mode}: {self.problem}"
        return (f"{self.mode}: max abs diff {self.max_abs:.3g}, max rel diff {self.max_rel:.3g}; "
                f"samples moved: {list(self.moved) or 'none'}")


def compare_golden(actual: Mapping[str, torch.Tensor], golden: GoldenRecord, tol: Tolerance,
                   ) -> list[GoldenDiff]:
    """Compare each mode's outputs with the golden ones; one ``GoldenDiff`` per mode either side has."""
    diffs = []
    for mode in sorted(set(actual) | set(golden.outputs), key=lambda m: (m not in GOLDEN_MODES, m)):
        if mode not in actual or mode not in golden.outputs:
            where = "the golden file" if mode not in golden.outputs else "this run"
            diffs.append(GoldenDiff(mode, float("nan"), float("nan"), (), f"missing from {where}"))
            continue
        got, want = actual[mode].detach().cpu().float(), golden.outputs[mode]
        if got.shape != want.shape:
            diffs.append(GoldenDiff(mode, float("nan"), float("nan"), (),
                                    f"shape {tuple(got.shape)}, golden {tuple(want.shape)}"))
            continue
        close = close_elements(got, want, tol).reshape(len(got), -1).all(dim=1)
        moved = tuple(int(i) for i in torch.nonzero(~close).flatten())
        diffs.append(GoldenDiff(mode, *max_differences(got, want), moved))
    return diffs

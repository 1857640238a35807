"""Paired models' outputs, compared: ``match_weights`` proves a pairing by bit-identical outputs in
every requested mode before copying; ``compare_models`` measures two models with it and says where,
module pair by module pair, they part."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.core.errors import HarnessError, error_line
from harness.core.matching.observe import ExampleInput, Run, as_args, clone, run_in_mode
from harness.core.matching.pairing import pair_by_dataflow
from harness.core.matching.results import Comparison, MatchError, ModeComparison, ModulePair, WeightMatch
from harness.core.matching.text import path_text, shape_text
from harness.core.modes import MODES
from harness.core.tolerances import EXACT, Tolerance, all_close, max_abs_diff


@dataclass(frozen=True)
class _Diff:
    max_abs: float
    close: bool
    text: str


def _diff(actual: list[torch.Tensor], expected: list[torch.Tensor], tolerance: Tolerance) -> _Diff:
    """Compare two lists of output tensors leaf by leaf with the harness's one closeness rule."""
    if len(actual) != len(expected):
        return _Diff(float("inf"), False, f"{len(actual)} output tensors vs {len(expected)}")
    worst, close = 0.0, True
    for a, e in zip(actual, expected, strict=True):
        if a.shape != e.shape:
            return _Diff(float("inf"), False, f"output shapes {shape_text(a.shape)} vs {shape_text(e.shape)}")
        worst = max(worst, max_abs_diff(a, e))
        close = close and all_close(a.detach().double().cpu(), e.detach().double().cpu(), tolerance)
    return _Diff(worst, close, f"max abs diff {worst:.3g}")


def _first_divergence(modules: list[ModulePair], left: Run, right: Run, tolerance: Tolerance,
                      names: tuple[str, str]) -> str:
    """The first leaf pair, in the left model's forward order, whose outputs differ beyond ``tolerance``."""
    by_src = {pair.src: pair for pair in modules}
    last = None
    for path in left.order:
        pair = by_src[path]
        where = f"{names[0]} {path_text(pair.src)} vs {names[1]} {path_text(pair.dst)}"
        if pair.dst not in right.leaf_outputs:
            return f"{where}: {names[1]} never calls {path_text(pair.dst)}"
        diff = _diff(right.leaf_outputs[pair.dst], left.leaf_outputs[path], tolerance)
        if not diff.close:
            return f"{where}: {diff.text}"
        last = pair
    final = _diff(right.output, left.output, tolerance).text
    if last is None:
        return f"in the outputs ({final}); no weight-owning module is called"
    return (f"after {names[0]} {path_text(last.src)} / {names[1]} {path_text(last.dst)}: every paired "
            f"module agrees, the outputs differ ({final}): a parameterless op or the wiring after it differs")


def _stages(modules: list[ModulePair], left: Run, right: Run) -> tuple[tuple[str, str, float], ...]:
    by_src = {pair.src: pair for pair in modules}
    stages = []
    for path in left.order:
        other = by_src[path].dst
        called = other in right.leaf_outputs
        diff = _diff(right.leaf_outputs[other], left.leaf_outputs[path], EXACT) if called else None
        stages.append((path, other, diff.max_abs if diff is not None else float("inf")))
    return tuple(stages)


def _check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    modes = tuple(modes)
    if not modes or any(m not in MODES for m in modes):
        raise HarnessError(f"modes must be a non-empty selection of {', '.join(MODES)}, not {modes!r}")
    return modes


def match_weights(src: nn.Module, dst: nn.Module, example_input: ExampleInput, *,
                  modes: Sequence[str] = MODES) -> WeightMatch:
    """Pair ``src``'s weights with ``dst``'s, prove it, and copy them into ``dst``.

    Proof: with the weights copied, copies of both models give bit-identical outputs on
    ``example_input`` in every mode of ``modes``. Only then is ``dst`` written; otherwise
    MatchError names the first module pair whose outputs part, and ``dst`` is untouched.
    """
    modes = _check_modes(modes)
    args = as_args(example_input)
    names = ("src", "dst")
    match = pair_by_dataflow(src, dst, args, names)
    staged = clone(dst, "dst")
    match.copy_into(src, staged)
    for mode in modes:
        left, right = run_in_mode(src, args, mode, "src"), run_in_mode(staged, args, mode, "dst")
        diff = _diff(right.output, left.output, EXACT)
        if not diff.close:
            where = _first_divergence(match.modules, left, right, EXACT, names)
            raise MatchError(f"pairing not proven in {mode} mode: the outputs differ ({diff.text}); "
                             f"first at {where}")
    match.copy_into(src, dst)
    return match


def compare_models(ref: nn.Module | Callable[[], nn.Module], other: nn.Module | Callable[[], nn.Module],
                   example_input: ExampleInput, *, modes: Sequence[str] = MODES,
                   tolerance: Tolerance = EXACT) -> Comparison:
    """Give ``other`` (a copy) ``ref``'s weights by structure and measure their outputs in each mode.

    Differing outputs are a result, not an error: MatchError only when no pairing fits or a
    forward (or a factory passed instead of a model) raises. Neither model is changed.
    """
    modes = _check_modes(modes)
    args = as_args(example_input)
    names = ("ref", "other")
    ref_model, other_model = _build(ref, "ref"), _build(other, "other")
    match = pair_by_dataflow(ref_model, other_model, args, names)
    loaded = clone(other_model, "other")
    match.copy_into(ref_model, loaded)
    results = []
    for mode in modes:
        left, right = run_in_mode(ref_model, args, mode, "ref"), run_in_mode(loaded, args, mode, "other")
        diff = _diff(right.output, left.output, tolerance)
        divergence = None if diff.close else _first_divergence(match.modules, left, right, tolerance, names)
        results.append(ModeComparison(mode, diff.max_abs, diff.close, divergence,
                                      _stages(match.modules, left, right)))
    return Comparison(all(r.equivalent for r in results), tuple(results), dict(match.mapping))


def _build(model: nn.Module | Callable[[], nn.Module], role: str) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    try:
        built = model()
    except Exception as exc:
        raise MatchError(f"{role} factory raises {error_line(exc)}") from exc
    if not isinstance(built, nn.Module):
        raise MatchError(f"{role} factory returned {type(built).__name__}, not an nn.Module")
    return built

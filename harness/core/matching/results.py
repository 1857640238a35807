"""What matching returns: a module pairing, the tensor mapping it gives, a measured comparison, and
``MatchError`` for a pairing that does not fit or cannot be proven."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.core.errors import HarnessError
from harness.core.matching.leaves import tensors_by_path
from harness.core.matching.text import SHOWN, shape_text


class MatchError(HarnessError):
    """No pairing of the two models' weights fits, or the pairing found cannot be proven."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


@dataclass(frozen=True)
class ModulePair:
    """One src leaf and the dst leaf that gets its tensors; ``how`` says what decided it.

    ``dataflow``: the dst leaf received exactly the src leaf's input. ``order``: no input agreed
    (the models part before it), so the earliest unused same-signature src leaf was taken.
    ``unused``: at least one side is never called in a forward; paired in declaration order.
    """

    src: str
    dst: str
    how: str


@dataclass
class WeightMatch:
    """A complete, one-to-one pairing of two models' parameters and buffers."""

    mapping: dict[str, str]  # src tensor path -> dst tensor path, every leaf-owned tensor of each side
    modules: list[ModulePair]  # in src forward order, then src's never-called leaves
    parted_at: ModulePair | None = None  # the first pair taken by order: where the forwards part

    def copy_into(self, src: nn.Module, dst: nn.Module) -> None:
        """Copy ``src``'s values into ``dst`` along ``mapping``, in place; ``dst`` keeps device and dtype."""
        src_tensors = tensors_by_path(src)
        dst_tensors = tensors_by_path(dst)
        missing = [f"src {p}" for p in self.mapping if p not in src_tensors]
        missing += [f"dst {p}" for p in self.mapping.values() if p not in dst_tensors]
        if missing:
            shown = ", ".join(missing[:SHOWN])
            raise MatchError(f"the mapping does not fit these models: no tensor at {shown}")
        with torch.no_grad():
            for src_path, dst_path in self.mapping.items():
                source, target = src_tensors[src_path], dst_tensors[dst_path]
                if source.shape != target.shape:
                    raise MatchError(f"the mapping does not fit these models: src {src_path} "
                                     f"{shape_text(source.shape)} vs dst {dst_path} "
                                     f"{shape_text(target.shape)}")
                target.copy_(source)


@dataclass(frozen=True)
class ModeComparison:
    mode: str
    max_abs_diff: float  # over every output tensor, float64; inf where NaN meets a number or shapes differ
    equivalent: bool
    first_divergence: str | None  # None when equivalent
    # Every paired module in ref's forward order: (ref path, other path, max abs diff of their outputs;
    # inf where other never calls its module): where, stage by stage, the two part.
    stages: tuple[tuple[str, str, float], ...] = ()


@dataclass(frozen=True)
class Comparison:
    equivalent: bool
    modes: tuple[ModeComparison, ...]
    mapping: dict[str, str]  # ref tensor path -> other tensor path

    def as_json(self) -> dict:
        """Plain JSON types; a non-finite ``max_abs_diff`` becomes null (JSON has no inf)."""
        return {
            "equivalent": self.equivalent,
            "modes": [
                {
                    "mode": m.mode,
                    "max_abs_diff": m.max_abs_diff if m.max_abs_diff < float("inf") else None,
                    "equivalent": m.equivalent,
                    "first_divergence": m.first_divergence,
                    "stages": [{"ref": r, "other": o, "max_abs_diff": d if d < float("inf") else None}
                               for r, o, d in m.stages],
                }
                for m in self.modes
            ],
            "mapping": dict(self.mapping),
        }

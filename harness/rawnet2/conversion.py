"""Converting a RawNet2 state_dict between the guide's declared layouts.

``convert_state_dict`` maps keys through the canonical module names of
``harness.rawnet2.layouts`` and reports every key kept, renamed, added and dropped; where the
layouts' shortcuts differ, a policy says whether the function or the weights are preserved.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.core.checkpoints import StateDict
from harness.core.errors import HarnessError
from harness.core.introspect import parameter_count
from harness.rawnet2.layouts import (
    CANONICAL_LAYOUT,
    canonical_modules,
    check_fits,
    declared_layouts,
    detect_layout,
    state_dict_layout,
)
from harness.rawnet2.registry import build

POLICIES = ("preserve-function", "preserve-weights")
DEFAULT_POLICY = "preserve-function"
# Fresh shortcut weights come from a skip_modules model built under this seed, so the
# same migration always writes the same bytes.
FRESH_INIT_SEED = 0


@dataclass(frozen=True)
class ConversionReport:
    """What happened to every key: each input key is kept, renamed or dropped (with why)."""

    source: str
    target: str
    policy: str
    kept: tuple[str, ...]
    renamed: dict[str, str]  # input key -> output key
    added: dict[str, str]  # output key -> why
    dropped: dict[str, str]  # input key -> why

    @property
    def input_keys(self) -> set[str]:
        return {*self.kept, *self.renamed, *self.dropped}

    @property
    def output_keys(self) -> set[str]:
        return {*self.kept, *self.renamed.values(), *self.added}

    def lines(self) -> list[str]:
        """Human-readable summary: one line per renamed key, added and dropped keys grouped by reason."""
        out = [f"{self.source} -> {self.target} (policy {self.policy}): {len(self.kept)} kept, "
               f"{len(self.renamed)} renamed, {len(self.added)} added, {len(self.dropped)} dropped"]
        out += [f"  renamed {old} -> {new}" for old, new in self.renamed.items()]
        for verb, keys in (("added", self.added), ("dropped", self.dropped)):
            for reason in dict.fromkeys(keys.values()):
                grouped = [k for k, r in keys.items() if r == reason]
                out.append(f"  {verb} {len(grouped)}: {reason}")
                out += [f"    {k}" for k in grouped]
        return out


# Reasons, one per kind of change, so the report can group keys by them.
_CLEARED_REASON = ("not part of the {source} function: its forward raises while this shared shortcut "
                   "is set and clears it, so it never contributes to an output")
_ZERO_GATED_ADDED = ("new shortcut, zero-gated (BatchNorm weight and bias 0) so it adds exactly 0 "
                     "and the function is unchanged until training learns it")
_FRESH_ADDED = "new shortcut, freshly initialised (seed {seed}): the function changes"
_ZERO_GATED_DROPPED = "zero-gated shortcut (adds exactly 0); the {target} function has no shortcut here"
_NO_PLACE_DROPPED = "the {target} layout has no place for {module}"


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    to: str,
    *,
    source: str | None = None,
    policy: str = DEFAULT_POLICY,
) -> tuple[StateDict, ConversionReport]:
    """Convert a state_dict to layout ``to``; the report accounts for every key.

    ``source`` defaults to ``detect_layout``. Policies, where the layouts' shortcuts differ:

    * ``preserve-function`` (default): the result computes exactly what the source's
      working forward computed. legacy -> skip_modules: the shared ``skip.*`` (never
      used by the legacy effective forward) is dropped; skip2/4/6 are added zero-gated.
      skip_modules -> legacy: allowed only if skip2/4/6 are zero-gated, which are dropped.
    * ``preserve-weights``: every weight that has a place is carried: legacy ``skip.*``
      <-> ``skip6.*``; skip2/skip4 are added freshly initialised, or dropped.

    tuple_blocks is refused either way: its state_dict cannot hold the residual blocks.
    Carried tensors are the input's own (not copies); added ones take the input's float dtype.
    """
    if policy not in POLICIES:
        raise HarnessError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
    if to not in declared_layouts():
        raise HarnessError(f"unknown target layout {to!r}; known: {', '.join(declared_layouts())}")
    if source in (None, "auto"):
        source = detect_layout(state_dict)
    elif source not in declared_layouts():
        raise HarnessError(f"unknown source layout {source!r}; known: auto, {', '.join(declared_layouts())}")
    check_fits(state_dict, source)
    _refuse_tuple_blocks(source, to)
    src, dst = state_dict_layout(source), state_dict_layout(to)

    by_module: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in state_dict.items():
        canonical = src.canonical_key(key)
        by_module.setdefault(canonical.partition(".")[0], {})[canonical] = (key, tensor)

    out: StateDict = {}
    kept, renamed, added, dropped = [], {}, {}, {}
    live: list[str] = []  # shortcuts whose contribution the target cannot keep
    for module in dict.fromkeys([*dst.prefixes, *by_module]):  # target order first
        entries = by_module.get(module, {})
        # Under preserve-function a module either forward clears is no part of the function,
        # so it is not carried; a module the target clears is never filled (it is optional).
        cleared = module in src.cleared or module in dst.cleared
        carried = bool(entries) and module in dst.prefixes and not (
            policy == "preserve-function" and source != to and cleared
        )
        if carried:
            for canonical, (key, tensor) in entries.items():
                new_key = dst.key(canonical)
                out[new_key] = tensor
                if new_key == key:
                    kept.append(key)
                else:
                    renamed[key] = new_key
        elif entries:
            reason = _drop_reason(module, entries, src, dst, policy)
            if reason is None:
                live.append(module)
            dropped.update({key: reason for key, _ in entries.values()})
        if module in dst.prefixes and not carried and module not in dst.cleared:
            tensors, reason = _new_module(module, policy, _float_dtype(state_dict))
            for canonical, tensor in tensors.items():
                out[dst.key(canonical)] = tensor
                added[dst.key(canonical)] = reason
    if live:  # checked after the loop so that the message names every live shortcut
        raise HarnessError(
            f"cannot preserve the function converting {source} -> {to}: {', '.join(sorted(live))} "
            f"{'is a live shortcut' if len(live) == 1 else 'are live shortcuts'} (BatchNorm weight or bias "
            f"non-zero) and the {to} function has no shortcut there; use policy preserve-weights to carry "
            "what fits and drop the rest (reported)"
        )
    report = ConversionReport(source, to, policy, tuple(kept), renamed, added, dropped)
    return out, report


def _drop_reason(module: str, entries: dict, src, dst, policy: str) -> str | None:
    """Why ``module``'s keys may be dropped; None when dropping would change the function."""
    if module in src.cleared:
        return _CLEARED_REASON.format(source=src.name)
    if policy == "preserve-weights":
        return _NO_PLACE_DROPPED.format(target=dst.name, module=module)
    if _is_zero_gated(module, {canonical: t for canonical, (_, t) in entries.items()}):
        return _ZERO_GATED_DROPPED.format(target=dst.name)
    return None


@functools.lru_cache(maxsize=1)
def _fresh_canonical_state() -> dict[str, torch.Tensor]:
    """Freshly initialised weights of every canonical module, reproducibly (seeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FRESH_INIT_SEED)
        model = build(CANONICAL_LAYOUT)
    layout = state_dict_layout(CANONICAL_LAYOUT)
    return {layout.canonical_key(k): v for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=8)
def _gate_keys(module: str) -> tuple[str, ...]:
    """Canonical keys of the affine weight and bias of the BatchNorm that ends shortcut ``module``."""
    shortcut = canonical_modules(build(CANONICAL_LAYOUT))[module]
    norms = [name for name, m in shortcut.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return (f"{module}.{norms[-1]}.weight", f"{module}.{norms[-1]}.bias")


def _is_zero_gated(module: str, tensors: Mapping[str, torch.Tensor]) -> bool:
    return all(not torch.any(tensors[k]) for k in _gate_keys(module))


def _float_dtype(state_dict: Mapping[str, torch.Tensor]) -> torch.dtype:
    return next((v.dtype for v in state_dict.values() if v.is_floating_point()), torch.float32)


def _new_module(module: str, policy: str, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], str]:
    fresh = {k: v.to(dtype, copy=True) if v.is_floating_point() else v.clone()
             for k, v in _fresh_canonical_state().items() if k.partition(".")[0] == module}
    if policy == "preserve-weights":
        return fresh, _FRESH_ADDED.format(seed=FRESH_INIT_SEED)
    for key in _gate_keys(module):
        fresh[key].zero_()
    return fresh, _ZERO_GATED_ADDED


@functools.cache
def _tuple_blocks_weight_share() -> tuple[int, int]:
    """(parameters a tuple_blocks state_dict holds, parameters its forward uses), counted on a model."""
    model = build("tuple_blocks")
    used = sum(parameter_count(m.parameters()) for m in canonical_modules(model).values())
    return parameter_count(model.parameters()), used


def _refuse_tuple_blocks(source: str, target: str) -> None:
    if "tuple_blocks" not in (source, target):
        return
    saved, used = _tuple_blocks_weight_share()
    held = ", ".join(state_dict_layout("tuple_blocks").prefixes)
    missing = f"{used - saved:,} of {used:,} weights ({(used - saved) / used:.1%})"
    if source == "tuple_blocks":
        raise HarnessError(
            f"cannot convert from tuple_blocks: its state_dict holds only {held}; the residual blocks' "
            f"{missing} live in plain tuples that state_dict() never saves"
        )
    raise HarnessError(
        f"cannot convert to tuple_blocks: its state_dict has places only for {held}; the residual blocks' "
        f"{missing} live in plain tuples that load_state_dict() never fills"
    )

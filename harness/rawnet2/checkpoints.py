"""RawNet2 checkpoints: conversion between layouts, loading a variant from any variant's checkpoint.

* Files are read only through ``harness.core.checkpoints`` (``weights_only=True``,
  wrappers removed, one-line errors) and written atomically through it.
* ``convert_state_dict`` maps keys through the canonical module names of
  ``harness.rawnet2.layouts`` (the one description of where each variant keeps what, and of
  which layout or registered variant a state_dict is: ``detect_layout``, ``variant_of_state``)
  and reports every key kept, renamed, added and dropped.
* ``get_audio_model`` / ``load_into`` build a variant and load any convertible checkpoint
  strictly: a declared layout's by conversion, any registered variant's own state_dict by
  proven structural matching.
* ``save_checkpoint`` writes atomically; ``cli_migrate`` is ``python -m harness migrate``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from harness.core.checkpoints import (
    StateDict,
    as_state_dict,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from harness.core.errors import HarnessError
from harness.core.fileio import check_output_path
from harness.core.introspect import parameter_count
from harness.core.loading import parse_kwargs
from harness.rawnet2.equivalence import copy_weights
from harness.rawnet2.layouts import (
    CANONICAL_LAYOUT,
    canonical_modules,
    check_fits,
    declared_layouts,
    detect_layout,
    num_classes_of,
    own_shapes,
    state_dict_layout,
    variant_of_state,
)
from harness.rawnet2.registry import SUBJECTS, VariantSpec, build, resolve, spec

POLICIES = ("preserve-function", "preserve-weights")
DEFAULT_POLICY = "preserve-function"
# Fresh shortcut weights come from a skip_modules model built under this seed, so the
# same migration always writes the same bytes.
FRESH_INIT_SEED = 0

# --- conversion ----------------------------------------------------------------------------


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


# --- models --------------------------------------------------------------------------------


def legacy_effective_state_dict(model: nn.Module) -> StateDict:
    """The checkpoint of the legacy effective function, from a legacy model (fresh or after a forward).

    A fresh legacy model's state_dict has 102 keys (with the shared ``skip.*``), one
    that ran a forward 95 (the forward set ``skip = None``). The function the legacy
    forward computes uses neither, so both give the same 95-key legacy checkpoint.
    """
    layout = state_dict_layout("legacy")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    check_fits(state, "legacy")
    return {k: v for k, v in state.items() if layout.canonical_key(k).partition(".")[0] not in layout.cleared}


def get_audio_model(
    variant: str = "skip_modules",
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    *,
    device: str | torch.device = "cpu",
    policy: str = DEFAULT_POLICY,
    kwargs: Mapping[str, object] | None = None,
) -> nn.Module:
    """Build ``variant`` (a registered name or ``MODULE:ATTR``), load ``checkpoint`` into it; eval mode.

    The model is always the variant's own class. A checkpoint (a path or a state_dict) is
    loaded strictly: as it is when it has the model's own keys; converted when the
    variant declares a layout (``convert_state_dict``); otherwise converted to the
    canonical layout and then matched into the model by structure, the pairing proven
    bit for bit (``copy_weights``). A variant with the legacy layout is returned in its
    effective form (``skip = None``): the only form of the legacy model whose forward
    runs. ``"tuple_blocks"`` can only be built fresh (its state_dict cannot hold the
    blocks). Whatever does not fit raises ``HarnessError`` naming what and where.
    """
    target = resolve(variant, kwargs=kwargs)
    if checkpoint is None:
        model = target.build()
    else:
        label = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "checkpoint"
        if isinstance(checkpoint, (str, os.PathLike)):
            state = load_checkpoint(checkpoint)
        else:
            state, _ = as_state_dict(checkpoint, label)
        with _about(label):
            model, _ = load_into(target, state, policy=policy)
    return _runnable(model, target).to(device).eval()


def _runnable(model: nn.Module, target: VariantSpec) -> nn.Module:
    """The legacy layout's effective form (``skip = None``): the only one whose forward runs."""
    if target.layout == "legacy":
        model.skip = None
    return model


def detect_source(state: Mapping[str, torch.Tensor]) -> str | VariantSpec:
    """What ``state`` is a checkpoint of: a declared layout (``detect_layout``), else the registered
    variant whose own state_dict it is (``layouts.variant_of_state``); ``HarnessError`` when neither."""
    try:
        return detect_layout(state)
    except HarnessError as exc:
        variant = variant_of_state(state) if state else None
        if variant is None:
            raise HarnessError(f"{exc}; nor do its keys fit any registered variant's state_dict "
                               "(--from VARIANT names the model it came from)") from None
        return variant


def in_declared_layout(source: str | VariantSpec, state: Mapping[str, torch.Tensor]) -> StateDict:
    """``state`` (a checkpoint of variant ``source``) in a declared layout that conversion knows.

    A variant that declares a layout is already in one; any other is loaded into its own
    model strictly and matched by structure into the canonical layout's model (proven).
    """
    variant = spec(source) if isinstance(source, str) else source
    if variant.layout is not None:
        return dict(state)
    hub = spec(CANONICAL_LAYOUT)
    model = _move(_holding(variant, state), variant.name, hub, hub.build())
    return {k: v.detach() for k, v in model.state_dict().items()}


def load_into(target: VariantSpec, state: Mapping[str, torch.Tensor], *, policy: str = DEFAULT_POLICY,
              source: VariantSpec | None = None) -> tuple[nn.Module, list[str]]:
    """A fresh ``target`` holding ``state``'s function, in the form that runs (see ``get_audio_model``),
    and what was done.

    ``state`` is a checkpoint of ``source``: its declared layout, or the variant's own
    state_dict. Without ``source``: ``target``'s own when it has exactly its keys and shapes,
    else what ``detect_source`` finds. A variant's own state_dict moves into another variant
    by proven structural matching; into a declared layout through the canonical one.
    """
    if source is None and target.layout is None:
        model = target.build()
        if own_shapes(model.state_dict()) == own_shapes(state):
            model.load_state_dict(dict(state), strict=True)
            return model, [f"loaded as it is: the checkpoint has {target.name}'s own {len(state)} keys"]
    found = detect_source(state) if source is None else source.layout or source
    if isinstance(found, VariantSpec):
        if found.name == target.name:
            return _holding(target, state), [f"loaded as it is: {target.name}'s own {len(state)} keys"]
        if target.layout is None:
            model = _move(_holding(found, state), found.name, target, target.build())
            return model, [_matched_line(found.name, target, len(state))]
        state, found = in_declared_layout(found, state), CANONICAL_LAYOUT
    if target.layout is not None:
        converted, report = convert_state_dict(state, target.layout, source=found, policy=policy)
        check_fits(converted, target.layout)
        model = target.build(num_classes=num_classes_of(converted))
        if target.layout == "legacy" and not any(k.startswith("skip.") for k in converted):
            model.skip = None  # a 95-key legacy checkpoint: the model as its forward left it
        model.load_state_dict(converted, strict=True)
        return _runnable(model, target), report.lines()
    canonical, report = convert_state_dict(state, CANONICAL_LAYOUT, source=found, policy=policy)
    hub = spec(CANONICAL_LAYOUT).build(num_classes=num_classes_of(canonical))
    hub.load_state_dict(canonical, strict=True)
    model = _move(hub, CANONICAL_LAYOUT, target, target.build())
    return model, [*report.lines(), _matched_line(CANONICAL_LAYOUT, target, len(canonical))]


def _holding(variant: VariantSpec, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """A fresh ``variant`` loaded strictly with ``state``, its own state_dict (one-line error if not)."""
    model = variant.build()
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise HarnessError(f"does not fit {variant.name}'s state_dict: {detail[:300]}") from None
    return model


def _move(model: nn.Module, name: str, target: VariantSpec, into: nn.Module) -> nn.Module:
    """``into`` (a fresh ``target``) given ``model``'s weights by ``copy_weights``, proven on an example
    of ``target``'s input contract."""
    try:
        copy_weights(model, into, contract=target.input_contract())
    except HarnessError as exc:
        raise HarnessError(f"cannot move {name}'s weights into {target.name}: {exc}",
                           exit_code=exc.exit_code) from None
    return into


def _matched_line(name: str, target: VariantSpec, keys: int) -> str:
    return (f"{name} -> {target.name}: every tensor matched by structure ({keys} keys), outputs proven "
            "bit-identical in train and eval mode")


class _about:
    """Prefix a ``HarnessError`` raised inside with what it is about (a file name)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        if isinstance(exc, HarnessError):
            raise HarnessError(f"{self.label}: {exc}", exit_code=exc.exit_code) from None


# --- CLI -----------------------------------------------------------------------------------


def cli_migrate(args: argparse.Namespace) -> int:
    """``python -m harness migrate SRC DST --to TARGET [--from SOURCE]``: convert, report, write atomically.

    TARGET is a declared layout (``convert_state_dict``), or any registered variant or
    ``MODULE:ATTR``: then the checkpoint is loaded into that model (``load_into``, the
    pairing proven) and its own state_dict is written. SOURCE (default: detected, the
    detected variant named on stderr) is a declared layout or a variant whose own
    state_dict SRC holds. DST is never a file the run reads.
    """
    src, dst = Path(args.src), Path(args.dst)
    kwargs = parse_kwargs(args.kwargs) if args.kwargs else None
    to_layout = args.to in declared_layouts() or ":" not in args.to and args.to not in SUBJECTS
    target = None if to_layout else resolve(args.to, kwargs=kwargs)
    named = None if args.source == "auto" else resolve(args.source)
    reads = [("the source checkpoint", src), *_files_read(target), *_files_read(named)]
    registry = getattr(args, "registry", None) or Path.cwd() / "pyproject.toml"  # load_project_registry's
    reads += [("the registry", Path(registry))]
    reads += [("the --kwargs file", Path(args.kwargs[1:]))] if args.kwargs and args.kwargs[:1] == "@" else []
    _refuse_overwriting(dst, reads)
    # Before reading anything: DST must be a new path or a regular file (--force), never a
    # directory, device, FIFO or socket, nor a symlink without --force (the raw spelling, so
    # that a trailing separator still names a directory).
    check_output_path(args.dst, force=args.force, overwrite=False)
    state, notes = read_checkpoint(src)
    with _about(str(src)):
        source = named
        if source is None and (target is None or target.layout is not None or
                               own_shapes(target.build().state_dict()) != own_shapes(state)):
            found = detect_source(state)
            if isinstance(found, VariantSpec):
                _refuse_overwriting(dst, _files_read(found))
                print(f"{src}: its keys are {found.name}'s own state_dict (detected; --from {found.name} "
                      "says so)", file=sys.stderr)
                source = found
        if target is None:
            layout = None if source is None else source.layout or CANONICAL_LAYOUT
            if source is not None and source.layout is None:
                state = in_declared_layout(source, state)
            converted, report = convert_state_dict(state, args.to, source=layout, policy=args.policy)
            lines = report.lines()
        else:
            model, lines = load_into(target, state, policy=args.policy, source=source)
            converted = {k: v.detach() for k, v in model.state_dict().items()}
    save_checkpoint(converted, args.dst, force=args.force)
    for note in notes:
        print(f"{src}: {note}")
    print("\n".join(lines))
    print(f"wrote {dst} ({len(converted)} keys)")
    return 0


def _files_read(variant: VariantSpec | None) -> list[tuple[str, Path]]:
    paths = [] if variant is None else variant.files_read()
    return [(f"a file {variant.name} is built from", path) for path in paths]


def _refuse_overwriting(dst: Path, reads: list[tuple[str, Path]]) -> None:
    """Refuse a DST that is any file the run reads, in any spelling (``_same_file``), even with --force."""
    for what, path in reads:
        if _same_file(path, dst):
            raise HarnessError(f"{dst}: is {what} {path}; write the migration to a new file")


def _same_file(src: Path, dst: Path) -> bool:
    """True for the same path in any spelling, through symlinks, or a hard link to it."""
    if os.path.realpath(src) == os.path.realpath(dst):
        return True
    try:
        return os.path.samefile(src, dst)
    except OSError:
        return False

"""RawNet2 checkpoints: loading a variant from any variant's checkpoint, and ``migrate``.

* Files are read only through ``harness.core.checkpoints`` (``weights_only=True``,
  wrappers removed, one-line errors) and written atomically through it.
* ``get_audio_model`` / ``load_into`` build a variant and load any convertible checkpoint
  strictly: a declared layout's by conversion (``harness.rawnet2.conversion``), any
  registered variant's own state_dict by proven structural matching
  (``harness.rawnet2.transfer``).
* ``save_checkpoint`` writes atomically; ``python -m harness migrate`` is ``harness.cli.migrate``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn as nn

from harness.core.checkpoints import (
    StateDict,
    as_state_dict,
    load_checkpoint,
)
from harness.core.checkpoints import save_checkpoint as save_checkpoint
from harness.core.errors import HarnessError
from harness.rawnet2.conversion import DEFAULT_POLICY, convert_state_dict
from harness.rawnet2.conversion import FRESH_INIT_SEED as FRESH_INIT_SEED
from harness.rawnet2.conversion import POLICIES as POLICIES
from harness.rawnet2.conversion import ConversionReport as ConversionReport
from harness.rawnet2.layouts import (
    CANONICAL_LAYOUT,
    check_fits,
    detect_layout,
    num_classes_of,
    own_shapes,
    state_dict_layout,
    variant_of_state,
)
from harness.rawnet2.registry import VariantSpec, resolve, spec
from harness.rawnet2.transfer import copy_weights
from harness.rawnet2.variants import without_shared_skip

# The ``X as X`` imports above: conversion's public names and save_checkpoint, still importable from
# this module.

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
        with about_file(label):
            model, _ = load_into(target, state, policy=policy)
    return _runnable(model, target).to(device).eval()


def _runnable(model: nn.Module, target: VariantSpec) -> nn.Module:
    """The legacy layout's effective form (``skip = None``): the only one whose forward runs."""
    if target.layout == "legacy":
        without_shared_skip(model)
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
            without_shared_skip(model)  # a 95-key legacy checkpoint: the model as its forward left it
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


class about_file:
    """Prefix a ``HarnessError`` raised inside with what it is about (a file name)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        if isinstance(exc, HarnessError):
            raise HarnessError(f"{self.label}: {exc}", exit_code=exc.exit_code) from None

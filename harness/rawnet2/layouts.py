"""Where each variant keeps its residual blocks: main path and shortcut per block.

One description serves skip-wiring checks, checkpoint key maps and weight copies, and
says what a state_dict is: which declared layout (``detect_layout``, ``check_fits``) or
which registered variant's own (``variant_of_state``). The canonical naming is
``skip_modules``' (the only layout that registers every module its forward uses):
``conv1``, ``res_block1..6``, ``skip2/4/6``, ``fc1``, ``fc2``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from harness.core.errors import HarnessError
from harness.core.text import first_few

if TYPE_CHECKING:
    from harness.rawnet2.registry import VariantSpec

# Blocks whose stride or channel count changes; every other block keeps its shape.
PROJECTION_BLOCKS = (2, 4, 6)
# The legacy model assigns its shared ``skip`` in every projection block's
# ``_make_res_block``; the last assignment (block 6, 128 -> 256, stride 2) survives.
LEGACY_SHARED_SKIP_BLOCK = 6
HEAD_MODULES = ("conv1", "fc1", "fc2")
# The layout that holds every canonical module under its canonical name: conversions between
# other layouts, and matching a model outside them, go through it.
CANONICAL_LAYOUT = "skip_modules"

_MAX_LISTED = 6  # keys named in a misfit message before "(+N more)"
_BLOCK_ATTR = re.compile(r"^res_block(\d+)$")
# A block that adds its own shortcut keeps it under one of these names (None: identity):
# torchvision's BasicBlock / Bottleneck say downsample, many other code bases shortcut.
SHORTCUT_NAMES = ("downsample", "shortcut")


@dataclass(frozen=True)
class ResidualBlock:
    """One residual block as a model holds it.

    ``shortcut`` is the projection module the model keeps for this block, or None
    (identity or, for a broken model, nothing). ``*_path`` say how to reach each
    module from the model, e.g. ``res_block2`` or ``res_block2[0]``. ``adds_itself``:
    the block module adds the shortcut in its own forward (torchvision's ``BasicBlock``
    idiom, ``main`` is then the whole block); otherwise its parent adds it (the guide's).
    """

    index: int
    main: nn.Module
    main_path: str
    shortcut: nn.Module | None
    shortcut_path: str | None
    adds_itself: bool = False


def residual_blocks(model: nn.Module) -> list[ResidualBlock]:
    """The model's residual blocks in order, each with its own shortcut module.

    Two idioms are known: the guide's ``res_blockN`` attributes (a module with an optional
    ``skipN`` beside it, or a ``(main, skip)`` tuple), and torchvision's, a module holding
    a ``downsample`` (or ``shortcut``) attribute, None for the identity, that adds the
    shortcut itself.
    Returns an empty list for a model with neither.
    """
    indices = sorted(
        int(m.group(1)) for name in set(vars(model)) | set(model._modules)
        if (m := _BLOCK_ATTR.match(name))
    )
    blocks = []
    for i in indices:
        held = getattr(model, f"res_block{i}")
        if isinstance(held, tuple):
            main, shortcut = held
            blocks.append(ResidualBlock(i, main, f"res_block{i}[0]", shortcut,
                                        f"res_block{i}[1]" if shortcut is not None else None))
        else:
            shortcut = getattr(model, f"skip{i}", None)
            blocks.append(ResidualBlock(i, held, f"res_block{i}", shortcut,
                                        f"skip{i}" if shortcut is not None else None))
    if blocks:
        return blocks
    # ``downsample = None`` is a plain attribute, a module one a registered submodule.
    owners = []
    for path, module in model.named_modules():
        name = next((n for n in SHORTCUT_NAMES if n in module._modules
                     or n in vars(module) and vars(module)[n] is None), None)
        if path and name is not None:
            shortcut = getattr(module, name)
            owners.append((path, module, shortcut, f"{path}.{name}" if shortcut is not None else None))
    return [ResidualBlock(i, module, path, shortcut, shortcut_path, adds_itself=True)
            for i, (path, module, shortcut, shortcut_path) in enumerate(owners, start=1)]


def has_guide_layout(model: nn.Module) -> bool:
    """Whether ``model`` keeps its modules under the guide's names (conv1, res_blockN, fc1, fc2)."""
    blocks = residual_blocks(model)
    return all(isinstance(getattr(model, name, None), nn.Module) for name in HEAD_MODULES) and bool(
        blocks) and not blocks[0].adds_itself


def canonical_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every weight-holding module of a RawNet2 variant under its canonical name.

    Works for all three layouts, including tuple_blocks' unregistered tuple members.
    The legacy shared ``skip`` (when still set) is reported as ``skip6``.
    """
    modules: dict[str, nn.Module] = {"conv1": model.conv1}
    for block in residual_blocks(model):
        modules[f"res_block{block.index}"] = block.main
        if block.shortcut is not None:
            modules[f"skip{block.index}"] = block.shortcut
    shared = getattr(model, "skip", None)
    if isinstance(shared, nn.Module):
        modules[f"skip{LEGACY_SHARED_SKIP_BLOCK}"] = shared
    modules["fc1"] = model.fc1
    modules["fc2"] = model.fc2
    return modules


# --- where each layout keeps each module in its state_dict -------------------------------

def declared_layouts() -> tuple[str, ...]:
    """The layouts the registry declares (``VariantSpec.layout``); each is also a variant's name."""
    from harness.rawnet2.registry import SUBJECTS

    return tuple(dict.fromkeys(spec.layout for spec in SUBJECTS.values() if spec.layout))


# Canonical modules a layout's forward clears (sets to None) before they can contribute.
# The legacy forward sets ``self.skip = None`` on its first call (``legacy_effective``
# does so up front), which also unregisters it: a legacy state_dict saved after any
# forward has 95 keys, one saved from a fresh model 102. Both are the legacy layout, and
# the function the legacy model computes uses neither copy of ``skip``.
_CLEARED_BY_FORWARD = {"legacy": (f"skip{LEGACY_SHARED_SKIP_BLOCK}",)}


def state_dict_prefixes(model: nn.Module) -> dict[str, str | None]:
    """Canonical module name -> the key prefix its tensors have in ``model.state_dict()``.

    None where the model uses the module but does not register it (tuple_blocks'
    tuple members), so its weights are never saved or loaded.
    """
    registered = {id(module): name for name, module in model.named_modules() if name}
    return {canonical: registered.get(id(module)) for canonical, module in canonical_modules(model).items()}


@dataclass(frozen=True)
class StateDictLayout:
    """How one variant's state_dict names the canonical modules.

    ``prefixes`` maps each canonical module the state_dict holds to its key prefix
    (``skip6`` -> ``skip`` for legacy); ``unsaved`` are the canonical modules its
    forward uses that no state_dict of this layout can hold; ``cleared`` are held
    modules its forward clears before use: a complete state_dict may lack them and the
    function the model computes never depends on them.
    """

    name: str
    prefixes: Mapping[str, str]
    unsaved: tuple[str, ...]
    cleared: tuple[str, ...]

    def canonical_key(self, key: str) -> str | None:
        """``skip.0.weight`` -> ``skip6.0.weight`` (legacy); None for a key this layout has no place for."""
        head, dot, rest = key.partition(".")
        canonical = self._canonical_of.get(head)
        return None if canonical is None or not dot else f"{canonical}.{rest}"

    def key(self, canonical_key: str) -> str | None:
        """The inverse of ``canonical_key``; None where this layout cannot hold the module."""
        head, dot, rest = canonical_key.partition(".")
        prefix = self.prefixes.get(head)
        return None if prefix is None or not dot else f"{prefix}.{rest}"

    @property
    def _canonical_of(self) -> dict[str, str]:
        return {prefix: canonical for canonical, prefix in self.prefixes.items()}


@functools.cache
def state_dict_layout(name: str) -> StateDictLayout:
    """The state_dict layout of a registered variant, read off a freshly built instance.

    ======================  ========================================  ====================
    layout                  holds (canonical -> key prefix)           never holds
    ======================  ========================================  ====================
    legacy                  conv1, res_block1-6, skip6 -> ``skip``,   skip2, skip4
                            fc1, fc2 (``skip`` cleared)
    skip_modules            conv1, res_block1-6, skip2/4/6, fc1, fc2  (nothing)
    tuple_blocks            conv1, fc1, fc2                           res_block1-6,
                                                                      skip2/4/6
    ======================  ========================================  ====================
    """
    from harness.rawnet2.registry import build  # the registry builds the models this describes

    if name not in declared_layouts():
        raise HarnessError(f"unknown layout {name!r}; known: {', '.join(declared_layouts())}")
    found = state_dict_prefixes(build(name))
    return StateDictLayout(
        name=name,
        prefixes=MappingProxyType({c: p for c, p in found.items() if p is not None}),
        unsaved=tuple(c for c, p in found.items() if p is None),
        cleared=_CLEARED_BY_FORWARD.get(name, ()),
    )


# --- which layout a state_dict is in ------------------------------------------------------


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``legacy``, ``skip_modules`` or ``tuple_blocks``: the smallest layout with a place for every key.

    Smallest, because the layouts nest by key prefix: a legacy state_dict saved after a
    forward (no ``skip.*``) also fits skip_modules' prefixes but lacks its skipN, and
    tuple_blocks' three modules fit both others.
    """
    if not state_dict:
        raise HarnessError("holds an empty state_dict")
    heads = {key.partition(".")[0] for key in state_dict}
    fitting = [name for name in declared_layouts() if heads <= set(state_dict_layout(name).prefixes.values())]
    if fitting:
        return min(fitting, key=lambda name: len(state_dict_layout(name).prefixes))
    known = set().union(*(state_dict_layout(name).prefixes.values() for name in declared_layouts()))
    foreign = heads - known
    if foreign:
        example = next(k for k in state_dict if k.partition(".")[0] in foreign)
        raise HarnessError(
            f"not a RawNet2 checkpoint: no variant layout ({', '.join(declared_layouts())}) has a key "
            f"like {example!r}"
        )
    raise HarnessError(
        f"mixes layouts: keys under {', '.join(sorted(heads))} fit none of {', '.join(declared_layouts())} "
        "(e.g. legacy's shared 'skip.*' beside skip_modules' 'skipN.*')"
    )


def num_classes_of(state_dict: Mapping[str, torch.Tensor]) -> int:
    """The classifier width a state_dict was trained with (1 when it cannot tell)."""
    weight = state_dict.get("fc2.weight")
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else 1


@functools.lru_cache(maxsize=16)
def _reference_shapes(layout: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    from harness.rawnet2.registry import build

    return {k: tuple(v.shape) for k, v in build(layout, num_classes=num_classes).state_dict().items()}


def check_fits(state_dict: Mapping[str, torch.Tensor], layout: str) -> None:
    """Raise ``HarnessError`` naming the missing, unexpected and mis-shaped keys, if any.

    Modules the layout's forward clears (legacy ``skip``) may be absent as a whole.
    """
    spec = state_dict_layout(layout)
    expected = _reference_shapes(layout, num_classes_of(state_dict))
    for canonical in spec.cleared:
        keys = [k for k in expected if spec.canonical_key(k).partition(".")[0] == canonical]
        if not any(k in state_dict for k in keys):
            expected = {k: v for k, v in expected.items() if k not in keys}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} {list(state_dict[k].shape)} (expected {list(expected[k])})"
        for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]
    ]
    problems = [f"{what} {_listing(keys)}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
    if problems:
        raise HarnessError(f"does not fit the {layout} layout: {'; '.join(problems)}")


def _listing(items: list[str]) -> str:
    return first_few(items, _MAX_LISTED, more=" (+{} more)")


# --- a registered variant's own state_dict --------------------------------------------------


def own_shapes(state: Mapping[str, object]) -> dict[str, tuple[int, ...]]:
    """Key -> shape: what a strict ``load_state_dict`` asks of a checkpoint."""
    return {key: tuple(getattr(value, "shape", ())) for key, value in state.items()}


def variant_of_state(state: Mapping[str, object]) -> VariantSpec | None:
    """The registered variant whose own state_dict ``state`` is: exactly its keys and shapes.

    Several fit where variants share a state_dict (a class-renamed copy of a model): one
    held to another that fits (its ``reference``, followed through the registry) computes
    that one's function, so the checkpoint is read as the other's. None when none fits;
    ``HarnessError`` when unrelated ones do (only ``--from`` can say which). Variants whose
    factory raises are passed over: they hold no checkpoint.
    """
    from harness.core.loading import UserCodeExit
    from harness.rawnet2.registry import SUBJECTS

    shapes = own_shapes(state)
    fitting = {}
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: the caller's RNG stays
        for name, spec in SUBJECTS.items():
            try:
                built = spec.build()
            except UserCodeExit:
                raise
            except Exception:  # noqa: BLE001 - a model that cannot be built is no candidate
                continue
            if own_shapes(built.state_dict()) == shapes:
                fitting[name] = spec
    roots = [spec for spec in fitting.values() if not _held_to(spec, set(fitting) - {spec.name})]
    if len(roots) > 1:
        raise HarnessError(f"its keys fit the state_dicts of {len(roots)} registered variants "
                           f"({', '.join(s.name for s in roots)}): name the one it came from with --from")
    return roots[0] if roots else None


def _held_to(spec: VariantSpec, names: set[str]) -> bool:
    """Whether ``spec``'s reference chain reaches one of ``names``."""
    from harness.rawnet2.registry import SUBJECTS

    seen: set[str] = set()
    current: VariantSpec | None = spec
    while current.reference is not None and current.name not in seen:
        if current.reference in names:
            return True
        seen.add(current.name)
        current = SUBJECTS.get(current.reference)
        if current is None:
            return False
    return False

"""Where each variant keeps its residual blocks: main path and shortcut per block.

One description serves skip-wiring checks, checkpoint key maps and weight copies.
The canonical naming is ``skip_modules``' (the only layout that registers every
module its forward uses): ``conv1``, ``res_block1..6``, ``skip2/4/6``, ``fc1``,
``fc2``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn as nn

# Blocks whose stride or channel count changes; every other block keeps its shape.
PROJECTION_BLOCKS = (2, 4, 6)
# The legacy model assigns its shared ``skip`` in every projection block's
# ``_make_res_block``; the last assignment (block 6, 128 -> 256, stride 2) survives.
LEGACY_SHARED_SKIP_BLOCK = 6
HEAD_MODULES = ("conv1", "fc1", "fc2")

_BLOCK_ATTR = re.compile(r"^res_block(\d+)$")


@dataclass(frozen=True)
class ResidualBlock:
    """One residual block as a model holds it.

    ``shortcut`` is the projection module the model keeps for this block, or None
    (identity or, for a broken model, nothing). ``*_path`` say how to reach each
    module from the model, e.g. ``res_block2`` or ``res_block2[0]``.
    """

    index: int
    main: nn.Module
    main_path: str
    shortcut: nn.Module | None
    shortcut_path: str | None


def residual_blocks(model: nn.Module) -> list[ResidualBlock]:
    """The model's ``res_blockN`` blocks in order, each with its own shortcut module.

    A block is either a module with an optional ``skipN`` attribute beside it, or a
    ``(main, skip)`` tuple. Returns an empty list for a model with no such blocks.
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
    return blocks


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

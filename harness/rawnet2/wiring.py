"""The family's block observer: each ``res_blockN`` (or ``downsample``-holding) block's values.

``observe_blocks`` records every block of ``harness.rawnet2.layouts.residual_blocks`` (the
guide's names) with its input, main-path output and output in the real forward. The
``skip_wiring`` audit check does not use it: it finds blocks by dataflow in any model
(``harness.core.wiring``, ``harness.core.residuals``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from harness.core.introspect import held_modules
from harness.rawnet2.layouts import ResidualBlock, residual_blocks


@dataclass(frozen=True)
class BlockObservation:
    """One residual block as the real forward ran it.

    ``output`` is what the next module called after the block received (the next
    block's input, or whatever runs after the last block); None when no module ran
    after it or what it received has another shape than the main path's output.
    """

    block: ResidualBlock
    input: torch.Tensor
    main_output: torch.Tensor
    output: torch.Tensor | None
    observed_at: str | None


def observe_blocks(model: nn.Module, x: torch.Tensor) -> list[BlockObservation]:
    """Run ``model(x)`` (no grad) and record each residual block's input, main output and output.

    A block whose parent adds the shortcut (the guide's idiom): its main path module's
    output, and as the block's output what the next module receives. A block that adds
    it itself (torchvision's): the last output of its own submodules outside the
    shortcut as the main output, and the block's return value as its output. Blocks
    whose main path never ran are left out. The forward's exceptions propagate.
    """
    blocks = residual_blocks(model)
    by_main = {id(b.main): b for b in blocks if not b.adds_itself}
    by_block = {id(b.main): b for b in blocks if b.adds_itself}
    inside = {b.index: {id(m) for part in (b.main, b.shortcut) if part is not None for m in part.modules()}
              for b in blocks}
    # Self-adding blocks: submodule id -> block index, for the submodules on the main path.
    main_part = {id(m): b.index for b in by_block.values() for m in b.main.modules()
                 if m is not b.main and id(m) not in _ids(b.shortcut)}
    names = {id(h.obj): h.path for h in held_modules(model)}
    seen: dict[int, dict[str, object]] = {}
    pending: list[int] = []
    active: set[int] = set()

    def before(module: nn.Module, args: tuple) -> None:
        if pending and module is not model and all(id(module) not in inside[i] for i in pending):
            received = next((a for a in args if isinstance(a, torch.Tensor)), None)
            for i in pending:
                if received is not None:
                    seen[i]["output"] = received.detach().clone()
                    seen[i]["at"] = names.get(id(module), type(module).__name__)
            pending.clear()
        block = by_main.get(id(module)) or by_block.get(id(module))
        if block is not None and block.index not in seen and args and isinstance(args[0], torch.Tensor):
            seen[block.index] = {"input": args[0].detach().clone()}
            if block.adds_itself:
                active.add(block.index)

    def after(module: nn.Module, args: tuple, output: object) -> None:
        index = main_part.get(id(module))
        if index in active and isinstance(output, torch.Tensor):
            seen[index]["main"] = output.detach().clone()  # the last one before the addition wins
        block = by_block.get(id(module))
        if block is not None and block.index in active:
            active.discard(block.index)
            if isinstance(output, torch.Tensor):
                seen[block.index]["output"] = output.detach().clone()
                seen[block.index]["at"] = f"{block.main_path} (its own output)"
            return
        block = by_main.get(id(module))
        if block is not None and "main" not in seen.get(block.index, {"main": None}):
            if isinstance(output, torch.Tensor):
                seen[block.index]["main"] = output.detach().clone()
                pending.append(block.index)

    handles = [register_module_forward_pre_hook(before), register_module_forward_hook(after)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    observations = []
    for b in blocks:
        record = seen.get(b.index, {})
        if "main" not in record:
            continue
        main = record["main"]
        output = record.get("output")
        if output is not None and output.shape != main.shape:
            output = None
        observations.append(BlockObservation(b, record["input"], main, output,
                                             record.get("at") if output is not None else None))
    return observations


def _ids(module: nn.Module | None) -> set[int]:
    return set() if module is None else {id(m) for m in module.modules()}

"""The skip-wiring observer: does each residual block add the shortcut it holds?

``observe_blocks`` records every block's input, main-path output and output in the real
forward; ``check_skip_wiring`` (an audit check, ``harness.rawnet2.audits.CHECKS``) says
for each block whether ``output == main(input) + shortcut(input)``, where the shortcut is
the block's own projection module or, for a block that keeps its shape, the identity.
Blocks are found by ``harness.rawnet2.layouts.residual_blocks``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from harness.core.audits import AuditContext, Finding, ModelFailure, NotApplicable
from harness.core.errors import error_line
from harness.core.introspect import held_modules
from harness.core.tolerances import EXACT, all_close, max_abs_diff
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


def check_skip_wiring(ctx: AuditContext) -> list[Finding]:
    """For every residual block (``layouts.residual_blocks``): output == main(in) + shortcut(in).

    The shortcut is the block's own projection module when the model holds one, the
    identity when the block keeps its shape; a shape-changing block without one is a
    finding. Each output is observed in the real forward, never recomputed.
    """
    model = ctx.build().eval()
    if not residual_blocks(model):
        raise NotApplicable("no residual blocks of a known idiom (res_blockN with skipN, or a block holding "
                            "downsample/shortcut): nothing to observe")
    try:
        observations = observe_blocks(model, ctx.example)
    except Exception as exc:
        raise ModelFailure(f"forward raises {error_line(exc)} (eval mode)") from exc
    findings = []
    unobserved = [o.block.index for o in observations if o.output is None]
    ran = {o.block.index for o in observations}
    never = [b.index for b in residual_blocks(model) if b.index not in ran]
    if never:
        findings.extend(ctx.finding(f"block {b.index}: its main path {b.main_path} never runs", [b.main_path])
                        for b in residual_blocks(model) if b.index in never)
    if unobserved:
        ctx.notes.append(f"output of block(s) {', '.join(map(str, unobserved))} not observable "
                         "(no module with a same-shaped input runs after them); not checked")
        if len(unobserved) == len(observations) and not never:
            raise NotApplicable("no block output is observable: no module with a same-shaped input "
                                "runs after any block")
    for o in observations:
        if o.output is not None:
            problem = _wiring_problem(o)
            if problem:
                findings.append(ctx.finding(problem, [o.block.main_path]))
    return findings


def _shape_change(before: torch.Tensor, after: torch.Tensor) -> str:
    if before.dim() == 3 and after.dim() == 3:
        return (f"channels {before.shape[1]}->{after.shape[1]}, "
                f"length {before.shape[2]}->{after.shape[2]}")
    return f"{tuple(before.shape)}->{tuple(after.shape)}"


def _wiring_problem(o: BlockObservation) -> str | None:
    """What is wrong with one observed block, or None when output == main(input) + shortcut(input)."""
    b, x, main, out = o.block, o.input, o.main_output, o.output
    assert out is not None
    label = f"block {b.index}"
    if b.shortcut is not None:
        with torch.no_grad():
            shortcut = b.shortcut(x)
        name = f"{b.shortcut_path}(input)"
    elif x.shape == main.shape:
        shortcut, name = x, "input"
    else:
        alone = " and its output is main(input) alone" if all_close(out, main, EXACT) else ""
        return (f"{label}: shape changes ({_shape_change(x, main)}) but the model holds no projection "
                f"shortcut for it{alone}: nothing is added on the shortcut path")
    if shortcut.shape == main.shape and all_close(out, main + shortcut, EXACT):
        return None
    if all_close(out, main, EXACT):
        return f"{label}: output == main(input) alone; {name} is never added"
    if b.shortcut is not None and x.shape == main.shape and all_close(out, main + x, EXACT):
        return f"{label}: output == main(input) + input: the identity is added instead of {name}"
    diff = f"max abs diff {max_abs_diff(out, main + shortcut):.3g}" if shortcut.shape == main.shape \
        else f"{name} has shape {tuple(shortcut.shape)}, main(input) {tuple(main.shape)}"
    return f"{label}: output != {b.main_path}(input) + {name}, {diff} (output observed at {o.observed_at})"

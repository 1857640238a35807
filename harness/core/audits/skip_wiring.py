"""The ``skip_wiring`` audit check: does every residual block add its own shortcut, once?

The blocks are found by dataflow in the real forward (``harness.core.residuals``), never
by attribute names, so the check applies to any ``nn.Module``. For each block:
``output == main(input) + shortcut(input)`` exactly, where the shortcut is the identity,
the block's own projection (run again on the block's input) or a parameter-free function
of that input, computed from *this* block's input in *this* forward; a block built like
the others that adds no shortcut, or adds something else, is named, and so is a block
whose output holds its shortcut more than once. A model with no residual addition: n/a.
"""

from __future__ import annotations

import torch

from harness.core.audits.context import AuditContext, ModelFailure, NotApplicable
from harness.core.audits.results import Finding
from harness.core.errors import error_line
from harness.core.loading import UserCodeExit, call_user_code
from harness.core.residuals import Block, UnrepeatableForward, find_blocks
from harness.core.tolerances import EXACT, all_close, max_abs_diff

NO_RESIDUALS = ("no residual addition in the forward (no sum of a tensor and a function of it computed "
                "through parameters): nothing to check")


def check_skip_wiring(ctx: AuditContext) -> list[Finding]:
    """Eval mode: every residual block's output is main(input) + shortcut(input), its shortcut its own."""
    model = ctx.build().eval()
    try:
        blocks = call_user_code(find_blocks, model, ctx.example, what="the forward")
    except UserCodeExit:
        raise
    except UnrepeatableForward as exc:
        raise ModelFailure(str(exc)) from exc
    except Exception as exc:
        raise ModelFailure(f"forward raises {error_line(exc)} (eval mode)") from exc
    if not blocks:
        raise NotApplicable(NO_RESIDUALS)
    ctx.notes.append("blocks found by dataflow: "
                     + ", ".join(f"{b.path} ({_shortcut_name(b)})" for b in blocks))
    findings = []
    owners: dict[int, str] = {}
    for block in blocks:
        problems = wiring_problems(block)
        if block.projection is not None:
            other = owners.setdefault(id(block.projection), block.path)
            if other != block.path:
                problems.append(f"its projection {block.projection_path} is {other}'s too: one module shared "
                                "by two blocks, so at most one of them adds its own shortcut")
        findings += [ctx.finding(f"{block.path}: {p}", [block.path]) for p in problems]
    return findings


def _shortcut_name(block: Block) -> str:
    if block.shortcut == "projection":
        return block.projection_path or "projection"
    return {"identity": "identity", "function": "parameter-free shortcut"}.get(block.shortcut, "no shortcut")


def wiring_problems(block: Block) -> list[str]:
    """What is wrong with one block (empty when output == main(input) + shortcut(input), shortcut once)."""
    if block.shortcut == "none":
        siblings = ", ".join(block.siblings)
        changes = "" if block.input.shape == block.output.shape else \
            f" (its shape changes: {_shape_change(block.input, block.output)}, and no projection is added)"
        return [f"adds no shortcut, unlike {siblings}: its output is main(input) alone{changes}"]
    if block.shortcut == "foreign" and block.shortcut_count == 0:
        return [f"adds {block.detail} where {', '.join(block.siblings)} add a shortcut of their input: "
                "nothing computed from its own input is added"]
    if block.shortcut == "foreign":
        return [f"its shortcut is computed from {block.detail}, not from this block's input in this forward "
                "(a stale shortcut)"]
    problems = []
    if block.shortcut_count > 1:
        n = block.shortcut_count
        problems.append(f"its output holds its shortcut ({_shortcut_name(block)}) {n} times: "
                        f"main(input) + {n} x shortcut(input)")
    shortcut = block.shortcut_value
    if shortcut is not None and shortcut.shape != block.output.shape:
        problems.append(f"its shortcut has shape {tuple(shortcut.shape)}, broadcast to the output's "
                        f"{tuple(block.output.shape)}")
    expected = block.expected
    if expected is not None and not all_close(block.output, expected, EXACT):
        diff = f"max abs diff {max_abs_diff(block.output, expected):.3g}" \
            if block.output.shape == expected.shape else \
            f"shapes {tuple(block.output.shape)} and {tuple(expected.shape)}"
        problems.append(f"output != main(input) + {_shortcut_name(block)}(input) recomputed from its input: "
                        f"{diff}")
    return problems


def _shape_change(before: torch.Tensor, after: torch.Tensor) -> str:
    if before.dim() == 3 and after.dim() == 3:
        return f"channels {before.shape[1]}->{after.shape[1]}, length {before.shape[2]}->{after.shape[2]}"
    return f"{tuple(before.shape)}->{tuple(after.shape)}"

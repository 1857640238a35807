"""Why no pairing fits: the modules of each side that have no counterpart, named in one message."""

from __future__ import annotations

from collections import defaultdict
from difflib import SequenceMatcher

import torch

from harness.core.matching.leaves import Leaf, Signature
from harness.core.matching.results import MatchError
from harness.core.matching.text import SHOWN, path_text, shape_text
from harness.core.text import counted, first_few


def _short(leaf: Leaf) -> str:
    return f"{leaf.class_name}{shape_text(leaf.own[0][1])}"


def _long(leaf: Leaf) -> str:
    parts = [f"{n}{shape_text(s)}" + ("" if d == torch.float32 else f" {str(d).removeprefix('torch.')}")
             for n, s, d in leaf.own]
    return f"{leaf.class_name}({', '.join(parts)})"


def _unmatched(left: list[Leaf], right: list[Leaf]) -> tuple[list[Leaf], list[Leaf]]:
    """The multiset difference of two leaf sequences' signatures, the instances chosen by alignment.

    Aligning the sequences (forward order) names the module that is really missing, say a
    shortcut's BatchNorm, rather than whichever same-typed module comes last.
    """
    matcher = SequenceMatcher(None, [x.signature for x in left], [x.signature for x in right], autojunk=False)
    paired_left: set[int] = set()
    paired_right: set[int] = set()
    for block in matcher.get_matching_blocks():
        paired_left.update(range(block.a, block.a + block.size))
        paired_right.update(range(block.b, block.b + block.size))
    # Same-signature leftovers on both sides are reordered, not missing: pair them off too.
    pool: dict[Signature, list[int]] = defaultdict(list)
    for j, leaf in enumerate(right):
        if j not in paired_right:
            pool[leaf.signature].append(j)
    only_left = []
    for i, leaf in enumerate(left):
        if i in paired_left:
            continue
        if pool[leaf.signature]:
            paired_right.add(pool[leaf.signature].pop(0))
        else:
            only_left.append(leaf)
    return only_left, [leaf for j, leaf in enumerate(right) if j not in paired_right]


def no_fit(left: list[Leaf], right: list[Leaf], names: tuple[str, str]) -> MatchError:
    """The error for two leaf sequences (forward order) whose signatures differ as multisets."""
    only_left, only_right = _unmatched(left, right)
    clash = {_short(x) for x in only_left} & {_short(x) for x in only_right}

    def side(role: str, leaves: list[Leaf]) -> str:
        if not leaves:
            return f"{role} has none"
        shown = [f"{path_text(x.path)} {_long(x) if _short(x) in clash else _short(x)}"
                 for x in leaves[:SHOWN]]
        listed = first_few(shown, SHOWN, total=len(leaves), more=", and {} more")
        return f"{role} has {counted(len(leaves), 'module')} with no counterpart ({listed})"

    return MatchError(f"no pairing fits: {side(names[0], only_left)}; {side(names[1], only_right)}")

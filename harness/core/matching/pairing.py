"""Pairing two models' weights by dataflow, not by names.

A refactor renames, re-nests and reorders modules and renames classes, so neither state_dict
keys nor class names say which weight is which. What a leaf *receives* does: run the source
once and record every leaf's input; then run the destination and, on each of its leaves' first
call, take the unused source leaf of the same signature that received exactly the same input,
copy its weights in right there, and go on, so everything downstream computes what the source
computed. Where no input agrees the models part; pairing falls back to call order there.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import torch
import torch.nn as nn

from harness.core.matching.leaves import Leaf, Signature, copy_leaf, leaves_of
from harness.core.matching.observe import ExampleInput, Observer, as_args, clone, forward, tensor_leaves
from harness.core.matching.results import MatchError, ModulePair, WeightMatch
from harness.core.matching.unmatched import no_fit


def _same_class_first(options: list[Leaf], leaf: Leaf) -> list[Leaf]:
    """``options`` with those of ``leaf``'s own class first: where several fit equally, the class
    name breaks the tie (it never rules a candidate out)."""
    return sorted(options, key=lambda option: option.class_name != leaf.class_name)


def pair_by_dataflow(src: nn.Module, dst: nn.Module, args: tuple, names: tuple[str, str]) -> WeightMatch:
    """The pairing of ``src``'s leaves with ``dst``'s on ``args``; ``names`` are the roles messages use."""
    src_copy, dst_copy = clone(src, names[0]).eval(), clone(dst, names[1]).eval()
    src_leaves, dst_leaves = leaves_of(src_copy), leaves_of(dst_copy)

    with torch.no_grad(), Observer(src_leaves, inputs=True) as src_seen:
        forward(src_copy, args, names[0])
    candidates: dict[Signature, list[Leaf]] = defaultdict(list)
    for leaf in src_seen.order:
        candidates[leaf.signature].append(leaf)

    pairs: dict[str, tuple[Leaf, str]] = {}  # src path -> (dst leaf, how)
    parted: list[tuple[Leaf, Leaf]] = []

    def choose(dst_leaf: Leaf, call_args: tuple) -> None:
        options = [s for s in candidates.get(dst_leaf.signature, ()) if s.path not in pairs]
        if not options:
            return
        options = _same_class_first(options, dst_leaf)
        received = tensor_leaves(call_args)
        chosen = next((s for s in options if _same_tensors(src_seen.inputs[s.path], received)), None)
        how = "dataflow"
        if chosen is None:
            chosen, how = options[0], "order"
            if not parted:
                parted.append((chosen, dst_leaf))
        pairs[chosen.path] = (dst_leaf, how)
        copy_leaf(chosen.module, dst_leaf.module)  # so everything downstream sees what src saw

    with torch.no_grad(), Observer(dst_leaves, on_first_call=choose) as dst_seen:
        forward(dst_copy, args, names[1])

    called_src = {leaf.path for leaf in src_seen.order}
    called_dst = {leaf.path for leaf in dst_seen.order}
    src_sequence = src_seen.order + [x for x in src_leaves if x.path not in called_src]
    dst_sequence = dst_seen.order + [x for x in dst_leaves if x.path not in called_dst]
    if Counter(x.signature for x in src_leaves) != Counter(x.signature for x in dst_leaves):
        raise no_fit(src_sequence, dst_sequence, names)

    # Leftovers: leaves one side never calls (or whose counterpart it never calls), by declaration order.
    taken_dst = {dst_leaf.path for dst_leaf, _ in pairs.values()}
    waiting: dict[Signature, list[Leaf]] = defaultdict(list)
    for leaf in dst_leaves:
        if leaf.path not in taken_dst:
            waiting[leaf.signature].append(leaf)
    for leaf in src_leaves:
        if leaf.path not in pairs:
            chosen = _same_class_first(waiting[leaf.signature], leaf)[0]
            waiting[leaf.signature].remove(chosen)
            pairs[leaf.path] = (chosen, "unused")

    modules, mapping, tied_apart = [], {}, False
    for src_leaf in src_sequence:
        dst_leaf, how = pairs[src_leaf.path]
        modules.append(ModulePair(src_leaf.path, dst_leaf.path, how))
        for (_, src_path), (_, dst_path) in zip(src_leaf.tensors, dst_leaf.tensors, strict=True):
            tied_apart |= mapping.setdefault(src_path, dst_path) != dst_path
    # A tensor shared by two leaves (tied weights) must be shared the same way on the other side.
    distinct = {p for leaf in dst_leaves for _, p in leaf.tensors}
    if tied_apart or len(set(mapping.values())) != len(distinct):
        raise MatchError(f"no pairing fits: {names[0]} and {names[1]} share (tie) tensors between modules "
                         "differently, so no one-to-one mapping of their tensors exists")
    first = parted[0] if parted else None
    return WeightMatch(mapping, modules, ModulePair(first[0].path, first[1].path, "order") if first else None)


def _same_tensors(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and x.device == y.device and torch.equal(x, y)
        for x, y in zip(a, b, strict=True)
    )


def pair_weights(src: nn.Module, dst: nn.Module, example_input: ExampleInput) -> WeightMatch:
    """Pair every tensor-owning module of ``src`` with one of ``dst`` by dataflow (see the module docstring).

    Runs both forwards once on deep copies in eval mode; ``src`` and ``dst`` are not changed. The
    pairing is structural only: ``match_weights`` proves it, ``compare_models`` measures with it.
    """
    return pair_by_dataflow(src, dst, as_args(example_input), ("src", "dst"))

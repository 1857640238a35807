"""What a forward returns, as the audits see it: its tensor leaves (``Outputs``), how each
leaf is named in a message, and what an output may promise (``OUTPUT_KINDS``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree

# What a forward may promise to return; ``audit(..., output=KIND)``.
OUTPUT_KINDS = ("probability", "logits", "any")

# Leaf keys (dict keys, namedtuple or dataclass fields) that name a structured output's scores.
SCORE_KEYS = ("logits", "scores", "probs", "probabilities")


@dataclass(frozen=True)
class Outputs:
    """A forward's output as ``(key, tensor)`` leaves, in ``torch.utils._pytree`` order.

    ``key`` is ``keystr`` of the leaf's path: ``""`` when the forward returned one tensor,
    ``[1]`` for a tuple or list item, ``['logits']`` for a dict entry, ``.hidden`` for a
    namedtuple or dataclass field.
    """

    raw: object
    leaves: tuple[tuple[str, torch.Tensor], ...]

    @property
    def bare(self) -> bool:
        """The forward returned one tensor, not a structure of them."""
        return len(self.leaves) == 1 and self.leaves[0][0] == ""

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self.leaves)


def leaf_name(key: str) -> str:
    """``output [1]``, ``output ['logits']``, ``output.hidden``; ``output`` for a bare tensor."""
    if not key:
        return "output"
    return f"output{key}" if key.startswith(".") else f"output {key}"


def leaf_prefix(key: str) -> str:
    """The prefix naming a leaf in a message: none for a bare tensor (``output [1]: ``)."""
    return f"{leaf_name(key)}: " if key else ""


def _is_unregistered_dataclass(obj: object) -> bool:
    return (dataclasses.is_dataclass(obj) and not isinstance(obj, type)
            and type(obj) not in pytree.SUPPORTED_NODES)


def flatten_output(out: object, prefix: str = "", depth: int = 0,
                   ) -> tuple[list[tuple[str, torch.Tensor]], list[tuple[str, object]]]:
    """(tensor leaves, non-tensor leaves) of ``out``, each with its key; None leaves are dropped.

    Containers ``torch.utils._pytree`` knows (tuple, list, dict, namedtuple, OrderedDict, ...)
    are flattened by it; a dataclass it does not know is walked field by field (``.name``).
    """
    flat, _ = pytree.tree_flatten_with_path(out, is_leaf=_is_unregistered_dataclass)
    tensors: list[tuple[str, torch.Tensor]] = []
    others: list[tuple[str, object]] = []
    for path, leaf in flat:
        key = prefix + pytree.keystr(path)
        if isinstance(leaf, torch.Tensor):
            tensors.append((key, leaf))
        elif leaf is None:
            continue
        elif _is_unregistered_dataclass(leaf) and depth < 32:
            for f in dataclasses.fields(leaf):
                inner = flatten_output(getattr(leaf, f.name), f"{key}.{f.name}", depth + 1)
                tensors += inner[0]
                others += inner[1]
        else:
            others.append((key, leaf))
    return tensors, others


def describe_leaves(outputs: Outputs) -> str:
    """``[output [0], output ['logits']]``: every leaf of an output, named, in order."""
    return "[" + ", ".join(leaf_name(k) for k in outputs.keys) + "]"


def scores_leaf(outputs: Outputs) -> tuple[str, str]:
    """(key, why) of the leaf holding the class scores: the output itself when bare, else the one
    leaf keyed as in ``SCORE_KEYS``, else the last (``check_output_contract``)."""
    if outputs.bare:
        return "", ""
    named = [key for key in outputs.keys if _last_name(key).lower() in SCORE_KEYS]
    if len(named) == 1:
        return named[0], f"named {_last_name(named[0])!r}"
    return outputs.keys[-1], "the last tensor leaf, as in (hidden, logits)"


def _last_name(key: str) -> str:
    """A leaf key's last step: ``['logits']`` -> ``logits``, ``.hidden`` -> ``hidden``, ``[1]`` -> ``""``."""
    match = re.search(r"\.(\w+)$|\[(['\"])(.*)\2\]$", key)
    if not match:
        return ""
    return match.group(1) if match.group(1) is not None else match.group(3)


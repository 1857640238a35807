"""Naming what is wrong, readably: the attribute a path hangs off, paths folded into one
short list, counts with their noun.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn as nn

from harness.core.text import counted  # noqa: F401 - re-exported with the naming helpers

_FIRST_TOKEN = re.compile(r"[^.\[]+")


def _container(path: str, registered: set[str]) -> str:
    """The attribute under which ``path`` hangs off the registered module tree.

    ``res_block2[0].0.weight`` -> ``res_block2``; ``enc.cache['k']`` -> ``enc.cache``.
    """
    owner = max((name for name in registered if path.startswith(name + ".")), key=len, default="")
    rest = path[len(owner) + 1:] if owner else path
    match = _FIRST_TOKEN.match(rest)
    token = match.group(0) if match else rest
    return f"{owner}.{token}" if owner else token


def by_container(model: nn.Module, paths: Iterable[str]) -> dict[str, list[str]]:
    """``paths`` grouped by the attribute each hangs off (one finding per attribute)."""
    registered = {name for name, _ in model.named_modules() if name}
    groups: dict[str, list[str]] = {}
    for path in paths:
        groups.setdefault(_container(path, registered), []).append(path)
    return groups


def compact(paths: Iterable[str]) -> str:
    """``a.0.weight, a.0.bias`` -> ``a.0.{weight,bias}``: every path named, once."""
    owners: dict[str, list[str]] = {}
    for path in paths:
        owner, dot, leaf = path.rpartition(".")
        owners.setdefault(owner if dot else "", []).append(leaf if dot else path)
    parts = []
    for owner, leaves in owners.items():
        if not owner:
            parts.extend(leaves)
        elif len(leaves) == 1:
            parts.append(f"{owner}.{leaves[0]}")
        else:
            parts.append(f"{owner}.{{{','.join(leaves)}}}")
    return ", ".join(parts)


def outermost(paths: list[str]) -> list[str]:
    """The paths not below another path of the list (``a[0]`` hides ``a[0].1``)."""
    chosen = set(paths)
    return [p for p in paths if not any(p != q and p.startswith((q + ".", q + "[")) for q in chosen)]


def value_count(tensors: Iterable[torch.Tensor]) -> int:
    """How many values the tensors hold together."""
    return sum(t.numel() for t in tensors)


"""A model's weight-owning modules ("leaves") and their signatures: what each computes with.

A signature is never what a leaf's class is called: its type family (a torch built-in class,
or the built-in a user class derives from, is itself: a Conv1d is no Linear; any other class
is judged by what it holds), its own tensors' names, shapes and dtypes, and, recursively, its
registered children's signatures. Two leaves pair only if their signatures are equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.core.introspect import held

# (type family, ((own tensor name, shape, dtype), ...), children's signatures): two leaves pair only
# if these are equal (see _signatures).
Signature = tuple
# The type family of a module whose class is the user's own (not a torch built-in, nor derived from
# one): its own tensors and its children's signatures say what it computes with, its name nothing.
USER_FAMILY = "module"
# torch classes that hold modules rather than compute: deriving from one does not make a user class
# a built-in.
_CONTAINER_CLASSES = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True, eq=False)
class Leaf:
    """A module that directly owns tensors, registered or not, and where those tensors are held."""

    path: str
    module: nn.Module
    signature: Signature
    tensors: tuple[tuple[str, str], ...]  # (own name, held tensor path)

    @property
    def class_name(self) -> str:
        """For messages, and to prefer a same-named class among equally fitting candidates."""
        return type(self.module).__name__

    @property
    def own(self) -> tuple[tuple[str, tuple[int, ...], torch.dtype], ...]:
        return self.signature[1]


def own_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(name, t) for registry in (module._parameters, module._buffers)
            for name, t in registry.items() if t is not None]


def type_family(module: nn.Module) -> str:
    """The torch built-in class ``module`` is or derives from (a renamed subclass of ``nn.Conv1d``
    is a ``Conv1d``), else ``USER_FAMILY``: a user's own class is known by what it holds."""
    for cls in type(module).__mro__:
        if cls in _CONTAINER_CLASSES:
            break
        if cls.__module__.startswith("torch."):
            return cls.__qualname__
    return USER_FAMILY


def _children(module: nn.Module) -> list[nn.Module]:
    return [child for child in dict.values(module._modules) if child is not None]


def _signatures(modules: Sequence[nn.Module]) -> dict[int, Signature | None]:
    """id -> signature of each module and its registered descendants; None for one holding no tensor.

    Children's signatures enter sorted (their names and order say nothing). Iterative, so a
    nesting deeper than the recursion limit is fine; a registered cycle is cut where it closes.
    """
    done: dict[int, Signature | None] = {}
    on_path: set[int] = set()
    stack: list[tuple[nn.Module, bool]] = [(m, False) for m in reversed(modules)]
    while stack:
        module, expanded = stack.pop()
        key = id(module)
        if not expanded:
            if key in done or key in on_path:
                continue
            on_path.add(key)
            stack.append((module, True))
            stack.extend((c, False) for c in _children(module) if id(c) not in done and id(c) not in on_path)
            continue
        on_path.discard(key)
        own = tuple((n, tuple(t.shape), t.dtype) for n, t in own_tensors(module))
        held_children = (done.get(id(c)) for c in _children(module))
        children = tuple(sorted((s for s in held_children if s is not None), key=repr))
        done[key] = (type_family(module), own, children) if own or children else None
    return done


def leaves_of(model: nn.Module) -> list[Leaf]:
    """Every tensor-owning module of ``model`` in declaration order (the root first if it owns any)."""
    items = held(model)
    tensor_paths = {id(h.obj): h.path for h in items if isinstance(h.obj, torch.Tensor)}
    modules = [("", model)] + [(h.path, h.obj) for h in items if isinstance(h.obj, nn.Module)]
    signatures = _signatures([module for _, module in modules])
    leaves = []
    for path, module in modules:
        own = own_tensors(module)
        if own:
            leaves.append(Leaf(path, module, signatures[id(module)],
                               tuple((n, tensor_paths[id(t)]) for n, t in own)))
    return leaves


def tensors_by_path(model: nn.Module) -> dict[str, torch.Tensor]:
    return {h.path: h.obj for h in held(model) if isinstance(h.obj, torch.Tensor)}


def copy_leaf(src: nn.Module, dst: nn.Module) -> None:
    targets = dict(own_tensors(dst))
    with torch.no_grad():
        for name, source in own_tensors(src):
            targets[name].copy_(source)

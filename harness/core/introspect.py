"""What a model holds and what its forward actually touches.

``held_tensors`` walks the object graph (attributes, lists, tuples, dicts) so that
tensors hidden from ``nn.Module``'s registries are found too. ``used_tensors``
runs a forward under a ``TorchFunctionMode`` and records every held tensor passed
to a torch function: the parameters and buffers the forward really uses, whether
or not they are registered. Both are structure-agnostic: no attribute names are
assumed. The walk is iterative and enters each object once, so it ends on any object
graph, however deep; ``cycles`` says where the graph comes back to an ancestor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

_REGISTRIES = ("_parameters", "_buffers", "_modules")


@dataclass(frozen=True)
class Held:
    """One tensor or module reachable from the model, and whether it is registered."""

    path: str
    obj: torch.Tensor | nn.Module
    registered: bool


@dataclass(frozen=True)
class Cycle:
    """Where the object graph comes back to an object on the path that reached it.

    ``path`` is the reference that closes the loop (``things[1]``, ``inner.parent``),
    ``target`` the path of the ancestor it points back to (``""``: the model itself).
    ``registered``: the loop runs through registered submodules only, so torch's own
    recursive methods (``state_dict()``, ``eval()``, ``.to()``, ``named_modules(remove_duplicate=False)``)
    never end; otherwise it runs through a plain attribute, list, tuple or dict, which torch ignores.
    """

    path: str
    target: str
    registered: bool

    def describe(self) -> str:
        back = f"{self.target!r}" if self.target else "the model itself"
        return f"{self.path} leads back to {back}"


_DONE = object()


def _children(obj: object, registered: bool) -> Iterator[tuple[str, object, bool]] | None:
    """``(step, child, registered)`` for what the walk enters below ``obj``; None for a leaf.

    Base-class methods only, so no user-defined ``__iter__`` or ``items`` runs; each
    level is snapshot, so nothing the walk sees changes under it.
    """
    if isinstance(obj, nn.Module):
        registries = [(f".{name}", child, registered) for registry in _REGISTRIES
                      for name, child in list(dict.items(getattr(obj, registry))) if child is not None]
        attributes = [(f".{name}", child, False) for name, child in list(dict.items(vars(obj)))
                      if name not in _REGISTRIES]
        return iter(registries + attributes)
    if isinstance(obj, list):
        return iter([(f"[{i}]", child, False) for i, child in enumerate(list.__iter__(obj))])
    if isinstance(obj, tuple):
        return iter([(f"[{i}]", child, False) for i, child in enumerate(tuple.__iter__(obj))])
    if isinstance(obj, dict):
        return iter([(f"[{key!r}]", child, False) for key, child in list(dict.items(obj))])
    return None


def _walk(obj: object, path: str, registered: bool, seen: set[int], on_path: dict[int, str | int],
          cycles: list[Cycle]) -> Iterator[Held]:
    """Every tensor and module below ``obj`` not yet ``seen``, depth first, without recursion.

    Containers and modules are marked ``seen`` by id, so each is entered once and the walk
    ends on any object graph, however deep or cyclic. ``on_path`` maps the ids of the
    objects on the current path (the caller's registered ancestors first) to their path,
    or to an index into the steps taken here; a reference back to one of them is a
    ``Cycle``, recorded in ``cycles`` and not followed.
    """
    steps: list[str] = []  # steps[i]: the step into the container of stack[i + 1]
    stack: list[tuple[int | None, Iterator[tuple[str, object, bool]]]] = [
        (None, iter([(path, obj, registered)]))]
    while stack:
        owner, children = stack[-1]
        item = next(children, _DONE)
        if item is _DONE:
            stack.pop()
            if owner is not None:
                del on_path[owner]
                steps.pop()
            continue
        step, child, child_registered = item  # type: ignore[misc]
        key = id(child)
        if key in on_path:
            where = on_path[key]
            target = "".join(steps[:where]) if isinstance(where, int) else where
            cycles.append(Cycle("".join(steps) + step, target, registered=False))
            continue
        if key in seen:
            continue
        is_held = isinstance(child, (torch.Tensor, nn.Module))
        below = _children(child, child_registered)
        if is_held or below is not None:
            seen.add(key)
        if is_held:
            yield Held("".join(steps) + step, child, child_registered)  # type: ignore[arg-type]
        if below is not None:
            steps.append(step)
            on_path[key] = len(steps)
            stack.append((key, below))


def _registered_modules(model: nn.Module, cycles: list[Cycle]) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` for the model (path ``""``) and every registered submodule, in
    ``named_modules()`` order, each once; a submodule registered inside itself is a ``Cycle``."""
    modules = [("", model)]
    seen = {id(model)}
    on_path = {id(model): ""}
    stack = [(model, "", iter(list(dict.items(model._modules))))]
    while stack:
        module, path, children = stack[-1]
        item = next(children, None)
        if item is None:
            stack.pop()
            del on_path[id(module)]
            continue
        name, child = item
        if child is None:
            continue
        child_path = f"{path}.{name}" if path else name
        if id(child) in on_path:
            cycles.append(Cycle(child_path, on_path[id(child)], registered=True))
            continue
        if id(child) in seen:
            continue
        seen.add(id(child))
        modules.append((child_path, child))
        on_path[id(child)] = child_path
        stack.append((child, child_path, iter(list(dict.items(child._modules)))))
    return modules


def _inventory(model: nn.Module) -> tuple[list[Held], list[Cycle]]:
    cycles: list[Cycle] = []
    modules = _registered_modules(model, cycles)
    seen: set[int] = set()
    out: list[Held] = []
    # Registered objects first so that an object reachable both ways counts as registered.
    registered = [Held(path, module, True) for path, module in modules if path]
    for registry in ("_parameters", "_buffers"):
        registered += [Held(f"{path}.{name}" if path else name, tensor, True)
                       for path, module in modules
                       for name, tensor in dict.items(getattr(module, registry)) if tensor is not None]
    for item in registered:
        if id(item.obj) not in seen:
            seen.add(id(item.obj))
            out.append(item)
    seen.add(id(model))
    by_path = dict(modules)
    for path, module in modules:
        # The registered chain from the model down to this module: what a plain attribute may loop back to.
        parts = path.split(".") if path else []
        on_path: dict[int, str | int] = {id(by_path[".".join(parts[:i])]): ".".join(parts[:i])
                                         for i in range(len(parts) + 1)}
        for attr, child in list(dict.items(vars(module))):
            if attr not in _REGISTRIES:
                out.extend(_walk(child, f"{path}.{attr}" if path else attr, False, seen, on_path, cycles))
    return out, cycles


def held(model: nn.Module) -> list[Held]:
    """Every tensor and module reachable from ``model``, registered ones first.

    A plain attribute, list, tuple or dict entry makes everything below it
    unregistered, even ``nn.Parameter``s inside an ``nn.Module`` held there. The walk
    ends on any object graph: each object is entered once, and a reference back to an
    ancestor (``cycles``) is not followed.
    """
    return _inventory(model)[0]


def cycles(model: nn.Module) -> list[Cycle]:
    """Every place where the model's object graph comes back to an ancestor (see ``Cycle``)."""
    return _inventory(model)[1]


def held_tensors(model: nn.Module) -> list[Held]:
    return [h for h in held(model) if isinstance(h.obj, torch.Tensor)]


def held_modules(model: nn.Module) -> list[Held]:
    return [h for h in held(model) if isinstance(h.obj, nn.Module)]


class _TensorRecorder(TorchFunctionMode):
    """Records the id of every tensor passed to any torch function."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        stack = [args, kwargs]
        while stack:
            item = stack.pop()
            if isinstance(item, torch.Tensor):
                self.seen.add(id(item))
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.values())
        return func(*args, **kwargs)


def used_tensors(model: nn.Module, *inputs: torch.Tensor) -> list[Held]:
    """The held tensors (parameters and buffers) one forward of ``model`` passes to torch.

    Exceptions from the forward propagate: a model whose forward raises has no
    defined set of used tensors.
    """
    recorder = _TensorRecorder()
    with torch.no_grad(), recorder:
        model(*inputs)
    return [h for h in held_tensors(model) if id(h.obj) in recorder.seen]


def parameter_count(items: list[Held] | Iterator[nn.Parameter]) -> int:
    """Number of scalar parameters among ``items`` (Held records or parameters)."""
    tensors = [h.obj if isinstance(h, Held) else h for h in items]
    return sum(t.numel() for t in tensors if isinstance(t, nn.Parameter))


def batchnorms(model: nn.Module) -> list[Held]:
    """Every BatchNorm layer the model holds, registered or not."""
    return [h for h in held_modules(model) if isinstance(h.obj, nn.modules.batchnorm._BatchNorm)]


@dataclass(frozen=True)
class Structure:
    """Static and observed facts about one freshly built model."""

    registered_parameters: int
    used_parameters: int | None  # None when the forward raises
    state_dict_keys: int
    batchnorms: int
    batchnorms_reached_by_eval: int
    forward_error: str | None


def describe(model: nn.Module, example: torch.Tensor) -> Structure:
    """Count what ``model`` registers, what its forward uses, and what ``eval()`` reaches."""
    model.eval()
    norms = batchnorms(model)
    try:
        used: int | None = parameter_count(used_tensors(model, example))
        error = None
    except RuntimeError as exc:
        used, error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return Structure(
        registered_parameters=parameter_count(model.parameters()),
        used_parameters=used,
        state_dict_keys=len(model.state_dict()),
        batchnorms=len(norms),
        batchnorms_reached_by_eval=sum(not h.obj.training for h in norms),
        forward_error=error,
    )

"""What a model holds and what its forward actually touches.

``held_tensors`` walks the object graph (attributes, lists, tuples, dicts) so that
tensors hidden from ``nn.Module``'s registries are found too. ``used_tensors``
runs a forward under a ``TorchFunctionMode`` and records every held tensor passed
to a torch function: the parameters and buffers the forward really uses, whether
or not they are registered. Both are structure-agnostic: no attribute names are
assumed.
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


def _walk(obj: object, path: str, registered: bool, seen: set[int]) -> Iterator[Held]:
    if id(obj) in seen:
        return
    if isinstance(obj, (torch.Tensor, nn.Module)):
        seen.add(id(obj))
        yield Held(path, obj, registered)
    if isinstance(obj, nn.Module):
        prefix = f"{path}." if path else ""
        for registry in _REGISTRIES:
            for name, child in getattr(obj, registry).items():
                if child is not None:
                    yield from _walk(child, prefix + name, registered, seen)
        for name, child in vars(obj).items():
            if name not in _REGISTRIES:
                yield from _walk(child, prefix + name, False, seen)
    elif isinstance(obj, (list, tuple)):
        for i, child in enumerate(obj):
            yield from _walk(child, f"{path}[{i}]", False, seen)
    elif isinstance(obj, dict):
        for key, child in obj.items():
            yield from _walk(child, f"{path}[{key!r}]", False, seen)


def held(model: nn.Module) -> list[Held]:
    """Every tensor and module reachable from ``model``, registered ones first.

    A plain attribute, list, tuple or dict entry makes everything below it
    unregistered, even ``nn.Parameter``s inside an ``nn.Module`` held there.
    """
    seen: set[int] = set()
    # Registered objects first so that an object reachable both ways counts as registered.
    registered = [Held(n, m, True) for n, m in model.named_modules(remove_duplicate=False) if n]
    registered += [Held(n, t, True) for n, t in model.named_parameters(remove_duplicate=False)]
    registered += [Held(n, t, True) for n, t in model.named_buffers(remove_duplicate=False)]
    out = []
    for item in registered:
        if id(item.obj) not in seen:
            seen.add(id(item.obj))
            out.append(item)
    seen.add(id(model))
    out.extend(_walk_unregistered(model, seen))
    return out


def _walk_unregistered(model: nn.Module, seen: set[int]) -> Iterator[Held]:
    for name, child in vars(model).items():
        if name not in _REGISTRIES:
            yield from _walk(child, name, False, seen)
    for name, module in model.named_modules():
        if module is model:
            continue
        for attr, child in vars(module).items():
            if attr not in _REGISTRIES:
                yield from _walk(child, f"{name}.{attr}", False, seen)


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

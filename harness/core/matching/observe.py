"""Running a model for matching: forward hooks that record each leaf's first call (order, inputs,
outputs), and one forward of a copy in a given mode, errors named by the model's role."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._pytree import tree_leaves

from harness.core.errors import error_line
from harness.core.matching.leaves import Leaf, leaves_of
from harness.core.matching.results import MatchError

ExampleInput = torch.Tensor | tuple[torch.Tensor, ...]


def tensor_leaves(obj: object) -> list[torch.Tensor]:
    """The tensors of a module's inputs or outputs: pytree leaves, dataclass fields opened too."""
    out: list[torch.Tensor] = []
    for leaf in tree_leaves(obj):
        if isinstance(leaf, torch.Tensor):
            out.append(leaf)
        elif dataclasses.is_dataclass(leaf) and not isinstance(leaf, type):
            out.extend(tensor_leaves({f.name: getattr(leaf, f.name) for f in dataclasses.fields(leaf)}))
    return out


def _snapshot(obj: object) -> list[torch.Tensor]:
    # Clone: a later in-place op (LeakyReLU(inplace=True), x += ...) must not rewrite the record.
    return [t.detach().clone() for t in tensor_leaves(obj)]


class Observer:
    """Process-wide forward hooks, filtered to one model's leaves; sees unregistered modules too.

    Records each leaf's first call: call order, optionally its input and output, and lets
    ``on_first_call`` act before the leaf computes (dataflow pairing copies weights there).
    """

    def __init__(self, leaves: Sequence[Leaf], *, inputs: bool = False, outputs: bool = False,
                 on_first_call: Callable[[Leaf, tuple], None] | None = None) -> None:
        self._by_id = {id(leaf.module): leaf for leaf in leaves}
        self._want_inputs, self._want_outputs = inputs, outputs
        self._on_first_call = on_first_call
        self.order: list[Leaf] = []
        self.inputs: dict[str, list[torch.Tensor]] = {}
        self.outputs: dict[str, list[torch.Tensor]] = {}
        self._called: set[str] = set()

    def _pre(self, module: nn.Module, args: tuple) -> None:
        leaf = self._by_id.get(id(module))
        if leaf is None or leaf.path in self._called:
            return
        self._called.add(leaf.path)
        self.order.append(leaf)
        if self._want_inputs:
            self.inputs[leaf.path] = _snapshot(args)
        if self._on_first_call is not None:
            self._on_first_call(leaf, args)

    def _post(self, module: nn.Module, args: tuple, output: object) -> None:
        leaf = self._by_id.get(id(module))
        if self._want_outputs and leaf is not None and leaf.path not in self.outputs:
            self.outputs[leaf.path] = _snapshot(output)

    def __enter__(self) -> Observer:
        self._handles = [register_module_forward_pre_hook(self._pre),
                         register_module_forward_hook(self._post)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()


def as_args(example_input: ExampleInput) -> tuple:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def forward(model: nn.Module, args: tuple, role: str) -> object:
    try:
        return model(*args)
    except Exception as exc:
        raise MatchError(f"{role} forward raises {error_line(exc)}") from exc


def clone(model: nn.Module, role: str) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as exc:
        raise MatchError(f"{role} cannot be copied: {error_line(exc)}") from exc


@contextmanager
def _same_randomness(args: tuple) -> Iterator[None]:
    """Both sides draw the same random numbers (dropout in train mode); the caller's RNG is kept."""
    devices = sorted({t.device.index or 0 for t in tensor_leaves(args) if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        yield


@dataclass
class Run:
    output: list[torch.Tensor]
    leaf_outputs: dict[str, list[torch.Tensor]]
    order: list[str]


def run_in_mode(model: nn.Module, args: tuple, mode: str, role: str) -> Run:
    """One forward of a copy of ``model`` in ``mode``: the caller's model, mode and running stats stay."""
    copied = clone(model, role)
    copied.train(mode == "train")
    with torch.no_grad(), _same_randomness(args), Observer(leaves_of(copied), outputs=True) as seen:
        output = forward(copied, args, role)
    order = [leaf.path for leaf in seen.order]
    return Run([t.detach() for t in tensor_leaves(output)], seen.outputs, order)

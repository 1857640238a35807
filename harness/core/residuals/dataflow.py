"""A forward as a dataflow graph: every tensor a node, every op and module call on record.

``trace(model, x)`` runs ``model(x)`` once, without gradients, under a ``TorchFunctionMode``
that sees every torch op, with global module hooks that say which module call each op ran
in. Every tensor becomes a ``Node`` (an in-place op makes a new node of the same tensor, so
each node is one value); parameters and buffers the model holds are ``held`` nodes, and a
node is ``parametrized`` when its op took one. Sums (``+``, ``+=``, ``torch.add``) keep their
operands (``addends``). ``Graph`` answers the questions ``harness.core.residuals`` asks:
which node leads to which, the nodes between two, how many parameter values a branch takes, a
sum's summands.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode

from harness.core.introspect import Held

# Function names a sum is made of: ``a + b``, ``a += b`` and ``torch.add`` all arrive as one of these.
_ADDS = frozenset({"add", "add_", "__add__", "__radd__", "__iadd__"})


@dataclass(frozen=True)
class Const:
    """A non-tensor summand (``x + 0``)."""

    value: object


@dataclass(eq=False)
class Call:
    module: nn.Module
    depth: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...] = ()


@dataclass
class Node:
    index: int
    op: str  # "input", "held" (a parameter or buffer), "constant", "mutated" or the torch function's name
    parents: tuple[int, ...]
    calls: tuple[Call, ...]  # the module calls running when it was made, outermost first
    derived: bool  # computed from the forward's input
    parametrized: bool  # the op took a parameter or buffer
    weights: int  # how many parameter and buffer values the op took (a held tensor: its own)
    addends: tuple[int | Const, ...] | None = None  # for a sum: its operands in order
    version: int = 0  # the tensor's version counter when this node was made
    made_by: list[Call] = field(default_factory=list)  # calls returning it, innermost first
    consumers: list[int] = field(default_factory=list)


def _tensors(obj: object) -> Iterator[torch.Tensor]:
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))


class Tracer(TorchFunctionMode):
    """Records every op's tensors as nodes; ``keep`` names nodes whose value is cloned when made."""

    def __init__(self, held: set[int], keep: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.held = held
        self.keep = keep
        self.nodes: list[Node] = []
        self.values: dict[int, torch.Tensor] = {}
        self.calls: list[Call] = []
        self._stack: list[Call] = []
        self._node_of: dict[int, tuple[int, int]] = {}  # id(tensor) -> (node, tensor version)
        self._alive: list[torch.Tensor] = []  # every tensor seen, so that no id is reused
        self.paused = False

    def _new(self, t: torch.Tensor, op: str, parents: tuple[int, ...], **extra: object) -> int:
        index = len(self.nodes)
        derived = op == "input" or any(self.nodes[p].derived for p in parents)
        held = [self.nodes[p] for p in dict.fromkeys(parents) if self.nodes[p].op == "held"]
        weights = t.numel() if op == "held" else sum(h.weights for h in held)
        self.nodes.append(Node(index, op, parents, tuple(self._stack), derived, bool(held), weights,
                               version=t._version, **extra))
        for p in dict.fromkeys(parents):
            self.nodes[p].consumers.append(index)
        self._node_of[id(t)] = (index, t._version)
        self._alive.append(t)
        if index in self.keep:
            self.values[index] = t.detach().clone()
        return index

    def intact(self, wanted: set[int]) -> dict[int, torch.Tensor] | None:
        """The ``wanted`` nodes' values, or None when the forward changed one in place later
        (then only a second forward, keeping them as they are made, can give them)."""
        if any(self._alive[n]._version != self.nodes[n].version for n in wanted):
            return None
        return {n: self._alive[n].detach() for n in wanted}  # the forward is over: nothing changes them

    def node(self, t: torch.Tensor) -> int:
        known = self._node_of.get(id(t))
        if known is not None and known[1] == t._version:
            return known[0]
        if known is not None:  # changed in place where no op was seen (a view's base, C++ code)
            return self._new(t, "mutated", (known[0],))
        return self._new(t, "held" if id(t) in self.held else "constant", ())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.paused:
            return func(*args, **kwargs)
        inputs = list(_tensors((args, kwargs)))
        versions = [t._version for t in inputs]
        parents = tuple(self.node(t) for t in inputs)
        name = getattr(func, "__name__", type(func).__name__)
        addends = None
        if name in _ADDS and kwargs.get("alpha", 1) == 1 and len(args) == 2:
            addends = tuple(self.node(a) if isinstance(a, torch.Tensor) else Const(a) for a in args)
        out = func(*args, **kwargs)
        for t in _tensors(out):
            same = next((i for i, s in enumerate(inputs) if s is t), None)
            if same is not None and t._version == versions[same]:
                continue  # an input returned as it was (x.contiguous(), x.to(its dtype))
            extra = {"addends": addends} if addends is not None and isinstance(out, torch.Tensor) else {}
            self._new(t, name, parents, **extra)
        for t, version in zip(inputs, versions, strict=True):
            if t._version != version and self._node_of[id(t)][1] != t._version:
                self._new(t, name, parents)  # written through out= or inplace=True
        return out

    def before(self, module: nn.Module, args: tuple) -> None:
        self.paused = True
        try:
            call = Call(module, len(self._stack), tuple(self.node(t) for t in _tensors(args)))
        finally:
            self.paused = False
        self.calls.append(call)
        self._stack.append(call)

    def after(self, module: nn.Module, args: tuple, output: object) -> None:
        self.paused = True
        try:
            while self._stack:
                call = self._stack.pop()
                if call.module is module:
                    call.outputs = tuple(self.node(t) for t in _tensors(output))
                    for index in call.outputs:
                        self.nodes[index].made_by.append(call)
                    break
        finally:
            self.paused = False


def trace(model: nn.Module, x: torch.Tensor, held: list[Held], keep: frozenset[int] = frozenset()) -> Tracer:
    tracer = Tracer({id(h.obj) for h in held if isinstance(h.obj, torch.Tensor)}, keep)
    tracer._new(x, "input", ())
    handles = [register_module_forward_pre_hook(tracer.before), register_module_forward_hook(tracer.after)]
    try:
        with torch.no_grad(), tracer:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return tracer


class Graph:
    """Questions about a traced forward's nodes (indices into ``nodes``)."""

    def __init__(self, nodes: list[Node], calls: list[Call]) -> None:
        self.nodes = nodes
        self.calls = calls
        self._between: dict[tuple[int, int], frozenset[int]] = {}

    # Node indices follow the forward's order, so a path from x to m never leaves [x, m]: every
    # search below stays in that window (a residual's is a block long, whatever the model's size).

    def _upstream(self, x: int, m: int) -> set[int]:
        """``m`` and its ancestors with an index of at least ``x``."""
        seen = {m}
        stack = [m]
        while stack:
            for p in self.nodes[stack.pop()].parents:
                if p >= x and p not in seen:
                    seen.add(p)
                    stack.append(p)
        return seen

    def is_ancestor(self, x: int, m: int) -> bool:
        return x != m and x in self._upstream(x, m)

    def between(self, x: int, m: int) -> frozenset[int]:
        """The nodes on the paths from ``x`` to ``m`` (``m`` included, ``x`` not; empty when none)."""
        if (x, m) not in self._between:
            within = self._upstream(x, m) if x < m else set()
            seen: set[int] = set()
            stack = [c for c in self.nodes[x].consumers if c in within]
            while stack:
                n = stack.pop()
                if n not in seen:
                    seen.add(n)
                    stack.extend(c for c in self.nodes[n].consumers if c in within)
            self._between[(x, m)] = frozenset(seen)
        return self._between[(x, m)]

    def depth(self, x: int, m: int) -> int:
        """Parametrized ops between ``x`` and ``m``: 0 for ``m`` a parameter-free function of ``x``."""
        return sum(self.nodes[n].parametrized for n in self.between(x, m)) if m != x else 0

    def weight(self, x: int, m: int) -> int:
        """Parameter and buffer values the ops between ``x`` and ``m`` take: how heavy that branch is."""
        return sum(self.nodes[n].weights for n in self.between(x, m)) if m != x else 0

    def flattened(self, n: int) -> bool:
        """A sum whose only use is as a summand of another sum made in the same module call
        (``a + b + c``): part of that one. A module's returned sum stays the module's."""
        consumers = self.nodes[n].consumers
        return (self.nodes[n].addends is not None and len(consumers) == 1
                and n in (self.nodes[consumers[0]].addends or ())
                and self.nodes[consumers[0]].calls == self.nodes[n].calls)

    def summands(self, n: int) -> list[int | Const]:
        """The terms of sum ``n`` in order, sums flattened into it expanded (iteratively: a chain
        of ten thousand ``+`` is no recursion)."""
        out: list[int | Const] = []
        stack: list[int | Const] = list(reversed(self.nodes[n].addends or ()))
        while stack:
            term = stack.pop()
            if isinstance(term, int) and self.flattened(term):
                stack.extend(reversed(self.nodes[term].addends or ()))
            else:
                out.append(term)
        return out

"""Residual blocks found by dataflow in a real forward, whatever the model calls them.

``find_blocks(model, x)`` runs ``model(x)`` once under a ``TorchFunctionMode`` that sees
every torch op, with global module hooks that say which module call each op ran in. Every
tensor becomes a node of a dataflow graph (an in-place op makes a new node of the same
tensor). A *residual addition* is a sum (``+``, ``+=``, ``torch.add``; chains of them are
one sum) with a summand ``m`` computed from a tensor ``X`` through parameters (the main
path) and a summand that is ``X`` itself (identity), a module applied to ``X``
(projection) or a parameter-free function of ``X`` (pooling, padding); the shortcut is the
summand with fewer parametrized ops between ``X`` and it. The block is named by module path:
the one module call that computes ``m`` from ``X`` (the parent adds the shortcut), else the
module in whose own forward ``X`` is the input (it adds the shortcut itself), else the module
that holds every module of the main path.

Modules that hold no such sum but are built like the blocks that do (same class in the same
container, or the same class tree under the same parent) are reported too, with what their
output meets instead: nothing added, or a summand that is no shortcut of their input.
Names are never used to find anything: only to name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode

from harness.core.introspect import held_modules, held_tensors

# Function names a sum is made of: ``a + b``, ``a += b`` and ``torch.add`` all arrive as one of these.
_ADDS = frozenset({"add", "add_", "__add__", "__radd__", "__iadd__"})
# Containers whose members are one family of blocks.
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)
# How far back a parameter-free shortcut (pooling, padding, slicing of X) is followed.
_MAX_FREE_STEPS = 16


class UnrepeatableForward(Exception):
    """The forward ran other ops the second time on the same input: its blocks cannot be observed."""


@dataclass(frozen=True)
class Const:
    """A non-tensor summand (``x + 0``)."""

    value: object


@dataclass(eq=False)
class _Call:
    module: nn.Module
    depth: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...] = ()


@dataclass
class _Node:
    index: int
    op: str  # "input", "held" (a parameter or buffer), "constant", "mutated" or the torch function's name
    parents: tuple[int, ...]
    calls: tuple[_Call, ...]  # the module calls running when it was made, outermost first
    derived: bool  # computed from the forward's input
    parametrized: bool  # the op took a parameter or buffer
    weights: int  # how many parameter and buffer values the op took (a held tensor: its own)
    addends: tuple[int | Const, ...] | None = None  # for a sum: its operands in order
    made_by: list[_Call] = field(default_factory=list)  # calls returning it, innermost first
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


class _Tracer(TorchFunctionMode):
    """Records every op's tensors as nodes; ``keep`` names nodes whose value is cloned when made."""

    def __init__(self, held: set[int], keep: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.held = held
        self.keep = keep
        self.nodes: list[_Node] = []
        self.values: dict[int, torch.Tensor] = {}
        self.calls: list[_Call] = []
        self._stack: list[_Call] = []
        self._node_of: dict[int, tuple[int, int]] = {}  # id(tensor) -> (node, tensor version)
        self._alive: list[torch.Tensor] = []  # every tensor seen, so that no id is reused
        self.paused = False

    def _new(self, t: torch.Tensor, op: str, parents: tuple[int, ...], **extra: object) -> int:
        index = len(self.nodes)
        derived = op == "input" or any(self.nodes[p].derived for p in parents)
        held = [self.nodes[p] for p in dict.fromkeys(parents) if self.nodes[p].op == "held"]
        weights = t.numel() if op == "held" else sum(h.weights for h in held)
        self.nodes.append(_Node(index, op, parents, tuple(self._stack), derived, bool(held), weights,
                                **extra))
        for p in dict.fromkeys(parents):
            self.nodes[p].consumers.append(index)
        self._node_of[id(t)] = (index, t._version)
        self._alive.append(t)
        if index in self.keep:
            self.values[index] = t.detach().clone()
        return index

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
            call = _Call(module, len(self._stack), tuple(self.node(t) for t in _tensors(args)))
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


def _trace(model: nn.Module, x: torch.Tensor, keep: frozenset[int] = frozenset()) -> _Tracer:
    tracer = _Tracer({id(h.obj) for h in held_tensors(model)}, keep)
    tracer._new(x, "input", ())
    handles = [register_module_forward_pre_hook(tracer.before), register_module_forward_hook(tracer.after)]
    try:
        with torch.no_grad(), tracer:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return tracer


# --- what the graph says ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One residual block (or a module built like one) as the real forward ran it.

    ``shortcut`` says what the block's output holds besides its main path: ``"identity"``,
    ``"projection"`` (``projection`` applied to the input), ``"function"`` (a parameter-free
    function of the input), ``"none"`` (nothing is added: its output is the main path alone)
    or ``"foreign"`` (what is added is not computed from this block's input: ``detail`` says
    what it is). ``shortcut_count`` is how many times the shortcut is a summand of the output.
    ``input``/``output`` are the values the forward gave them; ``expected`` is the output
    recomputed as main(input) + shortcut(input) (the projection run again on ``input``),
    None where nothing is added. ``siblings`` are the blocks it is compared with.
    """

    path: str
    shortcut: str
    input: torch.Tensor
    output: torch.Tensor
    main: torch.Tensor | None
    expected: torch.Tensor | None = None
    shortcut_count: int = 1
    projection: nn.Module | None = None
    projection_path: str | None = None
    shortcut_value: torch.Tensor | None = None
    detail: str = ""
    siblings: tuple[str, ...] = ()
    main_modules: tuple[nn.Module, ...] = ()

    @property
    def adds_shortcut(self) -> bool:
        return self.shortcut in ("identity", "projection", "function")


@dataclass
class _Residual:
    sum: int
    source: int  # X, the block input
    mains: list[int]
    shortcuts: list[tuple[int, str, _Call | None]]  # (summand, kind, projection call)
    count: int
    main_nodes: set[int]
    block: nn.Module | None = None
    path: str = ""
    foreign: str = ""


class _Graph:
    def __init__(self, nodes: list[_Node], calls: list[_Call]) -> None:
        self.nodes = nodes
        self.calls = calls
        self._anc: dict[int, frozenset[int]] = {}

    def ancestors(self, n: int) -> frozenset[int]:
        if n not in self._anc:
            seen: set[int] = set()
            stack = list(self.nodes[n].parents)
            while stack:
                p = stack.pop()
                if p not in seen:
                    seen.add(p)
                    stack.extend(self.nodes[p].parents)
            self._anc[n] = frozenset(seen)
        return self._anc[n]

    def between(self, x: int, m: int) -> set[int]:
        """The nodes on the paths from ``x`` to ``m`` (``m`` included, ``x`` not)."""
        within = self.ancestors(m) | {m}
        seen: set[int] = set()
        stack = [c for c in self.nodes[x].consumers if c in within]
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(c for c in self.nodes[n].consumers if c in within)
        return seen

    def depth(self, x: int, m: int) -> int:
        """Parametrized ops between ``x`` and ``m``: 0 for ``m`` a parameter-free function of ``x``."""
        return sum(self.nodes[n].parametrized for n in self.between(x, m)) if m != x else 0

    def weight(self, x: int, m: int) -> int:
        """Parameter and buffer values the ops between ``x`` and ``m`` take: how heavy that branch is."""
        return sum(self.nodes[n].weights for n in self.between(x, m)) if m != x else 0

    def flattened(self, n: int) -> bool:
        """A sum whose only use is as a summand of another sum (``a + b + c``): part of that one."""
        consumers = self.nodes[n].consumers
        return (self.nodes[n].addends is not None and len(consumers) == 1
                and n in (self.nodes[consumers[0]].addends or ()))

    def summands(self, n: int) -> list[int | Const]:
        out: list[int | Const] = []
        for a in self.nodes[n].addends or ():
            out.extend(self.summands(a) if isinstance(a, int) and self.flattened(a) else [a])
        return out

    def source(self, s: int, m: int, depth: int) -> tuple[int, str, _Call | None] | None:
        """``(X, kind, projection call)``: summand ``s`` is a shortcut of ``X``, ``m`` a main path from it."""
        def feeds(x: int) -> bool:
            return x in self.ancestors(m) and self.depth(x, m) > 0

        if feeds(s):
            return s, "identity", None
        for call in reversed(self.nodes[s].made_by):  # outermost first
            if call.depth >= depth and call.inputs and feeds(call.inputs[0]):
                return call.inputs[0], "projection", call
        current = s
        for _ in range(_MAX_FREE_STEPS):
            node = self.nodes[current]
            derived = list(dict.fromkeys(p for p in node.parents if self.nodes[p].derived))
            if node.parametrized or len(derived) != 1:
                break
            current = derived[0]
            if feeds(current):
                return current, "function", None
        return None

    def residual(self, n: int) -> _Residual | None:
        """The residual addition sum ``n`` is, or None."""
        summands = self.summands(n)
        tensors = [s for s in dict.fromkeys(s for s in summands if isinstance(s, int))
                   if self.nodes[s].derived]
        depth = len(self.nodes[n].calls)
        found = []
        for s in tensors:
            for m in tensors:
                if s != m and (src := self.source(s, m, depth)) is not None:
                    # The shortcut is the lighter branch: a projection (1x1 conv) takes fewer values
                    # than the main path it bypasses, the identity none.
                    if self.weight(src[0], s) < self.weight(src[0], m):
                        found.append((s, src))
        if not found:
            return None
        x = max(src[0] for _, src in found)  # the nearest source: this block's own input
        shortcuts = {s: src for s, src in found if src[0] == x}
        mains = [m for m in tensors if m not in shortcuts and (x in self.ancestors(m))]
        if not mains:
            return None
        main_nodes = set().union(*(self.between(x, m) for m in mains))
        count = sum(1 for s in summands if s in shortcuts)
        return _Residual(n, x, mains, [(s, kind, call) for s, (_, kind, call) in shortcuts.items()], count,
                         main_nodes)


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _signature(module: nn.Module, depth: int = 0) -> tuple:
    """The class tree of ``module``: modules built alike have the same one, whatever their sizes."""
    children = tuple(_signature(c, depth + 1) for c in module._modules.values() if c is not None) \
        if depth < 8 else ()
    return type(module).__qualname__, children


def _common_prefix(paths: list[str]) -> str:
    parts = [p.split(".") for p in paths]
    common = []
    for steps in zip(*parts, strict=False):  # as far as the shortest path goes
        if len(set(steps)) != 1:
            break
        common.append(steps[0])
    return ".".join(common)


class _Namer:
    """Module paths of the model (registered or not) and which residual each block module is."""

    def __init__(self, model: nn.Module, graph: _Graph) -> None:
        self.model = model
        self.graph = graph
        self.modules = {"": model} | {h.path: h.obj for h in held_modules(model)}
        self.path_of = {id(m): p for p, m in reversed(self.modules.items())}

    def path(self, module: nn.Module) -> str:
        return self.path_of.get(id(module), type(module).__name__)

    def name(self, r: _Residual) -> None:
        """Set ``r.block`` and ``r.path``: the module computing the main path (see the module doc)."""
        nodes = self.graph.nodes
        context = nodes[r.sum].calls
        depth = len(context)
        outer = list(dict.fromkeys(nodes[n].calls[depth] for n in r.main_nodes
                                   if len(nodes[n].calls) > depth))
        if len(outer) == 1 and len(r.mains) == 1 and r.mains[0] in outer[0].outputs and \
                r.source in outer[0].inputs[:1]:
            r.block = outer[0].module
        elif context and context[-1].inputs[:1] == (r.source,):
            r.block = context[-1].module
        else:
            prefix = _common_prefix([self.path(c.module) for c in outer]) if outer else ""
            within = self.path(context[-1].module) if context else ""
            if prefix and prefix in self.modules and prefix != within:
                r.block = self.modules[prefix]
            else:
                last = next((c for c in reversed(nodes[r.mains[-1]].made_by) if c.depth == depth), None)
                r.block = last.module if last is not None else (context[-1].module if context else self.model)
                r.foreign = "its input"
        r.path = self.path(r.block)


def _siblings(namer: _Namer, blocks: list[nn.Module], projections: list[nn.Module],
              ) -> dict[int, tuple[nn.Module, list[str]]]:
    """Modules built like a block: the same class in the same container, or the same class tree
    under the same parent (a block's projection is none). id -> (module, the blocks it is compared with)."""
    ids = {id(b) for b in blocks}
    inside = {id(m) for b in (*blocks, *projections) for m in b.modules()}
    paths = [namer.path(b) for b in blocks]
    found: dict[int, tuple[nn.Module, list[str]]] = {}
    for path, module in namer.modules.items():
        if not path or id(module) in inside or any(p.startswith((path + ".", path + "[")) for p in paths):
            continue
        for block in blocks:
            block_path = namer.path(block)
            parent = namer.modules.get(_parent(path))
            if type(module) is not type(block) or _parent(path) != _parent(block_path) or id(module) in ids:
                continue
            if isinstance(parent, _CONTAINERS) or _signature(module) == _signature(block):
                found.setdefault(id(module), (module, []))[1].append(block_path)
    return found


def find_blocks(model: nn.Module, x: torch.Tensor) -> list[Block]:
    """Every residual block of ``model`` and every module built like one, in the order the forward ran them.

    Runs ``model(x)`` twice without gradients, in whatever mode the model is in: once to find
    the blocks, once to keep the values they need. The forward's exceptions propagate; a
    forward that does not repeat its ops raises ``UnrepeatableForward``.
    """
    first = _trace(model, x)
    graph = _Graph(first.nodes, first.calls)
    namer = _Namer(model, graph)
    residuals = [r for n in range(len(graph.nodes)) if graph.nodes[n].addends is not None
                 and not graph.flattened(n) and (r := graph.residual(n)) is not None]
    for r in residuals:
        namer.name(r)
    sums = {r.sum: r for r in residuals}
    for r in residuals:  # a main path that holds another block's sum: the shortcut skips that block too
        inner = [sums[n] for n in r.main_nodes if n in sums and n != r.sum]
        if inner:
            last = next((c for c in reversed(graph.nodes[r.mains[-1]].made_by)
                         if c.depth == len(graph.nodes[r.sum].calls)), None)
            if last is not None:
                r.block, r.path = last.module, namer.path(last.module)
            r.foreign = f"the input of {min(inner, key=lambda i: i.sum).path}"
    blocks = list(dict.fromkeys(r.block for r in residuals if not r.foreign and r.block is not None))
    projections = [c.module for r in residuals for _, _, c in r.shortcuts if c is not None]
    others = _sibling_runs(graph, namer, residuals, _siblings(namer, blocks, projections))
    keep = {r.source for r in residuals} | {r.sum for r in residuals}
    keep |= {n for r in residuals for n in graph.summands(r.sum) if isinstance(n, int)}
    keep |= {n for o in others for n in (o.source, o.output)}
    second = _trace(model, x, frozenset(keep))
    if [n.op for n in second.nodes] != [n.op for n in first.nodes]:
        raise UnrepeatableForward(f"the forward runs other ops the second time on the same input "
                                  f"({len(first.nodes)} tensors, then {len(second.nodes)}): its blocks "
                                  "cannot be observed")
    found = [(r.sum, _block(graph, r, second.values, namer)) for r in residuals]
    found += [(o.output, o.block(second.values)) for o in others]
    return [b for _, b in sorted(found, key=lambda item: item[0])]


def _block(graph: _Graph, r: _Residual, values: dict[int, torch.Tensor], namer: _Namer) -> Block:
    shortcuts = {s: (kind, call) for s, kind, call in r.shortcuts}
    kind, call = next(iter(shortcuts.values()))
    source = values[r.source]
    recomputed: dict[int, torch.Tensor] = {}
    for s, (k, c) in shortcuts.items():
        if k == "identity":
            recomputed[s] = source
        elif k == "projection" and c is not None and len(c.inputs) == 1:
            with torch.no_grad():
                recomputed[s] = c.module(source)
        else:
            recomputed[s] = values[s]

    def replay(n: int | Const, only_main: bool) -> torch.Tensor | object:
        if isinstance(n, Const):
            return n.value
        if n in shortcuts:
            return 0 if only_main else recomputed[n]
        if n != r.sum and not graph.flattened(n):
            return values[n]
        a, b = graph.nodes[n].addends or ()
        return replay(a, only_main) + replay(b, only_main)

    main = sum((values[m] for m in r.mains[1:]), values[r.mains[0]])
    projection = call.module if kind == "projection" and call is not None else None
    return Block(
        path=r.path, shortcut="foreign" if r.foreign else kind, input=source, output=values[r.sum], main=main,
        expected=replay(r.sum, False), shortcut_count=r.count, projection=projection,
        projection_path=namer.path(projection) if projection is not None else None,
        shortcut_value=next(iter(recomputed.values())), detail=r.foreign,
        main_modules=tuple(dict.fromkeys(c.module for n in sorted(r.main_nodes)
                                         for c in graph.nodes[n].made_by)),
    )


@dataclass
class _SiblingRun:
    path: str
    source: int
    output: int
    shortcut: str  # "none" or "foreign"
    detail: str
    siblings: tuple[str, ...]
    main_modules: tuple[nn.Module, ...]

    def block(self, values: dict[int, torch.Tensor]) -> Block:
        return Block(self.path, self.shortcut, values[self.source], values[self.output], values[self.output],
                     shortcut_count=0, detail=self.detail, siblings=self.siblings,
                     main_modules=self.main_modules)


def _sibling_runs(graph: _Graph, namer: _Namer, residuals: list[_Residual],
                  siblings: dict[int, tuple[nn.Module, list[str]]]) -> list[_SiblingRun]:
    """What each module built like a block did with its output: nothing added, or something foreign."""
    shortcut_of = {r.sum: {r.source} | {s for s, _, _ in r.shortcuts} for r in residuals}
    # summand -> the sum it is added in; a block's input is a summand of the next block's sum, as its shortcut
    sum_of = {s: n for n in range(len(graph.nodes)) if graph.nodes[n].addends is not None
              and not graph.flattened(n) for s in graph.summands(n)
              if isinstance(s, int) and s not in shortcut_of.get(n, ())}
    covered = {id(c.module) for r in residuals for n in r.main_nodes for c in graph.nodes[n].calls}
    sources = {r.source: r.path for r in residuals if not r.foreign}
    runs = []
    for module, compared in siblings.values():
        call = next((c for c in graph.calls if c.module is module), None)
        if call is None or not call.inputs or not call.outputs or id(module) in covered:
            continue
        x, out = call.inputs[0], call.outputs[0]
        main_modules = (module,)
        if out in sum_of:
            others = [s for s in graph.summands(sum_of[out]) if s != out]
            detail = "; ".join(_describe(graph, s, x, sources) for s in others)
            runs.append(_SiblingRun(namer.path(module), x, sum_of[out], "foreign", detail, tuple(compared),
                                    main_modules))
        elif any(s == x or s in graph.ancestors(x) for s in sources):
            runs.append(_SiblingRun(namer.path(module), x, out, "none", "", tuple(compared), main_modules))
    return runs


def _describe(graph: _Graph, s: int | Const, x: int, sources: dict[int, str]) -> str:
    """What a summand that is no shortcut of input ``x`` is, for a message."""
    if isinstance(s, Const):
        return f"the constant {s.value!r}"
    if not graph.nodes[s].derived:
        return "a tensor not computed from this forward's input (a held or stale tensor)"
    if x == s or x in graph.ancestors(s):
        return "a function of its input through other parameters than a projection's"
    current = s
    for _ in range(_MAX_FREE_STEPS + 1):
        if current in sources:
            return f"a tensor computed from the input of {sources[current]}, not from its own input"
        derived = [p for p in graph.nodes[current].parents if graph.nodes[p].derived]
        if len(derived) != 1:
            break
        current = derived[0]
    return "a tensor not computed from its own input"

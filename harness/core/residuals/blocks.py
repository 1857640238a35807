"""Residual blocks found by dataflow in a real forward, whatever the model calls them.

``find_blocks(model, x)`` traces ``model(x)`` (``harness.core.residuals.dataflow``) and returns
a ``Block`` per residual addition (a sum of a main path computed from a tensor through
parameters and a shortcut of that same tensor), named by module path, plus the modules built
like those blocks that add no such shortcut. Names are never used to find anything: only to
name. What counts as a residual addition and how a block is named: docs/audits.md, "Residual
blocks".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.core.introspect import Held, held
from harness.core.residuals.dataflow import Call, Const, Graph, trace

# Containers whose members are one family of blocks.
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)
# How far back a parameter-free shortcut (pooling, padding, slicing of X) is followed.
_MAX_FREE_STEPS = 16
# A residual sum has a handful of terms (main paths and shortcuts); a longer one (a sum over a
# sequence) is no block, and pairing its terms would cost their square.
_MAX_SUMMANDS = 16


class UnrepeatableForward(Exception):
    """The forward ran other ops the second time on the same input: its blocks cannot be observed."""


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
    shortcuts: list[tuple[int, str, Call | None]]  # (summand, kind, projection call)
    count: int
    main_nodes: set[int]
    block: nn.Module | None = None
    path: str = ""
    foreign: str = ""


def _source(graph: Graph, s: int, m: int, depth: int) -> tuple[int, str, Call | None] | None:
    """``(X, kind, projection call)``: summand ``s`` is a shortcut of ``X``, ``m`` a main path from it."""
    def feeds(x: int) -> bool:
        return graph.depth(x, m) > 0

    if feeds(s):
        return s, "identity", None
    for call in reversed(graph.nodes[s].made_by):  # outermost first
        if call.depth >= depth and call.inputs and feeds(call.inputs[0]):
            return call.inputs[0], "projection", call
    current = s
    for _ in range(_MAX_FREE_STEPS):
        node = graph.nodes[current]
        derived = list(dict.fromkeys(p for p in node.parents if graph.nodes[p].derived))
        if node.parametrized or len(derived) != 1:
            break
        current = derived[0]
        if feeds(current):
            return current, "function", None
    return None


def _residual(graph: Graph, n: int) -> _Residual | None:
    """The residual addition sum ``n`` is, or None."""
    summands = graph.summands(n)
    tensors = [s for s in dict.fromkeys(s for s in summands if isinstance(s, int))
               if graph.nodes[s].derived]
    if len(tensors) > _MAX_SUMMANDS:
        return None
    depth = len(graph.nodes[n].calls)
    found = []
    for s in tensors:
        for m in tensors:
            if s != m and (src := _source(graph, s, m, depth)) is not None:
                # The shortcut is the lighter branch: a projection (1x1 conv) takes fewer values
                # than the main path it bypasses, the identity none.
                if graph.weight(src[0], s) < graph.weight(src[0], m):
                    found.append((s, src))
    if not found:
        return None
    x = max(src[0] for _, src in found)  # the nearest source: this block's own input
    shortcuts = {s: src for s, src in found if src[0] == x}
    mains = [m for m in tensors if m not in shortcuts and graph.is_ancestor(x, m)]
    if not mains:
        return None
    main_nodes = set().union(*(graph.between(x, m) for m in mains))
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

    def __init__(self, model: nn.Module, graph: Graph, inventory: list[Held]) -> None:
        self.model = model
        self.graph = graph
        self.modules = {"": model} | {h.path: h.obj for h in inventory if isinstance(h.obj, nn.Module)}
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
            else:  # the main path's modules are the summing module's own (a transformer layer's halves)
                r.block = context[-1].module if context else self.model
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

    Runs ``model(x)`` without gradients, in whatever mode the model is in, to find the blocks;
    a second time, keeping each value the blocks need as it is made, where the forward changed
    one in place later. The forward's exceptions propagate; a forward that does not repeat its
    ops then raises ``UnrepeatableForward``.
    """
    inventory = held(model)
    first = trace(model, x, inventory)
    graph = Graph(first.nodes, first.calls)
    namer = _Namer(model, graph, inventory)
    residuals = [r for n in range(len(graph.nodes)) if graph.nodes[n].addends is not None
                 and not graph.flattened(n) and (r := _residual(graph, n)) is not None]
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
    keep |= {n for o in others for n in (o.source, o.main, o.output)}
    values = first.intact(keep)
    if values is None:  # some value was changed in place after it was made (torchvision's relu_ after +=)
        second = trace(model, x, inventory, frozenset(keep))
        if [n.op for n in second.nodes] != [n.op for n in first.nodes]:
            raise UnrepeatableForward(f"the forward runs other ops the second time on the same input "
                                      f"({len(first.nodes)} tensors, then {len(second.nodes)}): its blocks "
                                      "cannot be observed")
        values = second.values
    found = [(r.sum, _block(graph, r, values, namer)) for r in residuals]
    found += [(o.output, o.block(values)) for o in others]
    return [b for _, b in sorted(found, key=lambda item: item[0])]


def _block(graph: Graph, r: _Residual, values: dict[int, torch.Tensor], namer: _Namer) -> Block:
    shortcuts = {s: (kind, call) for s, kind, call in r.shortcuts}
    kind, call = next(iter(shortcuts.values()))
    source = values[r.source]
    recomputed: dict[int, torch.Tensor] = {}
    for s, (k, c) in shortcuts.items():
        if k == "identity":
            recomputed[s] = source
        elif k == "projection" and c is not None and len(c.inputs) == 1:
            with torch.no_grad():
                recomputed[s] = c.module(source.clone())  # a projection may change its input in place
        else:
            recomputed[s] = values[s]

    def replay(root: int) -> torch.Tensor:
        """The sum in the order the forward made it, each shortcut recomputed from the block's input."""
        done: list[object] = []
        stack: list[tuple[int | Const, bool]] = [(root, False)]
        while stack:
            term, add = stack.pop()
            if add:
                right, left = done.pop(), done.pop()
                done.append(left + right)
            elif isinstance(term, Const):
                done.append(term.value)
            elif term in shortcuts:
                done.append(recomputed[term])
            elif term != root and not graph.flattened(term):
                done.append(values[term])
            else:
                left_term, right_term = graph.nodes[term].addends or ()
                stack += [(term, True), (right_term, False), (left_term, False)]
        return done[0]  # type: ignore[return-value]

    main = sum((values[m] for m in r.mains[1:]), values[r.mains[0]])
    projection = call.module if kind == "projection" and call is not None else None
    return Block(
        path=r.path, shortcut="foreign" if r.foreign else kind, input=source, output=values[r.sum], main=main,
        expected=replay(r.sum), shortcut_count=r.count, projection=projection,
        projection_path=namer.path(projection) if projection is not None else None,
        shortcut_value=next(iter(recomputed.values())), detail=r.foreign,
        main_modules=tuple(dict.fromkeys(c.module for n in sorted(r.main_nodes)
                                         for c in graph.nodes[n].made_by)),
    )


@dataclass
class _SiblingRun:
    """A module built like a block, and what its output meets: nothing added, or a foreign summand."""

    module: nn.Module
    path: str
    source: int  # its input
    main: int  # its own output
    output: int  # what the forward goes on with: its output, or the sum it is added in
    shortcut: str  # "none" or "foreign"
    detail: str
    siblings: tuple[str, ...]

    def block(self, values: dict[int, torch.Tensor]) -> Block:
        return Block(self.path, self.shortcut, values[self.source], values[self.output], values[self.main],
                     shortcut_count=0, detail=self.detail, siblings=self.siblings,
                     main_modules=(self.module,))


def _sibling_runs(graph: Graph, namer: _Namer, residuals: list[_Residual],
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
        if out in sum_of:
            others = [s for s in graph.summands(sum_of[out]) if s != out]
            detail = "; ".join(_describe(graph, s, x, sources) for s in others)
            runs.append(_SiblingRun(module, namer.path(module), x, out, sum_of[out], "foreign", detail,
                                    tuple(compared)))
        elif any(s == x or graph.is_ancestor(s, x) for s in sources):
            runs.append(_SiblingRun(module, namer.path(module), x, out, out, "none", "", tuple(compared)))
    return runs


def _describe(graph: Graph, s: int | Const, x: int, sources: dict[int, str]) -> str:
    """What a summand that is no shortcut of input ``x`` is, for a message."""
    if isinstance(s, Const):
        return f"the constant {s.value!r}"
    if not graph.nodes[s].derived:
        return "a tensor not computed from this forward's input (a held or stale tensor)"
    if x == s or graph.is_ancestor(x, s):
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

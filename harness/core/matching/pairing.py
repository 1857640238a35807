"""Structural weight matching: pair two differently built models' weights by what their forwards compute.

Why not names: a refactor renames, re-nests and reorders modules (``res_block3.0`` becomes
``layers.2.conv1``, a shortcut runs before the main path, blocks hide in unregistered tuples) and
renames classes, so neither state_dict keys nor class names say which weight is which. What a
module *receives* does: run the source once and record the input of every weight-owning module
("leaf"); then run the destination and, on each of its leaves' first call, take the unused source
leaf of the same signature that received exactly the same input, copy its weights in right there,
and go on. A signature is what a leaf computes with, never what its class is called: its type
family (a torch built-in class, or the built-in a user class derives from, is itself: a Conv1d is
no Linear; any other class is judged by what it holds), its own tensors' names, shapes and dtypes,
and, recursively, its registered children's signatures. Everything downstream
then computes what the source computed, so the next leaf is found the same way (dataflow matching).
Where no input agrees the models part; pairing falls back to call order there. A pairing is only
trusted once proven (``match_weights``): with the weights copied, both models give bit-identical
outputs in every requested mode. ``compare_models`` uses the same pairing to *measure* two models
and to say where they part.

Generic: imports only torch, the stdlib and ``harness.core``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from difflib import SequenceMatcher

import torch
import torch.nn as nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._pytree import tree_leaves

from harness.core.errors import HarnessError, error_line
from harness.core.introspect import held
from harness.core.tolerances import EXACT, Tolerance, all_close, max_abs_diff

__all__ = [
    "Comparison",
    "MatchError",
    "ModeComparison",
    "ModulePair",
    "WeightMatch",
    "compare_models",
    "match_weights",
    "pair_weights",
    "type_family",
]

MODES = ("train", "eval")
_SHOWN = 6  # unmatched modules named in a "no pairing fits" message before "and N more"

# (type family, ((own tensor name, shape, dtype), ...), children's signatures): two leaves pair only
# if these are equal (see _signatures).
Signature = tuple
# The type family of a module whose class is the user's own (not a torch built-in, nor derived from
# one): its own tensors and its children's signatures say what it computes with, its name nothing.
USER_FAMILY = "module"
# torch classes that hold modules rather than compute: deriving from one does not make a user class
# a built-in.
_CONTAINER_CLASSES = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict)
ExampleInput = torch.Tensor | tuple[torch.Tensor, ...]


class MatchError(HarnessError):
    """No pairing of the two models' weights fits, or the pairing found cannot be proven."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


@dataclass(frozen=True)
class ModulePair:
    """One src leaf and the dst leaf that gets its tensors; ``how`` says what decided it.

    ``dataflow``: the dst leaf received exactly the src leaf's input. ``order``: no input agreed
    (the models part before it), so the earliest unused same-signature src leaf was taken.
    ``unused``: at least one side is never called in a forward; paired in declaration order.
    """

    src: str
    dst: str
    how: str


@dataclass
class WeightMatch:
    """A complete, one-to-one pairing of two models' parameters and buffers."""

    mapping: dict[str, str]  # src tensor path -> dst tensor path, every leaf-owned tensor of each side
    modules: list[ModulePair]  # in src forward order, then src's never-called leaves
    parted_at: ModulePair | None = None  # the first pair taken by order: where the forwards part

    def copy_into(self, src: nn.Module, dst: nn.Module) -> None:
        """Copy ``src``'s values into ``dst`` along ``mapping``, in place; ``dst`` keeps device and dtype."""
        src_tensors = _tensors_by_path(src)
        dst_tensors = _tensors_by_path(dst)
        missing = [f"src {p}" for p in self.mapping if p not in src_tensors]
        missing += [f"dst {p}" for p in self.mapping.values() if p not in dst_tensors]
        if missing:
            shown = ", ".join(missing[:_SHOWN])
            raise MatchError(f"the mapping does not fit these models: no tensor at {shown}")
        with torch.no_grad():
            for src_path, dst_path in self.mapping.items():
                source, target = src_tensors[src_path], dst_tensors[dst_path]
                if source.shape != target.shape:
                    raise MatchError(f"the mapping does not fit these models: src {src_path} "
                                     f"{_shape(source.shape)} vs dst {dst_path} {_shape(target.shape)}")
                target.copy_(source)


@dataclass(frozen=True)
class ModeComparison:
    mode: str
    max_abs_diff: float  # over every output tensor, float64; inf where NaN meets a number or shapes differ
    equivalent: bool
    first_divergence: str | None  # None when equivalent
    # Every paired module in ref's forward order: (ref path, other path, max abs diff of their outputs;
    # inf where other never calls its module): where, stage by stage, the two part.
    stages: tuple[tuple[str, str, float], ...] = ()


@dataclass(frozen=True)
class Comparison:
    equivalent: bool
    modes: tuple[ModeComparison, ...]
    mapping: dict[str, str]  # ref tensor path -> other tensor path

    def as_json(self) -> dict:
        """Plain JSON types; a non-finite ``max_abs_diff`` becomes null (JSON has no inf)."""
        return {
            "equivalent": self.equivalent,
            "modes": [
                {
                    "mode": m.mode,
                    "max_abs_diff": m.max_abs_diff if m.max_abs_diff < float("inf") else None,
                    "equivalent": m.equivalent,
                    "first_divergence": m.first_divergence,
                    "stages": [{"ref": r, "other": o, "max_abs_diff": d if d < float("inf") else None}
                               for r, o, d in m.stages],
                }
                for m in self.modes
            ],
            "mapping": dict(self.mapping),
        }


# --- leaves ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Leaf:
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


def _own_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
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
        own = tuple((n, tuple(t.shape), t.dtype) for n, t in _own_tensors(module))
        held_children = (done.get(id(c)) for c in _children(module))
        children = tuple(sorted((s for s in held_children if s is not None), key=repr))
        done[key] = (type_family(module), own, children) if own or children else None
    return done


def _leaves(model: nn.Module) -> list[_Leaf]:
    """Every tensor-owning module of ``model`` in declaration order (the root first if it owns any)."""
    items = held(model)
    tensor_paths = {id(h.obj): h.path for h in items if isinstance(h.obj, torch.Tensor)}
    modules = [("", model)] + [(h.path, h.obj) for h in items if isinstance(h.obj, nn.Module)]
    signatures = _signatures([module for _, module in modules])
    leaves = []
    for path, module in modules:
        own = _own_tensors(module)
        if own:
            leaves.append(_Leaf(path, module, signatures[id(module)],
                                tuple((n, tensor_paths[id(t)]) for n, t in own)))
    return leaves


def _tensors_by_path(model: nn.Module) -> dict[str, torch.Tensor]:
    return {h.path: h.obj for h in held(model) if isinstance(h.obj, torch.Tensor)}


def _copy_leaf(src: nn.Module, dst: nn.Module) -> None:
    targets = dict(_own_tensors(dst))
    with torch.no_grad():
        for name, source in _own_tensors(src):
            targets[name].copy_(source)


# --- observing a forward ----------------------------------------------------------------------


def _tensor_leaves(obj: object) -> list[torch.Tensor]:
    """The tensors of a module's inputs or outputs: pytree leaves, dataclass fields opened too."""
    out: list[torch.Tensor] = []
    for leaf in tree_leaves(obj):
        if isinstance(leaf, torch.Tensor):
            out.append(leaf)
        elif dataclasses.is_dataclass(leaf) and not isinstance(leaf, type):
            out.extend(_tensor_leaves({f.name: getattr(leaf, f.name) for f in dataclasses.fields(leaf)}))
    return out


def _snapshot(obj: object) -> list[torch.Tensor]:
    # Clone: a later in-place op (LeakyReLU(inplace=True), x += ...) must not rewrite the record.
    return [t.detach().clone() for t in _tensor_leaves(obj)]


class _Observer:
    """Process-wide forward hooks, filtered to one model's leaves; sees unregistered modules too.

    Records each leaf's first call: call order, optionally its input and output, and lets
    ``on_first_call`` act before the leaf computes (dataflow pairing copies weights there).
    """

    def __init__(self, leaves: Sequence[_Leaf], *, inputs: bool = False, outputs: bool = False,
                 on_first_call: Callable[[_Leaf, tuple], None] | None = None) -> None:
        self._by_id = {id(leaf.module): leaf for leaf in leaves}
        self._want_inputs, self._want_outputs = inputs, outputs
        self._on_first_call = on_first_call
        self.order: list[_Leaf] = []
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

    def __enter__(self) -> _Observer:
        self._handles = [register_module_forward_pre_hook(self._pre),
                         register_module_forward_hook(self._post)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()


def _as_args(example_input: ExampleInput) -> tuple:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def _forward(model: nn.Module, args: tuple, role: str) -> object:
    try:
        return model(*args)
    except Exception as exc:
        raise MatchError(f"{role} forward raises {error_line(exc)}") from exc


def _clone(model: nn.Module, role: str) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as exc:
        raise MatchError(f"{role} cannot be copied: {error_line(exc)}") from exc


@contextmanager
def _same_randomness(args: tuple) -> Iterator[None]:
    """Both sides draw the same random numbers (dropout in train mode); the caller's RNG is kept."""
    devices = sorted({t.device.index or 0 for t in _tensor_leaves(args) if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        yield


@dataclass
class _Run:
    output: list[torch.Tensor]
    leaf_outputs: dict[str, list[torch.Tensor]]
    order: list[str]


def _run(model: nn.Module, args: tuple, mode: str, role: str) -> _Run:
    """One forward of a copy of ``model`` in ``mode``: the caller's model, mode and running stats stay."""
    copied = _clone(model, role)
    copied.train(mode == "train")
    with torch.no_grad(), _same_randomness(args), _Observer(_leaves(copied), outputs=True) as seen:
        output = _forward(copied, args, role)
    order = [leaf.path for leaf in seen.order]
    return _Run([t.detach() for t in _tensor_leaves(output)], seen.outputs, order)


# --- pairing ----------------------------------------------------------------------------------


def _shape(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(s) for s in shape) + "]"


def _show_path(path: str) -> str:
    return path or "(root)"


def _short(leaf: _Leaf) -> str:
    return f"{leaf.class_name}{_shape(leaf.own[0][1])}"


def _long(leaf: _Leaf) -> str:
    parts = [f"{n}{_shape(s)}" + ("" if d == torch.float32 else f" {str(d).removeprefix('torch.')}")
             for n, s, d in leaf.own]
    return f"{leaf.class_name}({', '.join(parts)})"


def _same_class_first(options: list[_Leaf], leaf: _Leaf) -> list[_Leaf]:
    """``options`` with those of ``leaf``'s own class first: where several fit equally, the class
    name breaks the tie (it never rules a candidate out)."""
    return sorted(options, key=lambda option: option.class_name != leaf.class_name)


def _unmatched(left: list[_Leaf], right: list[_Leaf]) -> tuple[list[_Leaf], list[_Leaf]]:
    """The multiset difference of two leaf sequences' signatures, the instances chosen by alignment.

    Aligning the sequences (forward order) names the module that is really missing, say a
    shortcut's BatchNorm, rather than whichever same-typed module comes last.
    """
    matcher = SequenceMatcher(None, [x.signature for x in left], [x.signature for x in right], autojunk=False)
    paired_left: set[int] = set()
    paired_right: set[int] = set()
    for block in matcher.get_matching_blocks():
        paired_left.update(range(block.a, block.a + block.size))
        paired_right.update(range(block.b, block.b + block.size))
    # Same-signature leftovers on both sides are reordered, not missing: pair them off too.
    pool: dict[Signature, list[int]] = defaultdict(list)
    for j, leaf in enumerate(right):
        if j not in paired_right:
            pool[leaf.signature].append(j)
    only_left = []
    for i, leaf in enumerate(left):
        if i in paired_left:
            continue
        if pool[leaf.signature]:
            paired_right.add(pool[leaf.signature].pop(0))
        else:
            only_left.append(leaf)
    return only_left, [leaf for j, leaf in enumerate(right) if j not in paired_right]


def _no_fit(left: list[_Leaf], right: list[_Leaf], names: tuple[str, str]) -> MatchError:
    only_left, only_right = _unmatched(left, right)
    clash = {_short(x) for x in only_left} & {_short(x) for x in only_right}

    def side(role: str, leaves: list[_Leaf]) -> str:
        if not leaves:
            return f"{role} has none"
        shown = [f"{_show_path(x.path)} {_long(x) if _short(x) in clash else _short(x)}"
                 for x in leaves[:_SHOWN]]
        more = f", and {len(leaves) - _SHOWN} more" if len(leaves) > _SHOWN else ""
        noun = "module" if len(leaves) == 1 else "modules"
        return f"{role} has {len(leaves)} {noun} with no counterpart ({', '.join(shown)}{more})"

    return MatchError(f"no pairing fits: {side(names[0], only_left)}; {side(names[1], only_right)}")


def _pair(src: nn.Module, dst: nn.Module, args: tuple, names: tuple[str, str]) -> WeightMatch:
    src_copy, dst_copy = _clone(src, names[0]).eval(), _clone(dst, names[1]).eval()
    src_leaves, dst_leaves = _leaves(src_copy), _leaves(dst_copy)

    with torch.no_grad(), _Observer(src_leaves, inputs=True) as src_seen:
        _forward(src_copy, args, names[0])
    candidates: dict[Signature, list[_Leaf]] = defaultdict(list)
    for leaf in src_seen.order:
        candidates[leaf.signature].append(leaf)

    pairs: dict[str, tuple[_Leaf, str]] = {}  # src path -> (dst leaf, how)
    parted: list[tuple[_Leaf, _Leaf]] = []

    def choose(dst_leaf: _Leaf, call_args: tuple) -> None:
        options = [s for s in candidates.get(dst_leaf.signature, ()) if s.path not in pairs]
        if not options:
            return
        options = _same_class_first(options, dst_leaf)
        received = _tensor_leaves(call_args)
        chosen = next((s for s in options if _same_tensors(src_seen.inputs[s.path], received)), None)
        how = "dataflow"
        if chosen is None:
            chosen, how = options[0], "order"
            if not parted:
                parted.append((chosen, dst_leaf))
        pairs[chosen.path] = (dst_leaf, how)
        _copy_leaf(chosen.module, dst_leaf.module)  # so everything downstream sees what src saw

    with torch.no_grad(), _Observer(dst_leaves, on_first_call=choose) as dst_seen:
        _forward(dst_copy, args, names[1])

    called_src = {leaf.path for leaf in src_seen.order}
    called_dst = {leaf.path for leaf in dst_seen.order}
    src_sequence = src_seen.order + [x for x in src_leaves if x.path not in called_src]
    dst_sequence = dst_seen.order + [x for x in dst_leaves if x.path not in called_dst]
    if Counter(x.signature for x in src_leaves) != Counter(x.signature for x in dst_leaves):
        raise _no_fit(src_sequence, dst_sequence, names)

    # Leftovers: leaves one side never calls (or whose counterpart it never calls), by declaration order.
    taken_dst = {dst_leaf.path for dst_leaf, _ in pairs.values()}
    waiting: dict[Signature, list[_Leaf]] = defaultdict(list)
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


# --- measuring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Diff:
    max_abs: float
    close: bool
    text: str


def _diff(actual: list[torch.Tensor], expected: list[torch.Tensor], tolerance: Tolerance) -> _Diff:
    """Compare two lists of output tensors leaf by leaf with the harness's one closeness rule."""
    if len(actual) != len(expected):
        return _Diff(float("inf"), False, f"{len(actual)} output tensors vs {len(expected)}")
    worst, close = 0.0, True
    for a, e in zip(actual, expected, strict=True):
        if a.shape != e.shape:
            return _Diff(float("inf"), False, f"output shapes {_shape(a.shape)} vs {_shape(e.shape)}")
        worst = max(worst, max_abs_diff(a, e))
        close = close and all_close(a.detach().double().cpu(), e.detach().double().cpu(), tolerance)
    return _Diff(worst, close, f"max abs diff {worst:.3g}")


def _first_divergence(modules: list[ModulePair], left: _Run, right: _Run, tolerance: Tolerance,
                      names: tuple[str, str]) -> str:
    """The first leaf pair, in the left model's forward order, whose outputs differ beyond ``tolerance``."""
    by_src = {pair.src: pair for pair in modules}
    last = None
    for path in left.order:
        pair = by_src[path]
        where = f"{names[0]} {_show_path(pair.src)} vs {names[1]} {_show_path(pair.dst)}"
        if pair.dst not in right.leaf_outputs:
            return f"{where}: {names[1]} never calls {_show_path(pair.dst)}"
        diff = _diff(right.leaf_outputs[pair.dst], left.leaf_outputs[path], tolerance)
        if not diff.close:
            return f"{where}: {diff.text}"
        last = pair
    final = _diff(right.output, left.output, tolerance).text
    if last is None:
        return f"in the outputs ({final}); no weight-owning module is called"
    return (f"after {names[0]} {_show_path(last.src)} / {names[1]} {_show_path(last.dst)}: every paired "
            f"module agrees, the outputs differ ({final}): a parameterless op or the wiring after it differs")


def _stages(modules: list[ModulePair], left: _Run, right: _Run) -> tuple[tuple[str, str, float], ...]:
    by_src = {pair.src: pair for pair in modules}
    stages = []
    for path in left.order:
        other = by_src[path].dst
        called = other in right.leaf_outputs
        diff = _diff(right.leaf_outputs[other], left.leaf_outputs[path], EXACT) if called else None
        stages.append((path, other, diff.max_abs if diff is not None else float("inf")))
    return tuple(stages)


def _check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    modes = tuple(modes)
    if not modes or any(m not in MODES for m in modes):
        raise HarnessError(f"modes must be a non-empty selection of {', '.join(MODES)}, not {modes!r}")
    return modes


# --- public entry points ----------------------------------------------------------------------


def pair_weights(src: nn.Module, dst: nn.Module, example_input: ExampleInput) -> WeightMatch:
    """Pair every tensor-owning module of ``src`` with one of ``dst`` by dataflow (see the module docstring).

    Runs both forwards once on deep copies in eval mode; ``src`` and ``dst`` are not changed. The
    pairing is structural only: ``match_weights`` proves it, ``compare_models`` measures with it.
    """
    return _pair(src, dst, _as_args(example_input), ("src", "dst"))


def match_weights(src: nn.Module, dst: nn.Module, example_input: ExampleInput, *,
                  modes: Sequence[str] = MODES) -> WeightMatch:
    """Pair ``src``'s weights with ``dst``'s, prove it, and copy them into ``dst``.

    Proof: with the weights copied, copies of both models give bit-identical outputs on
    ``example_input`` in every mode of ``modes``. Only then is ``dst`` written; otherwise
    MatchError names the first module pair whose outputs part, and ``dst`` is untouched.
    """
    modes = _check_modes(modes)
    args = _as_args(example_input)
    names = ("src", "dst")
    match = _pair(src, dst, args, names)
    staged = _clone(dst, "dst")
    match.copy_into(src, staged)
    for mode in modes:
        left, right = _run(src, args, mode, "src"), _run(staged, args, mode, "dst")
        diff = _diff(right.output, left.output, EXACT)
        if not diff.close:
            where = _first_divergence(match.modules, left, right, EXACT, names)
            raise MatchError(f"pairing not proven in {mode} mode: the outputs differ ({diff.text}); "
                             f"first at {where}")
    match.copy_into(src, dst)
    return match


def compare_models(ref: nn.Module | Callable[[], nn.Module], other: nn.Module | Callable[[], nn.Module],
                   example_input: ExampleInput, *, modes: Sequence[str] = MODES,
                   tolerance: Tolerance = EXACT) -> Comparison:
    """Give ``other`` (a copy) ``ref``'s weights by structure and measure their outputs in each mode.

    Differing outputs are a result, not an error: MatchError only when no pairing fits or a
    forward (or a factory passed instead of a model) raises. Neither model is changed.
    """
    modes = _check_modes(modes)
    args = _as_args(example_input)
    names = ("ref", "other")
    ref_model, other_model = _build(ref, "ref"), _build(other, "other")
    match = _pair(ref_model, other_model, args, names)
    loaded = _clone(other_model, "other")
    match.copy_into(ref_model, loaded)
    results = []
    for mode in modes:
        left, right = _run(ref_model, args, mode, "ref"), _run(loaded, args, mode, "other")
        diff = _diff(right.output, left.output, tolerance)
        divergence = None if diff.close else _first_divergence(match.modules, left, right, tolerance, names)
        results.append(ModeComparison(mode, diff.max_abs, diff.close, divergence,
                                      _stages(match.modules, left, right)))
    return Comparison(all(r.equivalent for r in results), tuple(results), dict(match.mapping))


def _build(model: nn.Module | Callable[[], nn.Module], role: str) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    try:
        built = model()
    except Exception as exc:
        raise MatchError(f"{role} factory raises {error_line(exc)}") from exc
    if not isinstance(built, nn.Module):
        raise MatchError(f"{role} factory returned {type(built).__name__}, not an nn.Module")
    return built

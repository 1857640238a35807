"""Contract audits: the checks that tell a sound model from a broken one.

``audit(factory, example_input, checks=None, output="any")`` runs the checks of a table
(``GENERIC_CHECKS``) on fresh instances built by ``factory`` and returns an ``AuditReport``:
one result per check ("pass" / "fail" / "n/a"), findings that name the module path,
parameter, block or output leaf concerned, and the reason for every "n/a".

Any ``nn.Module`` can be audited: the forward may return one tensor or a tuple, list,
dict, namedtuple or dataclass of them (each check works leaf by leaf, ``Outputs``), and
``output`` says what it promises ("probability", "logits" or "any"; ``check_output_contract``).

Every check has the same shape, ``check(ctx) -> list[Finding]`` (an empty list is a
pass), and raises ``NotApplicable(reason)`` when it cannot apply.
A model that fails in a way a check cannot get past (its forward raises, the factory
raises, the forward returns something that holds a non-tensor) fails that check with a
message saying so; it never passes silently and never crashes the audit. User code that
tries to end the process (``sys.exit``, ``KeyboardInterrupt``) stops the audit with a
``HarnessError`` of exit code 2 (``harness.core.loading.call_user_code``).

Every check here is structure-agnostic and builds on ``harness.core.introspect``: what
the model holds and registers (``held``), and which held tensors its forward really uses
(``used_tensors``); ``skip_wiring`` finds residual blocks by dataflow
(``harness.core.residuals``), so it too applies to any model.
"""

from __future__ import annotations

import dataclasses
import io
import re
import textwrap
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
import torch.nn as nn
import torch.utils._pytree as pytree
from torch.nn.modules.module import register_module_forward_pre_hook

from harness.core.contract import ScoreTransform
from harness.core.errors import HarnessError, error_line
from harness.core.introspect import Held, cycles, held, held_modules, held_tensors, used_tensors
from harness.core.loading import UserCodeExit, call_user_code, exit_error
from harness.core.loading import load_attr as load_attr  # re-exported: importing MODULE:ATTR
from harness.core.loading import load_factory as load_factory  # re-exported, the same function
from harness.core.tolerances import BATCHING, EXACT, all_close, close_elements, max_abs_diff
from harness.core.wiring import check_skip_wiring

PASS, FAIL, NOT_APPLICABLE = "pass", "fail", "n/a"

# Seeds of the two instances state_dict_roundtrip compares; every other check uses the first.
BUILD_SEED, OTHER_SEED = 0, 1


@dataclass(frozen=True)
class Finding:
    """One broken contract: which check, a message naming where, and every path concerned.

    ``paths`` lists in full the module paths, tensors or blocks the (compact) message
    names, e.g. ``res_block2[0].0.weight``; empty when the finding concerns the whole model.
    """

    check: str
    message: str
    paths: tuple[str, ...] = ()


@dataclass
class AuditReport:
    """Result of ``audit``: ``results`` maps each check run to pass / fail / n/a.

    ``notes`` holds the reason for every "n/a", and what a check could not cover
    when it still ran (e.g. a block whose output no module observes).
    """

    results: dict[str, str]
    findings: list[Finding] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return FAIL not in self.results.values()

    @property
    def failed(self) -> list[str]:
        return [check for check, result in self.results.items() if result == FAIL]

    def as_json(self) -> dict[str, object]:
        """``{"ok", "results": {check: result}, "findings": [{"check", "message", "paths"}], "notes"}``.

        Plain dicts, lists, strings and a bool: ``json.dumps`` takes it as it is.
        """
        return {
            "ok": self.ok,
            "results": dict(self.results),
            "findings": [{"check": f.check, "message": f.message, "paths": list(f.paths)}
                         for f in self.findings],
            "notes": dict(self.notes),
        }

    def messages(self, check: str) -> list[str]:
        return [f.message for f in self.findings if f.check == check]

    def render(self, title: str = "", declared: Mapping[str, str] | None = None) -> str:
        """A plain-text table, then every finding and note, wrapped to be read in a terminal.

        ``declared`` (check -> expected result) adds a column comparing each result
        with a variant's declaration.
        """
        width = max(len(c) for c in (*self.results, "check"))
        header = f"{'check':<{width}}  result"
        if declared is not None:
            header += "  declared"
        header += "  detail"
        lines = [title] if title else []
        lines += [header, "-" * len(header)]
        for check, result in self.results.items():
            row = f"{check:<{width}}  {result:<6}"
            if declared is not None:
                expected = declared.get(check, PASS)
                mark = "" if matches_declaration(result, expected) else " !"
                row += f"  {expected + mark:<8}"
            count = len(self.messages(check))
            detail = f"{count} finding{'s' * (count != 1)}" if count else self.notes.get(check, "")
            lines.append(f"{row}  {_shorten(detail)}")
        if self.findings:
            lines += ["", "findings:"]
            lines += [_wrap(f"[{f.check}] {f.message}") for f in self.findings]
        notes = {c: n for c, n in self.notes.items() if self.results.get(c) != NOT_APPLICABLE}
        na = {c: n for c, n in self.notes.items() if self.results.get(c) == NOT_APPLICABLE}
        if na:
            lines += ["", "not applicable:"] + [_wrap(f"[{c}] {n}") for c, n in na.items()]
        if notes:
            lines += ["", "notes:"] + [_wrap(f"[{c}] {n}") for c, n in notes.items()]
        return "\n".join(lines) + "\n"


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=110, initial_indent="  ", subsequent_indent="      ",
                         break_on_hyphens=False)


def _shorten(text: str) -> str:
    return textwrap.shorten(text, width=70, placeholder=" ...") if text else ""


def matches_declaration(result: str, expected: str) -> bool:
    # A declaration lists the checks expected to fail; anything else may pass or not apply.
    return (result == FAIL) == (expected == FAIL)


class NotApplicable(Exception):
    """Raised by a check that cannot apply to this model or input; the message says why."""


class ModelFailure(Exception):
    """The model failed in a way that fails the running check (e.g. its forward raised)."""


class AuditContext:
    """What every check gets: fresh instances, the example, guarded forwards, the used tensors.

    ``output`` is the kind of output the model promises (``OUTPUT_KINDS``) and ``score``
    how a detection score comes from it (a ``harness.core.contract.ScoreTransform``, or None);
    only ``output_contract`` reads them.
    """

    def __init__(self, factory: Callable[[], nn.Module], example: torch.Tensor, output: str = "any",
                 score: ScoreTransform | None = None) -> None:
        self.factory = factory
        self.example = example
        self.output = output
        self.score = score
        self._built: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        self._used: list[Held] | None = None
        self.check = ""  # the check running now; names its findings
        self.notes: list[str] = []

    def finding(self, message: str, paths: Iterable[str] = ()) -> Finding:
        return Finding(self.check, message, tuple(paths))

    def build(self, seed: int = BUILD_SEED) -> nn.Module:
        """A fresh instance, initialised under ``seed`` (the global RNG is left as it was).

        An ordinary exception from the factory is a ``ModelFailure``; ``sys.exit`` and the other
        non-``Exception`` exits are a ``UserCodeExit`` (``HarnessError``, exit 2) that stops the audit.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = call_user_code(self.factory, what="the factory")
            except UserCodeExit:
                raise
            except Exception as exc:
                raise ModelFailure(f"factory raises {error_line(exc)}") from exc
        if not isinstance(model, nn.Module):
            raise HarnessError(f"the factory returned {type(model).__name__}, not an nn.Module")
        if model in self._built:
            # Checks move, reload and retrain what they build: a shared instance would leak.
            raise HarnessError("the factory returned an instance it returned before; "
                               "it must build a fresh one")
        self._built.add(model)
        return model

    def forward(self, model: nn.Module, x: torch.Tensor | None = None) -> object:
        """``model(x)`` (default: the example) in whatever mode the model is in, as returned.

        The output must be a tensor or a tuple, list, dict, namedtuple or dataclass of
        tensors (nested freely; None leaves are ignored): anything else is a ``ModelFailure``.
        """
        return self.outputs(model, x).raw

    def outputs(self, model: nn.Module, x: torch.Tensor | None = None) -> Outputs:
        """``model(x)`` as its tensor leaves (``Outputs``), checked as ``forward`` says."""
        x = self.example if x is None else x
        mode = "train" if model.training else "eval"
        try:
            out = call_user_code(model, x, what="the forward")
        except UserCodeExit:
            raise
        except Exception as exc:
            raise ModelFailure(f"forward raises {error_line(exc)} ({mode} mode)") from exc
        leaves, others = _flatten_output(out)
        if others:
            key, obj = others[0]
            where = f" at output {key}" if key else ""
            more = f" (and {_count(len(others) - 1, 'other non-tensor leaf')})" if len(others) > 1 else ""
            raise ModelFailure(f"forward returns {type(obj).__name__}{where}, not a tensor{more} "
                               f"({mode} mode)")
        if not leaves:
            raise ModelFailure(f"forward returns {type(out).__name__} holding no tensor ({mode} mode)")
        return Outputs(out, tuple(leaves))

    def used(self) -> list[Held]:
        """The held tensors one eval forward of a fresh instance passes to torch (cached)."""
        if self._used is None:
            model = self.build().eval()
            try:
                self._used = call_user_code(used_tensors, model, self.example, what="the forward")
            except UserCodeExit:
                raise
            except Exception as exc:
                raise ModelFailure(f"forward raises {error_line(exc)} (eval mode)") from exc
        return self._used


# --- what a forward returns: its tensor leaves ---------------------------------------------------


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


def _leaf_name(key: str) -> str:
    """``output [1]``, ``output ['logits']``, ``output.hidden``; ``output`` for a bare tensor."""
    if not key:
        return "output"
    return f"output{key}" if key.startswith(".") else f"output {key}"


def _on(key: str) -> str:
    """The prefix naming a leaf in a message: none for a bare tensor (``output [1]: ``)."""
    return f"{_leaf_name(key)}: " if key else ""


def _is_unregistered_dataclass(obj: object) -> bool:
    return (dataclasses.is_dataclass(obj) and not isinstance(obj, type)
            and type(obj) not in pytree.SUPPORTED_NODES)


def _flatten_output(out: object, prefix: str = "", depth: int = 0,
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
                inner = _flatten_output(getattr(leaf, f.name), f"{key}.{f.name}", depth + 1)
                tensors += inner[0]
                others += inner[1]
        else:
            others.append((key, leaf))
    return tensors, others


def _structure(outputs: Outputs) -> str:
    return "[" + ", ".join(_leaf_name(k) for k in outputs.keys) + "]"


# --- naming what is wrong, readably -------------------------------------------------------------

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


def _by_container(model: nn.Module, paths: Iterable[str]) -> dict[str, list[str]]:
    registered = {name for name, _ in model.named_modules() if name}
    groups: dict[str, list[str]] = {}
    for path in paths:
        groups.setdefault(_container(path, registered), []).append(path)
    return groups


def _compact(paths: Iterable[str]) -> str:
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


def _outermost(paths: list[str]) -> list[str]:
    """The paths not below another path of the list (``a[0]`` hides ``a[0].1``)."""
    chosen = set(paths)
    return [p for p in paths if not any(p != q and p.startswith((q + ".", q + "[")) for q in chosen)]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _values(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() for t in tensors)


# --- the checks ---------------------------------------------------------------------------------


def check_registration(ctx: AuditContext) -> list[Finding]:
    """Every tensor and module the model holds is registered (also inside lists, tuples, dicts).

    The walk ends on any object graph; where it comes back to an ancestor (``cycles``): a
    module registered inside itself is a finding (torch's recursive ``eval()``, ``.to()``,
    ``state_dict()`` never end on it), a loop through plain attributes or containers a note.
    """
    model = ctx.build()
    hidden = [h for h in held(model) if not h.registered]
    findings = []
    for loop in cycles(model):
        if loop.registered:
            findings.append(ctx.finding(f"{loop.describe()}: a module registered inside itself, so torch's "
                                        "recursive methods (eval(), .to(), state_dict()) never end",
                                        [loop.path]))
        else:
            ctx.notes.append(f"reference cycle: {loop.describe()} (a plain attribute or container; "
                             "walked once, not followed)")
    for container, paths in _by_container(model, [h.path for h in hidden]).items():
        members = set(paths)
        items = [h for h in hidden if h.path in members]
        modules = [h.path for h in items if isinstance(h.obj, nn.Module)]
        tensors = [h for h in items if isinstance(h.obj, torch.Tensor)]
        kind = _attribute_type(model, container)
        parts = []
        if modules:
            tops = _outermost(modules)
            described = ", ".join(f"{p} ({type(_obj(items, p)).__name__})" for p in tops)
            parts.append(f"{_count(len(modules), 'module')} ({described})")
        if tensors:
            params = _values(h.obj for h in tensors if isinstance(h.obj, nn.Parameter))
            parts.append(f"{_count(len(tensors), 'tensor')} ({params:,} parameter values): "
                         f"{_compact(h.path for h in tensors)}")
        findings.append(ctx.finding(f"{container} ({kind}) is not registered, so parameters(), "
                                    f"state_dict(), .to() and .eval() never see its {'; '.join(parts)}",
                                    paths))
    return findings


def _obj(items: list[Held], path: str) -> object:
    return next(h.obj for h in items if h.path == path)


def _attribute_type(model: nn.Module, container: str) -> str:
    owner_path, _, attr = container.rpartition(".")
    owner = model.get_submodule(owner_path) if owner_path else model
    return type(vars(owner).get(attr)).__name__


@contextmanager
def _module_calls() -> Iterator[list[tuple[nn.Module, bool]]]:
    """Every module called while inside, in call order, with its ``training`` flag at the call.

    A process-wide hook, so modules that are held nowhere (built inside forward) count too.
    """
    calls: list[tuple[nn.Module, bool]] = []
    handle = register_module_forward_pre_hook(lambda module, args: calls.append((module, module.training)))
    try:
        yield calls
    finally:
        handle.remove()


def check_mode_propagation(ctx: AuditContext) -> list[Finding]:
    """``eval()`` / ``train()`` reach every module the forward calls.

    Each direction starts from the opposite flag on every held module (set directly,
    not via the method under test), so a module the method misses shows the wrong flag.
    """
    findings = []
    checked = 0
    for method, target in (("eval", False), ("train", True)):
        model = ctx.build()
        for h in held_modules(model):
            h.obj.training = not target
        model.training = not target
        getattr(model, method)()
        with torch.no_grad(), _module_calls() as calls:
            ctx.forward(model)
        paths = {id(h.obj): h.path for h in held_modules(model)}
        called = {id(m): (m, flag) for m, flag in calls if m is not model}
        checked = max(checked, len(called))
        wrong = [(paths.get(key, f"<{type(m).__name__} built during forward>"), m)
                 for key, (m, flag) in called.items() if flag != target]
        if wrong:
            names = [p for p, _ in wrong]
            tops = _outermost(names)
            below = {p: sum(q.startswith((p + ".", p + "[")) for q in names) for p in tops}
            kinds = Counter(type(m).__name__ for _, m in wrong if _is_mode_sensitive(m))
            sensitive = ", ".join(f"{n} {k}" for k, n in kinds.items())
            listed = ", ".join(
                f"{p} ({type(m).__name__}{f' and its {below[p]} submodules' if below[p] else ''})"
                for p, m in wrong if p in below)
            state = "training" if not target else "eval"
            findings.append(ctx.finding(
                f"{method}() does not reach {_count(len(wrong), 'module')} the forward calls"
                f"{f' ({sensitive} among them)' if sensitive else ''}; still in {state} mode: {listed}",
                names))
    if not checked:
        raise NotApplicable("the forward calls no submodules, so no mode can fail to reach one")
    return findings


def _is_mode_sensitive(module: nn.Module) -> bool:
    # Modules whose output depends on .training (the ones a missed eval() makes wrong).
    return isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                               nn.modules.dropout._DropoutNd))


def _moves() -> list[tuple[str, torch.device | torch.dtype]]:
    moves: list[tuple[str, torch.device | torch.dtype]] = [
        (".to(torch.float64)", torch.float64), (".to('meta')", torch.device("meta"))]
    if torch.cuda.is_available():
        moves.append((".to('cuda')", torch.device("cuda")))
    return moves


def check_device_transfer(ctx: AuditContext) -> list[Finding]:
    """After ``.to()``, every tensor the forward uses has moved.

    CPU-only machines check a dtype move and a move to the meta device; with CUDA,
    a real move to the GPU too, followed by a forward there.
    """
    used = [h.path for h in ctx.used()]
    if not used:
        raise NotApplicable("the forward uses no held tensors, so nothing has to move")
    stayed: dict[str, dict[str, list[str]]] = {}  # container -> move -> paths left behind
    findings = []
    for label, target in _moves():
        model = ctx.build()
        before = {h.path: h.obj for h in held_tensors(model)}
        floating = {p for p in used if p in before and before[p].is_floating_point()}
        model.to(target)
        after = {h.path: h.obj for h in held_tensors(model)}
        moved = [p for p in used if p in after]
        if isinstance(target, torch.dtype):
            missed = [p for p in moved if p in floating and after[p].dtype != target]
        else:
            missed = [p for p in moved if after[p].device.type != target.type]
        for container, paths in _by_container(model, missed).items():
            stayed.setdefault(container, {})[label] = paths
        if isinstance(target, torch.device) and target.type == "cuda":
            try:
                ctx.forward(model.eval(), ctx.example.to(target))
            except ModelFailure as exc:
                findings.append(ctx.finding(f"after .to('cuda'): {exc}"))
    for container, by_move in stayed.items():
        every = list(dict.fromkeys(p for paths in by_move.values() for p in paths))
        per_move = ", ".join(f"{label} leaves {len(paths)}" for label, paths in by_move.items())
        findings.append(ctx.finding(f"{container}: {_count(len(every), 'tensor')} the forward uses stay "
                                    f"behind ({per_move}): {_compact(every)}", every))
    return findings


def check_state_dict_roundtrip(ctx: AuditContext) -> list[Finding]:
    """Save the state_dict, load it (weights_only) into an instance built under another seed.

    The saved instance first runs one train-mode forward so its running statistics are
    not the defaults a fresh instance would share by construction.
    """
    source = ctx.build(BUILD_SEED).train()
    with torch.no_grad():
        try:
            call_user_code(source, ctx.example, what="the forward")
            warm_up_error = None
        except UserCodeExit:
            raise
        except Exception as exc:  # e.g. a batch too small for train-mode BatchNorm
            warm_up_error = error_line(exc)
        source.eval()
        expected = ctx.outputs(source)
    if warm_up_error:
        ctx.notes.append(f"the train-mode warm-up forward raises {warm_up_error}; "
                         "running statistics stay at their defaults")
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    try:
        state = torch.load(buffer, weights_only=True)
    except Exception as exc:
        return [ctx.finding(f"torch.load(weights_only=True) rejects the saved state_dict: "
                            f"{error_line(exc)}")]
    target = ctx.build(OTHER_SEED)
    try:
        call_user_code(target.load_state_dict, state, what="load_state_dict")
    except UserCodeExit:
        raise
    except Exception as exc:
        return [ctx.finding(f"load_state_dict into a fresh instance raises {error_line(exc)}")]
    with torch.no_grad():
        actual = ctx.outputs(target.eval())
    loaded = f"a fresh instance (seed {OTHER_SEED}) loaded from the saved state_dict"
    if actual.keys != expected.keys:
        findings = [ctx.finding(f"{loaded} returns other outputs: {_structure(actual)} instead of "
                                f"{_structure(expected)}")]
    else:
        findings = [ctx.finding(f"{_on(key)}{loaded} gives different eval outputs: "
                                + (f"max abs diff {max_abs_diff(a, e):.3g}" if a.shape == e.shape
                                   else f"shape {tuple(a.shape)} instead of {tuple(e.shape)}"))
                    for (key, a), (_, e) in zip(actual.leaves, expected.leaves, strict=True)
                    if not all_close(a, e, EXACT)]
    if not findings:
        return []
    saved = {id(t) for t in target.state_dict(keep_vars=True).values()}
    constants = {id(b) for b in target.buffers()} - saved  # non-persistent buffers: rebuilt, not saved
    tensors = {h.path: h.obj for h in held_tensors(target)}
    originals = {h.path: h.obj for h in held_tensors(source)}

    def lost(path: str) -> bool:
        tensor = tensors[path]
        if id(tensor) in constants:
            return not torch.equal(tensor, originals[path])
        return id(tensor) not in saved

    unsaved = [h.path for h in ctx.used() if h.path in tensors and h.path in originals and lost(h.path)]
    for container, paths in _by_container(target, unsaved).items():
        verb = "is" if len(paths) == 1 else "are"
        findings.append(ctx.finding(f"{container}: {_count(len(paths), 'tensor')} the forward uses {verb} "
                                    f"not in the state_dict, so a loaded instance keeps its own: "
                                    f"{_compact(paths)}", paths))
    return findings


def check_batch_independence(ctx: AuditContext) -> list[Finding]:
    """In eval mode every sample's output alone equals its row in the batched output (every leaf)."""
    x = ctx.example
    if x.shape[0] < 2:
        raise NotApplicable(f"the example input has batch size {x.shape[0]}; there is no other sample")
    if all(torch.equal(x[0], x[i]) for i in range(1, x.shape[0])):
        raise NotApplicable("every row of the example input is the same, so mixing between samples "
                            "cannot show; use distinct rows")
    model = ctx.build().eval()
    findings = []
    with torch.no_grad():
        batched = ctx.outputs(model)
        compared = []
        for key, out in batched.leaves:
            if out.dim() == 0 or out.shape[0] != x.shape[0]:
                findings.append(ctx.finding(f"{_leaf_name(key)} shape {tuple(out.shape)} has no batch "
                                            f"dimension of {x.shape[0]}"))
            else:
                compared.append((key, out))
        differing: dict[str, list[str]] = {key: [] for key, _ in compared}  # key -> "sample (how)"
        for i in range(x.shape[0]):
            alone = dict(ctx.outputs(model, x[i:i + 1]).leaves)
            for key, out in compared:
                row, single = out[i:i + 1], alone.get(key)
                if single is None:
                    differing[key].append(f"{i} (no such output alone)")
                elif single.shape != row.shape:
                    differing[key].append(f"{i} (shape differs)")
                elif not all_close(single, row, BATCHING):
                    differing[key].append(f"{i} (max abs diff {max_abs_diff(single, row):.3g})")
    for key, samples in differing.items():
        if not samples:
            continue
        details = ", ".join(samples)
        findings.append(ctx.finding(
            f"{_on(key)}{len(samples)} of {x.shape[0]} samples give a different output alone than inside "
            f"the batch (tolerance BATCHING: rtol={BATCHING.rtol:g}, atol={BATCHING.atol:g}): "
            f"samples {details}"))
    return findings


def check_gradient_coverage(ctx: AuditContext) -> list[Finding]:
    """Train mode: every trainable parameter gets a finite, non-zero gradient from a scalar loss,
    and every parameter the forward uses is in ``model.parameters()``.

    The loss is the sum, over the floating-point output leaves, of a fixed random
    projection of each (a plain sum can be constant, e.g. of softmax probabilities), so a
    parameter reaching any leaf counts; one whose result reaches none (a dead branch)
    gets no gradient. A parameter whose train-mode gradient is exactly zero is retried in
    eval mode: a bias feeding a train-mode BatchNorm is cancelled by the batch mean
    (mathematically zero) yet still reaches the output.
    """
    findings = []
    model = ctx.build()
    registered = {id(p) for p in model.parameters()}
    tensors = {h.path: h.obj for h in held_tensors(model)}
    used_params = [h.path for h in ctx.used() if _is_parameter(h.obj) and h.path in tensors]
    outside = [p for p in used_params if id(tensors[p]) not in registered]
    for container, group in _by_container(model, outside).items():
        values = _values(tensors[p] for p in group)
        findings.append(ctx.finding(f"{container}: {_count(len(group), 'parameter')} the forward uses "
                                    f"({values:,} values) {'is' if len(group) == 1 else 'are'} not in "
                                    f"model.parameters(), so an optimizer built from it never updates them: "
                                    f"{_compact(group)}", group))
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable and not outside:
        raise NotApplicable("the model has no trainable parameters")
    grads = _gradients(ctx, model.train(), [p for _, p in trainable])
    zero = [(name, p) for (name, p), g in zip(trainable, grads, strict=True) if g is not None and not g.any()]
    if zero:
        retry = _gradients(ctx, model.eval(), [p for _, p in zero])
        cancelled = {name for (name, _), g in zip(zero, retry, strict=True)
                     if g is not None and bool(g.isfinite().all()) and bool(g.any())}
    else:
        cancelled = set()
    missing = [name for (name, _), g in zip(trainable, grads, strict=True) if g is None]
    nonfinite = [name for (name, _), g in zip(trainable, grads, strict=True)
                 if g is not None and not bool(g.isfinite().all())]
    zeros = [name for name, _ in zero if name not in cancelled and name not in nonfinite]
    if missing:
        findings.append(ctx.finding(f"{_count(len(missing), 'trainable parameter')} get no gradient "
                                    f"(not reached by the loss): {_compact(missing)}", missing))
    if nonfinite:
        findings.append(ctx.finding(f"{_count(len(nonfinite), 'parameter')} get a non-finite gradient: "
                                    f"{_compact(nonfinite)}", nonfinite))
    if zeros:
        findings.append(ctx.finding(f"{_count(len(zeros), 'parameter')} get an all-zero gradient in train "
                                    f"and eval mode: {_compact(zeros)}", zeros))
    return findings


def _is_parameter(t: torch.Tensor) -> bool:
    return isinstance(t, nn.Parameter) or (t.requires_grad and t.is_leaf)


def _gradients(ctx: AuditContext, model: nn.Module, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    for p in params:
        p.grad = None
    outputs = ctx.outputs(model)
    generator = torch.Generator().manual_seed(BUILD_SEED)
    loss = None
    for _, out in outputs.leaves:
        if not (out.is_floating_point() and out.requires_grad):
            continue
        weights = torch.randn(out.shape, generator=generator).to(out)
        term = (out * weights).sum()
        loss = term if loss is None else loss + term
    if loss is None:
        return [None] * len(params)
    try:
        call_user_code(loss.backward, what="the backward pass")
    except UserCodeExit:
        raise
    except Exception as exc:
        mode = "train" if model.training else "eval"
        raise ModelFailure(f"backward raises {error_line(exc)} ({mode} mode)") from exc
    return [None if p.grad is None else p.grad.detach().clone() for p in params]


def check_determinism(ctx: AuditContext) -> list[Finding]:
    """The same input twice in eval mode gives identical outputs (every leaf)."""
    model = ctx.build().eval()
    with torch.no_grad():
        first = ctx.outputs(model)
        second = ctx.outputs(model)
    if first.keys != second.keys:
        return [ctx.finding(f"two eval forwards of the same input return different outputs: "
                            f"{_structure(first)} and {_structure(second)}")]
    findings = []
    for (key, a), (_, b) in zip(first.leaves, second.leaves, strict=True):
        if all_close(b, a, EXACT):
            continue
        if a.shape != b.shape:
            findings.append(ctx.finding(f"{_on(key)}two eval forwards of the same input give shapes "
                                        f"{tuple(a.shape)} and {tuple(b.shape)}"))
        else:
            findings.append(ctx.finding(f"{_on(key)}two eval forwards of the same input differ: max abs diff "
                                        f"{max_abs_diff(a, b):.3g} (samples {_rows_differing(a, b)})"))
    return findings


def _rows_differing(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.dim() == 0:
        return "-"
    same = close_elements(a, b, EXACT)
    same = same.reshape(a.shape[0], -1).all(1)
    return ", ".join(str(i) for i in (~same).nonzero().flatten().tolist())


# What a forward may promise to return; ``audit(..., output=KIND)``.
OUTPUT_KINDS = ("probability", "logits", "any")

# Leaf keys (dict keys, namedtuple or dataclass fields) that name a structured output's scores.
SCORE_KEYS = ("logits", "scores", "probs", "probabilities")


def _scores_leaf(outputs: Outputs) -> tuple[str, str]:
    """(key, why) of the leaf holding the class scores: see ``check_output_contract``."""
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


def check_output_contract(ctx: AuditContext) -> list[Finding]:
    """What the output promises, per ``ctx.output`` (``OUTPUT_KINDS``).

    Every kind, every tensor leaf: floating point, finite, and batch first (``shape[0]`` = B,
    the example's batch size).

    * ``"any"``: nothing more.
    * ``"logits"``: the scores are ``[B, num_classes]`` (2-D, at least one class), any finite
      real values.
    * ``"probability"``: the scores are ``[B, num_classes]`` and within [0, 1].

    With a score transform (``ctx.score``), the scores are also what it reads: its column
    exists, and log-softmax rows log-sum-exp to 0 (``ScoreTransform.output_problem``).

    The scores are the output itself when the forward returns one tensor. In a structured
    output they are the one leaf keyed ``logits``, ``scores``, ``probs`` or ``probabilities``
    (a dict key, namedtuple or dataclass field), else the last tensor leaf (the
    ``(hidden, logits)`` convention); a note names the leaf taken. The other leaves
    (hidden states, embeddings) only need the checks every kind makes.
    """
    model = ctx.build().eval()
    with torch.no_grad():
        outputs = ctx.outputs(model)
    batch = ctx.example.shape[0]
    kind = ctx.output
    scores, why = _scores_leaf(outputs) if kind != "any" else ("", "")
    if why:
        ctx.notes.append(f"output={kind!r}: the scores are {_leaf_name(scores)} ({why})")
    findings = []
    for key, out in outputs.leaves:
        name = _leaf_name(key)
        is_scores = kind != "any" and key == scores
        if is_scores and (out.dim() != 2 or out.shape[0] != batch or out.shape[1] < 1):
            what = "[B, num_classes]" if kind == "probability" else "[B, num_classes] logits"
            findings.append(ctx.finding(f"{name} shape {tuple(out.shape)} is not {what} with B = {batch}"))
        elif not is_scores and (out.dim() == 0 or out.shape[0] != batch):
            findings.append(ctx.finding(f"{name} shape {tuple(out.shape)} has no batch dimension of {batch}"))
        if not out.is_floating_point():
            findings.append(ctx.finding(f"{name} dtype {out.dtype} is not floating point"))
            continue
        finite = out.isfinite()
        if not bool(finite.all()):
            bad = ~finite
            rows = bad.reshape(out.shape[0], -1).any(1).nonzero().flatten().tolist() if out.dim() else []
            expected = " (logits are finite reals)" if is_scores and kind == "logits" else ""
            findings.append(ctx.finding(f"{name} has {int((~finite).sum())} non-finite values "
                                        f"(samples {rows}){expected}"))
        values = out[finite]
        if is_scores and kind == "probability" and values.numel() and (values.min() < 0 or values.max() > 1):
            low, high = float(values.min()), float(values.max())
            findings.append(ctx.finding(f"{name} outside [0, 1]: min {low:.4g}, max {high:.4g} "
                                        "(logits or log-probabilities, not probabilities)"))
        if is_scores and ctx.score is not None and bool(finite.all()):
            problem = ctx.score.output_problem(out)
            if problem:
                findings.append(ctx.finding(f"{name}: score {ctx.score} cannot read it: {problem}"))
    return findings


# The checks that apply to any model, in report order. skip_wiring finds residual blocks by
# dataflow (harness.core.residuals), so it applies to any model too (n/a where none are found).
GENERIC_CHECKS: Mapping[str, Callable[[AuditContext], list[Finding]]] = MappingProxyType({
    "registration": check_registration,
    "mode_propagation": check_mode_propagation,
    "device_transfer": check_device_transfer,
    "state_dict_roundtrip": check_state_dict_roundtrip,
    "batch_independence": check_batch_independence,
    "gradient_coverage": check_gradient_coverage,
    "determinism": check_determinism,
    "output_contract": check_output_contract,
    "skip_wiring": check_skip_wiring,
})


CheckTable = Mapping[str, Callable[[AuditContext], list[Finding]]]


def resolve_checks(checks: Iterable[str] | None, table: CheckTable = GENERIC_CHECKS) -> list[str]:
    """Check names from ``table`` in its order: all of them for None, else the ones named (validated)."""
    if checks is None:
        return list(table)
    names = [checks] if isinstance(checks, str) else list(checks)
    unknown = [c for c in names if c not in table]
    if unknown:
        raise HarnessError(f"unknown check(s) {', '.join(map(repr, unknown))}; known: {', '.join(table)}")
    if not names:
        raise HarnessError(f"no checks selected; known: {', '.join(table)}")
    return [c for c in table if c in names]


def audit(factory: Callable[[], nn.Module], example_input: torch.Tensor, *,
          checks: Iterable[str] | None = None, table: CheckTable = GENERIC_CHECKS,
          output: str = "any", score: ScoreTransform | None = None) -> AuditReport:
    """Run the contract checks on fresh instances from ``factory``.

    ``example_input`` has the batch dimension first (any further shape the model
    takes). ``checks`` picks check names from ``table`` (default: all of them). ``output``
    (one of ``OUTPUT_KINDS``) is what the forward promises to return; ``check_output_contract``
    says what each kind requires. The forward may return a tensor or a tuple, list, dict,
    namedtuple or dataclass of tensors: every check compares and differentiates leaf by leaf
    and names the leaf (``output [1]: ...``). The global RNG is left as it was; the audit
    itself is seeded, so it is reproducible.

    An ordinary exception from the factory or the model fails the checks that need it
    (findings); ``sys.exit``, ``KeyboardInterrupt`` and every other non-``Exception`` exit
    from the model's code stop the audit with a ``UserCodeExit`` (a ``HarnessError``,
    exit code 2): never findings, never a pass.
    """
    if not callable(factory):
        raise HarnessError(f"factory must be a zero-argument callable, got {type(factory).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() == 0:
        raise HarnessError("example_input must be a tensor with a batch dimension first")
    if output not in OUTPUT_KINDS:
        raise HarnessError(f"unknown output kind {output!r}; known: {', '.join(OUTPUT_KINDS)}")
    names = resolve_checks(checks, table)
    ctx = AuditContext(factory, example_input, output, score)
    report = AuditReport(results={})
    devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=devices):
        for name in names:
            torch.manual_seed(BUILD_SEED)
            ctx.check, ctx.notes = name, []
            try:
                findings = table[name](ctx)
            except NotApplicable as exc:
                report.results[name] = NOT_APPLICABLE
                report.notes[name] = str(exc)
                continue
            except ModelFailure as exc:
                findings = [ctx.finding(str(exc))]
            except Exception:
                raise
            except BaseException as exc:
                # A check that called the model's code directly (not via ctx): sys.exit & co.
                raise exit_error(exc, f"the model's code (during {name})") from exc
            report.results[name] = FAIL if findings else PASS
            report.findings.extend(findings)
            if ctx.notes:
                report.notes[name] = "; ".join(ctx.notes)
    return report


# --- declarations and the command line ----------------------------------------------------------


def declared_results(expected_defects: Mapping[str, str], checks: Iterable[str] | None = None,
                     table: CheckTable = GENERIC_CHECKS) -> dict[str, str]:
    """Check -> expected result from a variant's declaration: its declared defects fail, the rest pass."""
    return {c: FAIL if c in expected_defects else PASS for c in resolve_checks(checks, table)}


def parse_shape(text: str) -> tuple[int, ...]:
    """``--input-shape``: positive integers separated by commas, small enough to allocate here."""
    from harness.core.contract import check_size

    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise HarnessError(f"--input-shape must be positive integers separated by commas, e.g. 2,1,16000; "
                           f"got {text!r}")
    check_size(shape)  # before anything is allocated: 100000,1,100000 would ask for 40 GB
    return shape

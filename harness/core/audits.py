"""Contract audits: the checks that tell a sound model from a broken one.

``audit(factory, example_input, checks=None)`` runs the checks of a table (``GENERIC_CHECKS``) on fresh
instances built by ``factory`` and returns an ``AuditReport``: one result per check
("pass" / "fail" / "n/a"), findings that name the module path, parameter or block
concerned, and the reason for every "n/a".

Every check has the same shape, ``check(ctx) -> list[Finding]`` (an empty list is a
pass), and raises ``NotApplicable(reason)`` when it cannot apply.
A model that fails in a way a check cannot get past (its forward raises, the factory
raises, the forward returns something other than a tensor) fails that check with a
message saying so; it never passes silently and never crashes the audit.

Every check here is structure-agnostic and builds on ``harness.core.introspect``: what
the model holds and registers (``held``), and which held tensors its forward really uses
(``used_tensors``). A model family adds checks that know its layout in a table of its own
(``harness.rawnet2.audits.CHECKS`` adds ``skip_wiring``).
"""

from __future__ import annotations

import importlib
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
from torch.nn.modules.module import register_module_forward_pre_hook

from harness.core.errors import HarnessError, error_line
from harness.core.introspect import Held, held, held_modules, held_tensors, used_tensors
from harness.core.tolerances import BATCHING, EXACT, all_close, close_elements, max_abs_diff

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
    """What every check gets: fresh instances, the example, guarded forwards, the used tensors."""

    def __init__(self, factory: Callable[[], nn.Module], example: torch.Tensor) -> None:
        self.factory = factory
        self.example = example
        self._built: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        self._used: list[Held] | None = None
        self.check = ""  # the check running now; names its findings
        self.notes: list[str] = []

    def finding(self, message: str, paths: Iterable[str] = ()) -> Finding:
        return Finding(self.check, message, tuple(paths))

    def build(self, seed: int = BUILD_SEED) -> nn.Module:
        """A fresh instance, initialised under ``seed`` (the global RNG is left as it was)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = self.factory()
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

    def forward(self, model: nn.Module, x: torch.Tensor | None = None) -> torch.Tensor:
        """``model(x)`` (default: the example) in whatever mode the model is in."""
        x = self.example if x is None else x
        mode = "train" if model.training else "eval"
        try:
            out = model(x)
        except Exception as exc:
            raise ModelFailure(f"forward raises {error_line(exc)} ({mode} mode)") from exc
        if not isinstance(out, torch.Tensor):
            raise ModelFailure(f"forward returns {type(out).__name__}, not a tensor ({mode} mode)")
        return out

    def used(self) -> list[Held]:
        """The held tensors one eval forward of a fresh instance passes to torch (cached)."""
        if self._used is None:
            model = self.build().eval()
            try:
                self._used = used_tensors(model, self.example)
            except Exception as exc:
                raise ModelFailure(f"forward raises {error_line(exc)} (eval mode)") from exc
        return self._used


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
    """Every tensor and module the model holds is registered (also inside lists, tuples, dicts)."""
    model = ctx.build()
    hidden = [h for h in held(model) if not h.registered]
    findings = []
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
            source(ctx.example)
            warm_up_error = None
        except Exception as exc:  # e.g. a batch too small for train-mode BatchNorm
            warm_up_error = error_line(exc)
        source.eval()
        expected = ctx.forward(source)
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
        target.load_state_dict(state)
    except Exception as exc:
        return [ctx.finding(f"load_state_dict into a fresh instance raises {error_line(exc)}")]
    with torch.no_grad():
        actual = ctx.forward(target.eval())
    if all_close(actual, expected, EXACT):
        return []
    findings = [ctx.finding(f"a fresh instance (seed {OTHER_SEED}) loaded from the saved state_dict gives "
                            f"different eval outputs: max abs diff {max_abs_diff(actual, expected):.3g}")]
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
    """In eval mode every sample's output alone equals its row in the batched output."""
    x = ctx.example
    if x.shape[0] < 2:
        raise NotApplicable(f"the example input has batch size {x.shape[0]}; there is no other sample")
    if all(torch.equal(x[0], x[i]) for i in range(1, x.shape[0])):
        raise NotApplicable("every row of the example input is the same, so mixing between samples "
                            "cannot show; use distinct rows")
    model = ctx.build().eval()
    with torch.no_grad():
        batched = ctx.forward(model)
        if batched.dim() == 0 or batched.shape[0] != x.shape[0]:
            return [ctx.finding(f"output shape {tuple(batched.shape)} has no batch dimension of "
                                f"{x.shape[0]}")]
        differing = []
        for i in range(x.shape[0]):
            alone = ctx.forward(model, x[i:i + 1])
            row = batched[i:i + 1]
            if not all_close(alone, row, BATCHING):
                differing.append((i, max_abs_diff(alone, row) if alone.shape == row.shape else None))
    if not differing:
        return []
    details = ", ".join(f"{i} (max abs diff {d:.3g})" if d is not None else f"{i} (shape differs)"
                        for i, d in differing)
    return [ctx.finding(f"{len(differing)} of {x.shape[0]} samples give a different output alone than inside "
                        f"the batch (tolerance BATCHING: rtol={BATCHING.rtol:g}, atol={BATCHING.atol:g}): "
                        f"samples {details}")]


def check_gradient_coverage(ctx: AuditContext) -> list[Finding]:
    """Train mode: every trainable parameter gets a finite, non-zero gradient from a scalar loss,
    and every parameter the forward uses is in ``model.parameters()``.

    The loss is a fixed random projection of the output (a plain sum can be constant,
    e.g. of softmax probabilities). A parameter whose train-mode gradient is exactly
    zero is retried in eval mode: a bias feeding a train-mode BatchNorm is cancelled by
    the batch mean (mathematically zero) yet still reaches the output.
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
    out = ctx.forward(model)
    if not out.requires_grad:
        return [None] * len(params)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(BUILD_SEED)).to(out)
    (out * weights).sum().backward()
    return [None if p.grad is None else p.grad.detach().clone() for p in params]


def check_determinism(ctx: AuditContext) -> list[Finding]:
    """The same input twice in eval mode gives identical outputs."""
    model = ctx.build().eval()
    with torch.no_grad():
        first = ctx.forward(model)
        second = ctx.forward(model)
    if all_close(second, first, EXACT):
        return []
    if first.shape != second.shape:
        return [ctx.finding(f"two eval forwards of the same input give shapes {tuple(first.shape)} "
                            f"and {tuple(second.shape)}")]
    rows = _rows_differing(first, second)
    return [ctx.finding(f"two eval forwards of the same input differ: max abs diff "
                        f"{max_abs_diff(first, second):.3g} (samples {rows})")]


def _rows_differing(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.dim() == 0:
        return "-"
    same = close_elements(a, b, EXACT)
    same = same.reshape(a.shape[0], -1).all(1)
    return ", ".join(str(i) for i in (~same).nonzero().flatten().tolist())


def check_output_contract(ctx: AuditContext) -> list[Finding]:
    """Output shape ``[B, num_classes]``, finite, within [0, 1] (probabilities)."""
    model = ctx.build().eval()
    with torch.no_grad():
        out = ctx.forward(model)
    batch = ctx.example.shape[0]
    findings = []
    if out.dim() != 2 or out.shape[0] != batch or out.shape[1] < 1:
        findings.append(ctx.finding(f"output shape {tuple(out.shape)} is not [B, num_classes] "
                                    f"with B = {batch}"))
    if not out.is_floating_point():
        return [*findings, ctx.finding(f"output dtype {out.dtype} is not floating point")]
    finite = out.isfinite()
    if not bool(finite.all()):
        rows = (~finite).reshape(out.shape[0], -1).any(1).nonzero().flatten().tolist() if out.dim() else []
        findings.append(ctx.finding(f"output has {int((~finite).sum())} non-finite values (samples {rows})"))
    values = out[finite]
    if values.numel() and (values.min() < 0 or values.max() > 1):
        low, high = float(values.min()), float(values.max())
        findings.append(ctx.finding(f"output outside [0, 1]: min {low:.4g}, max {high:.4g} "
                                    "(logits or log-probabilities, not probabilities)"))
    return findings


# The checks that apply to any model, in report order; a model family adds its own
# (harness.rawnet2.audits.CHECKS adds skip_wiring).
GENERIC_CHECKS: Mapping[str, Callable[[AuditContext], list[Finding]]] = MappingProxyType({
    "registration": check_registration,
    "mode_propagation": check_mode_propagation,
    "device_transfer": check_device_transfer,
    "state_dict_roundtrip": check_state_dict_roundtrip,
    "batch_independence": check_batch_independence,
    "gradient_coverage": check_gradient_coverage,
    "determinism": check_determinism,
    "output_contract": check_output_contract,
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
          checks: Iterable[str] | None = None, table: CheckTable = GENERIC_CHECKS) -> AuditReport:
    """Run the contract checks on fresh instances from ``factory``.

    ``example_input`` has the batch dimension first (any further shape the model
    takes). ``checks`` picks check names from ``table`` (default: all of them). The global
    RNG is left as it was; the audit itself is seeded, so it is reproducible.
    """
    if not callable(factory):
        raise HarnessError(f"factory must be a zero-argument callable, got {type(factory).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() == 0:
        raise HarnessError("example_input must be a tensor with a batch dimension first")
    names = resolve_checks(checks, table)
    ctx = AuditContext(factory, example_input)
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
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise HarnessError(f"--input-shape must be positive integers separated by commas, e.g. 2,1,16000; "
                           f"got {text!r}")
    return shape


def load_factory(target: str) -> Callable[[], nn.Module]:
    """Import ``MODULE:ATTR`` and return the attribute, which must be callable."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise HarnessError(f"expected MODULE:ATTR (e.g. fixed.skip_modules:RawNet2), got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise HarnessError(f"cannot import {module_name!r}: {error_line(exc)}") from None
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise HarnessError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(factory):
        raise HarnessError(f"{target} is a {type(factory).__name__}, not a callable factory")
    return factory

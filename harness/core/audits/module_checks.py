"""The checks that torch's module machinery reaches everything the forward uses: registration,
``eval()``/``train()``, ``.to()`` and the ``state_dict`` round trip.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch.nn.modules.module import register_module_forward_pre_hook

from harness.core.audits.context import BUILD_SEED, OTHER_SEED, AuditContext, ModelFailure, NotApplicable
from harness.core.audits.naming import by_container, compact, outermost, value_count
from harness.core.audits.outputs import describe_leaves, leaf_prefix
from harness.core.audits.results import Finding
from harness.core.errors import error_line
from harness.core.introspect import Held, cycles, held, held_modules, held_tensors
from harness.core.loading import UserCodeExit, call_user_code
from harness.core.text import counted
from harness.core.tolerances import EXACT, all_close, max_abs_diff


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
    for container, paths in by_container(model, [h.path for h in hidden]).items():
        members = set(paths)
        items = [h for h in hidden if h.path in members]
        modules = [h.path for h in items if isinstance(h.obj, nn.Module)]
        tensors = [h for h in items if isinstance(h.obj, torch.Tensor)]
        kind = _attribute_type(model, container)
        parts = []
        if modules:
            tops = outermost(modules)
            described = ", ".join(f"{p} ({type(_obj(items, p)).__name__})" for p in tops)
            parts.append(f"{counted(len(modules), 'module')} ({described})")
        if tensors:
            params = value_count(h.obj for h in tensors if isinstance(h.obj, nn.Parameter))
            parts.append(f"{counted(len(tensors), 'tensor')} ({params:,} parameter values): "
                         f"{compact(h.path for h in tensors)}")
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
            tops = outermost(names)
            below = {p: sum(q.startswith((p + ".", p + "[")) for q in names) for p in tops}
            kinds = Counter(type(m).__name__ for _, m in wrong if _is_mode_sensitive(m))
            sensitive = ", ".join(f"{n} {k}" for k, n in kinds.items())
            listed = ", ".join(
                f"{p} ({type(m).__name__}{f' and its {below[p]} submodules' if below[p] else ''})"
                for p, m in wrong if p in below)
            state = "training" if not target else "eval"
            findings.append(ctx.finding(
                f"{method}() does not reach {counted(len(wrong), 'module')} the forward calls"
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
        for container, paths in by_container(model, missed).items():
            stayed.setdefault(container, {})[label] = paths
        if isinstance(target, torch.device) and target.type == "cuda":
            try:
                ctx.forward(model.eval(), ctx.example.to(target))
            except ModelFailure as exc:
                findings.append(ctx.finding(f"after .to('cuda'): {exc}"))
    for container, by_move in stayed.items():
        every = list(dict.fromkeys(p for paths in by_move.values() for p in paths))
        per_move = ", ".join(f"{label} leaves {len(paths)}" for label, paths in by_move.items())
        findings.append(ctx.finding(f"{container}: {counted(len(every), 'tensor')} the forward uses stay "
                                    f"behind ({per_move}): {compact(every)}", every))
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
        findings = [ctx.finding(f"{loaded} returns other outputs: {describe_leaves(actual)} instead of "
                                f"{describe_leaves(expected)}")]
    else:
        findings = [ctx.finding(f"{leaf_prefix(key)}{loaded} gives different eval outputs: "
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
    for container, paths in by_container(target, unsaved).items():
        verb = "is" if len(paths) == 1 else "are"
        findings.append(ctx.finding(f"{container}: {counted(len(paths), 'tensor')} the forward uses {verb} "
                                    f"not in the state_dict, so a loaded instance keeps its own: "
                                    f"{compact(paths)}", paths))
    return findings


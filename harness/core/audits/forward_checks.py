"""The checks on what the forward computes: each sample independent of its batch, a gradient
for every trainable parameter, the same output twice, and the output its kind promises.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from harness.core.audits.context import BUILD_SEED, AuditContext, ModelFailure, NotApplicable
from harness.core.audits.naming import by_container, compact, value_count
from harness.core.audits.outputs import describe_leaves, leaf_name, leaf_prefix, scores_leaf
from harness.core.audits.results import Finding
from harness.core.errors import error_line
from harness.core.introspect import held_tensors
from harness.core.loading import UserCodeExit, call_user_code
from harness.core.text import counted
from harness.core.tolerances import BATCHING, EXACT, all_close, close_elements, max_abs_diff


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
                findings.append(ctx.finding(f"{leaf_name(key)} shape {tuple(out.shape)} has no batch "
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
            f"{leaf_prefix(key)}{len(samples)} of {x.shape[0]} samples give a different output alone than "
            f"inside the batch (tolerance BATCHING: rtol={BATCHING.rtol:g}, atol={BATCHING.atol:g}): "
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
    for container, group in by_container(model, outside).items():
        values = value_count(tensors[p] for p in group)
        findings.append(ctx.finding(f"{container}: {counted(len(group), 'parameter')} the forward uses "
                                    f"({values:,} values) {'is' if len(group) == 1 else 'are'} not in "
                                    f"model.parameters(), so an optimizer built from it never updates them: "
                                    f"{compact(group)}", group))
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
        findings.append(ctx.finding(f"{counted(len(missing), 'trainable parameter')} get no gradient "
                                    f"(not reached by the loss): {compact(missing)}", missing))
    if nonfinite:
        findings.append(ctx.finding(f"{counted(len(nonfinite), 'parameter')} get a non-finite gradient: "
                                    f"{compact(nonfinite)}", nonfinite))
    if zeros:
        findings.append(ctx.finding(f"{counted(len(zeros), 'parameter')} get an all-zero gradient in train "
                                    f"and eval mode: {compact(zeros)}", zeros))
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
                            f"{describe_leaves(first)} and {describe_leaves(second)}")]
    findings = []
    for (key, a), (_, b) in zip(first.leaves, second.leaves, strict=True):
        if all_close(b, a, EXACT):
            continue
        if a.shape != b.shape:
            findings.append(ctx.finding(f"{leaf_prefix(key)}two eval forwards of the same input give shapes "
                                        f"{tuple(a.shape)} and {tuple(b.shape)}"))
        else:
            findings.append(ctx.finding(f"{leaf_prefix(key)}two eval forwards of the same input differ: "
                                        f"max abs diff {max_abs_diff(a, b):.3g} "
                                        f"(samples {_rows_differing(a, b)})"))
    return findings


def _rows_differing(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.dim() == 0:
        return "-"
    same = close_elements(a, b, EXACT)
    same = same.reshape(a.shape[0], -1).all(1)
    return ", ".join(str(i) for i in (~same).nonzero().flatten().tolist())


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
    scores, why = scores_leaf(outputs) if kind != "any" else ("", "")
    if why:
        ctx.notes.append(f"output={kind!r}: the scores are {leaf_name(scores)} ({why})")
    findings = []
    for key, out in outputs.leaves:
        name = leaf_name(key)
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

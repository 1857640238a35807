"""Mutation operators for PyTorch model code: what a general-purpose mutation tool lacks.

A residual add dropped, BatchNorm and activation swapped, a slope or stride changed, a module
no longer registered, batch statistics in eval mode, a gradient cut with ``.detach()``: each
operator takes a libcst node and yields replacement nodes (mutmut's operator protocol), and
``OPERATORS`` is appended to mutmut's table. This module imports nothing but libcst: the
mutmut driver loads it by file path, before any code under test may be imported. The full
list: docs/mutation.md, "Engine".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import libcst as cst

_LAYER_LIST_METHODS = frozenset({"append", "add_module", "insert"})
_SEQUENTIAL = frozenset({"Sequential"})
_LEAKY = {"LeakyReLU": 0, "leaky_relu": 1}  # callee -> position of negative_slope
_SLOPES = ("0.0", "1.0")  # a ReLU; the identity
_GEOMETRY = {"stride": 1, "padding": 0, "kernel_size": 1, "dilation": 1}  # keyword -> smallest valid value
_BATCHNORM = re.compile(r"^(Lazy)?BatchNorm[123]?d?$|^SyncBatchNorm$")


def callee_name(call: cst.Call) -> str | None:
    """``nn.LeakyReLU(...)`` -> ``"LeakyReLU"``, ``f(...)`` -> ``"f"``; None for other callees."""
    if isinstance(call.func, cst.Attribute):
        return call.func.attr.value
    if isinstance(call.func, cst.Name):
        return call.func.value
    return None


def _keep_parens(original: cst.BaseExpression, replacement: cst.BaseExpression) -> cst.BaseExpression:
    """The replacement, wearing the original's parentheses (so precedence stays as written)."""
    if original.lpar and not replacement.lpar:
        return replacement.with_changes(lpar=original.lpar, rpar=original.rpar)
    return replacement


def drop_addend(node: cst.BinaryOperation) -> Iterator[cst.BaseExpression]:
    """``a + b`` -> ``a`` and ``b``: a residual connection (``x + identity``) or the main path dropped."""
    if isinstance(node.operator, cst.Add):
        yield _keep_parens(node, node.left)
        yield _keep_parens(node, node.right)


def _single_positional(call: cst.Call) -> bool:
    return len(call.args) == 1 and call.args[0].keyword is None and not call.args[0].star


def _applies_a_layer(call: cst.Call) -> bool:
    """``self.bn1(x)``, ``torch.sigmoid(x)``: a computation, not a constructor (``nn.BatchNorm1d(c)``)
    nor a list being filled (``layers.append(...)``)."""
    name = callee_name(call)
    return bool(name) and not name[0].isupper() and name not in _LAYER_LIST_METHODS


def swap_nested_calls(node: cst.Call) -> Iterator[cst.Call]:
    """``f(g(x))`` -> ``g(f(x))``: ``act(bn(conv(x)))`` -> ``bn(act(conv(x)))``, activation first."""
    if not _single_positional(node) or not _applies_a_layer(node):
        return
    inner = node.args[0].value
    if (not isinstance(inner, cst.Call) or not _single_positional(inner) or inner.lpar
            or not _applies_a_layer(inner)):
        return
    swapped_inner = node.with_changes(args=[node.args[0].with_changes(value=inner.args[0].value)])
    yield inner.with_changes(args=[inner.args[0].with_changes(value=swapped_inner)],
                             lpar=node.lpar, rpar=node.rpar)


def _layer_list_call(statement: cst.CSTNode) -> bool:
    """``layers.append(...)`` (or ``add_module`` / ``insert``) alone on its line."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return False
    expr = statement.body[0]
    return (isinstance(expr, cst.Expr) and isinstance(expr.value, cst.Call)
            and isinstance(expr.value.func, cst.Attribute)
            and expr.value.func.attr.value in _LAYER_LIST_METHODS)


def swap_adjacent_layers(node: cst.IndentedBlock | cst.Call) -> Iterator[cst.CSTNode]:
    """Two adjacent layers in the other order.

    ``layers.append(A); layers.append(B)`` -> ``B`` first, and ``nn.Sequential(A, B, ...)``
    -> ``nn.Sequential(B, A, ...)``: BatchNorm after the activation, a convolution after
    its BatchNorm, ...
    """
    if isinstance(node, cst.IndentedBlock):
        body = list(node.body)
        for i in range(len(body) - 1):
            if _layer_list_call(body[i]) and _layer_list_call(body[i + 1]):
                first, second = body[i], body[i + 1]
                swapped = [*body[:i], second.with_changes(leading_lines=first.leading_lines),
                           first.with_changes(leading_lines=second.leading_lines), *body[i + 2:]]
                yield node.with_changes(body=swapped)
    elif isinstance(node, cst.Call) and callee_name(node) in _SEQUENTIAL:
        args = list(node.args)
        for i in range(len(args) - 1):
            a, b = args[i], args[i + 1]
            if a.keyword or b.keyword or a.star or b.star:
                continue
            yield node.with_changes(args=[*args[:i], a.with_changes(value=b.value),
                                          b.with_changes(value=a.value), *args[i + 2:]])


def activation_slope(node: cst.Call) -> Iterator[cst.Call]:
    """A LeakyReLU's negative slope set to 0.0 (a ReLU) and to 1.0 (the identity)."""
    position = _LEAKY.get(callee_name(node) or "")
    if position is None:
        return
    args = list(node.args)
    index = next((i for i, a in enumerate(args) if a.keyword and a.keyword.value == "negative_slope"), None)
    if index is None and len(args) > position and not args[position].keyword and not args[position].star:
        index = position
    if index is None:
        return
    current = args[index].value
    for slope in _SLOPES:
        if isinstance(current, cst.Float) and current.value == slope:
            continue
        yield node.with_changes(args=[*args[:index], args[index].with_changes(value=cst.Float(slope)),
                                      *args[index + 1:]])


def geometry_minus_one(node: cst.Call) -> Iterator[cst.Call]:
    """``stride=``, ``padding=``, ``kernel_size=``, ``dilation=`` one smaller (mutmut adds one)."""
    args = list(node.args)
    for i, arg in enumerate(args):
        if arg.keyword is None or arg.keyword.value not in _GEOMETRY:
            continue
        if not isinstance(arg.value, cst.Integer):
            continue
        value = int(arg.value.value, 0) - 1
        if value >= _GEOMETRY[arg.keyword.value]:
            yield node.with_changes(args=[*args[:i], arg.with_changes(value=cst.Integer(str(value))),
                                          *args[i + 1:]])


def unregister_module(node: cst.Assign) -> Iterator[cst.Expr]:
    """``self.name = Module(...)`` -> ``object.__setattr__(self, "name", Module(...))``.

    The module still runs in the forward, but ``nn.Module`` never registers it: its
    parameters, buffers and submodules are out of ``parameters()``, ``state_dict()``,
    ``.to()`` and ``eval()``/``train()`` (what a model that keeps blocks in a plain tuple looks like).
    """
    if len(node.targets) != 1 or not isinstance(node.value, cst.Call):
        return
    target = node.targets[0].target
    if not (isinstance(target, cst.Attribute) and isinstance(target.value, cst.Name)
            and target.value.value == "self"):
        return
    setter = cst.Attribute(value=cst.Name("object"), attr=cst.Name("__setattr__"))
    yield cst.Expr(cst.Call(func=setter, args=[cst.Arg(cst.Name("self")),
                                               cst.Arg(cst.SimpleString(f'"{target.attr.value}"')),
                                               cst.Arg(node.value)]),
                   semicolon=node.semicolon)


def batchnorm_batch_statistics(node: cst.Call) -> Iterator[cst.Call]:
    """``BatchNorm1d(c)`` -> ``BatchNorm1d(c, track_running_stats=False)``: batch statistics in eval mode."""
    if not _BATCHNORM.match(callee_name(node) or ""):
        return
    if any(a.keyword and a.keyword.value == "track_running_stats" for a in node.args) or any(
            a.star for a in node.args):
        return
    args = list(node.args)
    if args:
        args[-1] = args[-1].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
    yield node.with_changes(args=[*args, cst.Arg(cst.Name("False"), keyword=cst.Name("track_running_stats"),
                                                 equal=cst.AssignEqual(cst.SimpleWhitespace(""),
                                                                       cst.SimpleWhitespace("")))])


def _detached(value: cst.BaseExpression) -> cst.Call:
    if not isinstance(value, cst.Name | cst.Call | cst.Attribute | cst.Subscript) and not value.lpar:
        value = value.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
    return cst.Call(func=cst.Attribute(value=value, attr=cst.Name("detach")))


def _tensor_like(value: cst.BaseExpression | None) -> bool:
    """What a forward computes: a layer applied, arithmetic, a variable (no constructor, no constant)."""
    if isinstance(value, cst.Call):
        return _applies_a_layer(value)
    if isinstance(value, cst.Name):
        return value.value not in ("None", "True", "False")
    return isinstance(value, cst.BinaryOperation)


def detach(node: cst.Assign | cst.Return) -> Iterator[cst.CSTNode]:
    """``x = expr`` -> ``x = (expr).detach()`` and ``return expr`` likewise: the same values, no gradient."""
    if isinstance(node, cst.Return):
        if _tensor_like(node.value) and not isinstance(node.value, cst.Name):
            yield node.with_changes(value=_detached(node.value))
        return
    if len(node.targets) == 1 and isinstance(node.targets[0].target, cst.Name) and _tensor_like(node.value):
        yield node.with_changes(value=_detached(node.value))


# (node type, operator): mutmut's operator table format, applied after mutmut's own operators.
OPERATORS: tuple[tuple[type, object], ...] = (
    (cst.BinaryOperation, drop_addend),
    (cst.Call, swap_nested_calls),
    (cst.IndentedBlock, swap_adjacent_layers),
    (cst.Call, swap_adjacent_layers),
    (cst.Call, activation_slope),
    (cst.Call, geometry_minus_one),
    (cst.Assign, unregister_module),
    (cst.Call, batchnorm_batch_statistics),
    (cst.Assign, detach),
    (cst.Return, detach),
)


def operator_names() -> list[str]:
    """The names of the operators above, in table order, each once."""
    return list(dict.fromkeys(op.__name__ for _, op in OPERATORS))


def mutations(node: cst.CSTNode) -> Iterable[tuple[str, cst.CSTNode]]:
    """Every (operator name, replacement) this module makes of ``node`` (for tests and reports)."""
    for node_type, op in OPERATORS:
        if isinstance(node, node_type):
            for replacement in op(node):
                yield op.__name__, replacement

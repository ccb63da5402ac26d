"""Vectorised code generation: expressions of the same shape become one array expression.

Large networks repeat a few rate laws thousands of times (``vmax_i*S_i/(km_i + S_i)``).
Printing each as scalar code makes the traced program, and XLA's compile time, grow with
the number of reactions times the size of a rate law. Here expressions are grouped by
*template*: the expression with each primitive symbol (``y[i]``, ``k[j]``, ``p[j]``) and each
float replaced by a numbered placeholder in order of first appearance. A group of
``min_group`` or more members is printed once, over gathered index arrays, so the traced
program grows with the number of *distinct* rate laws. Smaller groups keep the scalar,
CSE-shared code of :func:`kinabs._lowering.printer.cse_block`.

Example:
    >>> import sympy
    >>> from kinabs._lowering.system import y_symbol, k_symbol
    >>> exprs = [k_symbol(i) * y_symbol(i) / (1 + y_symbol(i)) for i in range(3)]
    >>> [len(g.members) for g in group_by_template(exprs, min_group=2)]
    [3]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sympy

from kinabs._lowering.printer import cse_block
from kinabs._model import TIME

__all__ = ["Group", "group_by_template", "vector_block"]

_KINDS = ("y", "k", "p")

#: Expressions sharing one template are printed as one vector expression from this many on.
MIN_GROUP = 8


@dataclass
class Group:
    """Members (indices into the expression list) sharing one template."""

    template: sympy.Expr
    slots: list[str]  # placeholder kind per slot: "y", "k", "p" or "n" (number)
    members: list[int]
    values: list[list]  # per member: the index (y/k/p) or number (n) of each slot


def _template(expr: sympy.Expr) -> tuple[sympy.Expr, list[str], list]:
    mapping: dict[sympy.Basic, sympy.Symbol] = {}
    slots: list[str] = []
    values: list = []
    for node in sympy.preorder_traversal(expr):
        if node in mapping:
            continue
        if node.is_Symbol and node.name[:1] == "@" and node.name[1:2] in _KINDS \
                and node.name[2:].isdigit():
            kind, value = node.name[1], int(node.name[2:])
        elif isinstance(node, sympy.Float):
            kind, value = "n", float(node)
        else:
            continue
        mapping[node] = sympy.Symbol(f"@slot{len(slots)}", real=True)
        slots.append(kind)
        values.append(value)
    return expr.xreplace(mapping), slots, values


def group_by_template(exprs: Sequence[sympy.Expr], *, min_group: int) -> list[Group]:
    """Groups of at least ``min_group`` expressions with one template (in first order)."""
    groups: dict[tuple, Group] = {}
    for i, e in enumerate(exprs):
        e = sympy.sympify(e)
        if not e.free_symbols and not e.has(sympy.Float):
            continue  # constants stay scalar
        template, slots, values = _template(e)
        key = (sympy.srepr(template), tuple(slots))
        g = groups.get(key)
        if g is None:
            groups[key] = Group(template, slots, [i], [values])
        else:
            g.members.append(i)
            g.values.append(values)
    return [g for g in groups.values() if len(g.members) >= min_group]


def vector_block(printer, exprs: Sequence[sympy.Expr], indent: str, array_arg: dict,
                 name: str, like: str, *, min_group: int = 8) -> list[str]:
    """Statements that leave ``name`` = all ``exprs`` as one (..., len(exprs)) array.

    ``printer`` is a :class:`kinabs._lowering.printer.Printer` (its hoisted constants gain the index
    and number arrays); ``array_arg`` maps primitive kinds to argument names."""
    exprs = list(exprs)
    groups = group_by_template(exprs, min_group=min_group)
    grouped = {i for g in groups for i in g.members}
    rest = [i for i in range(len(exprs)) if i not in grouped]
    lines: list[str] = []
    parts: list[str] = []
    order: list[int] = []
    for gi, g in enumerate(groups):
        subs: dict[sympy.Symbol, sympy.Symbol] = {}
        for j, kind in enumerate(g.slots):
            column = [v[j] for v in g.values]
            var = f"_g{name}{gi}s{j}"
            if kind == "n":
                if len(set(column)) == 1:
                    subs[sympy.Symbol(f"@slot{j}", real=True)] = sympy.Float(column[0])
                    continue
                lines.append(f"{indent}{var} = {printer.hoist(f'ops.vector({column!r})')}")
            elif len(set(column)) == 1:
                # kept as a (..., 1) column so that it broadcasts against the group
                lines.append(f"{indent}{var} = ops.column({array_arg[kind]}, {column[0]})")
            else:
                idx = printer.hoist(f"ops.index({column!r})")
                lines.append(f"{indent}{var} = ops.take({array_arg[kind]}, {idx})")
            subs[sympy.Symbol(f"@slot{j}", real=True)] = sympy.Symbol(var)
        if g.template.has(TIME):
            # time is a scalar in a solve but (T,) over output time points: as a (..., 1)
            # column it broadcasts against the group's (..., m) arrays in both cases
            var = f"_g{name}{gi}t"
            lines.append(f"{indent}{var} = ops.trailing(t)")
            subs[TIME] = sympy.Symbol(var)
        body = g.template.xreplace(subs)
        repl, (reduced,) = sympy.cse([body], symbols=sympy.numbered_symbols(f"_g{name}{gi}x"),
                                     order="none", optimizations=None)
        for s, r in repl:
            lines.append(f"{indent}{s.name} = {printer.p(r)}")
        out = f"_g{name}{gi}"
        lines.append(f"{indent}{out} = ops.broadcast_to_last({printer.p(reduced)}, {like}, "
                     f"{len(g.members)})")
        parts.append(out)
        order += g.members
    if rest:
        scalar_lines, outs = cse_block(printer, [exprs[i] for i in rest], indent, array_arg)
        lines += scalar_lines
        parts.append(f"ops.stack([{', '.join(outs)}], like={like})")
        order += rest
    if not parts:
        lines.append(f"{indent}{name} = ops.stack([], like={like})")
        return lines
    joined = parts[0] if len(parts) == 1 else f"ops.concat_all([{', '.join(parts)}])"
    if order == list(range(len(exprs))):
        lines.append(f"{indent}{name} = {joined}")
    else:
        inverse = [0] * len(order)
        for position, i in enumerate(order):
            inverse[i] = position
        lines.append(f"{indent}{name} = ops.take({joined}, "
                     f"{printer.hoist(f'ops.index({inverse!r})')})")
    return lines

"""SBML algebraic rules (``0 = f(...)``) turned into assignment rules, where that is exact.

An algebraic rule says that ``f`` is zero at all times, the start included. SBML leaves it
to the simulator to find which variable each rule determines: one that nothing else
determines, i.e. not constant, not the target of an assignment or rate rule, not a species
that reactions change (non-boundary reactant or product), and not a variable that an event
assigns (an event cannot change what a rule fixes). Species, compartments, parameters and
non-constant species references all qualify. kinabs solves an ODE, not a differential-
algebraic system, so it accepts an algebraic rule only where it is an assignment in
disguise:

1. Each rule's math is converted like any other (``kinabs.sbml._math``: sympy expressions,
   never parsed text). Assignment-rule variables and reaction ids (rates) whose definitions
   depend on a candidate variable are substituted, so that an implicit dependence (``0 =
   x - J1`` where reaction ``J1``'s rate uses ``x``) is seen and solved, not left as a loop.
2. The rules and their candidate variables must match one to one (a perfect bipartite
   matching with as many variables as rules). Fewer variables than rules is over-determined
   (e.g. a rule on species that reactions drive, a true DAE): invalid SBML, which libsbml
   reports as rule 10601; the reader leaves that error to this module, which raises
   :class:`~kinabs.SBMLError` naming the rule and the variables at fault. More variables
   than rules is under-determined (SBML does not say which one stays put).
3. The rules are split into blocks that must be solved together (strongly connected
   components of "rule uses the variable another rule determines"), and each block is
   solved with ``sympy.solve`` for its variables. Exactly one solution, free of the
   block's variables, is required: several roots (``x^2 = 1``), none, or no closed form
   raise :class:`~kinabs.UnsupportedFeatureError` naming the rule.

Each solution becomes an assignment rule, so the variable follows the rule at all times and
its initial value comes from the rule at the start, as SBML says.

Example:
    >>> import sympy
    >>> from kinabs import ModelBuilder
    >>> from kinabs.sbml._algebraic import solve_algebraic
    >>> b = ModelBuilder("m")
    >>> b.parameter("total", 10.0)
    total
    >>> b.parameter("x", 1.0, constant=False)
    x
    >>> b.parameter("y", 1.0, constant=False)
    y
    >>> model = b.build()
    >>> x, y, total = sympy.symbols("x y total")
    >>> solved = solve_algebraic(model, [("r1", x + y - total), ("r2", x - 2 * y)], {"x", "y"})
    >>> sorted(solved.items())
    [('x', 2*total/3), ('y', total/3)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import libsbml
import sympy

from kinabs._errors import SBMLError, UnsupportedFeatureError
from kinabs._model import Model, RateOf, sym
from kinabs.sbml._math import MathConverter

__all__ = ["OVERDETERMINED", "add_algebraic_rules", "deferred_checks", "determinable",
           "solve_algebraic"]

_FEATURE = "algebraic rule"
#: libsbml's consistency rule "the model must not be over-determined".
OVERDETERMINED = 10601


def add_algebraic_rules(sbml: libsbml.Model, model: Model, math: MathConverter) -> None:
    """Read ``sbml``'s algebraic rules and add their solutions to ``model.assignment_rules``.

    ``model`` must already hold the reactions and the other rules (``math``: the reader's
    :class:`~kinabs.sbml._math.MathConverter`). A rule is named by its id, else as
    ``"algebraic rule #n"`` (n counts the algebraic rules, from 1). A rule without math has
    no effect (SBML L3V2). libsbml's verdict "over-determined" (rule 10601, which the reader
    leaves to this function, see :func:`deferred_checks`) is read from the document's log.
    """
    rules: list[tuple[str, sympy.Expr]] = []
    n = 0
    for rule in sbml.getListOfRules():
        if not rule.isAlgebraic():
            continue
        n += 1
        if not rule.isSetMath():
            continue
        label = rule.getIdAttribute() or f"algebraic rule #{n}"
        rules.append((label, math.expr(rule.getMath(), where=label)))
    doc = sbml.getSBMLDocument()
    flagged = [doc.getError(i) for i in range(doc.getNumErrors())
               if doc.getError(i).getErrorId() == OVERDETERMINED]
    name = f"'{model.source}'" if model.source else "the SBML text"
    if rules:
        model.assignment_rules.update(solve_algebraic(
            model, rules, determinable(sbml, model), overdetermined=bool(flagged), name=name))
    if flagged:  # libsbml saw more than the algebraic rules explain: its message stands
        text = " ".join(flagged[0].getMessage().split())
        raise SBMLError(f"{name} is not valid SBML (libsbml consistency check): libsbml says "
                        f"line {flagged[0].getLine()}: [Error {OVERDETERMINED}] {text}")


def deferred_checks(doc: libsbml.SBMLDocument) -> set[int]:
    """libsbml consistency errors the reader should leave to :func:`add_algebraic_rules`:
    "over-determined" (10601) when the model has algebraic rules, so that the error can name
    the rule at fault."""
    model = doc.getModel()
    if model is not None and any(r.isAlgebraic() and r.isSetMath()
                                 for r in model.getListOfRules()):
        return {OVERDETERMINED}
    return set()


def determinable(sbml: libsbml.Model, model: Model) -> set[str]:
    """Ids of the variables an algebraic rule may determine: not constant, not set by an
    assignment or rate rule, not a species that reactions change, not assigned by an event.
    """
    ruled = set(model.assignment_rules) | set(model.rate_rules)
    changed = {ref.species for r in model.reactions.values()
               for ref in (*r.reactants, *r.products)}
    out = {c.id for c in model.compartments.values() if not c.constant}
    out |= {s.id for s in model.species.values()
            if not s.constant and (s.boundary_condition or s.id not in changed)}
    out |= {p.id for p in model.parameters.values() if not p.constant and p.reaction is None}
    if sbml.getLevel() >= 3:
        for r in sbml.getListOfReactions():
            for sr in (*r.getListOfReactants(), *r.getListOfProducts()):
                if sr.isSetId() and not sr.getConstant():
                    out.add(sr.getId())
    for ev in sbml.getListOfEvents():
        out -= {ea.getVariable() for ea in ev.getListOfEventAssignments()}
    return out - ruled


def solve_algebraic(model: Model, rules: Iterable[tuple[str, sympy.Expr]],
                    candidates: Iterable[str], *, overdetermined: bool = False,
                    name: str = "the SBML text") -> dict[str, sympy.Expr]:
    """Solve the algebraic rules ``(label, f)`` (meaning ``0 = f``) for variables among
    ``candidates``; returns variable id -> expression, for ``model.assignment_rules``.

    ``overdetermined``: libsbml found the model over-determined (rule 10601); a rule left
    without a variable is then invalid SBML (``SBMLError``), else a case kinabs refuses.

    Raises:
        SBMLError: (naming the rule) over-determined, as libsbml said.
        UnsupportedFeatureError: (naming the rule) the rules do not determine their variables
            uniquely in closed form: no variable kinabs may let them determine, under-
            determined, several or no solutions, rateOf of a variable they determine.
    """
    rules = list(rules)
    cands = set(candidates)
    expand = _Expander(model, cands)
    exprs = [expand(e) for _, e in rules]
    uses = [{s.name for s in e.free_symbols} & cands for e in exprs]
    match = _matching(uses)
    if len(match) < len(rules):
        i = next(i for i in range(len(rules)) if i not in match)
        hall_rules, hall_vars = _hall_set(i, uses, match)
        names = sorted(rules[j][0] for j in hall_rules)
        fixed = sorted(x for x in {s.name for j in hall_rules for s in exprs[j].free_symbols}
                       - cands if not x.startswith("@"))
        why = (f"The algebraic rules {names} can determine only {_names(hall_vars)}, fewer "
               "variables than rules." if hall_vars else
               "It has no variable that it could determine.")
        if fixed:
            why += (" The other symbols are not free: "
                    + "; ".join(f"'{x}' {_role(model, x)}" for x in fixed) + ".")
        if overdetermined:
            raise SBMLError(
                f"{name} is not valid SBML: algebraic rule '{rules[i][0]}' over-determines "
                f"the model (libsbml rule {OVERDETERMINED}). {why} Each algebraic rule needs "
                "a variable of its own that nothing else determines (a rule on species "
                "that reactions change is a differential-algebraic system that SBML "
                "forbids as such).")
        raise UnsupportedFeatureError(
            rules[i][0], _FEATURE,
            f"{why} kinabs lets an algebraic rule determine only a variable that no event "
            "assigns either.")
    everything = set().union(*uses)
    matched = set(match.values())
    if everything != matched:
        free = everything - matched
        i = next(i for i in range(len(rules)) if uses[i] & free)
        raise UnsupportedFeatureError(
            rules[i][0], _FEATURE,
            f"Under-determined: the {len(rules)} algebraic rule(s) could determine any of "
            f"{_names(everything)}, more variables than rules, and SBML does not say which "
            "stay fixed. Make all but the determined ones constant (or give them rules).")
    for (label, _), e in zip(rules, exprs):
        for rate in e.atoms(RateOf):
            inner = expand.rate_dependence(rate.args[0]) & matched
            if inner:
                raise UnsupportedFeatureError(
                    label, _FEATURE,
                    f"It uses {rate} (rateOf), which depends on {_names(inner)}, variable(s) "
                    "an algebraic rule determines: a differential-algebraic system, which "
                    "kinabs does not simulate.")
    for i, (label, _) in enumerate(rules):
        var = match[i]
        if var in model.initial_assignments:
            raise UnsupportedFeatureError(
                label, _FEATURE,
                f"It determines '{var}', which also has an initial assignment; the rule "
                "holds at the start too, so one of them is redundant or they conflict. "
                "Remove the initial assignment.")
    solved: dict[str, sympy.Expr] = {}
    for block in _blocks(uses, match):
        solved.update(_solve_block([rules[i][0] for i in block], [exprs[i] for i in block],
                                   [match[i] for i in block]))
    return {match[i]: solved[match[i]] for i in range(len(rules))}  # in the rules' order


def _names(ids: Iterable[str]) -> str:
    return ", ".join(f"'{x}'" for x in sorted(ids))


class _Expander:
    """Substitutes assignment-rule variables and reaction ids whose definitions depend on a
    candidate variable (transitively), so that no solution refers back to its variable."""

    def __init__(self, model: Model, candidates: set[str]):
        self.model = model
        self.cands = candidates
        self.defs: dict[str, sympy.Expr] = dict(model.assignment_rules)
        self.defs.update({r.id: r.rate for r in model.reactions.values()})
        self._deps: dict[str, frozenset[str]] = {}

    def depends(self, name: str, visiting: frozenset[str] = frozenset()) -> frozenset[str]:
        """Candidates that ``name``'s definition refers to, directly or through others."""
        if name in self._deps:
            return self._deps[name]
        if name in self.cands:
            return frozenset({name})
        if name not in self.defs or name in visiting:  # a loop is libsbml's to report
            return frozenset()
        out: set[str] = set()
        for s in self.defs[name].free_symbols:
            out |= self.depends(s.name, visiting | {name})
        self._deps[name] = frozenset(out)
        return self._deps[name]

    def rate_dependence(self, arg: sympy.Basic) -> set[str]:
        """Candidates that the rate of change of ``arg`` (a rateOf argument) depends on."""
        if not isinstance(arg, sympy.Symbol):
            return {s.name for s in arg.free_symbols} & self.cands
        name, m = arg.name, self.model
        if name in self.cands:
            return {name}
        exprs = []
        if name in m.rate_rules:
            exprs.append(m.rate_rules[name])
        elif name in self.defs:
            exprs.append(self.defs[name])
        else:
            exprs += [r.rate for r in m.reactions.values()
                      if any(ref.species == name for ref in (*r.reactants, *r.products))]
        out: set[str] = set()
        for e in exprs:
            for s in e.free_symbols:
                out |= self.depends(s.name)
        return out

    def __call__(self, expr: sympy.Expr, depth: int = 0) -> sympy.Expr:
        swap = {s: self(self.defs[s.name], depth + 1) for s in expr.free_symbols
                if s.name not in self.cands and self.depends(s.name) and depth < 500}
        return expr.xreplace(swap) if swap else expr


def _hall_set(i: int, uses: list[set[str]], match: Mapping[int, str]
              ) -> tuple[set[int], set[str]]:
    """The rules reachable from unmatched rule ``i`` by alternating paths, and their
    variables: more rules than variables (Hall's condition fails there)."""
    owner = {v: j for j, v in match.items()}
    rules, variables, todo = {i}, set(), [i]
    while todo:
        for v in uses[todo.pop()]:
            if v not in variables:
                variables.add(v)
                if owner[v] not in rules:
                    rules.add(owner[v])
                    todo.append(owner[v])
    return rules, variables


def _role(model: Model, x: str) -> str:
    """Why ``x`` is not free for an algebraic rule, in words."""
    m = model
    element = m.compartments.get(x) or m.species.get(x) or m.parameters.get(x)
    if x in m.assignment_rules:
        return "has an assignment rule"
    if x in m.rate_rules:
        return "has a rate rule"
    if x in m.reactions:
        return "is a reaction's rate"
    if element is not None and element.constant:
        return "is constant"
    if x in m.species:
        if any(ref.species == x for r in m.reactions.values()
               for ref in (*r.reactants, *r.products)):
            return "is changed by reactions"
    if x in m.species_references():
        return "is a constant stoichiometry"
    return "is assigned by an event" if element is not None else "is not a model variable"


def _matching(uses: list[set[str]]) -> dict[int, str]:
    """A maximum matching rule index -> variable (Kuhn's augmenting paths)."""
    owner: dict[str, int] = {}

    def augment(i: int, seen: set[str]) -> bool:
        for v in sorted(uses[i]):
            if v in seen:
                continue
            seen.add(v)
            if v not in owner or augment(owner[v], seen):
                owner[v] = i
                return True
        return False

    for i in range(len(uses)):
        augment(i, set())
    return {i: v for v, i in owner.items()}


def _blocks(uses: list[set[str]], match: Mapping[int, str]) -> list[list[int]]:
    """Strongly connected components (Tarjan) of rule i -> rule j when i uses j's variable:
    the sets of rules that must be solved together."""
    rule_of = {v: i for i, v in match.items()}
    edges = {i: sorted(rule_of[v] for v in uses[i] if rule_of[v] != i) for i in match}
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    out: list[list[int]] = []

    def visit(i: int) -> None:
        index[i] = low[i] = len(index)
        stack.append(i)
        on_stack.add(i)
        for j in edges[i]:
            if j not in index:
                visit(j)
                low[i] = min(low[i], low[j])
            elif j in on_stack:
                low[i] = min(low[i], index[j])
        if low[i] == index[i]:
            block = []
            while True:
                j = stack.pop()
                on_stack.discard(j)
                block.append(j)
                if j == i:
                    break
            out.append(sorted(block))

    for i in sorted(match):
        if i not in index:
            visit(i)
    return out


def _solve_block(labels: list[str], exprs: list[sympy.Expr], variables: list[str]
                 ) -> dict[str, sympy.Expr]:
    """The unique closed-form solution of ``0 = exprs`` for ``variables``."""
    syms = [sym(v) for v in variables]
    label = labels[0]
    what = (f"'{variables[0]}'" if len(variables) == 1 else
            f"{_names(variables)} (with the rules {labels})")
    try:
        if len(syms) == 1:
            found = [{syms[0]: s} for s in sympy.solve(exprs[0], syms[0])]
        else:
            found = sympy.solve(exprs, syms, dict=True)
    except (NotImplementedError, ValueError, TypeError, RecursionError) as exc:
        raise UnsupportedFeatureError(
            label, _FEATURE,
            f"sympy cannot solve it for {what} in closed form ({type(exc).__name__}); "
            "kinabs does not simulate differential-algebraic systems.") from None
    if len(found) != 1:
        detail = ("it has no solution" if not found else
                  f"it has {len(found)} solutions ({'; '.join(map(str, found[:3]))})")
        raise UnsupportedFeatureError(
            label, _FEATURE,
            f"Solved for {what}, {detail}; kinabs needs exactly one, to turn the rule into an "
            "assignment rule.")
    solution = found[0]
    out = {}
    for v, s in zip(variables, syms):
        value = solution.get(s)
        if (value is None or value.free_symbols & set(syms)
                or value.has(sympy.zoo, sympy.nan, sympy.I)):
            raise UnsupportedFeatureError(
                label, _FEATURE,
                f"Solved for {what}, sympy gives no explicit finite real value for '{v}' "
                f"({value}); kinabs needs an explicit solution.")
        out[v] = value
    return out

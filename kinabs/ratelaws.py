"""A library of rate laws, each a sympy expression in *concentration per time*.

Every argument is a *term*: a string is parsed as math (an id such as ``"glc"`` is the
simplest formula), a number is a literal, and a sympy expression is used as it is. Ids are
resolved by :class:`kinabs.ModelBuilder` when the model is built: species, compartments,
global parameters, or local parameters given to ``reaction(..., parameters={...})``.

Units: species symbols stand for concentrations, so every law here returns concentration
per time. ``ModelBuilder.reaction`` multiplies such a rate by the size of the reaction's
compartment to make the substance-per-time rate that SBML (and :class:`kinabs.Model`)
expects; pass ``rate_units="substance"`` there for a rate that already is one.

Example:
    >>> from kinabs import ratelaws as rl
    >>> rl.michaelis_menten("S", vmax="vmax", km=0.5)
    S*vmax/(S + 0.5)
    >>> rl.mass_action("k", "A", ("B", 2))
    A*B**2*k
    >>> rl.competitive_inhibition("S", "I", vmax=1, km="km", ki="ki")
    S/(S + km*(I/ki + 1))
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping

import numpy as np
import sympy

from kinabs._errors import ModelError
from kinabs.sbml._math import sympy_from_ast

__all__ = [
    "Term",
    "as_expr",
    "mass_action",
    "reversible_mass_action",
    "michaelis_menten",
    "reversible_michaelis_menten",
    "hill",
    "competitive_inhibition",
    "uncompetitive_inhibition",
    "noncompetitive_inhibition",
    "mixed_inhibition",
    "activation",
]

#: What every rate-law argument accepts: an id or formula string, a number, or sympy.
Term = str | int | float | sympy.Expr



def _parse_formula(text: str, what: str) -> sympy.Expr:
    """SBML L3 infix syntax -> libsbml AST -> sympy, node by node: the text is parsed,
    never evaluated (``^`` is power, ``log`` the natural log, ``piecewise``, ``min``...)."""
    import libsbml


    settings = libsbml.L3ParserSettings()
    settings.setParseLog(libsbml.L3P_PARSE_LOG_AS_LN)
    ast = libsbml.parseL3FormulaWithSettings(text, settings)
    if ast is None:
        raise ModelError(f"could not read {what} {text!r} as math: "
                         f"{libsbml.getLastParseL3Error().strip()}. Write a formula such as "
                         "'vmax*S/(km + S)' or pass a sympy expression.")
    try:
        return sympy_from_ast(ast, where=what)
    except Exception as exc:  # unknown function names and the like
        raise ModelError(f"could not read {what} {text!r} as math: {exc}") from None


def as_expr(term: Term, *, what: str = "term") -> sympy.Expr:
    """Turn a term into a sympy expression (see the module docstring).

    >>> as_expr("vmax * S / (km + S)")
    S*vmax/(S + km)
    >>> as_expr(2)
    2
    """
    if isinstance(term, (bool, np.bool_)):
        raise TypeError(f"{what} must be an id or formula string, a number or a sympy "
                        f"expression; got the bool {term!r}.")
    if isinstance(term, sympy.Expr):
        return term
    if isinstance(term, numbers.Integral):
        return sympy.Integer(int(term))
    if isinstance(term, numbers.Real):
        if not math.isfinite(term):
            raise ModelError(f"{what} must be a finite number; got {term!r}.")
        return sympy.Float(float(term))
    if isinstance(term, str):
        if term.isidentifier():
            return sympy.Symbol(term)
        out = _parse_formula(term, what)
        if not isinstance(out, sympy.Expr):
            raise ModelError(f"{what} {term!r} is not a mathematical expression.")
        return out
    raise TypeError(f"{what} must be an id or formula string, a number or a sympy "
                    f"expression; got {type(term).__name__} {term!r}.")


def _powers(species: Iterable[Term | tuple[Term, Term]] | Mapping[str, Term],
            what: str) -> sympy.Expr:
    items = species.items() if isinstance(species, Mapping) else species
    out: sympy.Expr = sympy.Integer(1)
    for item in items:
        s, n = item if isinstance(item, tuple) else (item, 1)
        out *= as_expr(s, what=what) ** as_expr(n, what=f"power of {s}")
    return out


def mass_action(k: Term, *species: Term | tuple[Term, Term]) -> sympy.Expr:
    """Irreversible mass action ``k * S1**n1 * S2**n2 ...``.

    Each species is an id (power 1) or a pair ``(id, power)``.

    >>> mass_action("k", "A", "A", ("B", 0.5))
    A**2*B**0.5*k
    """
    return as_expr(k, what="k") * _powers(species, "species")


def reversible_mass_action(
    kf: Term, kr: Term,
    reactants: Iterable[Term | tuple[Term, Term]] | Mapping[str, Term],
    products: Iterable[Term | tuple[Term, Term]] | Mapping[str, Term],
) -> sympy.Expr:
    """Reversible mass action ``kf * prod(reactants) - kr * prod(products)``.

    ``reactants``/``products`` are lists of ids or ``(id, power)`` pairs, or mappings
    ``{id: power}``.

    >>> reversible_mass_action("kf", "kr", {"A": 2}, ["B"])
    A**2*kf - B*kr
    """
    return (as_expr(kf, what="kf") * _powers(reactants, "reactant")
            - as_expr(kr, what="kr") * _powers(products, "product"))


def michaelis_menten(s: Term, *, vmax: Term, km: Term) -> sympy.Expr:
    """Irreversible Michaelis-Menten ``vmax * S / (km + S)``.

    >>> michaelis_menten("S", vmax="vmax", km="km")
    S*vmax/(S + km)
    """
    s = as_expr(s, what="substrate")
    return as_expr(vmax, what="vmax") * s / (as_expr(km, what="km") + s)


def reversible_michaelis_menten(
    s: Term, p: Term, *, vmax_f: Term, km_s: Term, km_p: Term,
    keq: Term | None = None, vmax_r: Term | None = None,
) -> sympy.Expr:
    """Reversible Michaelis-Menten for ``S <-> P``; give exactly one of ``keq``/``vmax_r``.

    * Haldane form (``keq``): ``vmax_f/km_s * (S - P/keq) / (1 + S/km_s + P/km_p)``,
      zero at ``P/S = keq``.
    * Two-Vmax form (``vmax_r``): ``(vmax_f*S/km_s - vmax_r*P/km_p) / (1 + S/km_s + P/km_p)``.

    (``vmax = kcat * E``: pass ``vmax_f="kcat_f*E"`` for the kcat form.)

    >>> reversible_michaelis_menten("S", "P", vmax_f=2, km_s=1, km_p=1, keq=4).subs(
    ...     {"S": 1, "P": 4})
    0
    """
    if (keq is None) == (vmax_r is None):
        raise ModelError("reversible_michaelis_menten needs exactly one of keq= (Haldane "
                         "form) or vmax_r= (two-Vmax form); got "
                         f"keq={keq!r}, vmax_r={vmax_r!r}.")
    s, p = as_expr(s, what="substrate"), as_expr(p, what="product")
    ks, kp = as_expr(km_s, what="km_s"), as_expr(km_p, what="km_p")
    vf = as_expr(vmax_f, what="vmax_f")
    denominator = 1 + s / ks + p / kp
    if keq is not None:
        return vf / ks * (s - p / as_expr(keq, what="keq")) / denominator
    return (vf * s / ks - as_expr(vmax_r, what="vmax_r") * p / kp) / denominator


def hill(s: Term, *, vmax: Term, k_half: Term, n: Term) -> sympy.Expr:
    """Hill kinetics ``vmax * S**n / (k_half**n + S**n)`` (``k_half``: half-saturation).

    >>> hill("S", vmax=1, k_half="K", n=2)
    S**2/(K**2 + S**2)
    """
    s, n = as_expr(s, what="substrate"), as_expr(n, what="n")
    return as_expr(vmax, what="vmax") * s**n / (as_expr(k_half, what="k_half") ** n + s**n)


def competitive_inhibition(s: Term, i: Term, *, vmax: Term, km: Term, ki: Term
                           ) -> sympy.Expr:
    """Competitive inhibition ``vmax * S / (km * (1 + I/ki) + S)``: raises the apparent km.

    >>> v = competitive_inhibition("S", "I", vmax="vmax", km="km", ki="ki")
    >>> v.subs("I", 0)  # no inhibitor: Michaelis-Menten
    S*vmax/(S + km)
    >>> v.subs({"vmax": 1, "km": 1, "ki": 1, "S": 1, "I": 1})  # km doubled: 1/2 -> 1/3
    1/3
    """
    s, i = as_expr(s, what="substrate"), as_expr(i, what="inhibitor")
    km_app = as_expr(km, what="km") * (1 + i / as_expr(ki, what="ki"))
    return as_expr(vmax, what="vmax") * s / (km_app + s)


def uncompetitive_inhibition(s: Term, i: Term, *, vmax: Term, km: Term, ki: Term
                             ) -> sympy.Expr:
    """Uncompetitive inhibition ``vmax * S / (km + S * (1 + I/ki))``: the inhibitor binds the
    enzyme-substrate complex only.

    >>> uncompetitive_inhibition("S", "I", vmax="vmax", km="km", ki="ki")
    S*vmax/(S*(I/ki + 1) + km)
    """
    s, i = as_expr(s, what="substrate"), as_expr(i, what="inhibitor")
    return as_expr(vmax, what="vmax") * s / (
        as_expr(km, what="km") + s * (1 + i / as_expr(ki, what="ki")))


def noncompetitive_inhibition(s: Term, i: Term, *, vmax: Term, km: Term, ki: Term
                              ) -> sympy.Expr:
    """Pure noncompetitive inhibition ``vmax * S / ((km + S) * (1 + I/ki))``: lowers vmax.

    >>> v = noncompetitive_inhibition("S", "I", vmax=1, km=1, ki=1)
    >>> v.subs({"S": 1, "I": 1})  # I = ki halves the rate: 1/2 -> 1/4
    1/4
    """
    s, i = as_expr(s, what="substrate"), as_expr(i, what="inhibitor")
    return as_expr(vmax, what="vmax") * s / (
        (as_expr(km, what="km") + s) * (1 + i / as_expr(ki, what="ki")))


def mixed_inhibition(s: Term, i: Term, *, vmax: Term, km: Term, ki: Term, ki_u: Term
                     ) -> sympy.Expr:
    """Mixed inhibition ``vmax * S / (km * (1 + I/ki) + S * (1 + I/ki_u))``; ``ki`` binds the
    free enzyme, ``ki_u`` the complex (``ki == ki_u`` is noncompetitive).

    >>> import sympy
    >>> mixed = mixed_inhibition("S", "I", vmax="vmax", km="km", ki="ki", ki_u="ki")
    >>> sympy.simplify(mixed - noncompetitive_inhibition("S", "I", vmax="vmax", km="km",
    ...                                                  ki="ki"))
    0
    """
    s, i = as_expr(s, what="substrate"), as_expr(i, what="inhibitor")
    return as_expr(vmax, what="vmax") * s / (
        as_expr(km, what="km") * (1 + i / as_expr(ki, what="ki"))
        + s * (1 + i / as_expr(ki_u, what="ki_u")))


def activation(a: Term, *, ka: Term, n: Term = 1) -> sympy.Expr:
    """A dimensionless activator factor ``A**n / (ka**n + A**n)``, between 0 and 1.

    Multiply a rate law by it (essential activation: no activity without the activator).

    >>> michaelis_menten("S", vmax=1, km=1) * activation("A", ka="ka")
    A*S/((A + ka)*(S + 1))
    """
    a, n = as_expr(a, what="activator"), as_expr(n, what="n")
    return a**n / (as_expr(ka, what="ka") ** n + a**n)

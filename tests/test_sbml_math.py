"""MathML (libsbml AST) -> sympy, node by node: every element, its argument order and the
IEEE meaning of edge cases."""

from __future__ import annotations

import math

import libsbml
import numpy as np
import pytest
import sympy
from scipy.special import gamma

from kinabs import ModelError, SBMLError, UnsupportedFeatureError
from kinabs._model import AVOGADRO, TIME, Quotient, RateOf, Rem, sym
from kinabs.sbml._math import MathConverter, sympy_from_ast

X = sym("x")


def ast(body: str) -> libsbml.ASTNode:
    node = libsbml.readMathMLFromString(
        f'<math xmlns="http://www.w3.org/1998/Math/MathML">{body}</math>')
    assert node is not None, body
    return node


def conv(body: str, functions: dict[str, str] | None = None) -> sympy.Basic:
    fns = {k: ast(v) for k, v in (functions or {}).items()}
    return sympy_from_ast(ast(body), fns)


def value(body: str, x: float | None = None) -> float:
    e = conv(body)
    if x is not None:
        e = e.xreplace({X: sympy.Float(x)})
    return float(e)


def apply(op: str, *args: str) -> str:
    return f"<apply><{op}/>{''.join(args)}</apply>"


def cn(v) -> str:
    return f'<cn type="integer">{v}</cn>' if isinstance(v, int) else f"<cn>{v}</cn>"


CI = "<ci>x</ci>"


@pytest.mark.parametrize("op, x, expected", [
    ("exp", 0.3, np.exp(0.3)), ("ln", 0.3, np.log(0.3)), ("abs", -0.3, 0.3),
    ("floor", -0.3, -1.0), ("ceiling", -0.3, 0.0), ("factorial", 3.5, gamma(4.5)),
    ("sin", 0.3, np.sin(0.3)), ("cos", 0.3, np.cos(0.3)), ("tan", 0.3, np.tan(0.3)),
    ("sec", 0.3, 1 / np.cos(0.3)), ("csc", 0.3, 1 / np.sin(0.3)),
    ("cot", 0.3, 1 / np.tan(0.3)), ("sinh", 0.3, np.sinh(0.3)),
    ("cosh", 0.3, np.cosh(0.3)), ("tanh", 0.3, np.tanh(0.3)),
    ("sech", 0.3, 1 / np.cosh(0.3)), ("csch", 0.3, 1 / np.sinh(0.3)),
    ("coth", 0.3, 1 / np.tanh(0.3)), ("arcsin", 0.3, np.arcsin(0.3)),
    ("arccos", 0.3, np.arccos(0.3)), ("arctan", 0.3, np.arctan(0.3)),
    ("arcsec", 2.0, np.arccos(0.5)), ("arccsc", 2.0, np.arcsin(0.5)),
    ("arccot", 2.0, np.arctan(0.5)), ("arcsinh", 0.3, np.arcsinh(0.3)),
    ("arccosh", 1.5, np.arccosh(1.5)), ("arctanh", 0.3, np.arctanh(0.3)),
    ("arcsech", 0.5, np.arccosh(2.0)), ("arccsch", 2.0, np.arcsinh(0.5)),
    ("arccoth", 2.0, np.arctanh(0.5)),
])
def test_unary_functions_match_numpy(op, x, expected):
    symbolic = value(apply(op, CI), x)  # sympy function of a symbol, evaluated
    folded = value(apply(op, cn(x)))  # numeric argument: folded in float64
    np.testing.assert_allclose(symbolic, expected, rtol=1e-12)
    np.testing.assert_allclose(folded, expected, rtol=1e-12)


def test_log_takes_the_base_first_and_defaults_to_10():
    assert value(apply("log", "<logbase><cn>2</cn></logbase>", CI), 8.0) == pytest.approx(3.0)
    assert value(apply("log", CI), 1000.0) == pytest.approx(3.0)
    assert value(apply("log", "<logbase><cn>2</cn></logbase>", cn(8))) == pytest.approx(3.0)


def test_root_takes_the_degree_first_and_defaults_to_2():
    assert value(apply("root", "<degree><cn>3</cn></degree>", CI), 27.0) == pytest.approx(3.0)
    assert value(apply("root", CI), 16.0) == pytest.approx(4.0)
    assert value(apply("root", cn(16))) == 4.0


def test_power_divide_minus():
    assert value(apply("power", CI, cn(3)), 2.0) == 8.0
    assert value(apply("power", cn(3), CI), 2.0) == 9.0
    assert value(apply("divide", CI, cn(4)), 2.0) == 0.5
    assert value(apply("divide", cn(4), CI), 2.0) == 2.0
    assert value(apply("minus", CI, cn(5)), 2.0) == -3.0
    assert value(apply("minus", CI), 2.0) == -2.0


def test_nary_plus_times_and_their_empty_forms():
    assert conv(apply("plus")) == 0
    assert conv(apply("times")) == 1
    assert value(apply("plus", cn(1), cn(2), CI), 3.0) == 6.0
    assert value(apply("times", cn(2), cn(3), CI), 4.0) == 24.0
    assert value(apply("plus", CI), 4.0) == 4.0


def test_min_max_rem_quotient():
    assert value(apply("min", cn(3), CI, cn(2)), 5.0) == 2.0
    assert value(apply("max", cn(3), CI, cn(2)), 5.0) == 5.0
    assert math.isnan(value(apply("max", cn(1), "<notanumber/>")))
    assert value(apply("rem", cn(-7), cn(2))) == -1.0  # sign of the dividend
    assert value(apply("quotient", cn(-7), cn(2))) == -3.0  # truncates toward 0
    assert isinstance(conv(apply("rem", CI, cn(2))), Rem)
    assert isinstance(conv(apply("quotient", CI, cn(2))), Quotient)


def test_relations_chain_pairwise():
    b = MathConverter().boolean
    chain = b(ast(apply("lt", cn(1), CI, cn(3))))
    assert chain.xreplace({X: 2}) == sympy.true
    assert chain.xreplace({X: 4}) == sympy.false
    assert conv(apply("eq", cn(2), cn(2), cn(2))) == 1  # top level: a number
    assert b(ast(apply("eq", cn(2), cn(2), cn(3)))) == sympy.false
    assert b(ast(apply("neq", cn(2), cn(3)))) == sympy.true
    assert b(ast(apply("geq", cn(3), cn(3), cn(1)))) == sympy.true
    assert b(ast(apply("gt", cn(3), cn(3)))) == sympy.false
    assert b(ast(apply("leq", CI, cn(1)))) == sympy.Le(X, 1)


def test_logic_nary_and_empty():
    b = MathConverter().boolean
    t, f = "<true/>", "<false/>"
    assert b(ast(apply("and"))) == sympy.true
    assert b(ast(apply("or"))) == sympy.false
    assert b(ast(apply("xor", t, t, t))) == sympy.true  # odd number true
    assert b(ast(apply("xor", t, t, f))) == sympy.false
    assert b(ast(apply("implies", f, f))) == sympy.true
    assert b(ast(apply("implies", t, f))) == sympy.false
    assert b(ast(apply("not", t))) == sympy.false


def test_piecewise_with_and_without_otherwise():
    pw = ("<piecewise><piece><cn>1</cn><apply><lt/><ci>x</ci><cn>0</cn></apply></piece>"
          "<otherwise><cn>2</cn></otherwise></piecewise>")
    assert value(pw, -1.0) == 1.0 and value(pw, 1.0) == 2.0
    no_otherwise = "<piecewise><piece><cn>1</cn><apply><lt/><ci>x</ci><cn>0</cn></apply></piece></piecewise>"
    e = conv(no_otherwise)
    assert isinstance(e, sympy.Piecewise)
    assert all(cond is not sympy.true for _, cond in e.args)  # no otherwise: NaN there
    assert e.xreplace({X: 1.0}) is sympy.nan


def test_booleans_as_numbers_and_numbers_as_booleans():
    # BoolNumericSwap: a relation used in arithmetic is 1 or 0
    assert value(apply("plus", apply("lt", cn(1), cn(2)), cn(1))) == 2.0
    e = conv(apply("plus", apply("lt", CI, cn(1)), cn(0)))
    assert e == sympy.Piecewise((1, X < 1), (0, True))
    assert value(apply("times", "<true/>", cn(5))) == 5.0
    # a number used as a condition means "not zero"
    assert MathConverter().boolean(ast(apply("and", CI, "<true/>"))) == sympy.Ne(X, 0)
    pw = f"<piecewise><piece><cn>7</cn>{CI}</piece><otherwise><cn>8</cn></otherwise></piecewise>"
    assert value(pw, 0.0) == 8.0 and value(pw, 2.0) == 7.0


def test_division_by_literal_zero_is_ieee_never_zoo():
    assert conv(apply("divide", cn(1), cn(0))) == sympy.oo
    assert conv(apply("divide", cn(-1), cn(0))) == -sympy.oo
    assert conv(apply("divide", cn(0), cn(0))) is sympy.nan
    assert conv(apply("power", cn(0), cn(-1))) == sympy.oo
    assert conv(apply("ln", cn(0))) == -sympy.oo
    assert conv(apply("root", cn(-4))) is sympy.nan  # not 2*I
    assert conv(apply("power", cn(-8), '<cn type="rational">1<sep/>3</cn>')) is sympy.nan
    e = conv(apply("divide", CI, cn(0)))
    assert e.xreplace({X: 2}) == sympy.oo and e.xreplace({X: -2}) == -sympy.oo
    for body in (apply("divide", cn(1), cn(0)), apply("divide", CI, cn(0)),
                 apply("tan", apply("divide", "<pi/>", cn(2))), apply("cot", cn(0))):
        assert not conv(body).has(sympy.zoo, sympy.I), body


def test_numbers_and_constants():
    assert conv('<cn type="integer">3</cn>') == sympy.Integer(3)
    assert conv('<cn type="rational">1<sep/>3</cn>') == sympy.Rational(1, 3)
    assert float(conv('<cn type="e-notation">6.02214179<sep/>23</cn>')) == 6.02214179e23
    assert float(conv("<cn>0.10000000000000002</cn>")) == 0.10000000000000002
    assert conv("<pi/>") == sympy.pi and conv("<exponentiale/>") == sympy.E
    assert conv("<true/>") == 1 and conv("<false/>") == 0
    assert conv("<infinity/>") == sympy.oo and conv("<notanumber/>") is sympy.nan


def test_csymbols_time_avogadro_rate_of_delay():
    url = "http://www.sbml.org/sbml/symbols/"
    assert conv(f'<csymbol encoding="text" definitionURL="{url}time">t</csymbol>') == TIME
    assert float(conv(f'<csymbol encoding="text" definitionURL="{url}avogadro">a</csymbol>')
                 ) == AVOGADRO
    rate_of = f'<apply><csymbol encoding="text" definitionURL="{url}rateOf">rateOf</csymbol>{CI}</apply>'
    assert conv(rate_of) == RateOf(X)
    delay = (f'<apply><csymbol encoding="text" definitionURL="{url}delay">delay</csymbol>'
             f'{CI}<cn>1</cn></apply>')
    with pytest.raises(UnsupportedFeatureError, match="delay.*'R1'"):
        sympy_from_ast(ast(delay), where="R1")


def test_time_is_not_a_species_called_time():
    assert conv("<ci>time</ci>") == sym("time") != TIME


LAMBDA_F = ("<lambda><bvar><ci>a</ci></bvar><bvar><ci>b</ci></bvar>"
            "<apply><minus/><ci>a</ci><apply><times/><cn>2</cn><ci>b</ci></apply></apply></lambda>")


def test_function_calls_substitute_arguments_simultaneously():
    call = "<apply><ci>f</ci><ci>b</ci><ci>a</ci></apply>"  # arguments named like the bvars
    assert conv(call, {"f": LAMBDA_F}) == sym("b") - sympy.Float(2) * sym("a")


def test_nested_functions_in_any_order():
    g = "<lambda><bvar><ci>x</ci></bvar><apply><ci>f</ci><ci>x</ci><cn>1</cn></apply></lambda>"
    call = "<apply><ci>g</ci><apply><ci>g</ci><cn>10</cn></apply></apply>"
    # g(x) = f(x, 1) = x - 2; g(g(10)) = 6; g is listed before f
    assert float(conv(call, {"g": g, "f": LAMBDA_F})) == 6.0


def test_function_call_with_ieee_arguments():
    inv = "<lambda><bvar><ci>x</ci></bvar><apply><divide/><cn>1</cn><ci>x</ci></apply></lambda>"
    assert conv("<apply><ci>inv</ci><cn>0</cn></apply>", {"inv": inv}) == sympy.oo


def test_function_errors():
    with pytest.raises(ModelError, match="'nope'"):
        conv("<apply><ci>nope</ci><cn>1</cn></apply>")
    with pytest.raises(SBMLError, match="takes 2 argument"):
        conv("<apply><ci>f</ci><cn>1</cn></apply>", {"f": LAMBDA_F})
    loop = "<lambda><bvar><ci>x</ci></bvar><apply><ci>h</ci><ci>x</ci></apply></lambda>"
    with pytest.raises(ModelError, match="cycle"):
        conv("<apply><ci>h</ci><cn>1</cn></apply>", {"h": loop})


def test_locals_environment_renames_symbols():
    e = sympy_from_ast(ast(apply("times", "<ci>k</ci>", CI)), env={"k": sym("R1.k")})
    assert e == sym("R1.k") * X

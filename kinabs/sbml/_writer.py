"""SBML writer: any :class:`kinabs.Model` becomes an SBML Level 3 Version 2 document.

The document is built with libsbml and every expression is converted from sympy to a
libsbml ``ASTNode`` tree node by node (no formula strings). Local parameters go back to
their reaction as ``<localParameter>`` with their local id; :data:`kinabs.TIME` becomes
csymbol ``time``; ``Rem``/``Quotient`` become ``rem``/``quotient``; a ``Piecewise``
without a ``True`` branch is written without ``<otherwise>``.

Numbers are exact: libsbml prints doubles with 15 significant digits, so a float that
needs more digits is written by kinabs itself (the shortest text that reads back to the
same float), so that read -> write -> read gives the same model to the last bit. Names are
written by kinabs too, escaped so that newlines, tabs, ``&`` and entity-like text such as
``&amp;`` read back unchanged.

Example:
    >>> import kinabs
    >>> model = kinabs.load_sbml(kinabs.example_model_path())
    >>> again = kinabs.read_sbml_string(kinabs.sbml_string(model))
    >>> again.reactions["PDH"].rate == model.reactions["PDH"].rate
    True
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from xml.dom import minidom

import libsbml
import sympy

from kinabs._errors import ModelError, UnsupportedFeatureError
from kinabs._model import TIME, Model, Quotient, RateOf, Rem

__all__ = ["sbml_string", "write_sbml"]

_FUNCTIONS = {
    sympy.exp: libsbml.AST_FUNCTION_EXP, sympy.log: libsbml.AST_FUNCTION_LN,
    sympy.Abs: libsbml.AST_FUNCTION_ABS, sympy.floor: libsbml.AST_FUNCTION_FLOOR,
    sympy.ceiling: libsbml.AST_FUNCTION_CEILING, sympy.factorial: libsbml.AST_FUNCTION_FACTORIAL,
    sympy.sin: libsbml.AST_FUNCTION_SIN, sympy.cos: libsbml.AST_FUNCTION_COS,
    sympy.tan: libsbml.AST_FUNCTION_TAN, sympy.sec: libsbml.AST_FUNCTION_SEC,
    sympy.csc: libsbml.AST_FUNCTION_CSC, sympy.cot: libsbml.AST_FUNCTION_COT,
    sympy.sinh: libsbml.AST_FUNCTION_SINH, sympy.cosh: libsbml.AST_FUNCTION_COSH,
    sympy.tanh: libsbml.AST_FUNCTION_TANH, sympy.sech: libsbml.AST_FUNCTION_SECH,
    sympy.csch: libsbml.AST_FUNCTION_CSCH, sympy.coth: libsbml.AST_FUNCTION_COTH,
    sympy.asin: libsbml.AST_FUNCTION_ARCSIN, sympy.acos: libsbml.AST_FUNCTION_ARCCOS,
    sympy.atan: libsbml.AST_FUNCTION_ARCTAN, sympy.asec: libsbml.AST_FUNCTION_ARCSEC,
    sympy.acsc: libsbml.AST_FUNCTION_ARCCSC, sympy.acot: libsbml.AST_FUNCTION_ARCCOT,
    sympy.asinh: libsbml.AST_FUNCTION_ARCSINH, sympy.acosh: libsbml.AST_FUNCTION_ARCCOSH,
    sympy.atanh: libsbml.AST_FUNCTION_ARCTANH, sympy.asech: libsbml.AST_FUNCTION_ARCSECH,
    sympy.acsch: libsbml.AST_FUNCTION_ARCCSCH, sympy.acoth: libsbml.AST_FUNCTION_ARCCOTH,
    sympy.Min: libsbml.AST_FUNCTION_MIN, sympy.Max: libsbml.AST_FUNCTION_MAX,
    Rem: libsbml.AST_FUNCTION_REM, Quotient: libsbml.AST_FUNCTION_QUOTIENT,
    sympy.Add: libsbml.AST_PLUS, sympy.Eq: libsbml.AST_RELATIONAL_EQ,
    sympy.Ne: libsbml.AST_RELATIONAL_NEQ, sympy.Lt: libsbml.AST_RELATIONAL_LT,
    sympy.Le: libsbml.AST_RELATIONAL_LEQ, sympy.Gt: libsbml.AST_RELATIONAL_GT,
    sympy.Ge: libsbml.AST_RELATIONAL_GEQ, sympy.And: libsbml.AST_LOGICAL_AND,
    sympy.Or: libsbml.AST_LOGICAL_OR, sympy.Xor: libsbml.AST_LOGICAL_XOR,
    sympy.Not: libsbml.AST_LOGICAL_NOT, sympy.Implies: libsbml.AST_LOGICAL_IMPLIES,
}
_INT32 = 2**31
_NAME_PREFIX = "kinabs_name_"
# Escapes for a double-quoted attribute value; the whitespace ones as character references,
# since XML reads a literal tab, newline or carriage return in an attribute as a space.
_ATTRIBUTE_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                                    "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})
# Characters outside XML 1.0's Char production (control characters, surrogates, U+FFFE/F).
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def sbml_string(model: Model) -> str:
    """The SBML Level 3 Version 2 text of ``model``.

    Example:
        >>> import kinabs
        >>> text = kinabs.sbml_string(kinabs.load_sbml(kinabs.example_model_path()))
        >>> 'level="3" version="2"' in text
        True
    """
    if not isinstance(model, Model):
        raise TypeError(f"sbml_string expects a kinabs Model; got {type(model).__name__}.")
    return _Writer(model).write()


def write_sbml(model: Model, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` as SBML Level 3 Version 2 (UTF-8).

    Example:
        >>> import kinabs, tempfile, os
        >>> model = kinabs.load_sbml(kinabs.example_model_path())
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "serine.xml")
        ...     kinabs.write_sbml(model, path)
        ...     again = kinabs.load_sbml(path)
        >>> list(again.reactions), again.fingerprint() == model.fingerprint()
        (['PDH', 'PSA', 'PSP'], True)
    """
    text = sbml_string(model)
    Path(path).write_text(text, encoding="utf-8")


def _exact_at_15_digits(value: float) -> bool:
    return math.isnan(value) or float(f"{value:.15g}") == value


def _check(code: int, what: str) -> None:
    if code != libsbml.LIBSBML_OPERATION_SUCCESS:
        raise ModelError(f"cannot write {what} to SBML: {libsbml.OperationReturnValue_toString(code)}"
                         ". Ids must be valid SBML ids (a letter or '_' first, then letters, "
                         "digits or '_'); rename the element.")


class _Writer:
    def __init__(self, model: Model):
        self.m = model
        self.doc = libsbml.SBMLDocument(3, 2)
        self.sbml = self.doc.createModel()
        prefix = "kinabs_real_"
        while any(i.startswith(prefix) for i in model.ids()):
            prefix += "_"
        self.prefix = prefix
        self.reals: dict[str, str] = {}  # placeholder name -> exact MathML <cn>
        self.attr_fixes: list[tuple[str, int, str, float]] = []  # tag, index, attribute, value
        self.counts: dict[str, int] = {}
        self.names: dict[str, str] = {}  # placeholder -> the escaped name attribute value
        #: what events assign: not constant in SBML, whatever the model object says
        self.assigned = {var for e in model.events.values() for var, _ in e.assignments}

    # -- elements ----------------------------------------------------------------
    def write(self) -> str:
        m, s = self.m, self.sbml
        if libsbml.SyntaxChecker.isValidSBMLSId(m.id):
            s.setId(m.id)
        if m.name:
            s.setName(self._name(m.name, f"the model '{m.id}'"))
        if m.conversion_factor:
            _check(s.setConversionFactor(m.conversion_factor), "the model's conversionFactor")
        for c in m.compartments.values():
            e = s.createCompartment()
            self._ident(e, c.id, c.name, "compartment")
            e.setConstant(c.constant and c.id not in self.assigned)
            e.setSpatialDimensions(float(c.spatial_dimensions))
            self._value(self._index("compartment"), "compartment", "size", c.size, e.setSize)
        for sp in m.species.values():
            e = s.createSpecies()
            self._ident(e, sp.id, sp.name, "species")
            _check(e.setCompartment(sp.compartment), f"species '{sp.id}'")
            e.setHasOnlySubstanceUnits(sp.has_only_substance_units)
            e.setBoundaryCondition(sp.boundary_condition)
            e.setConstant(sp.constant and sp.id not in self.assigned)
            i = self._index("species")
            self._value(i, "species", "initialAmount", sp.initial_amount, e.setInitialAmount)
            self._value(i, "species", "initialConcentration", sp.initial_concentration,
                        e.setInitialConcentration)
            if sp.conversion_factor:
                _check(e.setConversionFactor(sp.conversion_factor), f"species '{sp.id}'")
        for p in m.parameters.values():
            if p.reaction is None:
                e = s.createParameter()
                self._ident(e, p.id, p.name, "parameter")
                e.setConstant(p.constant and p.id not in self.assigned)
                self._value(self._index("parameter"), "parameter", "value", p.value,
                            e.setValue)
        self._reactions()
        locals_ = {p.id for p in m.parameters.values() if p.reaction}
        for kind, rules, create in (("assignment rule", m.assignment_rules,
                                     s.createAssignmentRule),
                                    ("rate rule", m.rate_rules, s.createRateRule),
                                    ("initial assignment", m.initial_assignments,
                                     s.createInitialAssignment)):
            for var, expr in rules.items():
                used = {x.name for x in expr.free_symbols} & locals_
                if var in locals_ or used:
                    raise ModelError(f"the {kind} for '{var}' uses local parameter(s) "
                                     f"{sorted(used | ({var} & locals_))}; SBML allows local "
                                     "parameters only in their own reaction's kinetic law. "
                                     "Make them global parameters.")
                e = create()
                _check(e.setSymbol(var) if kind == "initial assignment" else e.setVariable(var),
                       f"the {kind} for '{var}'")
                e.setMath(self.ast(expr, {}, f"{kind} for '{var}'"))
        self._events()
        return self._finish(libsbml.writeSBMLToString(self.doc))

    def _events(self) -> None:
        for ev in self.m.events.values():
            where = f"event '{ev.id}'"
            e = self.sbml.createEvent()
            if libsbml.SyntaxChecker.isValidSBMLSId(ev.id):
                _check(e.setId(ev.id), where)
            if ev.name:
                e.setName(self._name(ev.name, where))
            e.setUseValuesFromTriggerTime(ev.use_values_from_trigger_time)
            trigger = e.createTrigger()
            trigger.setInitialValue(ev.initial_value)
            trigger.setPersistent(ev.persistent)
            trigger.setMath(self.ast(ev.trigger, {}, f"the trigger of {where}"))
            if ev.delay is not None:
                e.createDelay().setMath(self.ast(ev.delay, {}, f"the delay of {where}"))
            if ev.priority is not None:
                e.createPriority().setMath(self.ast(ev.priority, {},
                                                    f"the priority of {where}"))
            for var, expr in ev.assignments:
                a = e.createEventAssignment()
                _check(a.setVariable(var), f"{where}: assignment to '{var}'")
                a.setMath(self.ast(expr, {}, f"{where}: assignment to '{var}'"))

    def _ident(self, e, element_id: str, name: str, kind: str) -> None:
        _check(e.setId(element_id), f"{kind} id '{element_id}'")
        if name:
            e.setName(self._name(name, f"{kind} '{element_id}'"))

    def _name(self, name: str, where: str) -> str:
        """A placeholder for ``name``, whose escaped text :meth:`_finish` puts in.

        libsbml writes a name's newlines, tabs and carriage returns as they are, which XML
        attribute-value normalization reads back as spaces; it leaves text such as
        ``&amp;`` unescaped (read back as ``&``); and a name containing ``&#`` makes it
        abort the whole process. So libsbml only ever sees a plain placeholder.
        """
        if not isinstance(name, str):
            raise ModelError(f"the name of {where} must be a str; got "
                             f"{type(name).__name__} {name!r}.")
        bad = _NOT_XML_CHAR.search(name)
        if bad:
            raise ModelError(f"the name of {where} holds the character U+{ord(bad[0]):04X} "
                             f"at index {bad.start()}, which XML 1.0 (so SBML) cannot hold; "
                             "expected printable text. Remove the character from the name.")
        placeholder = f"{_NAME_PREFIX}{len(self.names)}"
        self.names[placeholder] = name.translate(_ATTRIBUTE_ESCAPES)
        return placeholder

    def _index(self, tag: str) -> int:
        """The position of a new ``tag`` element among all of them, in document order."""
        index = self.counts.get(tag, 0)
        self.counts[tag] = index + 1
        return index

    def _value(self, index: int, tag: str, attr: str, value: float | None, setter) -> None:
        if value is None:
            return
        value = float(value)
        setter(value)
        if not _exact_at_15_digits(value):
            self.attr_fixes.append((tag, index, attr, value))

    def _reactions(self) -> None:
        m = self.m
        ruled = set(m.assignment_rules) | set(m.rate_rules)
        for r in m.reactions.values():
            e = self.sbml.createReaction()
            self._ident(e, r.id, r.name, "reaction")
            e.setReversible(r.reversible)
            for refs, create in ((r.reactants, e.createReactant), (r.products, e.createProduct)):
                for ref in refs:
                    sr = create()
                    _check(sr.setSpecies(ref.species), f"a species reference of '{r.id}'")
                    if ref.id:
                        _check(sr.setId(ref.id), f"species reference id '{ref.id}'")
                    sr.setConstant(ref.id not in ruled)
                    value = None if ref.id in m.assignment_rules else ref.stoichiometry
                    self._value(self._index("speciesReference"), "speciesReference",
                                "stoichiometry", value, sr.setStoichiometry)
            # SBML wants every species of the rate law listed; add the missing ones.
            listed = {ref.species for ref in (*r.reactants, *r.products)}
            used_species = [x.name for x in sorted(r.rate.free_symbols, key=str)
                            if x.name in m.species]
            for sid in dict.fromkeys([*r.modifiers, *used_species]):
                if sid not in listed or sid in r.modifiers:
                    _check(e.createModifier().setSpecies(sid), f"a modifier of '{r.id}'")
            kl = e.createKineticLaw()
            names: dict[str, str] = {}
            for p in m.parameters.values():
                if p.reaction == r.id:
                    lp = kl.createLocalParameter()
                    self._ident(lp, p.local_id, p.name, f"local parameter of '{r.id}'")
                    self._value(self._index("localParameter"), "localParameter", "value",
                                p.value, lp.setValue)
                    names[p.id] = p.local_id
            used = {x.name for x in r.rate.free_symbols}
            clash = sorted(used & set(names.values()))
            foreign = sorted(n for n in used if n in m.parameters and m.parameters[n].reaction
                             not in (None, r.id))
            if clash or foreign:
                raise ModelError(f"reaction '{r.id}': its rate uses global(s) {clash} shadowed "
                                 f"by its own local parameters, or other reactions' local "
                                 f"parameters {foreign}; SBML cannot express this. Rename the "
                                 "local parameters or make them global.")
            kl.setMath(self.ast(r.rate, names, f"reaction '{r.id}'"))

    # -- math --------------------------------------------------------------------
    def ast(self, e: sympy.Basic, names: dict[str, str], where: str) -> libsbml.ASTNode:
        """The libsbml AST of ``e``; ``names`` renames symbols (qualified local ids)."""
        if isinstance(e, sympy.Symbol):
            if e == TIME:
                return _node(libsbml.AST_NAME_TIME, name="time")
            return _node(libsbml.AST_NAME, name=names.get(e.name, e.name))
        if e is sympy.true or e is sympy.false:
            return _node(libsbml.AST_CONSTANT_TRUE if e else libsbml.AST_CONSTANT_FALSE)
        if e is sympy.pi:
            return _node(libsbml.AST_CONSTANT_PI)
        if e is sympy.E:
            return _node(libsbml.AST_CONSTANT_E)
        if e.is_Number or isinstance(e, sympy.NumberSymbol):
            return self._number(e)
        if isinstance(e, sympy.Mul):
            return self._mul(e, names, where)
        if isinstance(e, sympy.Pow):
            base, exp = e.args
            if exp.is_Number and exp < 0:
                return _node(libsbml.AST_DIVIDE, [self._number(sympy.Integer(1)),
                                                  self.ast(base ** -exp, names, where)])
            return _node(libsbml.AST_FUNCTION_POWER, [self.ast(base, names, where),
                                                      self.ast(exp, names, where)])
        if isinstance(e, sympy.gamma):  # gamma(x) = factorial(x - 1)
            return _node(libsbml.AST_FUNCTION_FACTORIAL,
                         [self.ast(e.args[0] - 1, names, where)])
        if isinstance(e, sympy.Piecewise):
            out = []
            for value, cond in e.args:
                if cond is sympy.true:
                    out.append(self.ast(value, names, where))
                    break
                out += [self.ast(value, names, where), self.ast(cond, names, where)]
            return _node(libsbml.AST_FUNCTION_PIECEWISE, out)
        kids = [self.ast(a, names, where) for a in e.args]
        if isinstance(e, RateOf):
            return _node(libsbml.AST_FUNCTION_RATE_OF, kids, name="rateOf")
        if type(e) in _FUNCTIONS:
            return _node(_FUNCTIONS[type(e)], kids)
        raise UnsupportedFeatureError(None, f"math operation '{type(e).__name__}' in {where} "
                                            f"({e}) has no SBML equivalent")

    def _mul(self, e: sympy.Mul, names: dict[str, str], where: str) -> libsbml.ASTNode:
        if e.args[0] == -1:
            # -(a + b)*c as minus(times(a + b, c)): times(-1, a + b, c) would read back with
            # the -1 distributed over the sum, a different float evaluation order.
            rest = sympy.Mul(*e.args[1:])
            return _node(libsbml.AST_MINUS, [self.ast(rest, names, where)])
        num, den = [], []
        for a in e.args:
            if isinstance(a, sympy.Pow) and a.exp.is_Number and a.exp < 0:
                den.append(self.ast(a.base ** -a.exp, names, where))
            else:
                num.append(self.ast(a, names, where))
        top = num[0] if len(num) == 1 else _node(libsbml.AST_TIMES, num)
        if not den:
            return top
        bottom = den[0] if len(den) == 1 else _node(libsbml.AST_TIMES, den)
        return _node(libsbml.AST_DIVIDE, [top, bottom])

    def _number(self, e: sympy.Basic) -> libsbml.ASTNode:
        if e.is_Rational and abs(e.p) < _INT32 and e.q < _INT32:
            # libsbml reads back only 32-bit integers; larger ones are written as floats.
            node = _node(libsbml.AST_INTEGER if e.is_Integer else libsbml.AST_RATIONAL)
            node.setValue(int(e.p)) if e.is_Integer else node.setValue(int(e.p), int(e.q))
            return node
        value = float(e) if e is not sympy.zoo else math.inf
        if value == -math.inf:
            return _node(libsbml.AST_MINUS, [self._number(sympy.oo)])
        if _exact_at_15_digits(value):
            node = _node(libsbml.AST_REAL)
            node.setValue(value)
            return node
        # libsbml would round to 15 digits: write a placeholder, replaced in _finish.
        name = f"{self.prefix}{len(self.reals)}"
        text = repr(value)
        if "e" in text:
            mantissa, exponent = text.split("e")
            self.reals[name] = (f'<cn type="e-notation"> {mantissa} <sep/> {int(exponent)} '
                                '</cn>')
        else:
            self.reals[name] = f"<cn> {text} </cn>"
        return _node(libsbml.AST_NAME, name=name)

    # -- exact numbers -------------------------------------------------------------
    def _finish(self, text: str) -> str:
        if self.reals:
            text = re.sub(rf"<ci>\s*({re.escape(self.prefix)}\d+)\s*</ci>",
                          lambda mt: self.reals[mt.group(1)], text)
        if self.attr_fixes:
            dom = minidom.parseString(text.encode("utf-8"))  # our own output, not user input
            for tag, index, attr, value in self.attr_fixes:
                dom.getElementsByTagName(tag)[index].setAttribute(attr, repr(value))
            text = dom.toxml(encoding="UTF-8").decode("utf-8").replace("?><", "?>\n<", 1)
        if self.names:
            # Last, as minidom would write the escaped newlines back as raw ones. Every name
            # in the text is a placeholder, so no real name can match.
            text = re.sub(rf' name="({_NAME_PREFIX}\d+)"',
                          lambda mt: f' name="{self.names[mt.group(1)]}"', text)
        return text


def _node(kind: int, children: list[libsbml.ASTNode] = (), name: str | None = None
          ) -> libsbml.ASTNode:
    node = libsbml.ASTNode(kind)
    if name is not None:
        node.setName(name)
    for child in children:
        node.addChild(child)
    return node

"""Lowering: a symbolic model becomes an ODE system, then generated code over ``ops``.

``system`` (model -> OdeSystem) -> ``codegen`` (one generated source, printed by
``printer``, with ``vectorize`` grouping alike expressions) -> bound to a backend's
operator table (``ops``); ``jacobian`` writes the symbolic Jacobian the stiff solvers use.
"""

"""Small models shared by several test modules."""

import kinabs
from kinabs import SpeciesReference as R
from kinabs._model import sym


def robertson_model() -> kinabs.Model:
    """Robertson's stiff chemical kinetics (Hairer & Wanner, ODEs II); at t = 40:
    y1 = 0.7158271, y2 = 9.185535e-6, y3 = 0.2841637."""
    y1, y2, y3 = sym("y1"), sym("y2"), sym("y3")
    return kinabs.Model(
        id="robertson",
        compartments={"c": kinabs.Compartment("c", 1.0)},
        species={s: kinabs.Species(s, "c", initial_concentration=v)
                 for s, v in (("y1", 1.0), ("y2", 0.0), ("y3", 0.0))},
        parameters={"k1": kinabs.Parameter("k1", 0.04), "k2": kinabs.Parameter("k2", 3e7),
                    "k3": kinabs.Parameter("k3", 1e4)},
        reactions={
            "r1": kinabs.Reaction("r1", sym("k1") * y1, (R("y1"),), (R("y2"),)),
            "r2": kinabs.Reaction("r2", sym("k3") * y2 * y3, (R("y2"), R("y3")),
                                  (R("y1"), R("y3"))),
            "r3": kinabs.Reaction("r3", sym("k2") * y2 ** 2, (R("y2", 2.0),),
                                  (R("y2"), R("y3"))),
        },
    )


def robertson_reference(times):
    """Robertson's problem at ``times`` (starting at 0) by scipy's Radau at rtol 1e-10,
    atol 1e-14: (len(times), 3)."""
    from scipy.integrate import solve_ivp

    def f(t, y):
        return [-0.04 * y[0] + 1e4 * y[1] * y[2],
                0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2]

    return solve_ivp(f, (0, times[-1]), [1, 0, 0], method="Radau", rtol=1e-10, atol=1e-14,
                     t_eval=times).y.T


def forced_model(model_id: str, factor) -> kinabs.Model:
    """A -> B at rate k A factor(t), B removed at rate kb B^2: a rate forced by a
    function of time (``factor``, a sympy expression in ``kinabs._model.TIME``)."""
    return kinabs.Model(
        id=model_id,
        compartments={"c": kinabs.Compartment("c", 1.0)},
        species={"A": kinabs.Species("A", "c", initial_concentration=2.0),
                 "B": kinabs.Species("B", "c", initial_concentration=0.1)},
        parameters={"k": kinabs.Parameter("k", 0.3), "kb": kinabs.Parameter("kb", 0.2)},
        reactions={"r": kinabs.Reaction("r", sym("k") * sym("A") * factor, (R("A"),), (R("B"),)),
                   "d": kinabs.Reaction("d", sym("kb") * sym("B") ** 2, (R("B"),), ())},
    )

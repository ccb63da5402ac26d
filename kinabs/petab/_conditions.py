"""What each PEtab table means for the simulations, worked out once at load time.

A value in the condition table or in a measurement's ``observableParameters`` /
``noiseParameters`` is a number or the id of a parameter-table parameter; both become a
:class:`Refs` array (a parameter-table index, or -1 and a constant), so that a batch of
parameter vectors ``theta`` (B, X) (linear values, parameter-table order) resolves them in
one numpy gather.

Condition table columns (PEtab v1):

* a free parameter of the lowered system (a constant model parameter, a constant
  compartment's size, a constant species' initial value): its value in that condition;
* a species, parameter or compartment that is a state (changed by reactions or a rate
  rule): its initial value, in the species' own units (concentration, or amount when it
  has only substance units); after pre-equilibration it replaces the steady-state value;
* NaN: the model's value (or, after pre-equilibration, the steady state).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kinabs._errors import DataError
from kinabs._lowering.system import OdeSystem
from kinabs.petab._errors import UnsupportedPetabFeature

__all__ = ["Refs", "ConditionPlan", "condition_plan", "parse_ref"]


@dataclass(frozen=True)
class Refs:
    """``n`` values: parameter-table entries (``theta_index >= 0``) or constants."""

    theta_index: np.ndarray  # (n,) int, -1 for a constant
    const: np.ndarray  # (n,) float

    @staticmethod
    def of(items: list[tuple[int, float]]) -> Refs:
        return Refs(np.asarray([i for i, _ in items], dtype=np.int64).reshape(-1),
                    np.asarray([c for _, c in items], dtype=np.float64).reshape(-1))

    def values(self, theta: np.ndarray) -> np.ndarray:
        """(B, n) values for parameter vectors ``theta`` (B, X)."""
        b = theta.shape[0]
        out = np.broadcast_to(self.const, (b, self.const.size)).copy()
        mask = self.theta_index >= 0
        if mask.any():
            out[:, mask] = theta[:, self.theta_index[mask]]
        return out


def parse_ref(value, x_index: dict[str, int], *, where: str) -> tuple[int, float] | None:
    """A table cell as ``(theta index, constant)``; ``None`` for NaN/empty (keep the
    model's value)."""
    if value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        v = float(value)
        return None if np.isnan(v) else (-1, v)
    text = str(value).strip()
    if text == "" or text.lower() == "nan":
        return None
    try:
        return (-1, float(text))
    except ValueError:
        pass
    if text not in x_index:
        raise DataError(f"{where}: '{text}' is neither a number nor a parameter of the "
                        "parameter table; add it to the parameter table.")
    return (x_index[text], np.nan)


@dataclass(frozen=True)
class ConditionPlan:
    """The overrides of one condition: free parameters ``p_index`` <- ``p_refs``; states
    ``state_index`` <- ``state_refs`` (natural units). ``conc_species`` lists constant
    species (free parameters) whose value is given as a concentration but stored as an
    initial amount (or the reverse): (p index, compartment output index, +1 to multiply
    by the size, -1 to divide)."""

    id: str
    p_index: np.ndarray
    p_refs: Refs
    state_index: np.ndarray
    state_refs: Refs
    conc_species: tuple[tuple[int, int, int], ...]


def condition_plan(system: OdeSystem, condition_id: str, row, x_index: dict[str, int], *,
                   where: str) -> ConditionPlan:
    """The plan of condition ``condition_id`` from its condition-table ``row`` (a pandas
    Series; ``conditionName`` is ignored)."""
    model = system.model
    p_items: list[tuple[int, tuple[int, float]]] = []
    s_items: list[tuple[int, tuple[int, float]]] = []
    conv: list[tuple[int, int, int]] = []
    for column, value in row.items():
        if column == "conditionName":
            continue
        ref = parse_ref(value, x_index, where=f"{where}, column '{column}'")
        if ref is None:
            continue
        if column in system.state_index:
            s_items.append((system.state_index[column], ref))
        elif column in system.parameter_index:
            j = system.parameter_index[column]
            p_items.append((j, ref))
            if column in model.species:
                sp = model.species[column]
                kind = system.parameter_kinds[j]
                sign = 0
                if kind == "initial_amount" and not sp.has_only_substance_units:
                    sign = 1
                elif kind == "initial_concentration" and sp.has_only_substance_units:
                    sign = -1
                if sign:
                    conv.append((j, system.output_index[("value", sp.compartment)], sign))
        elif column in model.ids():
            raise UnsupportedPetabFeature(
                f"a condition sets '{column}', which a rule or an initial assignment of the "
                "model determines", f"{where}, column '{column}'", "kinabs sets constant "
                "parameters, compartment sizes and initial values of species and rate-rule "
                "variables.")
        else:
            raise DataError(f"{where}: the condition table column '{column}' is not an id "
                            "of the model (parameter, species or compartment).")
    return ConditionPlan(
        id=condition_id,
        p_index=np.asarray([j for j, _ in p_items], dtype=np.int64),
        p_refs=Refs.of([r for _, r in p_items]),
        state_index=np.asarray([i for i, _ in s_items], dtype=np.int64),
        state_refs=Refs.of([r for _, r in s_items]),
        conc_species=tuple(conv),
    )

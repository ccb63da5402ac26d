r"""``kinabs.petab.load``: a PEtab v1 problem as a :class:`PetabProblem`.

Example:
    A decay ``A -> `` at rate ``k*A`` from ``A = 1``, one observable ``A`` with noise 0.1
    and two measurements; the nominal ``k`` is 0.5 (estimated on log10 scale):

    >>> import math, tempfile, pathlib, kinabs, kinabs.petab
    >>> b = kinabs.ModelBuilder("decay")
    >>> _ = b.species("A", initial_concentration=1.0); _ = b.parameter("k", 0.5)
    >>> _ = b.reaction("r", "A ->", rate="k*A")
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> kinabs.write_sbml(b.build(), folder / "model.xml")
    >>> tables = {
    ...     "conditions": "conditionId\nc0\n",
    ...     "observables": "observableId\tobservableFormula\tnoiseFormula\nobs\tA\t0.1\n",
    ...     "measurements": "observableId\tsimulationConditionId\ttime\tmeasurement\n"
    ...                     "obs\tc0\t1\t0.6\nobs\tc0\t2\t0.4\n",
    ...     "parameters": "parameterId\tparameterScale\tlowerBound\tupperBound\t"
    ...                   "nominalValue\testimate\nk\tlog10\t0.01\t10\t0.5\t1\n"}
    >>> for name, text in tables.items():
    ...     _ = (folder / f"{name}.tsv").write_text(text)
    >>> _ = (folder / "problem.yaml").write_text(
    ...     "format_version: 1\nparameter_file: parameters.tsv\nproblems:\n"
    ...     "- sbml_files: [model.xml]\n  condition_files: [conditions.tsv]\n"
    ...     "  measurement_files: [measurements.tsv]\n  observable_files: [observables.tsv]\n")
    >>> problem = kinabs.petab.load(folder / "problem.yaml")
    >>> problem
    PetabProblem('problem.yaml', model='decay', conditions=1, observables=1, measurements=2, parameters=1 (1 estimated))
    >>> result = problem.evaluate()
    >>> result.simulation_df["simulation"].round(6).tolist()  # exp(-0.5 t)
    [0.606531, 0.367879]
    >>> r = [(0.6 - math.exp(-0.5)) / 0.1, (0.4 - math.exp(-1.0)) / 0.1]
    >>> expected = sum(-0.5 * math.log(2 * math.pi * 0.01) - 0.5 * x * x for x in r)
    >>> abs(result.llh - expected) < 1e-7, abs(result.chi2 - sum(x * x for x in r)) < 1e-7
    (True, True)
    >>> problem.x_free_ids, problem.x_nominal()  # on the table's scale: log10(0.5)
    (('k',), array([-0.30103]))
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sympy

from kinabs._errors import DataError
from kinabs._lowering.events import refuse_events
from kinabs._lowering.system import OdeSystem, as_system
from kinabs._model import Model
from kinabs.petab._conditions import ConditionPlan, Refs, condition_plan, parse_ref
from kinabs.petab._errors import UnsupportedPetabFeature
from kinabs.petab._formulas import parse, symbol_names
from kinabs.petab._objective import evaluate as _evaluate
from kinabs.petab._objective import evaluate_batch as _evaluate_batch
from kinabs.petab._priors import Prior, scale_values, unscale_values
from kinabs.petab._read import Tables, read_tables
from kinabs.sbml import load_sbml

__all__ = ["PetabProblem", "Observable", "ParameterTable", "load"]

_TRANSFORMATIONS = ("lin", "log", "log10")
_DISTRIBUTIONS = ("normal", "laplace")
_SCALES = ("lin", "log", "log10")
_TIME = "time"


@dataclass(frozen=True)
class Observable:
    """One row of the observable table, its formulas parsed."""

    id: str
    formula: sympy.Expr
    noise: sympy.Expr
    transformation: str = "lin"
    distribution: str = "normal"


@dataclass(frozen=True)
class ParameterTable:
    """The parameter table: ids in table order, scales, bounds and nominal values (linear),
    which are estimated, and objective priors (``None`` where none)."""

    ids: tuple[str, ...]
    scales: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    nominal: np.ndarray
    estimate: np.ndarray
    priors: tuple[Prior | None, ...]

    @property
    def free_ids(self) -> tuple[str, ...]:
        return tuple(i for i, e in zip(self.ids, self.estimate) if e)

    @property
    def index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.ids)}


@dataclass(frozen=True)
class MeasurementPlan:
    """Measurements grouped for evaluation: each row's simulation condition (an index into
    ``conditions``: (pre-equilibration id or "", simulation id)), time, observable, and the
    values of its placeholders (one :class:`Refs` per placeholder, over the observable's
    rows)."""

    conditions: tuple[tuple[str, str], ...]
    row_condition: np.ndarray
    row_time: np.ndarray
    measurement: np.ndarray
    rows_of: dict[str, np.ndarray]
    observable_parameters: dict[str, dict[str, Refs]]
    noise_parameters: dict[str, dict[str, Refs]]


@dataclass(eq=False)
class PetabProblem:
    """A PEtab v1 problem ready to evaluate.

    Parameters are the parameter table's rows (``x_ids``), the estimated ones
    ``x_free_ids``. Methods take parameter values as a mapping id -> value or an array in
    ``x_free_ids`` order (or ``x_ids`` order, all rows), **on the parameter table's
    ``parameterScale`` by default** (``parameter_scale="scaled"``), or linear
    (``parameter_scale="linear"``); values not given are the nominal values.
    """

    yaml_path: Path
    tables: Tables
    model: Model
    system: OdeSystem
    observables: dict[str, Observable]
    parameters: ParameterTable
    measurements: pd.DataFrame
    condition_plans: dict[str, ConditionPlan]
    #: parameter-table entries that set free parameters of the system
    table_p_index: np.ndarray
    table_theta_index: np.ndarray
    plan: MeasurementPlan
    #: per observable: symbol name -> ("output", key) | ("theta", index) | ("time", None)
    symbol_sources: dict[str, dict[str, tuple[str, Any]]]
    _cache: dict = field(default_factory=dict, repr=False)

    # -- parameters ------------------------------------------------------------
    @property
    def x_ids(self) -> tuple[str, ...]:
        return self.parameters.ids

    @property
    def x_free_ids(self) -> tuple[str, ...]:
        return self.parameters.free_ids

    @property
    def x_scales(self) -> tuple[str, ...]:
        return self.parameters.scales

    def x_nominal(self, *, parameter_scale: str = "scaled", free_only: bool = True
                  ) -> np.ndarray:
        """Nominal values of the estimated (``free_only``) or all parameters."""
        x = self.parameters.nominal
        if parameter_scale == "scaled":
            x = np.asarray([scale_values(v, s) for v, s in zip(x, self.x_scales)])
        elif parameter_scale != "linear":
            raise DataError(f"parameter_scale must be 'scaled' or 'linear'; got "
                            f"{parameter_scale!r}.")
        return x[self.parameters.estimate] if free_only else x.copy()

    def theta(self, parameters: Any = None, *, parameter_scale: str = "scaled") -> np.ndarray:
        """Linear values of every parameter-table entry, (B, X) in ``x_ids`` order, from the
        values a user gives (see the class docstring); nominal values elsewhere."""
        if parameter_scale not in ("scaled", "linear"):
            raise DataError(f"parameter_scale must be 'scaled' or 'linear'; got "
                            f"{parameter_scale!r}.")
        nominal = self.parameters.nominal
        idx = self.parameters.index
        scales = self.x_scales

        def to_linear(values: np.ndarray, cols: list[int]) -> np.ndarray:
            if parameter_scale == "linear":
                return values
            return np.stack([unscale_values(values[:, i], scales[c])
                             for i, c in enumerate(cols)], axis=1) if cols else values

        if parameters is None:
            return nominal[None, :].copy()
        if isinstance(parameters, Mapping):
            unknown = [k for k in parameters if k not in idx]
            if unknown:
                raise DataError(f"unknown parameter id(s) {unknown}; the parameter table has "
                                f"{list(self.x_ids)[:20]}")
            cols = [idx[k] for k in parameters]
            theta = nominal[None, :].copy()
            values = np.asarray([[float(v) for v in parameters.values()]])
            theta[:, cols] = to_linear(values, cols)
            return theta
        arr = np.atleast_2d(np.asarray(parameters, dtype=np.float64))
        free = [idx[k] for k in self.x_free_ids]
        if arr.ndim == 2 and arr.shape[1] == len(free):
            cols = free
        elif arr.ndim == 2 and arr.shape[1] == len(self.x_ids):
            cols = list(range(len(self.x_ids)))
        else:
            raise DataError(f"a parameter array must have shape (F,) or (B, F) with F = "
                            f"{len(free)} (x_free_ids), or X = {len(self.x_ids)} (x_ids); got "
                            f"{np.shape(parameters)}.")
        theta = np.repeat(nominal[None, :], arr.shape[0], axis=0)
        theta[:, cols] = to_linear(arr, cols)
        return theta

    # -- evaluation ------------------------------------------------------------
    def evaluate(self, parameters: Any = None, *, parameter_scale: str = "scaled",
                 backend: str | None = None, solver: Any = None,
                 steady_state: Any = None, priors: bool = False):
        """llh, chi2 and the simulation table at ``parameters`` (one set; default the
        nominal values). See :func:`kinabs.petab.evaluate`."""
        return _evaluate(self, parameters, parameter_scale=parameter_scale, backend=backend,
                        solver=solver, steady_state=steady_state, priors=priors)

    def evaluate_batch(self, parameters: Any, *, parameter_scale: str = "scaled",
                       backend: str | None = None, solver: Any = None,
                       steady_state: Any = None, priors: bool = False):
        """llh and chi2 for a batch of parameter sets (B, F): one batched solve per stage.
        See :func:`kinabs.petab.evaluate_batch`."""
        return _evaluate_batch(self, parameters, parameter_scale=parameter_scale,
                              backend=backend, solver=solver, steady_state=steady_state,
                              priors=priors)

    def objective(self, backend: str | None = "jax", *, solver: Any = None,
                  steady_state: Any = None, adjoint: Any = None):
        """The log-likelihood as one compiled, differentiable program of the estimated
        parameters on the parameter table's scale (``x_free_ids``): an object with
        ``value(theta)`` and ``value_and_grad(theta)`` for ``theta`` (F,) or a batch (B, F).
        JAX only for now (``backend="torch"`` raises :class:`kinabs.BackendError`).
        ``solver``: :class:`kinabs.SolverOptions` (default ``method="stiff"``; ``"auto"``
        is the implicit solver here); ``steady_state``: :class:`SteadyStateOptions`;
        ``adjoint``: :class:`kinabs.AdjointOptions` (default checkpointed
        backpropagation). See :mod:`kinabs.petab._gradient`."""
        from kinabs.petab._gradient import make_objective

        return make_objective(self, backend=backend, solver=solver,
                              steady_state=steady_state, adjoint=adjoint)

    def __repr__(self) -> str:
        return (f"PetabProblem({self.yaml_path.name!r}, model={self.model.id!r}, "
                f"conditions={len(self.plan.conditions)}, observables={len(self.observables)}"
                f", measurements={len(self.measurements)}, parameters={len(self.x_ids)} "
                f"({len(self.x_free_ids)} estimated))")


# -- loading -----------------------------------------------------------------------------
def load(yaml_path: str | Path, *, lint: bool = True) -> PetabProblem:
    """Read the PEtab v1 problem ``yaml_path`` (its tables with petab's loader, checked by
    petab's linter unless ``lint=False``; its SBML model with :func:`kinabs.load_sbml`).

    Raises :class:`kinabs.DataError` naming the file and row for malformed tables and
    :class:`kinabs.UnsupportedFeatureError` for what kinabs does not simulate.
    """
    tables = read_tables(yaml_path, lint=lint)
    pp = tables.problem
    params = _parameter_table(tables)
    x_index = params.index
    observables = _observables(tables)
    measurements = pp.measurement_df.reset_index(drop=True)
    _check_measurements(tables, measurements, observables)
    used = _used_conditions(measurements)
    cond_df = pp.condition_df
    missing = [c for c in used if c not in cond_df.index]
    if missing:
        raise DataError(f"the measurement table uses condition(s) {missing}, which the "
                        "condition table does not define.")
    model = _prepared_model(load_sbml(tables.sbml_path), params, cond_df.loc[used])
    system = as_system(model)
    refuse_events(system, "a PEtab problem")
    plans = {c: condition_plan(system, c, cond_df.loc[c], x_index,
                               where=tables.where_id("condition", c)) for c in used}
    table_p, table_theta = [], []
    for k, pid in enumerate(params.ids):
        if pid in system.parameter_index:
            table_p.append(system.parameter_index[pid])
            table_theta.append(k)
        elif pid in model.ids():
            raise UnsupportedPetabFeature(
                f"a parameter-table entry for '{pid}', which a rule or an initial assignment "
                "of the model determines", tables.where_id("parameter", pid))
    plan = _measurement_plan(tables, measurements, observables, x_index)
    sources = {o: _symbol_sources(tables, obs, system, x_index) for o, obs in
               observables.items()}
    return PetabProblem(
        yaml_path=tables.yaml_path, tables=tables, model=model, system=system,
        observables=observables, parameters=params, measurements=measurements,
        condition_plans=plans, table_p_index=np.asarray(table_p, dtype=np.int64),
        table_theta_index=np.asarray(table_theta, dtype=np.int64), plan=plan,
        symbol_sources=sources)


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def _parameter_table(tables: Tables) -> ParameterTable:
    df = tables.problem.parameter_df
    ids, scales, lower, upper, nominal, estimate, priors = [], [], [], [], [], [], []
    for pid, row in df.iterrows():
        where = tables.where_id("parameter", str(pid))
        scale = str(row.get("parameterScale", "lin"))
        if scale not in _SCALES:
            raise DataError(f"{where}: parameterScale {scale!r} is not one of {_SCALES}.")
        est = bool(int(row.get("estimate", 1)))
        nom = row.get("nominalValue", np.nan)
        nom = float(nom) if not _is_empty(nom) else np.nan
        if not np.isfinite(nom) and not est:
            raise DataError(f"{where}: a fixed parameter (estimate=0) needs a finite "
                            "nominalValue.")
        prior = None
        kind = row.get("objectivePriorType", None)
        if not _is_empty(kind):
            raw = row.get("objectivePriorParameters", None)
            try:
                pars = tuple(float(v) for v in str(raw).split(";"))
            except ValueError:
                pars = ()
            if len(pars) != 2:
                raise DataError(f"{where}: objectivePriorParameters {raw!r} must be two "
                                "numbers separated by ';'.")
            try:
                prior = Prior(str(kind), pars, scale)
            except DataError as e:
                raise DataError(f"{where}: {e}") from None
        ids.append(str(pid))
        scales.append(scale)
        lower.append(float(row.get("lowerBound", -np.inf)))
        upper.append(float(row.get("upperBound", np.inf)))
        nominal.append(nom)
        estimate.append(est)
        priors.append(prior)
    return ParameterTable(tuple(ids), tuple(scales), np.asarray(lower, float),
                          np.asarray(upper, float), np.asarray(nominal, float),
                          np.asarray(estimate, bool), tuple(priors))


def _observables(tables: Tables) -> dict[str, Observable]:
    df = tables.problem.observable_df
    out: dict[str, Observable] = {}
    for oid, row in df.iterrows():
        oid = str(oid)
        where = tables.where_id("observable", oid)
        trafo = row.get("observableTransformation", "lin")
        trafo = "lin" if _is_empty(trafo) else str(trafo)
        if trafo not in _TRANSFORMATIONS:
            raise UnsupportedPetabFeature(f"observableTransformation {trafo!r}", where,
                                          f"PEtab v1 has {_TRANSFORMATIONS}.")
        dist = row.get("noiseDistribution", "normal")
        dist = "normal" if _is_empty(dist) else str(dist)
        if dist not in _DISTRIBUTIONS:
            raise UnsupportedPetabFeature(f"noiseDistribution {dist!r}", where,
                                          f"kinabs supports {_DISTRIBUTIONS}.")
        if "noiseFormula" not in row.index:
            raise DataError(f"{where}: the observable table has no noiseFormula column.")
        out[oid] = Observable(
            id=oid,
            formula=parse(row["observableFormula"], where=f"{where}, observableFormula"),
            noise=parse(row["noiseFormula"], where=f"{where}, noiseFormula"),
            transformation=trafo, distribution=dist)
    return out


def _check_measurements(tables: Tables, df: pd.DataFrame,
                        observables: dict[str, Observable]) -> None:
    for i, (oid, t, m) in enumerate(zip(df["observableId"], df["time"], df["measurement"])):
        if oid not in observables:
            raise DataError(f"{tables.where_measurement(i)}: observableId '{oid}' is not in "
                            "the observable table.")
        t = float(t)
        if np.isnan(t) or t < 0 or t == -np.inf:
            raise DataError(f"{tables.where_measurement(i)}: time {t} must be a number >= 0 "
                            "or inf (steady state).")
        if not np.isfinite(float(m)):
            raise DataError(f"{tables.where_measurement(i)}: the measurement {m!r} is not a "
                            "finite number.")


def _preeq_column(df: pd.DataFrame) -> list[str]:
    if "preequilibrationConditionId" not in df.columns:
        return [""] * len(df)
    return ["" if _is_empty(v) else str(v) for v in df["preequilibrationConditionId"]]


def _used_conditions(df: pd.DataFrame) -> list[str]:
    used = dict.fromkeys(str(c) for c in df["simulationConditionId"])
    used.update(dict.fromkeys(c for c in _preeq_column(df) if c))
    return list(used)


def _prepared_model(model: Model, params: ParameterTable, conditions: pd.DataFrame) -> Model:
    """The model with values filled in where the SBML file leaves them out but the PEtab
    tables always give them (a parameter of the parameter table; a quantity that every used
    condition sets): kinabs would otherwise treat them as undefined."""
    values: dict[str, float] = {}
    idx = params.index
    for pid in model.parameters:
        p = model.parameters[pid]
        if p.value is not None and np.isfinite(p.value):
            continue
        if pid in idx and np.isfinite(params.nominal[idx[pid]]):
            values[pid] = params.nominal[idx[pid]]
        elif pid in conditions.columns and all(not _is_empty(v) for v in conditions[pid]):
            values[pid] = 1.0  # a placeholder: every condition sets it
    if values:
        model = model.with_parameters(values)
    species = dict(model.species)
    for sid, sp in model.species.items():
        if (sp.initial_amount is None and sp.initial_concentration is None
                and sid not in model.initial_assignments and sid in conditions.columns
                and all(not _is_empty(v) for v in conditions[sid])):
            attr = "initial_amount" if sp.has_only_substance_units else "initial_concentration"
            species[sid] = dataclasses.replace(sp, **{attr: 0.0})  # every condition sets it
    if species != model.species:
        model = dataclasses.replace(model, species=species)
    return model


_PLACEHOLDER = re.compile(r"^(observableParameter|noiseParameter)(\d+)_(.+)$")


def _placeholders(expr: sympy.Expr, kind: str, oid: str) -> list[str]:
    out = []
    for name in symbol_names(expr):
        m = _PLACEHOLDER.match(name)
        if m and m.group(1) == kind and m.group(3) == oid:
            out.append(name)
    return out


def _measurement_plan(tables: Tables, df: pd.DataFrame, observables: dict[str, Observable],
                      x_index: dict[str, int]) -> MeasurementPlan:
    import petab.v1 as petab

    preeq = _preeq_column(df)
    pairs = list(zip(preeq, (str(c) for c in df["simulationConditionId"])))
    conditions = tuple(dict.fromkeys(pairs))
    cindex = {c: i for i, c in enumerate(conditions)}
    rows_of: dict[str, list[int]] = {}
    for i, oid in enumerate(df["observableId"]):
        rows_of.setdefault(str(oid), []).append(i)
    obs_pars: dict[str, dict[str, Refs]] = {}
    noise_pars: dict[str, dict[str, Refs]] = {}
    for oid, rows in rows_of.items():
        obs = observables[oid]
        for column, kind, expr, store in (
                ("observableParameters", "observableParameter", obs.formula, obs_pars),
                ("noiseParameters", "noiseParameter", obs.noise, noise_pars)):
            names = _placeholders(expr, kind, oid)
            items: dict[str, list[tuple[int, float]]] = {n: [] for n in names}
            for r in rows:
                cell = df[column].iloc[r] if column in df.columns else None
                where = f"{tables.where_measurement(r)}, {column}"
                try:
                    values = petab.split_parameter_replacement_list(
                        None if _is_empty(cell) else cell)
                except ValueError as e:
                    raise DataError(f"{where}: {e}") from None
                for name in names:
                    k = int(_PLACEHOLDER.match(name).group(2))
                    if k > len(values):
                        raise DataError(f"{where}: observable '{oid}' uses {name}, but the "
                                        f"row gives {len(values)} value(s) {values}.")
                    ref = parse_ref(values[k - 1], x_index, where=where)
                    if ref is None:
                        raise DataError(f"{where}: the value for {name} is empty or NaN.")
                    items[name].append(ref)
            store[oid] = {n: Refs.of(v) for n, v in items.items()}
    return MeasurementPlan(
        conditions=conditions,
        row_condition=np.asarray([cindex[p] for p in pairs], dtype=np.int64),
        row_time=np.asarray(df["time"], dtype=np.float64),
        measurement=np.asarray(df["measurement"], dtype=np.float64),
        rows_of={k: np.asarray(v, dtype=np.int64) for k, v in rows_of.items()},
        observable_parameters=obs_pars, noise_parameters=noise_pars)


def _symbol_sources(tables: Tables, obs: Observable, system: OdeSystem,
                    x_index: dict[str, int]) -> dict[str, tuple[str, Any]]:
    """Where each symbol of ``obs``'s formulas gets its value."""
    model = system.model
    refs = model.species_references()
    out: dict[str, tuple[str, Any]] = {}
    for which, expr in (("observableFormula", obs.formula), ("noiseFormula", obs.noise)):
        for name in symbol_names(expr):
            m = _PLACEHOLDER.match(name)
            if m and m.group(3) == obs.id:
                out[name] = ("placeholder", None)
            elif name == obs.id and which == "noiseFormula":
                out[name] = ("observable", None)
            elif name in model.species:
                sp = model.species[name]
                unit = "amount" if sp.has_only_substance_units else "concentration"
                out[name] = ("output", (unit, name))
            elif name in model.reactions:
                out[name] = ("output", ("rate", name))
            elif name in model.parameters or name in model.compartments or name in refs:
                out[name] = ("output", ("value", name))
            elif name in x_index:
                out[name] = ("theta", x_index[name])
            elif name in (_TIME, "t"):
                out[name] = ("time", None)
            else:
                raise DataError(
                    f"{tables.where_id('observable', obs.id)}, {which}: the symbol "
                    f"'{name}' is neither a model id, a parameter-table id nor a placeholder "
                    f"of observable '{obs.id}'.")
    return out

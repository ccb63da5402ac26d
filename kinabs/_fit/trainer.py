"""The Trainer: multi-start fits of a model to time-course data, on any backend.

It keeps the seed's workflow (``Trainer(model=..., data=..., n_iter=...)``,
``latinhypercube_sampling``, ``parameter_sets``, ``train()``, further rounds) and adds
seeds, typed options, statuses, joined rounds and saved results. The Trainer checks the
options and freezes them into a :class:`~kinabs._fit.spec.FitSpec`, from which the
backend's training program is built: one compiled program that trains every start
together, run by :func:`~kinabs._fit.loop.run_loop` in this process or chunk by chunk
through :func:`~kinabs._fit.executor.run_chunked`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from kinabs._backend import get_backend, resolve_backend_name
from kinabs._errors import DataError
from kinabs._event_gradients import check_event_training
from kinabs._fit.data import TrainingData, check_constrains
from kinabs._fit.executor import check_chunk_size, run_chunked
from kinabs._fit.loop import progress_bar, run_loop, to_space
from kinabs._fit.results import TrainingResults
from kinabs._fit.sampling import latin_hypercube
from kinabs._fit.spec import FitSpec, default_method
from kinabs._lowering.system import as_system
from kinabs._optim import Bounds, is_method
from kinabs._options import AdjointOptions, SolverOptions, adjoint_options, solver_options
from kinabs._problem import CustomLoss, FitProblem, ResidualLoss, TrainingProgram

__all__ = ["Trainer", "exponentiate_parameters", "log_transform_parameters"]

_SPACES = ("log", "linear")


def _check_parameters(system: Any, names: list[str], changing: str = "") -> None:
    unknown = [n for n in names if n not in system.parameter_index]
    if unknown and changing:
        raise DataError(
            f"the new {changing} has no parameter(s) {unknown} that this trainer fits; its "
            f"fittable parameters are {list(system.parameters)[:30]}. Create a new Trainer "
            "for a model with other parameters.")
    if unknown:
        raise DataError(f"unknown parameter name(s) {unknown}; fittable parameters are "
                        f"{list(system.parameters)[:30]}.")
    if not names:
        raise DataError("the model has no parameters to fit; pass parameters=[...].")


def exponentiate_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """From log-space values (base 2, as the seed and kinabs' log space use) to linear.

    Example:
        >>> from kinabs import exponentiate_parameters
        >>> exponentiate_parameters({"k1": 3.0, "k2": -1.0})
        {'k1': 8.0, 'k2': 0.5}
    """
    return {k: 2.0 ** v for k, v in params.items()}


def log_transform_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """From linear values to log space (base 2); arrays are transformed elementwise.

    Example:
        >>> from kinabs import log_transform_parameters
        >>> log_transform_parameters({"k1": 8.0, "k2": 0.5})
        {'k1': 3.0, 'k2': -1.0}
    """
    return {k: math.log2(v) if isinstance(v, (int, float)) else np.log2(v)
            for k, v in params.items()}


def _check_method_loss(optimizer: Any, loss: CustomLoss | None) -> None:
    """A least-squares method needs residuals: a scalar custom loss is an error."""
    if (is_method(optimizer) and optimizer.needs == "residuals" and loss is not None
            and not loss.residuals):
        raise DataError(
            f"{type(optimizer).__name__} fits residuals, but the custom loss "
            f"{getattr(loss.fn, '__name__', loss.fn)!r} returns a scalar. Use "
            "optimizer=kinabs.BFGS() for a scalar loss, or return the residuals and pass "
            "loss=kinabs.ResidualLoss(fn).")


class Trainer:
    """Fit a model's parameters to data from many starting points at once.

    Args:
        model: a :class:`kinabs.Model` (from :func:`kinabs.load_sbml` or
            :class:`kinabs.ModelBuilder`).
        data: :class:`kinabs.TrainingData`, a DataFrame (index time, columns species), a CSV
            path, or a list of those (several experiments fitted together).
        n_iter: iterations per call of :meth:`train`.
        backend: ``"jax"`` (default) or ``"torch"``.
        optim_space: ``"log"`` (default; parameters optimised as log2 values, with the
            seed's mean-centred loss) or ``"linear"`` (mean squared error).
        optimizer: :class:`kinabs.LevenbergMarquardt` or :class:`kinabs.BFGS` (kinabs'
            own, on every backend, with convergence tests), an optax GradientTransformation
            on JAX, or a torch.optim class or factory on torch. Default:
            Levenberg-Marquardt for the default loss and for a :class:`kinabs.ResidualLoss`,
            BFGS for a custom loss that returns a scalar. ``n_iter`` caps the evaluations
            of each start; a start that converges stops early (status ``"converged"``).
            The seed's optimiser is ``get_backend("jax").default_optimizer()``.
        loss: a custom loss ``fn(params, ts, ys, [model], **loss_kwargs)`` (see
            :class:`kinabs._problem.CustomLoss`), or a :class:`kinabs.ResidualLoss` whose
            function returns residuals; ``None`` takes the default of the space.
        bounds: box bounds ``{name: (lower, upper)}`` in linear values (-inf/inf or 0 in
            log space for no bound), respected by every optimiser; starts must lie within.
        parameters: names of the parameters to fit (default: the model's kinetic
            parameters, ``trainer.parameters``).
        solver: :class:`kinabs.SolverOptions` (default: ``method="auto"``, rtol 1e-8, atol
            1e-10, at most 4,096 steps per solve). Under vmap every start waits for the
            slowest, so a start whose solve needs more steps (with the explicit and then the
            implicit solver) is frozen as failed rather than slowing the others; see
            ``resample_failed``.
        adjoint: :class:`kinabs.AdjointOptions` (default: recursive checkpointing).
        loss_threshold: stop a start once its loss falls below this (``None``: never).
        resample_failed: replace starts whose integration fails by new Latin hypercube
            samples (from the last :meth:`latinhypercube_sampling` bounds) and go on.
        progress: show a progress bar.

    A model with SBML events trains too, on both backends, with kinabs' own methods and
    the default loss: each evaluation simulates the events on the host and
    differentiates a replay of what happened, event times included
    (:mod:`kinabs._event_gradients`); other optimisers and custom losses raise
    :class:`kinabs.UnsupportedFeatureError` naming the first event.

    Example (two starts, three iterations, then a second round that goes on from the
    first; :meth:`train` shows chunked runs):
        >>> import kinabs
        >>> model = kinabs.load_sbml(kinabs.example_model_path())
        >>> trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=3,
        ...                          progress=False)
        >>> starts = trainer.latinhypercube_sampling(model.parameter_values(),
        ...                                          lower_bound=0.5, upper_bound=2, N=2, seed=0)
        >>> optimized_parameters, loss_per_iteration = trainer.train()
        >>> loss_per_iteration.shape, trainer.results.status
        ((2, 3), ['max_iterations', 'max_iterations'])
        >>> trainer.n_iter = 40
        >>> again = trainer.train(resume=trainer.results)
        >>> again.loss_history.shape, again.status
        ((2, 43), ['converged', 'converged'])
    """

    def __init__(
        self,
        model: Any,
        data: Any,
        n_iter: int = 300,
        *,
        backend: str | None = None,
        optim_space: str = "log",
        optimizer: Any = None,
        loss: Callable[..., Any] | None = None,
        loss_kwargs: Mapping[str, Any] | None = None,
        parameters: Sequence[str] | None = None,
        solver: SolverOptions | None = None,
        adjoint: AdjointOptions | None = None,
        loss_threshold: float | None = None,
        resample_failed: bool = False,
        progress: bool = True,
        bounds: Mapping[str, tuple[float, float]] | None = None,
    ):
        self._program = None
        self._program_key = None
        system = as_system(model)
        check_event_training(system, optimizer, loss)
        data = TrainingData.coerce(data)
        data.check_against(system)
        self.backend_name = resolve_backend_name(backend)
        self._backend = get_backend(self.backend_name)
        if optim_space not in _SPACES:
            raise DataError(f"optim_space must be one of {_SPACES}; got {optim_space!r}.")
        self.optim_space = optim_space
        self.n_iter = n_iter
        names = list(parameters) if parameters is not None else list(
            system.kinetic_parameters)
        _check_parameters(system, names)
        check_constrains(data, system, names)
        self.system = system
        self._model = system.model
        self._data = data
        self.parameters: list[str] = names
        self.solver = solver_options(solver, SolverOptions(max_steps=4096))
        self.adjoint = adjoint_options(adjoint, AdjointOptions())
        self._loss: CustomLoss | None = None
        if loss is not None:
            self._create_loss_func(loss, **dict(loss_kwargs or {}))
        self._optimizer: Any = None
        self.optimizer = optimizer
        self._bounds_given: dict[str, tuple[float, float]] = {}
        self.bounds = bounds
        if loss_threshold is not None and not loss_threshold > 0:
            raise DataError(f"loss_threshold must be positive or None; got {loss_threshold!r}.")
        self.loss_threshold = loss_threshold
        self.resample_failed = bool(resample_failed)
        self.progress = progress
        self._parameter_sets = None
        self._bounds: dict[str, Any] | None = None
        self.results: TrainingResults | None = None

    # -- model and data: checked as in __init__, and the program is built anew ---------
    @property
    def model(self) -> Any:
        """The model being fitted. Assigning another model checks it against the data and
        the fitted parameters (as the constructor does) and rebuilds the training program
        at the next :meth:`train`."""
        return self._model

    @model.setter
    def model(self, model: Any) -> None:
        system = as_system(model)
        check_event_training(system, self._optimizer, self._loss)
        self._data.check_against(system)
        _check_parameters(system, self.parameters, changing="model")
        check_constrains(self._data, system, self.parameters)
        self.system, self._model = system, system.model
        self._program = None  # the old program simulates the old model

    @property
    def data(self) -> TrainingData:
        """The training data. Assigning new data (anything the constructor accepts) checks
        it against the model (as the constructor does) and rebuilds the training program
        at the next :meth:`train`."""
        return self._data

    @data.setter
    def data(self, data: Any) -> None:
        data = TrainingData.coerce(data)
        data.check_against(self.system)
        check_constrains(data, self.system, self.parameters)
        self._data = data
        self._program = None  # the old program holds the old data's arrays

    # -- options that may change between rounds -----------------------------------
    @property
    def optimizer(self) -> Any:
        """The optimiser; the default (``None`` assigned) follows the loss:
        Levenberg-Marquardt on residuals, BFGS on a scalar custom loss."""
        return default_method(self._loss) if self._optimizer is None else self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer: Any) -> None:
        if optimizer is not None:
            if getattr(self, "system", None) is not None:
                check_event_training(self.system, optimizer, None)
            self._backend.check_optimizer(optimizer)
            _check_method_loss(optimizer, self._loss)
        self._optimizer = optimizer

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        """Box bounds ``{name: (lower, upper)}`` (linear values) of the fitted parameters."""
        return dict(self._bounds_given)

    @bounds.setter
    def bounds(self, bounds: Mapping[str, tuple[float, float]] | None) -> None:
        Bounds.from_mapping(bounds, self.parameters, space=self.optim_space)  # checks
        self._bounds_given = {k: (float(lo), float(hi))
                              for k, (lo, hi) in dict(bounds or {}).items()}

    def _box(self) -> Bounds:
        return Bounds.from_mapping(self._bounds_given, self.parameters, space=self.optim_space)

    @property
    def n_iter(self) -> int:
        return self._n_iter

    @n_iter.setter
    def n_iter(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DataError(f"n_iter must be an integer >= 1; got {value!r}.")
        self._n_iter = int(value)

    @property
    def loss(self) -> CustomLoss | None:
        """The custom loss (``None``: the default loss of the optimisation space)."""
        return self._loss

    @loss.setter
    def loss(self, fn: Callable[..., Any] | None) -> None:
        if fn is None:
            self._loss = None
        else:
            self._create_loss_func(fn)

    def _create_loss_func(self, loss_func: Callable[..., Any], **kwargs: Any) -> CustomLoss:
        """Set a custom loss with extra keyword arguments (the seed's spelling)."""
        if isinstance(loss_func, ResidualLoss):
            loss = CustomLoss(loss_func.fn, dict(kwargs), residuals=True)
        else:
            loss = CustomLoss(loss_func, dict(kwargs))
        _check_method_loss(getattr(self, "_optimizer", None), loss)
        if getattr(self, "system", None) is not None:
            check_event_training(self.system, None, loss)
        self._loss = loss
        return self._loss

    @property
    def parameter_sets(self):
        """The initial parameter sets: a DataFrame, one row per initialisation (linear
        values). Assign a DataFrame (or anything DataFrame() accepts) to replace them."""
        return self._parameter_sets

    @parameter_sets.setter
    def parameter_sets(self, value: Any) -> None:
        self._parameter_sets = None if value is None else self._check_sets(value)

    def _check_sets(self, value: Any):
        import pandas as pd

        df = value if isinstance(value, pd.DataFrame) else pd.DataFrame(value)
        if df.shape[0] == 0:
            raise DataError("parameter_sets is empty; give at least one row.")
        df = df.copy()
        df.columns = [str(c) for c in df.columns]
        unknown = [c for c in df.columns if c not in self.parameters]
        if unknown:
            raise DataError(f"parameter_sets has column(s) {unknown} that are not fitted "
                            f"parameters; fitted parameters are {self.parameters[:30]}.")
        defaults = self.system.parameter_vector()
        for name in self.parameters:
            if name not in df.columns:
                df[name] = defaults[self.system.parameter_index[name]]
        df = df[self.parameters].astype(float).reset_index(drop=True)
        arr = df.to_numpy()
        if not np.all(np.isfinite(arr)):
            raise DataError("parameter_sets must hold finite numbers (found NaN or inf).")
        if self.optim_space == "log" and np.any(arr <= 0):
            bad = df.columns[np.any(arr <= 0, axis=0)].tolist()
            raise DataError(f"log-space fitting needs positive parameters; {bad} have values "
                            "<= 0. Use optim_space='linear' or positive starts.")
        return df

    # -- initial guesses ------------------------------------------------------------
    def latinhypercube_sampling(self, base_parameters: Mapping[str, float], lower_bound: float,
                                upper_bound: float, N: int, *, seed: int | None = None,
                                log: bool = False):
        """Latin hypercube samples between ``lower_bound`` and ``upper_bound`` times each
        base value; sets and returns :attr:`parameter_sets`. ``seed`` makes it repeatable,
        ``log=True`` samples log-uniformly."""
        unknown = [k for k in base_parameters if k not in self.parameters]
        if unknown:
            raise DataError(f"base_parameters has unknown name(s) {unknown}; the fitted "
                            f"parameters are {self.parameters[:30]}.")
        base = dict(zip(self.parameters, self.system.parameter_vector()[
            [self.system.parameter_index[n] for n in self.parameters]]))
        base.update({k: float(v) for k, v in base_parameters.items()})
        if self.optim_space == "log" and (lower_bound <= 0 or any(v <= 0 for v in base.values())):
            raise DataError("in log space the bounds and base values must be positive; got "
                            f"lower_bound={lower_bound} and base values "
                            f"{[k for k, v in base.items() if v <= 0][:10]} <= 0.")
        self._bounds = dict(base=base, lower_bound=lower_bound, upper_bound=upper_bound,
                            log=log, seed=seed, draws=0)
        self.parameter_sets = latin_hypercube(base, lower_bound=lower_bound,
                                              upper_bound=upper_bound, n=N, seed=seed, log=log)
        return self.parameter_sets

    # -- the fit ------------------------------------------------------------------------
    def _fit_spec(self) -> FitSpec:
        """This trainer's fit as the picklable description that programs are built from."""
        return FitSpec(
            model=self.model, data=self.data, parameters=tuple(self.parameters),
            backend=self.backend_name, optim_space=self.optim_space,
            optimizer=self._optimizer, loss=self._loss, solver=self.solver,
            adjoint=self.adjoint, loss_threshold=self.loss_threshold,
            bounds=tuple((k, lo, hi) for k, (lo, hi) in self._bounds_given.items()))

    def _problem(self) -> FitProblem:
        """The fit's arrays (the conformance checks hand them to their reference)."""
        return self._fit_spec().problem()

    def _get_program(self) -> TrainingProgram:
        """The training program of the current options (rebuilt when one changed)."""
        # the model and data setters also drop the program; their ids are a second guard
        key = (id(self._optimizer), self._loss, self.optim_space, self.solver, self.adjoint,
               self.loss_threshold, tuple(self.parameters), id(self._model), id(self._data),
               id(self.system), tuple(self._bounds_given.items()))
        if self._program is None or self._program_key != key:
            self._program = self._fit_spec().program(self._n_iter)
            self._program_key = key
        return self._program

    def train(self, resume: TrainingResults | None = None, *, executor: Any = None,
              chunk_size: int | None = None, run_dir: str | os.PathLike[str] | None = None,
              retries: int = 2) -> TrainingResults:
        """Run :attr:`n_iter` iterations from every row of :attr:`parameter_sets` (or, with
        ``resume``, from an earlier result's final parameters and optimiser state, so
        that the loss curves join). Returns :class:`TrainingResults`, which also unpacks
        as the seed's ``optimized_parameters, loss_per_iteration``.

        By default every start trains together in this process, in one program. Give any
        of ``executor``, ``chunk_size`` or ``run_dir`` to split the starts into chunks of
        ``chunk_size`` (default 64) and run each chunk (vmapped on JAX, batched on torch)
        through ``executor``: ``None`` (this process, one chunk after another), any
        ``concurrent.futures.Executor``, or a ``dask.distributed.Client`` (see
        :func:`kinabs.dask_client`). The same starts give the same results whatever the
        executor and chunk size. With ``run_dir`` each finished chunk is written there at
        once (see :class:`kinabs.RunFolder`), and the same fit with the same folder
        resumes: finished chunks are read, only missing ones run. ``retries``: how often
        a chunk that raised is run again (a worker that dies is replaced by the executor,
        not counted here). A ``ProcessPoolExecutor`` needs the "spawn" start method
        (``mp_context=multiprocessing.get_context("spawn")``): JAX does not survive fork.
        A chunked round starts every start with a fresh optimiser state (also with
        ``resume``) and does not support ``resample_failed``.

        Example:
            >>> import kinabs, tempfile
            >>> t = kinabs.Trainer(model=kinabs.load_sbml(kinabs.example_model_path()),
            ...                    data=kinabs.example_data_path(), n_iter=2, progress=False)
            >>> _ = t.latinhypercube_sampling({}, lower_bound=0.5, upper_bound=2, N=4, seed=0)
            >>> r = t.train(chunk_size=2, run_dir=tempfile.mkdtemp())
            >>> r.loss_history.shape, r.meta["n_chunks"]
            ((4, 2), 2)
        """
        if resume is not None:
            start = resume.parameters[self.parameters].to_numpy()
        elif self._parameter_sets is not None:
            start = self._parameter_sets.to_numpy()
        else:
            raise DataError("no initial parameter sets: call trainer.latinhypercube_sampling("
                            "...) or assign trainer.parameter_sets first.")
        _check_method_loss(self._optimizer, self._loss)
        self._box().check(to_space(np.asarray(start, dtype=float), self.optim_space),
                          self.parameters)
        if executor is not None or chunk_size is not None or run_dir is not None:
            result = self._train_chunked(start, executor=executor, chunk_size=chunk_size,
                                         run_dir=run_dir, retries=retries)
        else:
            result = self._train_here(start, resume)
        if resume is not None:
            result = resume.join(result)
        self.results = result
        return result

    def _train_here(self, start: np.ndarray, resume: TrainingResults | None
                    ) -> TrainingResults:
        t_start = time.perf_counter()
        program = self._get_program()
        state = None
        if resume is not None and resume._state is not None and resume._program is program:
            state = resume._state
        bar = progress_bar(self._n_iter, self.progress)
        state, outcome = run_loop(program, start, self._n_iter, space=self.optim_space,
                                  state=state, bar=bar,
                                  resample=self._fresh_starts if self.resample_failed else None)
        result = TrainingResults.from_run(self._fit_spec(), outcome, trainer=self,
                                          seconds=time.perf_counter() - t_start)
        result._state, result._program = state, program
        return result

    def _train_chunked(self, start: np.ndarray, **options: Any) -> TrainingResults:
        if self.resample_failed:
            check_chunk_size(options["chunk_size"])  # a bad chunk size is named first
            raise DataError(
                "resample_failed=True is not supported in chunked runs (executor, chunk_size "
                "or run_dir): new samples would depend on which starts share a chunk. Train "
                "without those options, or set resample_failed=False.")
        result = run_chunked(self._fit_spec(), start, n_iter=self._n_iter,
                             seed=(self._bounds or {}).get("seed"), progress=self.progress,
                             local_program=self._get_program, **options)
        result._trainer = self
        return result

    def _fresh_starts(self, k: int) -> np.ndarray:
        """``k`` new starts from the last sampling's bounds, for failed starts."""
        if self._bounds is None:
            raise DataError("resample_failed needs bounds: call latinhypercube_sampling first.")
        b = self._bounds
        b["draws"] += 1
        seed = None if b["seed"] is None else b["seed"] + 7919 * b["draws"]
        fresh = latin_hypercube(b["base"], lower_bound=b["lower_bound"],
                                upper_bound=b["upper_bound"], n=k, seed=seed, log=b["log"])
        return fresh[self.parameters].to_numpy()

"""Training on torch: every initialisation trained together, eagerly.

The semantics are those of the JAX program (``kinabs.backends.jax._train``):

* one batched solve per iteration over every live initialisation (the Rosenbrock solver
  gives each member its own step size, so members do not share step decisions);
* a member whose solve fails, or whose loss or gradient is not finite, is frozen with its
  status code (:data:`kinabs._problem.FIT_STATUS`) and does not disturb the others;
* a member whose loss falls below ``loss_threshold`` stops, keeping the parameters that
  met it;
* the loss of an inactive member is recorded as NaN;
* with box bounds (``FitProblem.lower``/``upper``) the parameters of the members that
  stepped are clipped into the box after each step.

kinabs' own methods (:class:`kinabs.LevenbergMarquardt`, :class:`kinabs.BFGS`) run their
backend-neutral iterations instead (``_methods``): one evaluation per iteration at each
live start's trial point, residuals with their Jacobian (``_jacobian``) or loss and
gradient; the method handles the bounds, rejects failed trial points and tests
convergence (status 5). Their state is a dict of batched tensors, no torch.optim object.

Each initialisation is its own parameter tensor of shape (R,), so that every optimiser
state (moments, step counts, per-tensor quantities) is per start, as ``jax.vmap`` makes
it on JAX. A member is frozen by leaving its gradient ``None``: torch.optim optimizers skip
such tensors entirely (no momentum step, no state change); its values are also restored
after the step, for optimisers that do not skip.

Gradients are those of the accepted steps of the solver (``_simulate.solve``: a discrete
adjoint, steps redone with autograd, or autograd through torchdiffeq). The state is
copied at the start of :meth:`TorchTrainingProgram.run`, so a state kept in a
:class:`~kinabs.TrainingResults` can be resumed more than once, as on JAX.

Example:
    >>> import functools, torch, kinabs
    >>> model = kinabs.load_sbml(kinabs.example_model_path())
    >>> trainer = kinabs.Trainer(model=model, data=kinabs.example_data_path(), n_iter=2,
    ...                          backend="torch", progress=False,
    ...                          optimizer=functools.partial(torch.optim.Adam, lr=1e-2))
    >>> trainer.parameter_sets = [model.parameter_values()]
    >>> trainer.train().loss_history.shape
    (1, 2)
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import array_api_compat.torch as xp
import numpy as np
import torch

from kinabs._errors import BackendError, DataError
from kinabs._losses import DEFAULT_RESIDUALS, DEFAULT_TERMS
from kinabs._optim import Method, is_method
from kinabs._problem import FitProblem, TrainingProgram
from kinabs._stages import solve_stages
from kinabs.backends.torch._jacobian import (
    forward_jacobian,
    forward_jacobian_rows,
    reverse_jacobian,
    reverse_jacobian_rows,
)
from kinabs.backends.torch._lowered import lowered
from kinabs.backends.torch._methods import (
    MethodState,
    init_state,
    method_status,
    method_step,
    reset_state,
)
from kinabs.backends.torch._simulate import solve, torch_solver, uses_backsolve
from kinabs.backends.torch._solvers import Rosenbrock, TorchDiffEq
from kinabs.backends.torch._solvers import host as host_module
from kinabs.backends.torch._solvers.host import host_ready

__all__ = ["TorchTrainingProgram", "AdaBelief", "ClipUpdates", "default_optimizer",
           "check_optimizer", "make_optimizer", "CHUNK", "FORWARD_MIN_STARTS"]

#: With ``jacobian="auto"``, forward-mode Jacobians from this many live starts on (fewer:
#: reverse mode, see ``_jacobian``).
FORWARD_MIN_STARTS = 20

#: Iterations per call of :meth:`TorchTrainingProgram.run` (as on JAX: failed starts are
#: resampled between chunks, so the same chunk keeps the two backends' fits alike).
CHUNK = 25

_DTYPE = torch.float64
_DEVICE = torch.device("cpu")


class AdaBelief(torch.optim.Optimizer):
    """AdaBelief (Zhuang et al., 2020) exactly as ``optax.adabelief``: ``eps`` and
    ``eps_root`` default to 1e-16 and ``eps_root`` is added to the second moment at every
    step (torch.optim has no AdaBelief; this is optax's update, written for torch).

    Updates: ``mu = b1 mu + (1-b1) g``, ``nu = b2 nu + (1-b2) (g - mu)^2 + eps_root``,
    ``p -= lr * mu_hat / (sqrt(nu_hat) + eps)`` with bias-corrected ``mu_hat, nu_hat``.

    Example:
        >>> import torch
        >>> p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        >>> opt = AdaBelief([p], lr=0.1)
        >>> p.grad = torch.tensor([1.0, -2.0], dtype=torch.float64); opt.step()
        >>> p.detach()  # first step: lr * g / (0.9 |g|)
        tensor([-0.1111,  0.1111], dtype=torch.float64)
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-16, eps_root: float = 1e-16) -> None:
        if not lr > 0:
            raise ValueError(f"AdaBelief needs lr > 0; got {lr!r}.")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, eps_root=eps_root))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["mu"] = torch.zeros_like(p)
                    st["nu"] = torch.zeros_like(p)
                g = p.grad
                mu = st["mu"].mul_(b1).add_(g, alpha=1.0 - b1)
                err = g - mu
                nu = st["nu"].mul_(b2).addcmul_(err, err, value=1.0 - b2).add_(group["eps_root"])
                st["step"] += 1
                t = st["step"]
                mu_hat = mu / (1.0 - b1 ** t)
                nu_hat = nu / (1.0 - b2 ** t)
                p.sub_(group["lr"] * (mu_hat / (nu_hat.sqrt() + group["eps"])))
        return loss


@dataclasses.dataclass(frozen=True)
class ClipUpdates:
    """An optimizer factory whose updates are clipped, per initialisation, to a global
    norm of at most ``max_norm`` (``optax.clip_by_global_norm`` applied after the
    optimiser, as JAX's ``jax.vmap`` applies it per start). The optimiser state is not
    affected by the clipping, as in optax.

    Example:
        >>> import functools, math, torch
        >>> opt = ClipUpdates(functools.partial(torch.optim.Adam, lr=1e-3), math.log(4))
    """

    factory: Callable[..., torch.optim.Optimizer]
    max_norm: float

    def __post_init__(self) -> None:
        if not (isinstance(self.max_norm, (int, float)) and self.max_norm > 0):
            raise BackendError(f"ClipUpdates.max_norm must be a positive number; got "
                               f"{self.max_norm!r}.")

    def __call__(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return self.factory(params)


def default_optimizer() -> ClipUpdates:
    """The JAX default, on torch: AdaBelief (learning rate 1e-3, optax's eps) with updates
    clipped to a global norm of log(4) per initialisation."""
    return ClipUpdates(functools.partial(AdaBelief, lr=1e-3), math.log(4.0))


def make_optimizer(factory: Any, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """``factory(params)``, or a BackendError saying how to give a torch optimizer."""
    try:
        opt = factory(params)
    except Exception as exc:  # noqa: BLE001 - re-raised with the fix
        raise BackendError(
            f"the torch optimizer factory {factory!r} failed when called with a list of "
            f"parameters ({type(exc).__name__}: {exc}); give a torch.optim class or a "
            "factory such as functools.partial(torch.optim.Adam, lr=1e-3)."
        ) from exc
    if not isinstance(opt, torch.optim.Optimizer):
        raise BackendError(
            f"the torch optimizer factory {factory!r} returned {type(opt).__name__}, not a "
            "torch.optim.Optimizer; give e.g. functools.partial(torch.optim.Adam, lr=1e-3)."
        )
    if isinstance(opt, torch.optim.LBFGS):
        raise BackendError("torch.optim.LBFGS needs a closure and cannot train the starts "
                           "independently; use a first-order optimizer such as Adam.")
    return opt


def check_optimizer(optimizer: Any) -> None:
    """Raise BackendError unless ``optimizer`` is one of kinabs' methods
    (:class:`kinabs.LevenbergMarquardt`, :class:`kinabs.BFGS`), a torch.optim optimizer
    class or a factory ``f(list_of_parameters) -> torch.optim.Optimizer``."""
    if is_method(optimizer):
        return
    module = type(optimizer).__module__ or ""
    if module.startswith("optax") or (hasattr(optimizer, "init") and hasattr(optimizer, "update")
                                      and not callable(optimizer)):
        raise BackendError(
            "the torch backend needs a torch.optim optimizer class or factory, e.g. "
            f"functools.partial(torch.optim.Adam, lr=1e-3); got {optimizer!r}, which looks "
            "like an optax transformation: use backend='jax' for those."
        )
    if isinstance(optimizer, torch.optim.Optimizer):
        raise BackendError(
            f"give the torch backend an optimizer class or factory, not an instance "
            f"({type(optimizer).__name__} already holds its own parameters): kinabs "
            f"creates it for its parameters. E.g. functools.partial(torch.optim."
            f"{type(optimizer).__name__}, lr=1e-3)."
        )
    if not callable(optimizer):
        raise BackendError(
            f"the torch backend needs a torch.optim optimizer class or factory; got "
            f"{type(optimizer).__name__}. E.g. functools.partial(torch.optim.Adam, lr=1e-3)."
        )
    make_optimizer(optimizer, [torch.zeros(1, dtype=_DTYPE, requires_grad=True)])


class _State:
    """The mutable training state: one parameter tensor per start and their optimizer."""

    def __init__(self, params, optimizer, status, stopped):
        self.params: list[torch.Tensor] = params
        self.optimizer: torch.optim.Optimizer = optimizer
        self.status: np.ndarray = status
        self.stopped: np.ndarray = stopped

    def theta(self) -> torch.Tensor:
        return torch.stack([p.detach() for p in self.params])


class TorchTrainingProgram(TrainingProgram):
    """See the module docstring."""

    def __init__(self, problem: FitProblem, optimizer: Any, n_iter: int, *,
                 optimizer_key: str | None = None):
        check_optimizer(optimizer)
        del n_iter, optimizer_key  # eager: nothing to compile or cache
        self.problem = problem
        self.optimizer = optimizer
        self.chunk = CHUNK
        self._clip = optimizer.max_norm if isinstance(optimizer, ClipUpdates) else None
        pb = problem
        # "auto" is the Rosenbrock solver here: each start keeps its own step size, so one
        # start's stiffness neither slows nor changes the others (torchdiffeq shares one
        # step size across the batch)
        (stage,) = solve_stages(pb.solver, explicit_cap=None)
        method = torch_solver(stage.method)
        self.solver = dataclasses.replace(pb.solver, method=method, max_steps=stage.max_steps)
        # unsupported adjoints fail here, not mid-fit
        uses_backsolve(pb.adjoint, isinstance(method, TorchDiffEq))
        self._low = lowered(pb.system, _DEVICE, _DTYPE)
        #: whether this fit's Rosenbrock solves with a discrete adjoint run in numpy
        #: (``_solvers.host``; found at the first Jacobian, see :meth:`_host_solves`)
        self._host: bool | None = None

        def tensor(a, dtype=_DTYPE):
            # a copy: the problem's arrays may be read-only views (of a DataFrame's
            # values), which torch warns about sharing
            return torch.tensor(np.asarray(a), dtype=dtype, device=_DEVICE)

        self._base = tensor(pb.base_parameters)
        self._tidx = tensor(pb.train_index, torch.int64)
        self._exps = [
            dict(t0=float(e.t0), t0_t=tensor(e.t0), ts=tensor(e.times), obs=tensor(e.values),
                 mask=tensor(e.mask, torch.bool),
                 y0=tensor(e.y0), y0_mask=tensor(e.y0_mask, torch.bool),
                 pidx=tensor(e.p_index, torch.int64), pval=tensor(e.p_values),
                 outputs=self._low.fns.outputs_at(e.output_index))
            for e in pb.experiments
        ]
        self._log_space = pb.space == "log"
        self._loss_batch = (self._default_loss if pb.loss is None else self._custom_loss)
        n = len(pb.train_index)
        lower = np.full(n, -np.inf) if pb.lower is None else np.asarray(pb.lower, np.float64)
        upper = np.full(n, np.inf) if pb.upper is None else np.asarray(pb.upper, np.float64)
        #: box bounds (n,) in the optimisation space (+-inf where a parameter is free);
        #: ``_bounded``: whether any is finite
        self._bounded = bool(np.isfinite(lower).any() or np.isfinite(upper).any())
        self._lower, self._upper = tensor(lower), tensor(upper)
        #: kinabs' own method (LevenbergMarquardt, BFGS), or None for a torch.optim one
        self.method: Method | None = optimizer if is_method(optimizer) else None
        self.tests_convergence = self.method is not None
        self._forward_jacobian = False
        #: whether evaluations are residual vectors with their Jacobian
        self._residuals = self.method is not None and self.method.needs == "residuals"
        #: a custom residual loss's vector length (found at the first init)
        self._custom_count: int | None = None
        if self._residuals:
            if pb.loss is not None and not pb.loss.residuals:
                raise DataError(
                    f"{type(self.method).__name__} needs residuals, and the custom loss "
                    "returns a scalar: wrap a function that returns the residuals in "
                    "kinabs.ResidualLoss, or use kinabs.BFGS() for a scalar loss.")
            # forward mode on the default loss's expanded batch; a custom loss is evaluated
            # per start, where forward mode costs one solve per parameter and reverse mode
            # one solve and a backward pass per residual (3x faster measured, see
            # _jacobian), so "auto" takes reverse mode there. torchdiffeq's solvers
            # have no forward mode (custom autograd Functions without jvp).
            auto = self.method.jacobian == "auto"
            self._forward_jacobian = (
                self.method.forward_jacobian(n, pb.n_residuals)
                and not (auto and pb.loss is not None)
                and not isinstance(method, TorchDiffEq))
        #: the residual vector's length of the default loss, and its scale: the default
        #: loss divides the sum of squares by the number of measured values
        self._n_residuals = pb.n_residuals
        self._residual_scale = 1.0 / math.sqrt(max(1, sum(int(np.sum(e.mask))
                                                           for e in pb.experiments)))

    # -- the loss of a batch of initialisations -----------------------------------
    def _to_linear(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.exp2(theta) if self._log_space else theta

    def _params(self, linear: torch.Tensor) -> torch.Tensor:
        """(B, R) trained values -> (B, P) free-parameter vectors."""
        p = self._base.expand(linear.shape[0], -1)
        return p.index_copy(1, self._tidx, linear)

    def _predict(self, p: torch.Tensor, e: dict, ts: torch.Tensor, y0_nat: torch.Tensor,
                 y0_mask: torch.Tensor):
        """Outputs (B, T, M) of one experiment for parameter vectors ``p`` (B, P)."""
        fns = self._low.fns
        if e["pidx"].numel():
            p = p.index_copy(1, e["pidx"], e["pval"].expand(p.shape[0], -1))
        y0, k = fns.init(e["t0_t"], p)
        factors = fns.to_state(e["t0_t"], y0, k)
        y0 = torch.where(y0_mask, y0_nat * factors, y0)
        ys, status, _ = solve(self._low, ts, e["t0"], y0, k, solver=self.solver,
                              adjoint=self.problem.adjoint)
        out = e["outputs"](ts, ys, k[:, None, :])
        return out, np.asarray(status, dtype=np.int64)

    def _default_loss(self, theta: torch.Tensor):
        terms = DEFAULT_TERMS[self.problem.space]
        p = self._params(self._to_linear(theta))
        sse = count = 0.0
        status = np.zeros(theta.shape[0], dtype=np.int64)
        for e in self._exps:
            pred, st = self._predict(p, e, e["ts"], e["y0"], e["y0_mask"])
            a, b = torch.func.vmap(
                lambda pr, _e=e: terms(pr, _e["obs"], _e["mask"], xp))(pred)
            sse, count, status = sse + a, count + b, np.maximum(status, st)
        return sse / count, status

    def _default_residuals(self, theta: torch.Tensor):
        """The default loss's residual vectors (B, m) of ``theta`` (B, R) and the solve
        status (B,): every experiment's (time, species) residuals, flattened and
        concatenated, divided by the square root of the number of measured values (the
        sum of their squares is the default loss)."""
        residuals = DEFAULT_RESIDUALS[self.problem.space]
        p = self._params(self._to_linear(theta))
        parts = []
        status = np.zeros(theta.shape[0], dtype=np.int64)
        for e in self._exps:
            pred, st = self._predict(p, e, e["ts"], e["y0"], e["y0_mask"])
            # elementwise in pred: the data's scales broadcast over the batch
            r = residuals(pred, e["obs"], e["mask"], xp)
            parts.append(r.reshape(r.shape[0], -1))
            status = np.maximum(status, st)
        return torch.cat(parts, dim=1) * self._residual_scale, status

    def _custom_loss(self, theta: torch.Tensor):
        """The user's loss, called once per start and experiment (as JAX's vmap does);
        each ``model(...)`` call is a solve of that one start."""
        values, statuses = [], []
        for row in theta:
            value, st = self._custom_one(row)
            values.append(value)
            statuses.append(st)
        return torch.stack(values), np.asarray(statuses, dtype=np.int64)

    def _custom_one(self, theta: torch.Tensor):
        """The custom loss of one start (R,): (scalar, status); for a residual loss the
        sum of the squared residuals."""
        values, status = self._custom_values(theta)
        if self.problem.loss.residuals:
            r = torch.cat(values) if values else theta.new_zeros((0,))
            return (r * r).sum(), status
        total = torch.zeros((), dtype=_DTYPE, device=_DEVICE)
        for value in values:
            total = total + value
        return total, status

    def _custom_residuals_one(self, theta: torch.Tensor):
        """A residual loss's vector of one start (R,): the flattened arrays it returns
        for each experiment, concatenated; and the solve status."""
        values, status = self._custom_values(theta)
        return (torch.cat(values) if values else theta.new_zeros((0,))), status

    def _custom_values(self, theta: torch.Tensor):
        """What the custom loss returns for each experiment (scalars, or flattened residual
        arrays for a residual loss) for one start (R,), and the worst solve status."""
        pb = self.problem
        custom = pb.loss
        names = pb.train_names
        params = {n: theta[i] for i, n in enumerate(names)}
        values: list[torch.Tensor] = []
        status = 0
        for e, ea in zip(self._exps, pb.experiments):
            statuses: list[int] = []

            def model(ts, y0=None, params=None, _e=e, _ea=ea, _st=statuses):
                p = self._base[None, :]
                lin = dict(params or {})
                if lin:
                    idx = torch.as_tensor([pb.system.parameter_index[k] for k in lin],
                                          device=_DEVICE)
                    vals = torch.stack([_as_tensor(v, f"params[{k!r}]")
                                        for k, v in lin.items()])
                    p = p.index_copy(1, idx, vals[None, :])
                y0_nat, y0_mask = _e["y0"], _e["y0_mask"]
                if y0 is not None:
                    y0 = _as_tensor(y0, "y0")
                    state_index = pb.system.state_index
                    for j, s in enumerate(_ea.species):
                        if s in state_index:
                            i = state_index[s]
                            ok = torch.isfinite(y0[j])
                            y0_nat = y0_nat.clone()
                            y0_nat[i] = torch.where(ok, y0[j], y0_nat[i])
                            y0_mask = y0_mask.clone()
                            y0_mask[i] = ok | y0_mask[i]
                pred, st = self._predict(p, _e, _as_tensor(ts, "ts"), y0_nat, y0_mask)
                _st.append(int(st[0]))
                return pred[0]

            kwargs = dict(custom.kwargs)
            if custom.wants_model:
                kwargs["model"] = model
            value = custom.fn(params, e["ts"], e["obs"].clone(), **kwargs)
            if not isinstance(value, torch.Tensor):
                raise BackendError(
                    "on the torch backend a custom loss must return a torch tensor (write it "
                    f"with torch operations); it returned {type(value).__name__}."
                )
            if custom.residuals:
                value = value.reshape(-1)
            elif value.shape != ():
                raise BackendError(f"the custom loss must return a scalar; it returned shape "
                                   f"{tuple(value.shape)}. Wrap a loss that returns "
                                   "residuals in kinabs.ResidualLoss.")
            _check_tensor(value, "the custom loss's value")
            values.append(value)
            status = max([status, *statuses])
        return values, status

    def _value_and_grad(self, params: list[torch.Tensor], members: np.ndarray):
        """Loss, solve status and gradient of ``members`` (indices into ``params``); the
        gradients are left in ``params[i].grad``."""
        for p in params:
            p.grad = None
        theta = torch.stack([params[i] for i in members])
        with torch.enable_grad():
            loss, status = self._loss_batch(theta)
            finite = torch.isfinite(loss)
            # members are independent: the gradient of the sum is each member's gradient
            total = torch.where(finite, loss, torch.zeros_like(loss)).sum()
            if total.requires_grad:
                total.backward()
        grads = torch.stack([params[i].grad if params[i].grad is not None
                             else torch.zeros_like(params[i]) for i in members])
        ok = ((status == 0) & finite.cpu().numpy()
              & torch.isfinite(grads).all(dim=1).cpu().numpy())
        return loss.detach().cpu().numpy(), status, grads, ok

    def _residuals_and_jacobian(self, theta: torch.Tensor):
        """Residuals (B, m), solve status (B,) and Jacobian (B, m, R) at ``theta``
        (B, R), by the mode ``LevenbergMarquardt.jacobian`` asks for (see ``_jacobian``);
        reverse mode from the first time forward mode meets an operation without a
        forward derivative (with a warning)."""
        if self._forward_jacobian:
            try:
                return self._jacobian(theta)
            except (NotImplementedError, RuntimeError) as exc:
                if not (isinstance(exc, NotImplementedError) or "forward AD" in str(exc)):
                    raise
                warnings.warn(
                    f"forward-mode derivatives are not available for this fit on torch "
                    f"({exc}); taking the Jacobian by reverse mode instead.",
                    RuntimeWarning, stacklevel=2)
                self._forward_jacobian = False
        return self._jacobian(theta)

    def _jacobian(self, theta: torch.Tensor):
        if self.problem.loss is None:
            # "auto": eager torch pays per operation, so few starts take the cheaper
            # reverse pass (measured on serine, 10 parameters and 20 residuals: 5 starts
            # 0.072 s reverse against 0.13 s forward, 20 starts 0.16 s both, 100 starts
            # 0.93 s against 0.28 s). Where reverse mode's solves run in numpy (host;
            # forward mode's dual tensors cannot), reverse mode is the cheaper one at
            # every batch measured (5 to 250 starts, see _jacobian): "auto" takes it
            host = self._host_solves() and host_module.ENABLED
            forward = self._forward_jacobian and (
                self.method.jacobian == "forward"
                or (not host and theta.shape[0] >= FORWARD_MIN_STARTS))
            if forward:
                return forward_jacobian(self._default_residuals, theta)
            return reverse_jacobian(self._default_residuals, theta, self._n_residuals)
        if self._forward_jacobian:
            return forward_jacobian_rows(self._custom_residuals_one, theta)
        return reverse_jacobian_rows(self._custom_residuals_one, theta)

    def _host_solves(self) -> bool:
        """Whether this fit's Rosenbrock solves with a discrete adjoint run in numpy
        (``_solvers.host``) when no forward-mode tangent rides on them."""
        if self._host is None:
            # host_ready's test on the system (its tensors' side: this fit's device and
            # dtype, the same for every tensor it solves)
            fns = host_ready(self._low.step)
            self._host = bool(fns is not None and fns.adjoint and _DEVICE.type == "cpu"
                              and _DTYPE == torch.float64
                              and isinstance(self.solver.method, Rosenbrock))
        return self._host

    def _evaluate(self, trial: torch.Tensor):
        """What the method needs at ``trial`` (B, R): (value, derivative, status, ok)."""
        if self.method.needs == "residuals":
            r, status, jac = self._residuals_and_jacobian(trial)
            finite = (torch.isfinite(r).all(dim=1)
                      & torch.isfinite(jac).all(dim=2).all(dim=1)).cpu().numpy()
            return r, jac, status, (status == 0) & finite
        params = [row.detach().clone().requires_grad_(True) for row in trial]
        loss, status, grads, ok = self._value_and_grad(params, np.arange(len(params)))
        value = torch.as_tensor(loss, dtype=_DTYPE, device=_DEVICE)
        return value, grads, status, ok

    def _residuals_only(self, points: torch.Tensor):
        """The residuals alone (no derivative) at ``points`` (B, R), and whether each
        evaluation succeeded: (r (B, m), ok (B,)) tensors (least-squares methods' extra
        evaluations)."""
        with torch.no_grad():
            if self.problem.loss is None:
                r, status = self._default_residuals(points)
            else:
                rows = [self._custom_residuals_one(p) for p in points]
                r = torch.stack([row for row, _ in rows]) if rows else points.new_zeros(
                    (0, self._custom_count or 0))
                status = np.asarray([st for _, st in rows], dtype=np.int64)
        ok = torch.as_tensor(status == 0, device=_DEVICE) & torch.isfinite(r).all(dim=1)
        return r, ok

    def _residual_count(self, theta: torch.Tensor) -> int:
        """Length of the residual vector of a least-squares method (0 for other methods):
        the default loss's (every (time, species) cell), or a custom residual loss's
        (found by evaluating it once, at the first start ``theta[0]`` seen, and kept)."""
        if not self._residuals:
            return 0
        if self.problem.loss is None:
            return self._n_residuals
        if self._custom_count is None:
            if not theta.shape[0]:
                return 0
            with torch.no_grad():
                self._custom_count = int(self._custom_residuals_one(theta[0])[0].numel())
        return self._custom_count

    def _method_step(self, state: MethodState) -> np.ndarray:
        bounds = (self._lower, self._upper) if self._bounded else (None, None)
        return method_step(self.method, state, self._evaluate, *bounds,
                           self.problem.loss_threshold,
                           self._residuals_only if self._residuals else None)

    # -- one iteration --------------------------------------------------------------
    def _step(self, state: _State) -> np.ndarray:
        n = len(state.params)
        recorded = np.full(n, np.nan)
        live = (state.status == 0) & ~state.stopped
        members = np.flatnonzero(live)
        if members.size == 0:
            return recorded
        loss, st, _, ok = self._value_and_grad(state.params, members)
        threshold = self.problem.loss_threshold
        stop = ok & (loss < threshold) if threshold is not None else np.zeros_like(ok)
        do = ok & ~stop
        update = np.zeros(n, dtype=bool)
        update[members[do]] = True
        before = state.theta()
        for i in np.flatnonzero(~update):
            state.params[i].grad = None
        if update.any():
            state.optimizer.step()
            with torch.no_grad():
                after = state.theta()
                keep = torch.as_tensor(~update, device=_DEVICE)[:, None]
                if self._clip is not None:
                    delta = after - before
                    norm = torch.linalg.vector_norm(delta, dim=1, keepdim=True)
                    clipped = before + (delta / norm) * self._clip
                    after = torch.where(norm < self._clip, after, clipped)
                if self._bounded:
                    after = torch.clamp(after, self._lower, self._upper)
                after = torch.where(keep, before, after)
                for i, p in enumerate(state.params):
                    p.copy_(after[i])
        for p in state.params:
            p.grad = None
        bad = members[~ok]
        state.status[bad] = np.where(st[~ok] != 0, st[~ok], 4)
        state.stopped[members[stop]] = True
        recorded[members[ok]] = loss[ok]
        return recorded

    # -- state ----------------------------------------------------------------------
    def _copy(self, state: _State) -> _State:
        params = [p.detach().clone().requires_grad_(True) for p in state.params]
        opt = make_optimizer(self.optimizer, params)
        # load_state_dict keeps tensors that already have the right dtype and device, and
        # optimizers update their state in place: copy it, or the old state would move
        opt.load_state_dict(copy.deepcopy(state.optimizer.state_dict()))
        return _State(params, opt, state.status.copy(), state.stopped.copy())

    # -- TrainingProgram API ----------------------------------------------------------
    def init(self, theta):
        th = np.asarray(theta, dtype=np.float64)
        if self.method is not None:
            start = torch.tensor(th, dtype=_DTYPE, device=_DEVICE)
            return init_state(self.method, start, self._residual_count(start))
        params = [torch.tensor(row, dtype=_DTYPE, device=_DEVICE, requires_grad=True)
                  for row in th]
        n = th.shape[0]
        return _State(params, make_optimizer(self.optimizer, params),
                      np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool))

    def run(self, state, n_iter):
        if self.method is not None:
            state = state.copy()
            losses = np.full((state.status.shape[0], n_iter), np.nan)
            for j in range(n_iter):
                losses[:, j] = self._method_step(state)
            return state, losses
        state = self._copy(state)
        losses = np.full((len(state.params), n_iter), np.nan)
        for j in range(n_iter):
            losses[:, j] = self._step(state)
        return state, losses

    def reset(self, state, mask, theta):
        th = np.asarray(theta, dtype=np.float64)
        if self.method is not None:
            start = torch.tensor(th, dtype=_DTYPE, device=_DEVICE)
            return reset_state(self.method, state, np.asarray(mask, dtype=bool), start,
                               self._residual_count(start))
        state = self._copy(state)
        with torch.no_grad():
            for i in np.flatnonzero(np.asarray(mask)):
                p = state.params[i]
                p.copy_(torch.as_tensor(th[i], dtype=_DTYPE, device=_DEVICE))
                state.optimizer.state.pop(p, None)  # fresh state, made at its next step
        m = np.asarray(mask, dtype=bool)
        state.status[m] = 0
        state.stopped[m] = False
        return state

    def theta(self, state):
        if self.method is not None:
            return state.method["x"].cpu().numpy().copy()
        return state.theta().cpu().numpy()

    def status(self, state):
        if self.method is not None:
            return method_status(state)
        return state.status.copy()

    def counts(self, state):
        """(iterations, evaluations) of each start for kinabs' methods (None otherwise)."""
        if self.method is None:
            return None
        return (state.method["iterations"].cpu().numpy().copy(),
                state.method["evaluations"].cpu().numpy().copy())

    def stopped(self, state):
        return state.stopped.copy()

    def final_loss(self, state):
        """Loss at the current parameters of every member (NaN where it fails). Failed
        members are not solved again: the Trainer reports no final loss for them. For
        kinabs' methods: the loss at the accepted point, as the method holds it (no
        solve)."""
        if self.method is not None:
            f = state.method["f"].cpu().numpy()
            return np.where(np.isfinite(f) & (state.status == 0), f, np.nan)
        out = np.full(len(state.params), np.nan)
        members = np.flatnonzero(state.status == 0)
        if members.size:
            params = [p.detach().clone().requires_grad_(True) for p in state.params]
            loss, _, _, ok = self._value_and_grad(params, members)
            out[members[ok]] = loss[ok]
        return out

    def value_and_grad(self, theta: np.ndarray):
        """Loss, status and gradient (in the optimisation space) of each row of ``theta``
        (N, R): what one iteration computes, without an update."""
        params = [torch.tensor(row, dtype=_DTYPE, device=_DEVICE, requires_grad=True)
                  for row in np.asarray(theta, dtype=np.float64)]
        loss, status, grads, _ = self._value_and_grad(params, np.arange(len(params)))
        return loss, status, grads.cpu().numpy()


def _check_tensor(x: torch.Tensor, name: str) -> None:
    if x.dtype != _DTYPE or x.device != _DEVICE:
        raise BackendError(
            f"{name} is {x.dtype} on {x.device}; the torch training program works in "
            f"float64 on {_DEVICE}: convert it with .to({str(_DEVICE)!r}, torch.float64)."
        )


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    """A float64 CPU tensor from ``x``; tensors of another dtype or device are errors
    (a silent conversion could cut the gradient or lose precision)."""
    if isinstance(x, torch.Tensor):
        _check_tensor(x, name)
        return x
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=_DTYPE, device=_DEVICE)

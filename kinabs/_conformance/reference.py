"""The third opinion of a conformance check: kinabs' generated functions evaluated with
numpy and integrated by scipy's LSODA at tight tolerances (no JAX, no torch).

It computes, for a :class:`~kinabs._problem.FitProblem` with the default losses, the
trajectories at the data's time points, the loss of either optimisation space, and the
gradient in log2 space by central finite differences (one set of perturbed solves gives
the gradient of both spaces: ``d/dp = d/dlog2(p) / (p ln 2)``).

Finite differences are of fourth order (steps -2h, -h, h, 2h in log2 units): the
truncation error is about ``h**4/30`` times the fifth derivative, and the solver's noise
``e`` (not smooth in the parameters) adds about ``e/h``. Second-order differences are not
enough: at serine's true parameters the gradient is 5e-9 while the third derivative is
O(0.1), so a step of 1e-4 errs by ~2e-10, 4 % of the gradient. With ``h = 1e-3``, LSODA at
rtol 1e-12 (loss noise ~1e-20 there) both terms stay below 1e-14. Where the second- and
fourth-order differences of a component disagree, its step is refined until two steps
agree: a spiking oscillator (Borghans 1997) has a fifth derivative so large that steps of
1e-3 and 1e-4 give gradients 10 % and 67 % off, 1e-6 gives 4e-5.

Example:
    >>> import kinabs, numpy as np
    >>> from kinabs._conformance.reference import ScipyReference
    >>> tr = kinabs.Trainer(model=kinabs.load_sbml(kinabs.example_model_path()),
    ...                     data=kinabs.example_data_path(), progress=False)
    >>> ref = ScipyReference(tr._problem())
    >>> loss = ref.loss(ref.base[ref.train_index][None, :], "log")
    >>> bool(loss[0] < 1e-12)
    True
"""

from __future__ import annotations

import numpy as np

from kinabs._losses import DEFAULT_TERMS, mean_centered_scale
from kinabs._lowering.jacobian import generate_jacobian
from kinabs._lowering.ops import numpy_ops

__all__ = ["ScipyReference"]

#: LSODA tolerances of the reference (relative, and absolute in units of the largest
#: initial value), far inside the tolerances the backends are checked with.
REF_RTOL = 1e-12
REF_ATOL = 1e-16


class ScipyReference:
    """Solve a fit problem's experiments with numpy + scipy (one LSODA solve per row)."""

    def __init__(self, problem, *, rtol: float = REF_RTOL, atol: float = REF_ATOL,
                 fd_step: float = 1e-3):
        import array_api_compat.numpy as xp

        self.problem = problem
        self.xp = xp
        self.rtol, self.atol, self.fd_step = rtol, atol, fd_step
        ops = numpy_ops()
        self.fns = problem.system.generated.bind(ops)
        try:
            self.jac = generate_jacobian(problem.system).bind(ops).jac
        except Exception:  # no symbolic Jacobian (e.g. a non-differentiable op): LSODA's own
            self.jac = None
        self.base = np.asarray(problem.base_parameters, dtype=np.float64)
        self.train_index = np.asarray(problem.train_index)

    # -- trajectories ----------------------------------------------------------------
    def _solve(self, p: np.ndarray, e) -> tuple[np.ndarray, bool]:
        """Outputs (T, M) of experiment ``e`` for the full parameter vector ``p``."""
        from scipy.integrate import solve_ivp

        fns = self.fns
        if e.p_index.size:
            p = p.copy()
            p[e.p_index] = e.p_values
        t0 = np.float64(e.t0)
        y0, k = fns.init(t0, p)
        y0 = np.asarray(y0, dtype=np.float64)
        k = np.asarray(k, dtype=np.float64)
        factors = np.asarray(fns.to_state(t0, y0, k), dtype=np.float64)
        y0 = np.where(e.y0_mask, e.y0 * factors, y0)
        times = np.asarray(e.times, dtype=np.float64)
        ok = True
        if y0.size and times[-1] > e.t0:
            jac = None
            if self.jac is not None:
                def jac(t, y):
                    return np.asarray(self.jac(np.float64(t), y, k), dtype=np.float64)
            sol = solve_ivp(lambda t, y: np.asarray(fns.rhs(np.float64(t), y, k)),
                            (e.t0, times[-1]), y0, method="LSODA", t_eval=times,
                            rtol=self.rtol, atol=self.atol * max(1.0, np.abs(y0).max()),
                            jac=jac)
            ok = bool(sol.success) and sol.y.shape[1] == times.size
            ys = sol.y.T if ok else np.full((times.size, y0.size), np.nan)
        else:
            ys = np.broadcast_to(y0, (times.size, y0.size))
        outputs = fns.outputs_at(e.output_index)
        with np.errstate(all="ignore"):
            out = np.stack([np.asarray(outputs(np.float64(t), y, k))
                            for t, y in zip(times, ys)])
        return out, ok

    def trajectories(self, parameters: np.ndarray) -> list[np.ndarray]:
        """Per experiment, outputs (B, T, M) for full parameter vectors (B, P); NaN rows
        where LSODA fails."""
        out = []
        for e in self.problem.experiments:
            out.append(np.stack([self._solve(np.asarray(p, dtype=np.float64), e)[0]
                                 for p in np.atleast_2d(parameters)]))
        return out

    # -- losses ----------------------------------------------------------------------
    def _losses(self, p: np.ndarray, preds: list | None = None) -> dict[str, float]:
        """The default loss of both spaces for one full parameter vector (the predictions
        are appended to ``preds`` when given)."""
        sums = {s: [0.0, 0.0] for s in DEFAULT_TERMS}
        for e in self.problem.experiments:
            pred, ok = self._solve(p, e)
            if preds is not None:
                preds.append(pred if ok else np.full_like(pred, np.nan))
            for space, terms in DEFAULT_TERMS.items():
                sse, n = terms(pred, e.values, e.mask, self.xp)
                sums[space][0] += float(sse) if ok else np.nan
                sums[space][1] += float(n)
        return {s: a / b for s, (a, b) in sums.items()}

    def gradient_floor(self, linear: np.ndarray, rel_tol: float, abs_tol: float
                       ) -> dict[str, np.ndarray]:
        """space -> (B,) the largest change of any gradient component (in that space's
        coordinates) that trajectory differences of up to ``rel_tol * |y| + abs_tol`` can
        make: ``(2/n) sum |t / scale| |d pred / d theta_j| / scale`` with the prediction
        sensitivities by central differences. Near a perfect fit the gradient is small and
        dominated by such differences (see :mod:`kinabs._conformance.check`)."""
        rows = np.atleast_2d(np.asarray(linear, dtype=np.float64))
        h = self.fd_step
        out = {s: np.zeros(len(rows)) for s in DEFAULT_TERMS}
        for b, row in enumerate(rows):
            centre: list = []
            self._losses(self._full(row), centre)
            worst = {s: 0.0 for s in out}
            for j in range(row.size):
                up, down = row.copy(), row.copy()
                up[j] *= 2.0 ** h
                down[j] *= 2.0 ** -h
                pu: list = []
                pd: list = []
                self._losses(self._full(up), pu)
                self._losses(self._full(down), pd)
                for s in out:
                    total, count = 0.0, 0.0
                    for e, yc, yu, yd in zip(self.problem.experiments, centre, pu, pd):
                        sens = (yu - yd) / (2 * h)  # d pred / d log2(theta_j)
                        if s == "linear":
                            sens = sens / (row[j] * np.log(2))
                        mask = np.asarray(e.mask, dtype=bool)
                        scale = _scale(e.values, mask, s)
                        tol = rel_tol * np.abs(yc) + abs_tol
                        with np.errstate(all="ignore"):
                            total += np.nansum(np.where(mask, 2 * tol * np.abs(sens), 0.0)
                                               / scale ** 2)
                        count += mask.sum()
                    worst[s] = max(worst[s], total / max(count, 1.0))
            for s in out:
                out[s][b] = worst[s]
        return out

    def _full(self, linear: np.ndarray) -> np.ndarray:
        p = self.base.copy()
        p[self.train_index] = linear
        return p

    def loss(self, linear: np.ndarray, space: str) -> np.ndarray:
        """The default loss of ``space`` for each row of trained values (B, R), linear."""
        return np.asarray([self._losses(self._full(r))[space] for r in np.atleast_2d(linear)])

    def loss_and_gradient(self, linear: np.ndarray, *, rel_tol: float = 0.0,
                          abs_tol: float = 0.0) -> dict[str, tuple[np.ndarray, ...]]:
        """space -> (loss (B,), gradient (B, R) in that space's coordinates, floor (B,))
        for each row of trained values (B, R, linear, all positive), by central
        differences in log2 space.

        ``floor``: the largest change of a gradient component that trajectory differences
        of up to ``rel_tol * |y| + abs_tol`` can make, ``(2/n) sum t |d pred/d theta_j| /
        scale**2`` with the prediction sensitivities from the same perturbed solves. Near a
        perfect fit the gradient is small and dominated by such differences."""
        rows = np.atleast_2d(np.asarray(linear, dtype=np.float64))
        exps = self.problem.experiments
        out = {s: (np.zeros(len(rows)), np.zeros(rows.shape), np.zeros(len(rows)))
               for s in DEFAULT_TERMS}
        for b, row in enumerate(rows):
            centre_preds: list = []
            centre = self._losses(self._full(row), centre_preds)
            for s in out:
                out[s][0][b] = centre[s]
            steps = [self._differences(row, j, self.fd_step) for j in range(row.size)]
            steps = self._refined(row, steps)
            for j, (h, d4, _, preds) in enumerate(steps):
                for s in out:
                    to_space = 1.0 if s == "log" else 1.0 / (row[j] * np.log(2))
                    out[s][1][b, j] = d4[s] * to_space
                    total, count = 0.0, 0.0
                    for i, (e, yc) in enumerate(zip(exps, centre_preds)):
                        mask = np.asarray(e.mask, dtype=bool)
                        sens = np.abs(_d4([p[i] for p in preds], h)) * to_space
                        tol = rel_tol * np.abs(yc) + abs_tol
                        with np.errstate(all="ignore"):
                            total += np.nansum(np.where(mask, 2 * tol * sens, 0.0)
                                               / _scale(e.values, mask, s) ** 2)
                        count += mask.sum()
                    out[s][2][b] = max(out[s][2][b], total / max(count, 1.0))
        return out

    def _differences(self, row: np.ndarray, j: int, h: float):
        """``(h, D4, D2, preds)``: fourth- and second-order central differences of each
        space's loss by log2 of parameter ``j``, from solves at -2h, -h, h, 2h."""
        losses, preds = [], []
        for k in (-2, -1, 1, 2):
            moved = row.copy()
            moved[j] *= 2.0 ** (k * h)
            pk: list = []
            losses.append(self._losses(self._full(moved), pk))
            preds.append(pk)
        d4 = {s: _d4([x[s] for x in losses], h) for s in DEFAULT_TERMS}
        d2 = {s: (losses[2][s] - losses[1][s]) / (2 * h) for s in DEFAULT_TERMS}
        return h, d4, d2, preds

    def _refined(self, row: np.ndarray, steps: list) -> list:
        """Smaller steps where the truncation error may matter. A component whose second-
        and fourth-order differences differ by more than ``FD_SETTLED`` of the gradient's
        largest component is differenced again with steps 10x smaller, until two
        successive steps agree (the coarser is kept: less solver noise) or
        ``FD_REFINEMENTS`` are spent (the finest is kept). A spiking oscillator
        (Borghans 1997) needs 1e-6 where serine is settled at 1e-3."""
        # The largest component sets the scale, and a truncated one can be far too large
        # (Borghans: 0.1 at step 1e-3, 1.2e-6 in truth): a second pass with the scale
        # of the refined gradient.
        for _pass in range(2):
            with np.errstate(all="ignore"):
                big = {s: max(abs(st[1][s]) for st in steps) for s in DEFAULT_TERMS}

            def near(a: dict, b: dict, big=big) -> bool:
                return all(abs(a[s] - b[s]) <= FD_SETTLED * big[s] for s in DEFAULT_TERMS)

            out = []
            for j, cur in enumerate(steps):
                if not near(cur[1], cur[2]):
                    for _refinement in range(FD_REFINEMENTS):
                        finer = self._differences(row, j, cur[0] / 10)
                        if near(cur[1], finer[1]):
                            break
                        cur = finer
                out.append(cur)
            settled = all(a[0] == b[0] for a, b in zip(out, steps))
            steps = out
            if settled:
                break
        return steps


#: A finite-difference component is settled when two estimates differ by at most this
#: fraction of the gradient's largest component (a fifth of the gradient check's 1e-4).
FD_SETTLED = 2e-5
#: At most this many 10x smaller steps per component.
FD_REFINEMENTS = 3


def _d4(values: list, h: float):
    """The derivative at 0 from values at -2h, -h, h, 2h (error O(h**4))."""
    m2, m1, p1, p2 = values
    return (8.0 * (p1 - m1) - (p2 - m2)) / (12.0 * h)


def _scale(obs: np.ndarray, mask: np.ndarray, space: str) -> np.ndarray:
    """The per-species divisor of the default loss of ``space`` (see kinabs._losses)."""
    if space != "log":
        return np.ones(obs.shape[1])
    import array_api_compat.numpy as xp  # lazily: it costs `import kinabs` 0.1 s

    return mean_centered_scale(obs, mask, xp)

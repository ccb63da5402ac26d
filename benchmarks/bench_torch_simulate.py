"""Per-call cost of ``kinabs.simulate(..., backend="torch")`` on small models (issue 18).

For each model: the median of ``--calls`` calls after one warm-up call, of
``simulate(model, linspace(0, T, 10), solver=SolverOptions(rtol=1e-8, atol=1e-10))``,

* ``torchdiffeq``: the explicit stage by torchdiffeq's dopri5 (what "auto" ran before
  kinabs' own Dormand-Prince; forced here by turning ``per_member`` off);
* ``torch``: what "auto" runs now (``_solvers.dopri5`` without gradients);
* ``stiff``: ``method="stiff"`` (the Rosenbrock solver with the step functions);
* ``jax``: the JAX backend beside it (``--no-jax`` to leave it out).

Accepted steps are printed beside (-1: torchdiffeq does not count them), and the largest
difference from the JAX result in units of ``1e-6 |jax| + 1e-9`` (at most 1: agreement to
1e-6 relative, as ``tests/test_torch_simulate_speed_path.py`` asserts for serine).

Run:  python benchmarks/bench_torch_simulate.py [--calls 20] [--no-jax]
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np
from _timing import median_ms  # benchmarks/ is the script's folder

import kinabs
from kinabs._model import sym


def decay_chain(n: int = 5) -> kinabs.Model:
    """A1 -> A2 -> ... -> An, mass action with rates 1, 1/2, ..., a small non-stiff model."""
    sp = {f"A{i}": kinabs.Species(f"A{i}", "c", initial_concentration=1.0 if i == 1 else 0.0)
          for i in range(1, n + 1)}
    pars = {f"k{i}": kinabs.Parameter(f"k{i}", 1.0 / i) for i in range(1, n)}
    R = kinabs.SpeciesReference
    rxn = {f"r{i}": kinabs.Reaction(f"r{i}", sym(f"k{i}") * sym(f"A{i}"), (R(f"A{i}"),),
                                    (R(f"A{i + 1}"),)) for i in range(1, n)}
    return kinabs.Model(id="chain", compartments={"c": kinabs.Compartment("c", 1.0)},
                        species=sp, parameters=pars, reactions=rxn)


@contextlib.contextmanager
def torchdiffeq_only():
    """Every explicit solve by torchdiffeq, as before kinabs' own Dormand-Prince."""
    from kinabs.backends.torch import _simulate
    from kinabs.backends.torch._solvers import explicit

    saved = explicit.per_member, _simulate.per_member
    explicit.per_member = _simulate.per_member = lambda *a, **k: False
    try:
        yield
    finally:
        explicit.per_member, _simulate.per_member = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--no-jax", action="store_true")
    args = ap.parse_args()
    models = {"serine": (kinabs.load_sbml(kinabs.example_model_path()), 10.0),
              "decay chain (5 states)": (decay_chain(), 10.0)}
    tol = dict(rtol=1e-8, atol=1e-10)
    for name, (model, t_end) in models.items():
        ts = np.linspace(0.0, t_end, 10)
        ref = None
        if not args.no_jax:
            ref = kinabs.simulate(model, ts, solver=kinabs.SolverOptions(**tol), backend="jax")
        print(f"{name}: median of {args.calls} calls after a warm-up")
        rows = [("torchdiffeq", "auto", torchdiffeq_only),
                ("torch", "auto", contextlib.nullcontext),
                ("stiff", "stiff", contextlib.nullcontext)]
        if not args.no_jax:
            rows.append(("jax", "auto", contextlib.nullcontext))
        for label, method, ctx in rows:
            backend = "jax" if label == "jax" else "torch"
            opts = kinabs.SolverOptions(method=method, **tol)

            def call(opts=opts, backend=backend, model=model, ts=ts):
                return kinabs.simulate(model, ts, solver=opts, backend=backend)

            with ctx():
                ms = median_ms(call, args.calls)
                res = call()
            diff = ""
            if ref is not None:
                d = np.abs(res.values - ref.values) / (1e-6 * np.abs(ref.values) + 1e-9)
                diff = f"  vs jax: max |diff| / (1e-6 |jax| + 1e-9) = {d.max():.2f}"
            print(f"  {label:12s} {ms:9.2f} ms  steps {int(res.steps[0]):5d}{diff}")


if __name__ == "__main__":
    main()

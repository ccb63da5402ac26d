"""A hybrid kinetic model on torch: a small neural network supplies one rate law.

The pathway ``A -> B -> C ->`` has three reactions; the data come from Michaelis-Menten
kinetics for all of them. In the hybrid model the rate of ``B -> C`` is unknown and an
MLP ``v(B)`` stands in for it, while the two other reactions keep their kinetic rate laws
(from a kinabs model, as a :class:`kinabs.backends.torch.VectorField`). The MLP and the
kinetic parameters (log values, starting 2x off) are trained together with torch.optim
through a torchdiffeq solve, on synthetic data from four initial conditions.

Run:  python examples/hybrid_torch.py [--quick] [--iters N] [--seed S]
(--quick trains 80 iterations, under a minute; the tests run it that way.)
"""

import argparse
import time

import numpy as np
import torch
import torchdiffeq

import kinabs
from kinabs import ratelaws
from kinabs.backends.torch import VectorField

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true")
parser.add_argument("--iters", type=int, default=None)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
n_iter = args.iters or (80 if args.quick else 1000)
torch.manual_seed(args.seed)
rng = np.random.default_rng(args.seed)
TRUE = dict(v1=1.0, k1=0.5, v2=0.8, k2=0.3, k3=0.4)


def pathway(with_b_to_c: bool) -> kinabs.Model:
    """A -> B -> C -> with Michaelis-Menten rates; without ``B -> C`` if asked."""
    b = kinabs.ModelBuilder("pathway")
    b.compartment("cell", 1.0)
    for s in "ABC":
        b.species(s, initial_concentration=0.0)
    for name, value in TRUE.items():
        b.parameter(name, value)
    b.reaction("r1", "A -> B", rate=ratelaws.michaelis_menten("A", vmax="v1", km="k1"))
    if with_b_to_c:
        b.reaction("r2", "B -> C", rate=ratelaws.michaelis_menten("B", vmax="v2", km="k2"))
    b.reaction("r3", "C ->", rate=ratelaws.mass_action("k3", "C"))
    return b.build()


# -- synthetic data: the full model from four starts, 3% noise -------------------------
times = np.linspace(0.0, 8.0, 17)
starts = [{"A": a0, "B": 0.1, "C": 0.0} for a0 in (0.5, 1.0, 2.0, 4.0)]
truth = kinabs.simulate(pathway(True), times, initial=starts, outputs=list("ABC"),
                        solver=kinabs.SolverOptions(rtol=1e-10, atol=1e-12), backend="torch")
data = truth.values * (1.0 + 0.03 * rng.standard_normal(truth.values.shape))
data_t = torch.as_tensor(data)  # (experiments, times, species)
ts = torch.as_tensor(times)
y0 = torch.as_tensor([[s[k] for k in "ABC"] for s in starts], dtype=torch.float64)


class Hybrid(torch.nn.Module):
    """dy/dt = kinetic part (a kinabs VectorField) + stoichiometry x MLP(B)."""

    def __init__(self):
        super().__init__()
        kinetic = pathway(False)
        system = kinabs.lower(kinetic)
        start = system.parameter_vector().copy()
        for name in ("v1", "k3"):  # start 2x off the truth
            start[system.parameter_index[name]] *= 2.0
        # v2, k2 stay in the model as unused parameters; train the used ones only
        self.field = VectorField(kinetic, start, trainable=["v1", "k1", "k3"], log_space=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 1), torch.nn.Softplus()).double()
        self.register_buffer("stoich", torch.tensor([0.0, -1.0, 1.0], dtype=torch.float64))

    def rate_b_to_c(self, b: torch.Tensor) -> torch.Tensor:
        return self.mlp(b[..., None])[..., 0] * b  # zero flux at B = 0, positive

    def forward(self, t, y):
        return self.field(t, y) + self.rate_b_to_c(y[..., 1])[..., None] * self.stoich


model = Hybrid()
opt = torch.optim.Adam([{"params": model.mlp.parameters(), "lr": 2e-2},
                        {"params": model.field.parameters(), "lr": 2e-2}])


def predict():
    # the module as it is (model(t, y)) also works; binding the constants once per solve
    # saves recomputing them from the parameters at every right-hand-side evaluation
    _, k = model.field.initial()
    rhs = model.field.lowered.fns.rhs

    def f(t, y):
        return rhs(t, y, k) + model.rate_b_to_c(y[..., 1])[..., None] * model.stoich

    ys = torchdiffeq.odeint(f, y0, ts, method="rk4", options={"step_size": 0.25})
    return ys.transpose(0, 1)  # (times, experiments, species) -> (experiments, times, ...)


t_start = time.perf_counter()
losses = []
for it in range(n_iter):
    opt.zero_grad()
    loss = torch.mean((predict() - data_t) ** 2)
    loss.backward()
    opt.step()
    losses.append(loss.item())
    if it % max(1, n_iter // 10) == 0:
        print(f"iteration {it:5d}  loss {losses[-1]:.3e}", flush=True)
seconds = time.perf_counter() - t_start

with torch.no_grad():
    final = torch.mean((predict() - data_t) ** 2).item()
    fitted = dict(zip(model.field.trainable, torch.exp(model.field.theta).tolist()))
    b_max = float(np.nanmax(data[..., 1]))
    grid = torch.linspace(0.05, b_max, 8, dtype=torch.float64)  # the range the data cover
    learned = model.rate_b_to_c(grid)
    mm = TRUE["v2"] * grid / (TRUE["k2"] + grid)
    rate_err = (torch.abs(learned - mm).max() / mm.max()).item()
print(f"trained {n_iter} iterations in {seconds:.1f} s")
print(f"initial loss {losses[0]:.3e}  final loss {final:.3e}")
print("kinetic parameters (true " +
      ", ".join(f"{k}={TRUE[k]}" for k in fitted) + "): " +
      ", ".join(f"{k}={v:.3f}" for k, v in fitted.items()))
print(f"learned rate of B -> C vs Michaelis-Menten on B in [0.05, {b_max:.2f}]: max error "
      f"{100 * rate_err:.1f}% of its largest value")

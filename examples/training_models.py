"""The seed tutorial "Training metabolic kinetic models", with kinabs.

Fits the Smallbone 2013 serine model to its data: 5 Latin hypercube starts x 300
iterations, the loss plot, a second round of 500 iterations from the results with the
joined plot, linear space, adam, and the custom loss with ``to_include``.

Run:  python examples/training_models.py [--quick] [--out FOLDER]
(--quick uses a few iterations; the tests run it that way.)
"""

import argparse
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

import kinabs
from kinabs import Trainer, exponentiate_parameters

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true")
parser.add_argument("--out", default="examples-output")
args = parser.parse_args()
n1, n2 = (6, 4) if args.quick else (300, 500)
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

# load the model and the data
model = kinabs.load_sbml(kinabs.example_model_path())
dataset = pd.read_csv(kinabs.example_data_path(), index_col=0)

# the trainer: model, data and 300 iterations of gradient descent
trainer = Trainer(model=model, data=dataset, n_iter=n1)

# Latin hypercube initial guesses around all-ones base values (seeded: repeatable)
base_parameters = dict(zip(trainer.parameters, np.ones(len(trainer.parameters))))
parameter_sets = trainer.latinhypercube_sampling(base_parameters, lower_bound=1 / 10,
                                                 upper_bound=10, N=5, seed=42)

# train: every start at once, in one compiled program
optimized_parameters, loss_per_iteration = trainer.train()
round1 = trainer.results
round1.plot_loss(out / "loss_per_iter.png")
print(round1.summary())

# next round from the optimised parameters, as the seed does it ...
trainer.parameter_sets = pd.DataFrame(optimized_parameters).T
trainer.n_iter = n2
optimized_parameters2, loss_per_iteration2 = trainer.train()
# ... or resumed from the results, so the loss curves (and optimiser state) join
trainer.n_iter = n2
joined = trainer.train(resume=round1)
joined.plot_loss(out / "loss_per_iter_extended.png")
joined.plot_fit(out / "fit.png")
print(f"after {joined.loss_history.shape[1]} iterations: best loss {joined.best_loss:.3g}")

# linear parameter space (mean squared error loss by default)
trainer = Trainer(model=model, data=dataset, n_iter=n1, optim_space="linear")
trainer.parameter_sets = parameter_sets
print("linear space:", trainer.train())

# any optax optimiser
trainer = Trainer(model=model, data=dataset, n_iter=n1, optimizer=optax.adam(learning_rate=1e-3))
trainer.parameter_sets = parameter_sets
print("adam:", trainer.train())


# a custom loss: mandatory arguments params, ts, ys; the model and extra keyword arguments
# (here to_include) are passed by the trainer. In log space it exponentiates itself.
def log_mean_centered_loss_func2(params, ts, ys, model, to_include):
    """The mean-centred loss on the state variables listed in to_include only."""
    params = exponentiate_parameters(params)
    mask = ~jnp.isnan(jnp.array(ys))
    ys = jnp.atleast_2d(ys)
    y0 = ys[0, :]
    y_pred = model(ts, y0, params)
    ys = jnp.where(mask, ys, 0)
    ys += 1
    y_pred += 1
    scale = jnp.mean(ys, axis=0)
    ys /= scale
    y_pred /= scale
    y_pred = jnp.where(mask, y_pred, 0)
    ys = ys[:, to_include]
    y_pred = y_pred[:, to_include]
    non_nan_count = jnp.sum(mask)
    return jnp.sum((y_pred - ys) ** 2) / non_nan_count


trainer = Trainer(model=model, data=dataset, n_iter=n1)
trainer._create_loss_func(log_mean_centered_loss_func2, to_include=[0])  # php only
trainer.parameter_sets = parameter_sets
print("custom loss:", trainer.train())

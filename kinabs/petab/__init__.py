"""PEtab v1 support: read a parameter-estimation problem and evaluate its objective.

``kinabs.petab.load("problem.yaml")`` reads the tables with the ``petab`` library (its
loader and linter), the SBML model with :func:`kinabs.load_sbml`, and parses observable
and noise formulas with petab's own math parser into sympy. The problem's
:meth:`~PetabProblem.evaluate` simulates every condition (with pre-equilibration to a
steady state and ``time = inf`` measurements where the measurement table asks for them)
and returns the log-likelihood and chi2 exactly as PEtab defines them, with PEtab's
simulation table. :meth:`~PetabProblem.objective` compiles the log-likelihood into one
differentiable JAX program (value and gradient, batches of starts; see
:mod:`kinabs.petab._gradient`), and :func:`fit` fits it from Latin hypercube starts within
the parameter table's bounds (``kinabs fit PROBLEM.yaml``). ``import kinabs`` does not
import this module, nor petab, and this module does not import JAX.

Example:
    >>> import kinabs.petab
    >>> sorted(n for n in kinabs.petab.__all__ if n[0].islower())
    ['evaluate', 'evaluate_batch', 'fit', 'load', 'plot_fit']
"""

from kinabs.petab._fisher import FisherLM
from kinabs.petab._gradient import Objective
from kinabs.petab._multistart import PetabFitResult, fit, plot_fit
from kinabs.petab._objective import BatchResult, EvaluationResult, evaluate, evaluate_batch
from kinabs.petab._problem import Observable, ParameterTable, PetabProblem, load
from kinabs.petab._steady_state import SteadyStateOptions

__all__ = [
    "load", "evaluate", "evaluate_batch", "PetabProblem", "Observable", "ParameterTable",
    "EvaluationResult", "BatchResult", "SteadyStateOptions", "Objective", "fit", "plot_fit",
    "PetabFitResult", "FisherLM",
]

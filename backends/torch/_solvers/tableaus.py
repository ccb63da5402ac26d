"""The Rosenbrock tableaus, shared with the JAX backend: they live in the core
(:mod:`kinabs._tableaus`), being numbers, not torch code."""

from kinabs._tableaus import RODAS4, RODAS5, RosenbrockTableau

__all__ = ["RODAS4", "RODAS5", "RosenbrockTableau"]

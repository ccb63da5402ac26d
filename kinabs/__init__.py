"""kinabs: fit kinetic models of metabolism and signalling to time-course data.

A model comes from SBML (:func:`load_sbml`) or from Python (:class:`ModelBuilder`), becomes
one backend-neutral symbolic :class:`Model`, and is simulated (:func:`simulate`) or fitted
(:class:`Trainer`) on JAX/diffrax (default) or PyTorch/torchdiffeq. ``import kinabs``
imports neither jax nor torch; a backend is loaded when first used.

Example:
    >>> import kinabs, numpy as np
    >>> model = kinabs.load_sbml(kinabs.example_model_path())
    >>> df = kinabs.simulate(model, np.linspace(0, 10, 11)).to_frame()
    >>> df.shape
    (11, 7)
"""

from kinabs import ratelaws
from kinabs._backend import Backend, get_backend, map_checkout_backends
from kinabs._builder import ModelBuilder
from kinabs._conformance.check import ConformanceTolerances, check_conformance
from kinabs._conformance.report import ConformanceReport
from kinabs._errors import (
    BackendError,
    DaskError,
    DataError,
    KinabsError,
    ModelError,
    RunFolderError,
    SBMLError,
    SimulationError,
    UnsupportedFeatureError,
)
from kinabs._fit.dask import dask_client
from kinabs._fit.data import Experiment, TrainingData
from kinabs._fit.results import TrainingResults
from kinabs._fit.run_folder import RunFolder
from kinabs._fit.trainer import Trainer, exponentiate_parameters, log_transform_parameters
from kinabs._lowering.system import OdeSystem, lower
from kinabs._model import (
    AVOGADRO,
    TIME,
    Compartment,
    Event,
    Model,
    Parameter,
    Reaction,
    Species,
    SpeciesReference,
)
from kinabs._optim import BFGS, LevenbergMarquardt
from kinabs._options import AdjointOptions, SolverOptions
from kinabs._paths import example_data_path, example_model_path
from kinabs._problem import ResidualLoss
from kinabs._simulate import SimulationResult, amount, concentration, simulate
from kinabs._version import __version__ as __version__
from kinabs.sbml import load_sbml, read_sbml_string, sbml_string, write_sbml

map_checkout_backends()

__all__ = [
    "AVOGADRO", "TIME", "AdjointOptions", "Backend", "BackendError", "Compartment", "Event",
    "ConformanceReport", "ConformanceTolerances", "check_conformance",
    "DataError", "Experiment", "KinabsError", "Trainer", "TrainingData", "TrainingResults",
    "exponentiate_parameters", "log_transform_parameters", "Model", "ModelBuilder", "ModelError", "OdeSystem",
    "Parameter", "Reaction", "SBMLError", "SimulationError", "SimulationResult",
    "SolverOptions", "Species", "SpeciesReference", "UnsupportedFeatureError", "amount",
    "concentration", "example_data_path", "example_model_path", "get_backend",
    "load_sbml", "lower", "ratelaws", "read_sbml_string", "sbml_string", "simulate",
    "write_sbml", "DaskError", "dask_client", "RunFolder", "RunFolderError",
    "LevenbergMarquardt", "BFGS", "ResidualLoss",
]

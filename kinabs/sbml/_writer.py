"""SBML writer (stub: being written)."""

from __future__ import annotations

from kinabs._model import Model


def sbml_string(model: Model) -> str:
    raise NotImplementedError


def write_sbml(model: Model, path) -> None:
    raise NotImplementedError

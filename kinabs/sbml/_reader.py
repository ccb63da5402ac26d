"""SBML reader (stub: being written)."""

from __future__ import annotations

from kinabs._model import Model


def load_sbml(path) -> Model:
    raise NotImplementedError


def read_sbml_string(text: str, *, source: str | None = None) -> Model:
    raise NotImplementedError

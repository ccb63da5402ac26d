"""Paths of the bundled example (the Smallbone 2013 serine model and its data)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["example_model_path", "example_data_path"]


def example_model_path() -> Path:
    """Path of the bundled serine biosynthesis SBML model (BIOMD0000000458)."""
    return Path(str(resources.files("kinabs._bundled") / "Smallbone2013_SerineBiosynthesis.xml"))


def example_data_path() -> Path:
    """Path of the bundled serine time-course data (CSV: time, php, pser)."""
    return Path(str(resources.files("kinabs._bundled") / "Smallbone2013_SerineBiosynthesis.csv"))

"""Paths of the bundled example (the Smallbone 2013 serine model and its data)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["example_model_path", "example_data_path"]


def example_model_path() -> Path:
    """Path of the bundled serine biosynthesis SBML model (BIOMD0000000458).

    Example:
        >>> import kinabs
        >>> path = kinabs.example_model_path()
        >>> path.name, path.is_file()
        ('Smallbone2013_SerineBiosynthesis.xml', True)
        >>> kinabs.load_sbml(path)
        Model(id='BIOMD0000000458', compartments=1, species=7, parameters=10, reactions=3, rules=0+0, initial_assignments=0)
    """
    return Path(str(resources.files("kinabs._bundled") / "Smallbone2013_SerineBiosynthesis.xml"))


def example_data_path() -> Path:
    """Path of the bundled serine time-course data (CSV: time, php, pser).

    Example:
        >>> import kinabs, pandas as pd
        >>> data = pd.read_csv(kinabs.example_data_path(), index_col=0)
        >>> data.shape, list(data.columns)
        ((10, 2), ['php', 'pser'])
        >>> data.iloc[0].tolist()  # the model's initial concentrations
        [0.6, 0.09]
    """
    return Path(str(resources.files("kinabs._bundled") / "Smallbone2013_SerineBiosynthesis.csv"))

"""SBML input and output: the only part of kinabs that touches libsbml."""

from kinabs.sbml._reader import load_sbml, read_sbml_string
from kinabs.sbml._writer import sbml_string, write_sbml

__all__ = ["load_sbml", "read_sbml_string", "write_sbml", "sbml_string"]

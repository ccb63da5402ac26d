"""Conformance checks of kinabs: the SBML Test Suite runner (``conformance.sbml_test_suite``)
and, later, cross-backend validation. Run from the repository root, e.g.
``python -m conformance.sbml_test_suite --tier core``."""

import importlib.util
import sys
from pathlib import Path


def _map_backends() -> None:
    """Make ``kinabs.backends`` importable when ``kinabs`` came from the repository root.

    Run from the root, Python imports ``kinabs`` from the source folder on ``sys.path``,
    ahead of the editable install that maps ``kinabs.backends`` to the top-level
    ``backends/`` folder; this maps it the same way (and does nothing otherwise)."""
    import kinabs

    if importlib.util.find_spec("kinabs.backends") is not None:
        return
    folder = Path(__file__).resolve().parents[1] / "backends"
    spec = importlib.util.spec_from_file_location(
        "kinabs.backends", folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["kinabs.backends"] = module
    spec.loader.exec_module(module)
    kinabs.backends = module


_map_backends()

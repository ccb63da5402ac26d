"""Conformance runners of kinabs: the SBML Test Suite (``conformance.sbml_test_suite``) and
the shared models (``conformance.shared_models``). Run from the repository root, e.g.
``python -m conformance.sbml_test_suite --tier core``; the checks themselves live in
``kinabs._conformance``."""

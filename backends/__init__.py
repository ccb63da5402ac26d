"""Backends of kinabs, one sub-package each; installed as ``kinabs.backends``."""

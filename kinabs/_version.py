"""The version of kinabs (one place; ``kinabs.__version__`` re-exports it)."""

__version__ = "0.1.0"

"""Exceptions raised by kinabs.

Every error says what was expected, what was received and how to fix it. All derive
from :class:`KinabsError` so that callers can catch kinabs' own failures in one place.
"""

from __future__ import annotations

__all__ = [
    "KinabsError",
    "SBMLError",
    "UnsupportedFeatureError",
    "ModelError",
    "BackendError",
    "SimulationError",
    "DataError",
    "RunFolderError",
    "DaskError",
]


class KinabsError(Exception):
    """Base class of every error kinabs raises on purpose."""


class SBMLError(KinabsError, ValueError):
    """The SBML input cannot be read: missing file, malformed XML, not SBML, or invalid SBML.

    ``messages`` holds libsbml's messages (with line numbers where libsbml gives them).
    """

    def __init__(self, summary: str, messages: list[str] | tuple[str, ...] = ()):
        self.summary = summary
        self.messages = tuple(messages)
        text = summary
        if self.messages:
            shown = self.messages[:20]
            text += "\n" + "\n".join(f"  - {m}" for m in shown)
            if len(self.messages) > len(shown):
                text += f"\n  ... and {len(self.messages) - len(shown)} more"
        super().__init__(text)


class UnsupportedFeatureError(KinabsError, NotImplementedError):
    """The model uses a feature kinabs does not simulate (yet).

    Raised instead of simulating something silently wrong. ``element_id`` names the
    SBML element that uses the feature, ``feature`` names the feature.
    """

    def __init__(self, element_id: str | None, feature: str, hint: str = ""):
        self.element_id = element_id
        self.feature = feature
        where = f"element '{element_id}'" if element_id else "the model"
        text = f"unsupported SBML feature: {feature} (in {where})."
        if hint:
            text += " " + hint
        super().__init__(text)


class ModelError(KinabsError, ValueError):
    """A model is inconsistent: unknown ids, circular rules, values that are missing."""


class BackendError(KinabsError, ValueError):
    """A backend name is unknown or its packages are not installed."""


class SimulationError(KinabsError, RuntimeError):
    """An integration failed and the caller asked for an exception instead of a status."""


class DataError(KinabsError, ValueError):
    """Training or simulation input does not fit the model (shapes, names, NaN, times)."""


class RunFolderError(KinabsError, ValueError):
    """A run folder cannot be used for this fit (it holds another one, or is not a run
    folder)."""


class DaskError(KinabsError, RuntimeError):
    """Dask is missing, or its scheduler cannot be reached or has no workers."""

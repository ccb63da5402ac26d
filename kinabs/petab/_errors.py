"""The error for PEtab features kinabs does not support.

:class:`kinabs.UnsupportedFeatureError` words its message for SBML elements; a PEtab
feature (a noise distribution, a table column, a format version) gets its own wording,
and is still caught as ``kinabs.UnsupportedFeatureError``.

Example:
    >>> import kinabs
    >>> from kinabs.petab._errors import UnsupportedPetabFeature
    >>> e = UnsupportedPetabFeature("noiseDistribution 'cauchy'", "observables.tsv line 3")
    >>> isinstance(e, kinabs.UnsupportedFeatureError), str(e)
    (True, "unsupported PEtab feature: noiseDistribution 'cauchy' (observables.tsv line 3).")
"""

from __future__ import annotations

from kinabs._errors import UnsupportedFeatureError

__all__ = ["UnsupportedPetabFeature"]


class UnsupportedPetabFeature(UnsupportedFeatureError):
    """A PEtab feature kinabs does not evaluate; ``feature`` names it, ``where`` says
    where it is used (file and line, or table and id)."""

    def __init__(self, feature: str, where: str, hint: str = ""):
        super().__init__(None, feature, hint)
        self.where = where
        text = f"unsupported PEtab feature: {feature} ({where})."
        if hint:
            text += " " + hint
        self.args = (text,)

    def __str__(self) -> str:
        return self.args[0]

"""libsbml's messages as kinabs reports them: one line each, with the line number.

Example:
    >>> import libsbml
    >>> doc = libsbml.readSBMLFromString("<sbml")
    >>> messages(doc)
    ['line 2: [Error 1007] Unclosed XML token.']
"""

from __future__ import annotations

from collections.abc import Collection

import libsbml

__all__ = ["messages", "first"]


def messages(doc: libsbml.SBMLDocument, skip: Collection[int] = (),
             severity: int = libsbml.LIBSBML_SEV_ERROR) -> list[str]:
    """libsbml's messages at ``severity`` or worse, one line each, ids in ``skip`` left out."""
    out = []
    for i in range(doc.getNumErrors()):
        e = doc.getError(i)
        if e.getSeverity() >= severity and e.getErrorId() not in skip:
            text = " ".join(e.getMessage().split())
            out.append(f"line {e.getLine()}: [{e.getSeverityAsString()} {e.getErrorId()}] "
                       f"{text}")
    return out


def first(errors: list[str]) -> str:
    """The first message, for a headline; the count of the others, if any."""
    more = f" (and {len(errors) - 1} more error(s), listed below)" if len(errors) > 1 else ""
    return errors[0].rstrip(". ") + more

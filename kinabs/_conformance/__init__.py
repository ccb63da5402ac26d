"""Conformance: proof that the backends agree with each other and with a reference.

``check`` runs a model through every backend (via ``backends``, which asks each only what
the backend contract offers) and an independent scipy ``reference``, and ``report``
tabulates the verdicts; ``cli`` is ``kinabs conformance``. The runners of the SBML Test
Suite and the shared models live in the top-level ``conformance/`` folder.
"""

"""What :func:`kinabs.check_conformance` returns: one row per check, a table and JSON.

Example:
    >>> from kinabs._conformance.report import CheckRow, ConformanceReport
    >>> row = CheckRow(check="loss (log)", jax="0.5", torch="0.5", reference="0.5",
    ...                largest_difference=1e-9, tolerance=1e-6, verdict="agree")
    >>> report = ConformanceReport(model="m", rows=[row])
    >>> report.ok, list(report.table()["verdict"])
    (True, ['agree'])
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CheckRow", "ConformanceReport", "VERDICTS"]

#: ``agree``; ``disagree`` (a bug); ``unsupported`` (a backend cannot lower the model:
#: not a disagreement); ``skipped`` (fewer than two opinions).
VERDICTS = ("agree", "disagree", "unsupported", "skipped")


@dataclass(frozen=True)
class CheckRow:
    """One check: each opinion's value (as text), the largest relative difference between
    any two of them, the tolerance it is held to, and the verdict."""

    check: str
    jax: str
    torch: str
    reference: str
    largest_difference: float
    tolerance: float
    verdict: str
    detail: str = ""

    def replace(self, **changes: Any) -> CheckRow:
        return dataclasses.replace(self, **changes)


@dataclass
class ConformanceReport:
    """The result of a conformance check of one model.

    Example:
        :func:`kinabs.check_conformance` makes one; by hand, a report whose gradient check
        disagrees:

        >>> import json, os, tempfile, kinabs
        >>> from kinabs._conformance.report import CheckRow
        >>> rows = [
        ...     CheckRow("loss (log)", jax="0.25", torch="0.25", reference="0.25",
        ...              largest_difference=2e-9, tolerance=1e-6, verdict="agree"),
        ...     CheckRow("gradient (log)", jax="0.1", torch="0.13", reference="0.1",
        ...              largest_difference=0.3, tolerance=1e-4, verdict="disagree",
        ...              detail="torch differs")]
        >>> report = kinabs.ConformanceReport(model="toy", rows=rows)
        >>> report.ok
        False
        >>> print(report.format())
        check           jax   torch  reference  largest rel. diff  allowed  verdict
        --------------  ----  -----  ---------  -----------------  -------  --------
        loss (log)      0.25  0.25   0.25       2e-09              1e-06    agree
        gradient (log)  0.1   0.13   0.1        0.3                0.0001   disagree
          gradient (log): torch differs
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = report.to_json(os.path.join(folder, "toy.json"))
        ...     saved = json.loads(path.read_text())
        >>> saved["ok"], [c["verdict"] for c in saved["checks"]]
        (False, ['agree', 'disagree'])
    """

    model: str
    rows: list[CheckRow]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no check disagrees (unsupported and skipped checks are not
        disagreements)."""
        return not any(r.verdict == "disagree" for r in self.rows)

    @property
    def unsupported(self) -> dict[str, str]:
        """backend -> the feature it cannot lower (empty when both lower the model)."""
        return dict(self.meta.get("unsupported") or {})

    def table(self):
        """The checks as a DataFrame: check, jax, torch, reference, largest_difference,
        tolerance, verdict, detail."""
        import pandas as pd

        return pd.DataFrame([dataclasses.asdict(r) for r in self.rows])

    def format(self) -> str:
        """The table as text, as the ``kinabs conformance`` command prints it."""
        head = ("check", "jax", "torch", "reference", "largest rel. diff", "allowed",
                "verdict")
        body = [(r.check, r.jax, r.torch, r.reference, f"{r.largest_difference:.3g}",
                 f"{r.tolerance:.3g}", r.verdict) for r in self.rows]
        widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
                 for row in [head, *body]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        notes = [f"  {r.check}: {r.detail}" for r in self.rows
                 if r.detail and r.verdict != "agree"]
        return "\n".join(lines + notes)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "ok": self.ok,
                "checks": [dataclasses.asdict(r) for r in self.rows], "meta": self.meta}

    def to_json(self, path: str | Path) -> Path:
        """Write the report as JSON; returns the path."""
        path = Path(path)

        def default(x: Any) -> Any:
            if hasattr(x, "tolist"):
                return x.tolist()
            return str(x)

        path.write_text(json.dumps(self.to_dict(), indent=1, default=default) + "\n")
        return path

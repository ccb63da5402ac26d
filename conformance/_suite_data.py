"""The SBML Test Suite's files: the case index, settings, reference results, the pass rule.

Only numpy and the standard library; nothing here simulates.

Example:
    >>> import numpy as np
    >>> ok = compare(np.array([[1.0, np.nan]]), np.array([[1.00001, np.nan]]), 1e-7, 1e-4)
    >>> ok.passed, ok.ratio < 1
    (True, True)
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "TIERS",
    "CaseInfo",
    "Settings",
    "Comparison",
    "default_suite_dir",
    "read_index",
    "read_settings",
    "read_results",
    "compare",
    "parse_case_list",
    "tier_members",
]

#: Tiers from narrow to wide; each includes the ones before it.
TIERS = ("core", "basic", "all")


def default_suite_dir() -> Path:
    """``$KINABS_SBML_TEST_SUITE``, else ``<repo>/../shared/sbml-test-suite``."""
    env = os.environ.get("KINABS_SBML_TEST_SUITE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "sbml-test-suite"


@dataclass(frozen=True)
class CaseInfo:
    """One row of ``cases-index.tsv``."""

    case: str
    test_type: str
    sbml_file: str
    tier: str  # "core", "basic" (basic-only) or "advanced"
    tags: tuple[str, ...]


def read_index(suite_dir: Path) -> dict[str, CaseInfo]:
    """Case number (5 digits) -> :class:`CaseInfo`, from ``cases-index.tsv``."""
    out = {}
    with open(Path(suite_dir) / "cases-index.tsv", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            tags = [t for col in ("componentTags", "testTags") for t in row[col].split(",") if t]
            out[row["case"]] = CaseInfo(row["case"], row["testType"], row["sbml_file"],
                                        row["tier"], tuple(tags))
    return out


def tier_members(tier: str, info: CaseInfo) -> bool:
    """Whether a case belongs to ``tier`` (``core`` within ``basic`` within ``all``)."""
    if tier == "all":
        return True
    if tier == "basic":
        return info.tier in ("core", "basic")
    return info.tier == tier


@dataclass(frozen=True)
class Settings:
    """A case's ``NNNNN-settings.txt``."""

    start: float
    duration: float
    steps: int
    variables: tuple[str, ...]
    absolute: float
    relative: float
    amount: tuple[str, ...] = ()
    concentration: tuple[str, ...] = ()

    @property
    def times(self) -> np.ndarray:
        """The ``steps + 1`` output times."""
        return np.linspace(self.start, self.start + self.duration, self.steps + 1)


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def read_settings(path: Path) -> Settings:
    """Parse a settings file (``key: value`` lines; unknown keys are ignored)."""
    fields: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
    return Settings(
        start=float(fields.get("start") or 0.0),
        duration=float(fields["duration"]),
        steps=int(float(fields["steps"])),
        variables=_names(fields.get("variables", "")),
        absolute=float(fields["absolute"]),
        relative=float(fields["relative"]),
        amount=_names(fields.get("amount", "")),
        concentration=_names(fields.get("concentration", "")),
    )


def _number(text: str) -> float:
    # float() accepts "nan", "inf", "-inf" and "INF" in any case, and surrounding blanks.
    return float(text.strip())


def read_results(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(times, column name -> values) from a results CSV (``NaN``/``INF``/``-INF`` allowed)."""
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    header = [h.strip() for h in rows[0]]
    data = np.array([[_number(c) for c in r] for r in rows[1:]], dtype=np.float64)
    data = data.reshape(len(rows) - 1, len(header))
    # The first column is the time when it is called so (a variable may be called "Time"
    # too, e.g. case 01820); flux-balance results have no time column.
    first = 1 if header and header[0].lower() == "time" else 0
    times = data[:, 0] if first else np.arange(len(data), dtype=np.float64)
    return times, {h: data[:, j] for j, h in enumerate(header) if j >= first}


@dataclass(frozen=True)
class Comparison:
    """The result of the pass rule; ``ratio`` is the worst error over its tolerance (inf
    for a NaN/inf mismatch), located at row ``row`` of column ``column``."""

    passed: bool
    ratio: float
    error: float
    row: int
    column: int
    expected: float
    actual: float


def compare(expected: np.ndarray, actual: np.ndarray, absolute: float, relative: float
            ) -> Comparison:
    """The suite's pass rule, ``|C - U| <= absolute + relative * |C|`` for every entry.

    NaN must meet NaN, and an infinity the same infinity."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if expected.shape != actual.shape:
        raise ValueError(f"shape mismatch: expected {expected.shape}, got {actual.shape}")
    finite = np.isfinite(expected) & np.isfinite(actual)
    same_special = (np.isnan(expected) & np.isnan(actual)) | (
        np.isinf(expected) & (expected == actual))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        error = np.where(finite, np.abs(expected - actual), np.inf)
        tol = absolute + relative * np.where(np.isfinite(expected), np.abs(expected), 0.0)
        ratio = np.where(error <= tol, np.divide(error, tol, out=np.zeros_like(error),
                                                 where=tol > 0), error / tol)
    ratio = np.where(same_special, 0.0, np.where(np.isnan(ratio), np.inf, ratio))
    if ratio.size == 0:
        return Comparison(True, 0.0, 0.0, 0, 0, np.nan, np.nan)
    row, col = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    worst = float(ratio[row, col])
    return Comparison(
        passed=worst <= 1.0,
        ratio=worst,
        error=float(np.where(same_special, 0.0, error)[row, col]),
        row=int(row),
        column=int(col),
        expected=float(expected[row, col]),
        actual=float(actual[row, col]),
    )


def parse_case_list(text: str) -> list[str]:
    """``"1-5,17,00020"`` -> ``["00001", ..., "00005", "00017", "00020"]``."""
    out: list[str] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        first, last = int(lo), int(hi or lo)
        if last < first:
            raise ValueError(f"bad case range {part!r}: the end is before the start")
        out += [f"{n:05d}" for n in range(first, last + 1)]
    return list(dict.fromkeys(out))

"""Read a PEtab v1 problem: the YAML file, its tables (through petab's loader and linter)
and where each row came from (for error messages that name the file and line).

petab's loader concatenates the files of one table; the row origins are read here once,
beside it, so that an unsupported value can be named as ``measurements.tsv line 12``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kinabs._errors import DataError
from kinabs.petab._errors import UnsupportedPetabFeature

__all__ = ["Tables", "read_tables"]

_TABLE_KEYS = {
    "measurement": "measurement_files",
    "condition": "condition_files",
    "observable": "observable_files",
}


@dataclass(frozen=True)
class Tables:
    """The tables of one PEtab v1 problem and the files they came from."""

    yaml_path: Path
    problem: Any  # petab.v1.Problem
    sbml_path: Path
    files: dict[str, tuple[Path, ...]]
    #: per row of ``problem.measurement_df`` (after ``reset_index``): (file, line number)
    measurement_rows: tuple[tuple[Path, int], ...]
    #: table -> id -> (file, line number), for the condition, observable, parameter tables
    id_rows: dict[str, dict[str, tuple[Path, int]]] = field(default_factory=dict)

    def where_measurement(self, row: int) -> str:
        f, line = self.measurement_rows[row]
        return f"{f.name} line {line}"

    def where_id(self, table: str, ident: str) -> str:
        f, line = self.id_rows.get(table, {}).get(ident, (None, None))
        if f is None:
            return f"{table} table, id '{ident}'"
        return f"{f.name} line {line} ({table} '{ident}')"


def _listify(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def read_tables(yaml_path: str | Path, *, lint: bool = True) -> Tables:
    """Read the problem ``yaml_path`` names; with ``lint``, run petab's linter and raise
    :class:`kinabs.DataError` with its messages when it finds errors."""
    import petab.v1 as petab
    from petab.v1.yaml import load_yaml

    path = Path(yaml_path)
    if not path.is_file():
        raise DataError(f"PEtab problem file '{path}' does not exist.")
    try:
        config = load_yaml(path)
    except Exception as e:  # yaml's own errors
        raise DataError(f"cannot read the PEtab YAML file '{path}': {e}") from None
    if not isinstance(config, dict) or "problems" not in config:
        raise DataError(f"'{path}' is not a PEtab problem file (no 'problems' entry).")
    version = str(config.get("format_version", ""))
    if version.split(".")[0] != "1":
        raise UnsupportedPetabFeature(
            f"format_version {version!r}", path.name,
            "kinabs.petab reads PEtab v1 problems (format_version: 1).")
    if len(config["problems"]) != 1:
        raise UnsupportedPetabFeature(
            f"{len(config['problems'])} problems in one YAML file", path.name,
            "give one problem per file.")
    if config.get("extensions"):
        raise UnsupportedPetabFeature(f"extensions {sorted(config['extensions'])}", path.name)
    sub = config["problems"][0]
    sbml = _listify(sub.get("sbml_files"))
    if len(sbml) != 1:
        raise UnsupportedPetabFeature(f"{len(sbml)} SBML files in one problem", path.name,
                                      "give exactly one SBML model.")
    base = path.parent
    files = {name: tuple(base / f for f in _listify(sub.get(key)))
             for name, key in _TABLE_KEYS.items()}
    files["parameter"] = tuple(base / f for f in _listify(config.get("parameter_file")))
    for name, fs in files.items():
        if not fs:
            raise DataError(f"{path.name} names no {name} table; a PEtab v1 problem needs one.")
        for f in fs:
            if not f.is_file():
                raise DataError(f"{path.name} names the {name} table '{f}', which does not "
                                "exist.")
    sbml_path = base / sbml[0]
    if not sbml_path.is_file():
        raise DataError(f"{path.name} names the SBML file '{sbml_path}', which does not exist.")
    with warnings.catch_warnings():
        # petab's own use of pandas raises deprecation warnings that users cannot act on
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        try:
            problem = petab.Problem.from_yaml(str(path))
        except Exception as e:  # petab's loader raises many types; keep its message
            raise DataError(f"petab cannot load '{path}': {type(e).__name__}: {e}") from None
        if lint:
            _lint(problem, path)
    return Tables(
        yaml_path=path, problem=problem, sbml_path=sbml_path, files=files,
        measurement_rows=_measurement_rows(files["measurement"]),
        id_rows={name: _id_rows(files[name], col) for name, col in (
            ("condition", "conditionId"), ("observable", "observableId"),
            ("parameter", "parameterId"))},
    )


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _lint(problem: Any, path: Path) -> None:
    import petab.v1 as petab

    handler = _Collect()
    logger = logging.getLogger("petab")
    logger.addHandler(handler)
    try:
        failed = petab.lint_problem(problem)
    finally:
        logger.removeHandler(handler)
    if failed:
        shown = "\n".join(f"  - {m}" for m in handler.messages[:20]) or "  (no message)"
        raise DataError(f"petab's linter found errors in '{path}':\n{shown}\nPass lint=False "
                        "to load it anyway (at your own risk).")


def _measurement_rows(files: tuple[Path, ...]) -> tuple[tuple[Path, int], ...]:
    out: list[tuple[Path, int]] = []
    for f in files:
        n = len(pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False))
        out += [(f, i + 2) for i in range(n)]  # line 1 is the header
    return tuple(out)


def _id_rows(files: tuple[Path, ...], column: str) -> dict[str, tuple[Path, int]]:
    out: dict[str, tuple[Path, int]] = {}
    for f in files:
        df = pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False)
        if column in df.columns:
            for i, ident in enumerate(df[column]):
                out.setdefault(ident.strip(), (f, i + 2))
    return out

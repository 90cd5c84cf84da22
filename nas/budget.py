"""Latency budgets: a latency table and a limit in milliseconds, or a preset's own latency on it.

A search takes one or more budgets; an architecture is feasible only if it is under every one of
them. Each budget is checked against the fastest architecture the space holds under its table, so
an impossible budget fails at once with the minimum it would need.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latency_lut import LatencyTable, fastest_subnet, load_lut, shipped_lut
from supernet.errors import ConfigError, EfnasError
from supernet.space import ArchSpec, SearchSpace

__all__ = ["Budget", "BudgetRequest", "budget_items", "budget_requests", "parse_budget", "parse_milliseconds", "resolve_budgets"]

# The one reader of budgets as users write them: the search's flags, batch files and the demo all
# come through parse_budget / budget_requests.
_ITEMS = {"lut": "a file name or a list of them", "budget": "a preset name, milliseconds (a positive number), or a list of them"}


@dataclass(frozen=True)
class BudgetRequest:
    """A budget as the user writes it: a table (None: the one shipped for the space) and either a
    preset name (its own predicted latency on that table) or a limit in milliseconds."""

    lut: str | None = None
    preset: str | None = None
    ms: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.lut, os.PathLike):
            object.__setattr__(self, "lut", os.fspath(self.lut))
        if (self.preset is None) == (self.ms is None):
            raise EfnasError("a budget is either a preset name (--budget L1) or milliseconds (--budget-ms 2.5), exactly one of them")
        if self.ms is not None and (not math.isfinite(self.ms) or self.ms <= 0):
            raise EfnasError(f"a latency budget must be a positive number of milliseconds, got {self.ms}")

    def describe(self) -> str:
        return f"{self.preset}" if self.preset is not None else f"{self.ms:g} ms"


@dataclass(frozen=True)
class Budget:
    """A resolved budget: architectures whose predicted latency on ``lut`` exceeds ``limit_ms`` are infeasible."""

    name: str  # short name of the table: the key of latency dicts and of the Optuna constraint
    lut: LatencyTable
    lut_path: Path
    limit_ms: float
    preset: str | None
    fastest: ArchSpec  # the fastest architecture of the space under this table
    fastest_ms: float

    @property
    def constraint(self) -> str:
        """The Optuna constraint key (``predicted latency - limit``, feasible when <= 0)."""
        return f"latency:{self.name}"

    def latency_ms(self, spec: ArchSpec) -> float:
        return self.lut.predict_ms(spec)

    def describe(self) -> str:
        what = f"{self.preset} = {self.limit_ms:.4g} ms" if self.preset else f"{self.limit_ms:.4g} ms"
        return f"{what} on {self.name}"

    def to_dict(self) -> dict[str, Any]:
        meta = self.lut.meta
        return {
            "lut": self.name,
            "lut_path": str(self.lut_path),
            "lut_digest": self.lut.digest(),
            "device": meta.get("device"),
            "backend": meta.get("backend"),
            "threads": meta.get("threads"),
            "limit_ms": round(self.limit_ms, 6),
            "preset": self.preset,
            "fastest_ms": round(self.fastest_ms, 6),
        }


def budget_items(key: str, value: Any) -> list[Any]:
    """The items of a ``lut`` or ``budget`` setting as a file writes it (one value or a list;
    None: none), each checked; a :class:`ConfigError` of field ``key`` otherwise."""
    if value is None:
        return []
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if not _valid_item(key, item):
            raise ConfigError(key, f"must be {_ITEMS[key]}, got {value!r}")
    return items


def _valid_item(key: str, item: Any) -> bool:
    if key == "lut":
        return isinstance(item, os.PathLike) or (isinstance(item, str) and item != "")
    try:
        parse_budget(item)
    except ConfigError:
        return False
    return True


def budget_requests(luts: Any, budgets: Any) -> tuple[BudgetRequest, ...]:
    """Pair tables with budgets in order (each one read by :func:`parse_budget`); either may be
    one value or a sequence (see :func:`budget_items`).

    No table: one budget on the table shipped for the space. One budget and several tables: that
    budget on each of them. Otherwise one budget per table.
    """
    luts, budgets = budget_items("lut", luts), budget_items("budget", budgets)
    if not budgets:
        raise EfnasError("give a latency budget: a preset name (--budget L1) or milliseconds (--budget-ms 2.5)")
    if not luts:
        if len(budgets) > 1:
            raise EfnasError(f"{len(budgets)} budgets but no --lut: give one --lut per budget (they pair up in order)")
        tables: list[str | None] = [None]
    elif len(budgets) == 1:
        tables, budgets = list(luts), list(budgets) * len(luts)
    elif len(budgets) == len(luts):
        tables = list(luts)
    else:
        raise EfnasError(f"{len(luts)} latency tables but {len(budgets)} budgets: give one budget per table (they pair up in order), or one for all")
    return tuple(parse_budget(budget, lut=None if table is None else os.fspath(table)) for table, budget in zip(tables, budgets))


def parse_budget(value: str | float, *, lut: str | None = None) -> BudgetRequest:
    """A budget as the user wrote it: a number, or text that reads as one, is milliseconds; any
    other text is a preset name (that preset's own predicted latency on the table). A
    :class:`ConfigError` of field ``budget`` for anything else."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            if not value.strip():
                raise ConfigError("budget", "must be a preset name or milliseconds, got an empty string") from None
            return BudgetRequest(lut=lut, preset=value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError("budget", f"must be a preset name or milliseconds, got {value!r}")
    return BudgetRequest(lut=lut, ms=parse_milliseconds(value))


def parse_milliseconds(value: str | float) -> float:
    """A latency limit in milliseconds: a finite number above 0 (``--budget-ms``, a batch file's
    number); a :class:`ConfigError` of field ``budget`` otherwise."""
    try:
        ms = float(value)
    except (TypeError, ValueError):
        raise ConfigError("budget", f"must be milliseconds as a number, got {value!r}") from None
    if not math.isfinite(ms) or ms <= 0:
        raise ConfigError("budget", f"must be a positive number of milliseconds, got {value!r}")
    return ms


def _lut_names(paths: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for path in paths:
        name = path.stem
        if name in names:
            name = f"{name}-{sum(1 for other in names if other.startswith(name)) + 1}"
        names.append(name)
    return names


def resolve_budgets(space: SearchSpace, requests: Sequence[BudgetRequest]) -> list[Budget]:
    """Load each request's table (default: the one shipped for ``space``), check that it prices
    every architecture of ``space`` and that the limit is reachable; a one-line error otherwise."""
    if not requests:
        raise EfnasError("give a latency budget: --budget L1|L3|L7 (a preset's own latency) or --budget-ms X")
    paths = []
    for request in requests:
        if request.lut is not None:
            paths.append(Path(request.lut))
            continue
        shipped = shipped_lut(space)
        if shipped is None:
            raise EfnasError(
                f"no latency table ships for space '{space.name}' (fingerprint {space.fingerprint()}); "
                f"give --lut FILE, e.g. one made with: efnas lut build --space {space.name} --out {space.name}.json"
            )
        paths.append(shipped)
    budgets = []
    for request, path, name in zip(requests, paths, _lut_names(paths)):
        lut = load_lut(path)
        fastest, fastest_ms = fastest_subnet(space, lut)
        if request.preset is not None:
            preset = space.preset(request.preset)
            limit = lut.predict_ms(preset)
            preset_name = next(p for p, s in space.presets if s == preset)
        else:
            assert request.ms is not None
            limit, preset_name = request.ms, None
        if limit < fastest_ms:
            raise EfnasError(
                f"budget {limit:.4g} ms on latency table {path} is below the fastest architecture of space "
                f"'{space.name}' under that table: {fastest_ms:.4g} ms ({fastest.label()}); give at least {fastest_ms:.4g} ms"
            )
        budgets.append(Budget(name, lut, path, limit, preset_name, fastest, fastest_ms))
    return budgets

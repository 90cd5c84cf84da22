"""Latency budgets: a latency table and a limit in milliseconds, or a preset's own latency on it.

A search takes one or more budgets; an architecture is feasible only if it is under every one of
them. Each budget is checked against the fastest architecture the space holds under its table, so
an impossible budget fails at once with the minimum it would need.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latency_lut import LatencyTable, load_lut, op_units, shipped_lut, space_keys
from supernet.errors import EfnasError
from supernet.space import ArchSpec, SearchSpace

__all__ = ["Budget", "BudgetRequest", "budget_requests", "fastest_subnet", "lut_digest", "resolve_budgets"]


@dataclass(frozen=True)
class BudgetRequest:
    """A budget as the user writes it: a table (None: the one shipped for the space) and either a
    preset name (its own predicted latency on that table) or a limit in milliseconds."""

    lut: str | None = None
    preset: str | None = None
    ms: float | None = None

    def __post_init__(self) -> None:
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
            "lut_digest": lut_digest(self.lut),
            "device": meta.get("device"),
            "backend": meta.get("backend"),
            "threads": meta.get("threads"),
            "limit_ms": round(self.limit_ms, 6),
            "preset": self.preset,
            "fastest_ms": round(self.fastest_ms, 6),
        }


def budget_requests(luts: Sequence[str], budgets: Sequence[str | float]) -> tuple[BudgetRequest, ...]:
    """Pair tables with budgets in order (a string is a preset name, a number milliseconds).

    No table: one budget on the table shipped for the space. One budget and several tables: that
    budget on each of them. Otherwise one budget per table.
    """
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
    requests = []
    for table, budget in zip(tables, budgets):
        if isinstance(budget, str):
            requests.append(BudgetRequest(lut=table, preset=budget))
        else:
            requests.append(BudgetRequest(lut=table, ms=float(budget)))
    return tuple(requests)


def lut_digest(lut: LatencyTable) -> str:
    """A short hash of what a table predicts with (entries and calibration), independent of where
    the file lives, so workers on different machines can tell they use the same table."""
    content = {"entries": {k: v.to_dict() for k, v in sorted(lut.entries.items())}, "calibration": lut.meta.get("calibration"), "statistic": lut.statistic}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]


def _check_coverage(space: SearchSpace, lut: LatencyTable) -> None:
    lut.check_space(space)
    missing = sorted(space_keys(space) - set(lut.entries))
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise EfnasError(
            f"latency table {lut.path} has no entry for {len(missing)} unit(s) of space '{space.name}' "
            f"({shown}); measure them with: {lut.fill_command(space.largest())}"
        )


def _unit_cost(lut: LatencyTable) -> Callable[[Any], float]:
    """What one unit adds to the table's prediction: its entry times its category's calibration
    scale (the prediction is a fixed overhead plus the sum of these; all of them are >= 0)."""
    calibration = lut.calibration
    statistic = lut.statistic

    def cost(placed: Any) -> float:
        scale = calibration.scales[placed.unit.category] if calibration is not None else 1.0
        return scale * lut.entries[placed.unit.key].value(statistic)

    return cost


def fastest_subnet(space: SearchSpace, lut: LatencyTable) -> tuple[ArchSpec, float]:
    """The architecture of ``space`` with the lowest predicted latency on ``lut``, and that latency.

    Not simply ``space.smallest()``: on some devices a Meta3D block is cheaper than a Meta4D one,
    or a wider embedding faster than a narrow one. Since the prediction is a sum of non-negative
    per-unit costs, the minimum is found exactly by dynamic programming over the stages (the only
    coupling between stages is an embedding's input width): earlier stages take their minimum depth,
    each stage its cheapest MLP ratio, the last stage its cheapest (depth, Meta3D) pair.
    """
    _check_coverage(space, lut)
    cost = _unit_cost(lut)
    base = space.smallest()
    n = space.num_stages

    def probe(stage: int, width: int, prev_width: int | None = None, depth: int | None = None,
              meta3d: int | None = None, ratio: int | None = None) -> ArchSpec:
        widths, depths, ratios = list(base.widths), list(base.depths), list(base.mlp_ratios)
        widths[stage] = width
        if prev_width is not None:
            widths[stage - 1] = prev_width
        if depth is not None:
            depths[stage] = depth
        if ratio is not None:
            ratios[stage] = ratio
        return space.spec(widths, depths, base.num_meta3d if meta3d is None else meta3d, ratios)

    def part(spec: ArchSpec, *prefixes: str) -> float:
        return sum(cost(p) for p in op_units(spec) if any(path.startswith(prefixes) for path in p.paths))

    # Cheapest blocks of each stage at each width: (cost, depth, meta3d, ratio).
    blocks: list[dict[int, tuple[float, int, int, int]]] = []
    for s, stage in enumerate(space.stages):
        per_width = {}
        for w in stage.widths:
            options = []
            for m in stage.mlp_ratios:
                if s < n - 1:
                    options.append((part(probe(s, w, depth=stage.depth_min, ratio=m), f"stages.{s}.blocks."), stage.depth_min, base.num_meta3d, m))
                    continue
                for d in stage.depths:
                    for v in range(space.meta3d_min, min(space.meta3d_max, d) + 1):
                        spec = probe(s, w, depth=d, meta3d=v, ratio=m)
                        options.append((part(spec, f"stages.{s}.blocks.", "norm", "head"), d, v, m))
            per_width[w] = min(options)
        blocks.append(per_width)

    # best[w] = (cost of stem .. stage s at width w, widths so far)
    best = {w: (part(probe(0, w), "stem") + blocks[0][w][0], (w,)) for w in space.stages[0].widths}
    for s in range(1, n):
        best = {
            w: min(
                (total + part(probe(s, w, prev_width=wp), f"stages.{s}.downsample") + blocks[s][w][0], (*chosen, w))
                for wp, (total, chosen) in best.items()
            )
            for w in space.stages[s].widths
        }
    _, widths = min(best.values())
    depths = [blocks[s][w][1] for s, w in enumerate(widths)]
    ratios = [blocks[s][w][3] for s, w in enumerate(widths)]
    spec = space.spec(widths, depths, blocks[-1][widths[-1]][2], ratios)
    return spec, lut.predict_ms(spec)


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

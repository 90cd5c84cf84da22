"""The fastest architecture of a search space under a latency table.

Not simply ``space.smallest()``: on some devices a Meta3D block is cheaper than a Meta4D one, or a
wider embedding faster than a narrow one. The prediction is a fixed part plus a sum of
non-negative per-unit prices (:meth:`LatencyTable.unit_ms`), so the minimum is found exactly by
dynamic programming over the stages, the only coupling between stages being an embedding's input
width: earlier stages take their minimum depth (a block more only adds), each stage its cheapest
MLP ratio, the last stage its cheapest (depth, Meta3D) pair.
"""

from __future__ import annotations

from supernet.space import ArchSpec, SearchSpace

from latency_lut._keys import op_units
from latency_lut._table import LatencyTable

__all__ = ["fastest_subnet"]

#: (price, depth, Meta3D count, MLP ratio) of a stage's blocks; tuples so that ties go to the
#: smaller depth, then the fewer Meta3D blocks, then the smaller ratio.
_Blocks = tuple[float, int, int, int]


def _price(lut: LatencyTable, spec: ArchSpec, *prefixes: str) -> float:
    """What the units of ``spec`` under the module paths ``prefixes`` add to the prediction."""
    return sum(lut.unit_ms(p.unit.key) for p in op_units(spec) if any(path.startswith(prefixes) for path in p.paths))


def _cheapest_blocks(space: SearchSpace, lut: LatencyTable, base: ArchSpec, stage: int, width: int) -> _Blocks:
    """The cheapest blocks of ``stage`` at ``width`` (in the last stage including norm and head,
    which depend only on its width)."""
    choices = space.stages[stage]
    blocks = f"stages.{stage}.blocks."
    if stage < space.num_stages - 1:
        return min(
            (_price(lut, space.edit(base, stage=stage, width=width, mlp_ratio=m), blocks), base.depths[stage], base.num_meta3d, m)
            for m in choices.mlp_ratios
        )
    return min(
        (_price(lut, space.edit(base, stage=stage, width=width, depth=d, mlp_ratio=m, num_meta3d=v), blocks, "norm", "head"),
         d, v, m)
        for m in choices.mlp_ratios
        for d, v in space.last_stage_choices()
    )


def _embed_price(space: SearchSpace, lut: LatencyTable, base: ArchSpec, stage: int, in_width: int, width: int) -> float:
    spec = space.edit(space.edit(base, stage=stage - 1, width=in_width), stage=stage, width=width)
    return _price(lut, spec, f"stages.{stage}.downsample")


def fastest_subnet(space: SearchSpace, lut: LatencyTable) -> tuple[ArchSpec, float]:
    """The architecture of ``space`` with the lowest predicted latency on ``lut``, and that latency
    (a one-line error if the table was made for another space or misses some of its units)."""
    lut.check_covers(space)
    base = space.smallest()
    blocks = [{w: _cheapest_blocks(space, lut, base, s, w) for w in stage.widths} for s, stage in enumerate(space.stages)]
    # best[w] = (price of the stem .. stage s with stage s at width w, the widths so far)
    best = {w: (_price(lut, space.edit(base, stage=0, width=w), "stem") + blocks[0][w][0], (w,)) for w in space.stages[0].widths}
    for s in range(1, space.num_stages):
        best = {
            w: min(
                (total + _embed_price(space, lut, base, s, wp, w) + blocks[s][w][0], (*chosen, w))
                for wp, (total, chosen) in best.items()
            )
            for w in space.stages[s].widths
        }
    _, widths = min(best.values())
    chosen = [blocks[s][w] for s, w in enumerate(widths)]
    spec = space.spec(widths, [c[1] for c in chosen], chosen[-1][2], [c[3] for c in chosen])
    return spec, lut.predict_ms(spec)

"""The fastest subnet of a space is the true minimum of the table's own prediction, whatever the
calibration: it prices units with ``LatencyTable.unit_ms`` (incl. the per-call overhead), never a
formula of its own."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from latency_lut import CATEGORIES, LatencyTable, Timing, fastest_subnet
from supernet import load_space
from test_lut_table import _table

# The tiny space with two MLP ratios per stage, so that brute force stays at ~12k architectures.
TINY = load_space("tiny")
SPACE = dataclasses.replace(TINY, stages=tuple(dataclasses.replace(s, mlp_ratios=(2, 4)) for s in TINY.stages), presets=())


def _random_table(space, rng: random.Random) -> LatencyTable:
    """Random entries and calibration, and a per-call overhead larger than some entries (so that
    the clipping at zero matters too)."""
    calibration = {"overhead_ms": rng.uniform(0.0, 0.5), "scales": {c: rng.uniform(0.1, 3.0) for c in CATEGORIES}, "models": []}
    table = _table(space, calibration)
    for key in table.entries:
        median = rng.uniform(0.001, 0.05)
        table.entries[key] = Timing(median, median * 0.9, median * 1.2, 10)
    table.meta["call_overhead_ms"] = rng.uniform(0.005, 0.02)
    return table


def _candidates(space):
    """Every architecture that can be the fastest: all widths, MLP ratios and last-stage (depth,
    Meta3D) pairs; earlier stages at their minimum depth (a block more only adds a price >= 0)."""
    depths = [s.depth_min for s in space.stages[:-1]]
    for widths in itertools.product(*(s.widths for s in space.stages)):
        for ratios in itertools.product(*(s.mlp_ratios for s in space.stages)):
            for depth, num_meta3d in space.last_stage_choices():
                yield space.spec(widths, [*depths, depth], num_meta3d, ratios)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fastest_subnet_is_the_argmin_of_predict_ms(seed):
    table = _random_table(SPACE, random.Random(seed))
    spec, ms = fastest_subnet(SPACE, table)
    assert ms == table.predict_ms(spec)
    best = min(table.predict_ms(candidate) for candidate in _candidates(SPACE))
    assert ms == pytest.approx(best, rel=1e-12, abs=1e-12)


def test_a_block_more_never_makes_a_subnet_faster():
    # What lets the brute force above keep the earlier stages at their minimum depth.
    table = _random_table(SPACE, random.Random(3))
    rng = random.Random(4)
    for _ in range(200):
        spec = SPACE.sample(rng)
        for stage in range(SPACE.num_stages - 1):
            if spec.depths[stage] < SPACE.stages[stage].depth_max:
                deeper = SPACE.edit(spec, stage=stage, depth=spec.depths[stage] + 1)
                assert table.predict_ms(deeper) >= table.predict_ms(spec)

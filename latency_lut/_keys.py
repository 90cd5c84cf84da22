"""Latency units: how an architecture decomposes into the blocks a latency table prices.

Every module of ``build_model(spec)`` belongs to exactly one unit: the stem, each embedding
(``stages.i.downsample``, i >= 1), each Meta4D block, the ``Flat`` layout change, each Meta3D block,
and the head (final norm, token mean and both classifier heads). A unit's key names everything its
latency depends on, so two architectures that share a block share its table entry:

=========================================  ==================================================
key                                        unit
=========================================  ==================================================
``stem:w48:r224``                          stem of width 48 on a 224x224 input
``embed:w48-96:r56``                       3x3/s2 conv + BN from 48 to 96 channels, 56x56 input
``meta4d:w96:r28:m4``                      Meta4D block, 96 channels, 28x28 map, MLP ratio 4
``flat:w448:r7``                           (B, C, H, W) -> (B, H*W, C) of a 448 x 7x7 map
``meta3d:w448:r7:m4:h8:k32``               Meta3D block on 7x7 = 49 tokens, 8 heads, key dim 32
``head:w448:r7:c1000``                     final LayerNorm, token mean, head + head_dist
=========================================  ==================================================
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from supernet.errors import EfnasError
from supernet.model import Downsample, EfficientFormer, Flat, Meta3D, Meta4D, Stem, stage_block_layout
from supernet.space import ArchSpec, SearchSpace

__all__ = [
    "CATEGORIES",
    "OpUnit",
    "op_keys",
    "op_units",
    "parse_key",
    "space_keys",
]

#: Unit kinds in network order; calibration fits one scale per category (see :func:`category_of`).
KINDS = ("stem", "embed", "meta4d", "flat", "meta3d", "head")
CATEGORIES = ("stem", "embed", "meta4d", "meta3d", "head")


def category_of(kind: str) -> str:
    """The calibration category of a unit kind: ``flat`` joins ``meta3d``, as it only exists in
    front of the attention blocks or the head; every other kind is its own category."""
    return "meta3d" if kind == "flat" else kind

_FIELDS = {
    "stem": ("w", "r"),
    "embed": ("w", "r"),
    "meta4d": ("w", "r", "m"),
    "flat": ("w", "r"),
    "meta3d": ("w", "r", "m", "h", "k"),
    "head": ("w", "r", "c"),
}
_FIELD_RE = re.compile(r"^([a-z])(\d+)(?:-(\d+))?$")


@dataclass(frozen=True)
class OpUnit:
    """One latency unit. ``width`` is the output width; ``in_width`` differs from it only for an
    embedding. ``resolution`` is the side of the unit's input map (or token grid)."""

    kind: str
    width: int
    resolution: int
    in_width: int = 0
    mlp_ratio: int = 0
    heads: int = 0
    key_dim: int = 0
    num_classes: int = 0

    @property
    def key(self) -> str:
        fields = {
            "w": f"{self.in_width}-{self.width}" if self.kind == "embed" else str(self.width),
            "r": str(self.resolution),
            "m": str(self.mlp_ratio),
            "h": str(self.heads),
            "k": str(self.key_dim),
            "c": str(self.num_classes),
        }
        return ":".join([self.kind, *(f"{name}{fields[name]}" for name in _FIELDS[self.kind])])

    @property
    def category(self) -> str:
        return category_of(self.kind)

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        if self.kind == "stem":
            return (batch, 3, self.resolution, self.resolution)
        if self.kind in ("meta3d", "head"):
            return (batch, self.resolution * self.resolution, self.width)
        channels = self.in_width if self.kind == "embed" else self.width
        return (batch, channels, self.resolution, self.resolution)

    def output_shape(self, batch: int = 1) -> tuple[int, ...]:
        if self.kind == "head":
            return (batch, self.num_classes)
        if self.kind in ("flat", "meta3d"):
            return (batch, self.resolution * self.resolution, self.width)
        side = self.resolution
        if self.kind in ("stem", "embed"):
            for _ in range(2 if self.kind == "stem" else 1):
                side = (side - 1) // 2 + 1
        return (batch, self.width, side, side)

    def build(self) -> nn.Module:
        """The unit as a standalone module, the same classes (and parameter names) as in the model."""
        if self.kind == "stem":
            return Stem(self.width)
        if self.kind == "embed":
            return Downsample(self.in_width, self.width)
        if self.kind == "meta4d":
            return Meta4D(self.width, self.mlp_ratio)
        if self.kind == "flat":
            return Flat()
        if self.kind == "meta3d":
            return Meta3D(self.width, self.mlp_ratio, self.heads, self.key_dim, self.resolution)
        return _Head(self.width, self.num_classes)


class _Head(nn.Module):
    """Final norm and both heads, named as in :class:`EfficientFormer` and run by its own code."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self.head_dist = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return EfficientFormer.forward_head(self, self.norm(x))  # type: ignore[arg-type]


@dataclass(frozen=True)
class PlacedUnit:
    """A unit at its place in one model: ``paths`` are the module names of ``build_model(spec)``
    whose work it prices."""

    unit: OpUnit
    paths: tuple[str, ...]


def op_units(spec: ArchSpec) -> list[PlacedUnit]:
    """Every unit of ``spec`` in forward order, one per occurrence."""
    res = spec.stage_resolutions
    units = [PlacedUnit(OpUnit("stem", spec.widths[0], spec.resolution), ("stem",))]
    for stage, width in enumerate(spec.widths):
        if stage:
            unit = OpUnit("embed", width, res[stage - 1], in_width=spec.widths[stage - 1])
            units.append(PlacedUnit(unit, (f"stages.{stage}.downsample",)))
        for block, kind in enumerate(stage_block_layout(spec, stage)):
            path = (f"stages.{stage}.blocks.{block}",)
            if kind == "meta4d":
                unit = OpUnit("meta4d", width, res[stage], mlp_ratio=spec.mlp_ratios[stage])
            elif kind == "flat":
                unit = OpUnit("flat", width, res[stage])
            else:
                unit = OpUnit(
                    "meta3d",
                    width,
                    res[stage],
                    mlp_ratio=spec.mlp_ratios[stage],
                    heads=spec.attn_heads,
                    key_dim=spec.attn_key_dim,
                )
            units.append(PlacedUnit(unit, path))
    head = OpUnit("head", spec.widths[-1], res[-1], num_classes=spec.num_classes)
    units.append(PlacedUnit(head, ("norm", "head", "head_dist")))
    return units


def op_keys(spec: ArchSpec) -> list[tuple[str, int]]:
    """The ``(key, count)`` pairs of ``spec`` in forward order of first appearance."""
    counts = Counter(placed.unit.key for placed in op_units(spec))
    return list(counts.items())


def space_units(space: SearchSpace) -> dict[str, OpUnit]:
    """Every unit some architecture of ``space`` contains, by key, in network order."""
    res = space.largest().stage_resolutions
    units: list[OpUnit] = [OpUnit("stem", w, space.resolution) for w in space.stages[0].widths]
    last = space.num_stages - 1
    pairs = space.last_stage_choices()
    for stage, choices in enumerate(space.stages):
        if stage:
            units += [
                OpUnit("embed", w, res[stage - 1], in_width=w_in)
                for w_in in space.stages[stage - 1].widths
                for w in choices.widths
            ]
        if stage != last or any(depth > m for depth, m in pairs):
            units += [OpUnit("meta4d", w, res[stage], mlp_ratio=m) for w in choices.widths for m in choices.mlp_ratios]
    units += [OpUnit("flat", w, res[last]) for w in space.stages[last].widths]
    if any(m for _, m in pairs):
        units += [
            OpUnit("meta3d", w, res[last], mlp_ratio=m, heads=space.attn_heads, key_dim=space.attn_key_dim)
            for w in space.stages[last].widths
            for m in space.stages[last].mlp_ratios
        ]
    units += [OpUnit("head", w, res[last], num_classes=space.num_classes) for w in space.stages[last].widths]
    return {unit.key: unit for unit in units}


def space_keys(space: SearchSpace) -> set[str]:
    """The keys a table needs to price every architecture of ``space``."""
    return set(space_units(space))


def parse_key(key: str) -> OpUnit:
    """The unit a key names; a one-line :class:`EfnasError` if it is not a key."""
    kind, _, rest = key.partition(":")
    if kind not in _FIELDS:
        raise EfnasError(f"'{key}' is not a latency key: it must start with one of {', '.join(KINDS)}")
    parts = rest.split(":") if rest else []
    names = _FIELDS[kind]
    example = OpUnit(kind, 2, 8, in_width=2, mlp_ratio=4, heads=1, key_dim=1, num_classes=1).key
    if len(parts) != len(names):
        raise EfnasError(f"'{key}' is not a {kind} key: expected the form {example}")
    values: dict[str, int] = {}
    for name, part in zip(names, parts):
        match = _FIELD_RE.match(part)
        two = kind == "embed" and name == "w"
        if not match or match.group(1) != name or (match.group(3) is None) == two:
            raise EfnasError(f"'{key}' is not a {kind} key: expected the form {example}")
        if two:
            values["in_width"] = int(match.group(2))
            values["w"] = int(match.group(3))
        else:
            values[name] = int(match.group(2))
    if min(values.values()) < 1:
        raise EfnasError(f"'{key}' is not a latency key: every number in it must be positive")
    unit = OpUnit(
        kind,
        values["w"],
        values["r"],
        in_width=values.get("in_width", 0),
        mlp_ratio=values.get("m", 0),
        heads=values.get("h", 0),
        key_dim=values.get("k", 0),
        num_classes=values.get("c", 0),
    )
    if unit.key != key:
        raise EfnasError(f"'{key}' is not in canonical form; write it as {unit.key}")
    return unit
